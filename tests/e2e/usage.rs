//! Metering through a running router: `GET /v1/usage` against the audio callers really sent.
//!
//! What it proves, on SQLite and on PostgreSQL: with a price table, a Twilio call of known
//! length streamed at real time (20 ms frames) to the built-in echo, and a second Twilio call
//! on a route whose first provider (an OpenAI stand-in) drops mid-call and fails over to a
//! second one, the key's usage
//!
//! - has each provider's audio in, summed over the providers of each call, within 1% of what
//!   the caller sent (the "done when"; the error is printed), split between the two
//!   providers of the failed-over call (both non-zero) and equal to the records' totals;
//! - prices each provider's line as its price × minutes, and totals add up;
//! - counts the failed-over session once in the totals and once per provider;
//! - is the key's own: another key sees none of it, and a keyless `--dev` call is nobody's;
//!
//! and that the endpoint takes the key like the WebSocket upgrades (Bearer header or
//! `?api_key=`), answers a missing or bad key with 401 and bad dates with 400, both as
//! `application/problem+json`.

use std::time::Duration;

use serde_json::Value;
use voxroute_loadtest::standin::{FailMode, Knobs};

use crate::harness::{
    RouterOptions, Setup, TWILIO, TestDb, TwilioCaller, mulaw, on_both_backends, speech_8k,
    standin_with,
};

on_both_backends!(usage_matches_the_audio_sent_per_provider_and_key);

/// The acceptance bound: usage within 1% of the audio sent.
const MAX_RELATIVE_ERROR: f64 = 0.01;

/// Prices per minute (in, out) of the three providers the calls use.
const ECHO_PRICE: (f64, f64) = (0.01, 0.02);
const FIRST_PRICE: (f64, f64) = (0.06, 0.24);
const SECOND_PRICE: (f64, f64) = (0.10, 0.30);

/// `GET path` with optional extra headers: (status, content type, body as JSON).
async fn get(setup: &Setup, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, body) = setup.router.http("GET", path, headers, "").await;
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|_| panic!("GET {path}: {status} with a body that is not JSON: {body}"));
    (status, json)
}

/// Asserts `body` is a problem document with `status`.
fn assert_problem(status: u16, body: &Value, want: u16, what: &str) {
    assert_eq!(status, want, "{what}: {body}");
    assert_eq!(body["status"], want, "{what}: {body}");
    assert!(body["code"].is_string(), "{what}: {body}");
}

/// The line of `provider` in the report's `providers`.
fn provider_line<'a>(report: &'a Value, provider: &str) -> &'a Value {
    report["providers"]
        .as_array()
        .expect("a providers array")
        .iter()
        .find(|line| line["provider"] == provider)
        .unwrap_or_else(|| panic!("no line for {provider}: {report:#}"))
}

fn seconds(line: &Value, field: &str) -> f64 {
    line[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} in {line}"))
}

/// Streams `speech` over a Twilio call at real time (20 ms frames), then hangs up; returns
/// the audio sent, in seconds.
async fn call(caller: &mut TwilioCaller, speech: &[i16]) -> f64 {
    caller
        .stream(&mulaw(speech), Duration::from_millis(20))
        .await;
    let closed = caller.hang_up().await;
    assert_eq!(closed.reason, "CLIENT_HANGUP");
    speech.len() as f64 / 8_000.0
}

/// See the [module documentation](self).
async fn usage_matches_the_audio_sent_per_provider_and_key(db: TestDb) {
    let backend = db.label();
    let (first, _) = standin_with(Knobs {
        fail_after_secs: Some(1.5),
        fail_mode: FailMode::Close,
        ..Knobs::default()
    })
    .await;
    let (second, _) = standin_with(Knobs::default()).await;
    let config = format!(
        "[providers.oa-a]\nkind = \"openai\"\nurl = \"ws://{first}\"\n\
         [providers.oa-b]\nkind = \"openai\"\nurl = \"ws://{second}\"\n\
         [routes.s2s]\nproviders = [\"oa-a\", \"oa-b\"]\n\
         [prices.echo]\nusd_per_minute_in = {}\nusd_per_minute_out = {}\n\
         [prices.oa-a]\nusd_per_minute_in = {}\nusd_per_minute_out = {}\n\
         [prices.oa-b]\nusd_per_minute_in = {}\nusd_per_minute_out = {}\n",
        ECHO_PRICE.0, ECHO_PRICE.1, FIRST_PRICE.0, FIRST_PRICE.1, SECOND_PRICE.0, SECOND_PRICE.1,
    );
    let options = RouterOptions {
        config: Some(config),
        dev: true,
        env: vec![("OPENAI_API_KEY".into(), "test".into())],
        ..RouterOptions::default()
    };
    let setup = Setup::new(db, options).await;
    let (key_id, key) = setup.key("metered", None).await;
    let (_, other_key) = setup.key("someone-else", None).await;

    // 3 s to echo; the whole fixture (3.4 s) on the failing route; 0.5 s with no key.
    let mut echo_call = setup.twilio(&key).await;
    let echo_sent = call(&mut echo_call, &speech_8k(3.0)).await;
    let mut failover_call = TwilioCaller::connect(&setup.router.ws_url(TWILIO), None)
        .await
        .expect("the Twilio upgrade succeeds");
    failover_call
        .start(&[("api_key", key.as_str()), ("route", "s2s")])
        .await;
    let failover_sent = call(&mut failover_call, &speech_8k(4.0)).await;
    let mut keyless = TwilioCaller::connect(&setup.router.ws_url(TWILIO), None)
        .await
        .expect("the keyless upgrade succeeds (--dev)");
    keyless.start(&[]).await;
    call(&mut keyless, &speech_8k(0.5)).await;

    let records = setup.ended_for_key(key_id, 2).await;
    let failed_over = records
        .iter()
        .find(|row| row.route.as_deref() == Some("s2s"))
        .expect("the failover call's record");
    assert_eq!(
        failed_over.providers_tried,
        ["oa-a", "oa-b"],
        "{backend}: the call failed over: {failed_over:#?}"
    );
    // The keyless call's record too, so that its usage would be there if it counted.
    crate::harness::eventually(crate::harness::WAIT, "the keyless record", async || {
        let all = setup.all_sessions().await;
        all.iter()
            .any(|row| row.api_key_id.is_none() && row.close_reason.is_some())
            .then_some(())
    })
    .await;

    let bearer = format!("Bearer {key}");
    let (status, report) = get(&setup, "/v1/usage", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200, "{backend}: {report:#}");
    println!("usage report ({backend}): {report:#}");

    // Audio in per call, summed over its providers, within 1% of what was sent.
    let echo = provider_line(&report, "echo");
    let oa_a = provider_line(&report, "oa-a");
    let oa_b = provider_line(&report, "oa-b");
    let echo_in = seconds(echo, "audio_in_seconds");
    let (a_in, b_in) = (
        seconds(oa_a, "audio_in_seconds"),
        seconds(oa_b, "audio_in_seconds"),
    );
    assert!(a_in > 0.0 && b_in > 0.0, "{backend}: split {a_in} + {b_in}");
    for (what, metered, sent) in [
        ("echo call", echo_in, echo_sent),
        ("failover call", a_in + b_in, failover_sent),
        (
            "both calls",
            seconds(&report["totals"], "audio_in_seconds"),
            echo_sent + failover_sent,
        ),
    ] {
        let error = (metered - sent).abs() / sent;
        println!(
            "usage vs sent ({backend}, {what}): metered {metered:.3} s, sent {sent:.3} s, \
             error {:.3}%",
            error * 100.0
        );
        assert!(
            error <= MAX_RELATIVE_ERROR,
            "{backend}, {what}: metered {metered} s against {sent} s sent"
        );
    }
    // The same as the records, exactly.
    let records_in_ms: i64 = records.iter().map(|row| row.audio_in_ms).sum();
    let records_out_ms: i64 = records.iter().map(|row| row.audio_out_ms).sum();
    assert_eq!(
        (
            (seconds(&report["totals"], "audio_in_seconds") * 1_000.0).round() as i64,
            (seconds(&report["totals"], "audio_out_seconds") * 1_000.0).round() as i64,
        ),
        (records_in_ms, records_out_ms),
        "{backend}: usage and records agree"
    );
    assert!(seconds(echo, "audio_out_seconds") > 0.0, "echo answered");

    // Cost = price × minutes, per provider and in total.
    let mut total_usd = 0.0;
    for (line, (usd_in, usd_out)) in [
        (echo, ECHO_PRICE),
        (oa_a, FIRST_PRICE),
        (oa_b, SECOND_PRICE),
    ] {
        let want = seconds(line, "audio_in_seconds") / 60.0 * usd_in
            + seconds(line, "audio_out_seconds") / 60.0 * usd_out;
        let got = seconds(line, "estimated_cost_usd");
        assert!(
            (got - want).abs() < 2e-6,
            "{backend}: {} costs {got}, expected {want}",
            line["provider"]
        );
        total_usd += want;
    }
    let total = seconds(&report["totals"], "estimated_cost_usd");
    assert!(
        (total - total_usd).abs() < 2e-6,
        "{backend}: {total} vs {total_usd}"
    );

    // Sessions: the failed-over call once in the totals, once per provider.
    assert_eq!(report["totals"]["sessions"], 2, "{backend}: {report:#}");
    for line in [echo, oa_a, oa_b] {
        assert_eq!(line["sessions"], 1, "{backend}: {line}");
    }
    assert_eq!(report["providers"].as_array().map(Vec::len), Some(3));
    let today = chrono::Utc::now().date_naive().to_string();
    assert_eq!(report["to"], today.as_str());
    for line in report["days"].as_array().expect("a days array") {
        assert_eq!(line["date"], today.as_str(), "{backend}: {line}");
    }

    // The key in the query works too; another key sees nothing of it.
    let (status, same) = get(&setup, &format!("/v1/usage?api_key={key}"), &[]).await;
    assert_eq!((status, &same), (200, &report));
    let (status, other) = get(&setup, &format!("/v1/usage?api_key={other_key}"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(other["totals"]["sessions"], 0, "{backend}: {other:#}");
    assert_eq!(other["days"], serde_json::json!([]));

    // Refusals, as problem+json.
    let (status, body) = get(&setup, "/v1/usage", &[]).await;
    assert_problem(status, &body, 401, "no key (even with --dev)");
    let bad = format!("Bearer vxr_{}", "x".repeat(43));
    let (status, body) = get(&setup, "/v1/usage", &[("Authorization", &bad)]).await;
    assert_problem(status, &body, 401, "unknown key");
    let (status, body) = get(&setup, "/v1/usage?api_key=nonsense", &[]).await;
    assert_problem(status, &body, 401, "malformed key");
    for query in [
        "from=2026-13-01",
        "to=yesterday",
        "from=2026-12-05&to=2026-12-04",
        "from=2020-01-01&to=2026-01-01",
        "from=2026-11-01&from=2026-11-02",
    ] {
        let (status, body) = get(
            &setup,
            &format!("/v1/usage?{query}"),
            &[("Authorization", &bearer)],
        )
        .await;
        assert_problem(status, &body, 400, query);
    }
    let (status, past) = get(
        &setup,
        "/v1/usage?from=2026-01-01&to=2026-01-31",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(past["totals"]["sessions"], 0, "nothing then: {past:#}");
}
