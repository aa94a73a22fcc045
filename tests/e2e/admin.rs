//! The admin API (`/admin/...`) against a running router.
//!
//! What they prove: without `VOXROUTE_ADMIN_TOKEN` no admin route works whatever is
//! presented; with it, a missing or wrong token gets 401 and the right one works; a key made
//! through the API carries a call, which the API lists live and ends (`KILLED_BY_ADMIN`, on
//! record); the history filters by key and close reason; a GDPR export returns the key and its
//! records and an erasure deletes both (the key stops working); bad ids, bodies and queries
//! get a 4xx problem, never a 5xx.

use serde_json::Value;

use crate::harness::{RouterOptions, Setup, TWILIO, TestDb, TwilioCaller, WAIT, on_both_backends};

const TOKEN: &str = "admin-test-token-0123456789";

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

async fn admin(setup: &Setup, method: &str, path: &str, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    let (status, text) = setup.router.http(method, path, &headers, body).await;
    let value = if text.is_empty() {
        Value::Null
    } else {
        json(&text)
    };
    (status, value)
}

/// Proves the admin API is closed without a configured token: every route, with or without a
/// bearer, answers 401 `admin_disabled`.
#[tokio::test]
async fn admin_api_is_closed_without_a_token() {
    let setup = Setup::sqlite().await;
    for (method, path) in [
        ("GET", "/admin/sessions/live"),
        ("GET", "/admin/keys"),
        (
            "DELETE",
            "/admin/keys/00000000-0000-0000-0000-000000000000/data",
        ),
        ("GET", "/admin/nope"),
    ] {
        for headers in [vec![], vec![("Authorization", "Bearer anything")]] {
            let (status, body) = setup.router.http(method, path, &headers, "").await;
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert_eq!(json(&body)["code"], "admin_disabled", "{body}");
        }
    }
}

on_both_backends!(admin_api_manages_keys_sessions_and_gdpr_requests);

/// Proves the whole admin flow with a token, on both store backends: auth, key creation, live
/// list, ending a call, history filters, export, erasure, and 4xx answers to bad input.
async fn admin_api_manages_keys_sessions_and_gdpr_requests(db: TestDb) {
    let options = RouterOptions {
        env: vec![("VOXROUTE_ADMIN_TOKEN".into(), TOKEN.into())],
        ..RouterOptions::default()
    };
    let setup = Setup::new(db, options).await;
    let router = &setup.router;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong-token")],
        vec![("Authorization", TOKEN)],
    ] {
        let (status, body) = router.http("GET", "/admin/keys", &headers, "").await;
        assert_eq!(status, 401, "{headers:?}: {body}");
        assert_eq!(json(&body)["code"], "invalid_admin_token");
        assert!(!body.contains(TOKEN));
    }

    let (status, created) = admin(
        &setup,
        "POST",
        "/admin/keys",
        r#"{"name":"via admin","max_sessions":2}"#,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["api_key"]
        .as_str()
        .expect("the key, once")
        .to_owned();
    let key_id = created["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["key"]["max_sessions"], 2);
    let (_, listed) = admin(&setup, "GET", "/admin/keys", "").await;
    assert!(
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == key_id.as_str()),
        "{listed}"
    );
    assert!(
        !listed.to_string().contains(&key),
        "keys are listed without the key"
    );

    let mut call = setup.twilio(&key).await;
    call.assert_echoes("a call with the admin-made key").await;
    let (status, live) = admin(&setup, "GET", "/admin/sessions/live", "").await;
    assert_eq!(status, 200);
    let sessions = live["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{live}");
    let session_id = sessions[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(sessions[0]["api_key_id"], key_id.as_str());

    let (status, _) = admin(
        &setup,
        "DELETE",
        &format!("/admin/sessions/{session_id}"),
        "",
    )
    .await;
    assert_eq!(status, 204);
    let closed = call.conn.wait_closed(WAIT).await;
    assert_eq!(closed.reason, "KILLED_BY_ADMIN");
    let row = setup.ended(session_id.parse().unwrap()).await;
    assert_eq!(row.close_reason.as_deref(), Some("KILLED_BY_ADMIN"));
    let (status, again) = admin(
        &setup,
        "DELETE",
        &format!("/admin/sessions/{session_id}"),
        "",
    )
    .await;
    assert_eq!(
        (status, again["code"].as_str()),
        (404, Some("not_live_here"))
    );

    // Another key's call, so the filters have something to leave out.
    let (other_id, other) = setup.key("other", None).await;
    let mut other_call = setup.twilio(&other).await;
    other_call.assert_echoes("another key's call").await;
    assert_eq!(other_call.hang_up().await.reason, "CLIENT_HANGUP");
    setup.ended_for_key(other_id, 1).await;

    let path = format!("/admin/sessions?api_key_id={key_id}&close_reason=KILLED_BY_ADMIN");
    let (status, history) = admin(&setup, "GET", &path, "").await;
    assert_eq!(status, 200, "{history}");
    let rows = history["sessions"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{history}");
    assert_eq!(rows[0]["id"], session_id.as_str());
    let (_, all) = admin(&setup, "GET", "/admin/sessions?limit=10", "").await;
    assert_eq!(all["sessions"].as_array().unwrap().len(), 2, "{all}");

    let (status, export) = admin(&setup, "GET", &format!("/admin/keys/{key_id}/export"), "").await;
    assert_eq!(status, 200);
    assert_eq!(export["key"]["id"], key_id.as_str());
    assert_eq!(export["sessions"].as_array().unwrap().len(), 1, "{export}");
    let usage = export["usage"].as_array().expect("usage in the export");
    assert_eq!(usage.len(), 1, "{export}");
    assert_eq!(usage[0]["provider"], "echo");
    assert!(usage[0]["audio_in_ms"].as_i64().unwrap() >= 200, "{export}");
    assert!(!export.to_string().contains(&key));

    let (status, erased) = admin(&setup, "DELETE", &format!("/admin/keys/{key_id}/data"), "").await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        (
            erased["sessions_deleted"].as_u64(),
            erased["keys_deleted"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (status, _) = admin(&setup, "GET", &format!("/admin/keys/{key_id}/export"), "").await;
    assert_eq!(status, 404);
    let refused = TwilioCaller::connect(&router.ws_url(TWILIO), Some(&key)).await;
    assert!(refused.is_err(), "an erased key no longer authenticates");
    let (_, all) = admin(&setup, "GET", "/admin/sessions", "").await;
    assert_eq!(
        all["sessions"].as_array().unwrap().len(),
        1,
        "only the other key's record is left: {all}"
    );

    for (method, path, body, status, code) in [
        (
            "DELETE",
            "/admin/sessions/not-a-uuid",
            "",
            400,
            "invalid_id",
        ),
        ("POST", "/admin/keys", "{not json", 400, "invalid_body"),
        (
            "POST",
            "/admin/keys",
            r#"{"name":"x","max_sessions":0}"#,
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/admin/keys",
            r#"{"name":"   "}"#,
            422,
            "invalid_input",
        ),
        ("GET", "/admin/sessions?limit=0", "", 400, "invalid_query"),
        (
            "GET",
            "/admin/sessions?since=yesterday",
            "",
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/admin/sessions?colour=blue",
            "",
            400,
            "invalid_query",
        ),
        (
            "DELETE",
            "/admin/keys/00000000-0000-0000-0000-000000000000",
            "",
            404,
            "unknown_key",
        ),
        ("GET", "/admin/nope", "", 404, "not_found"),
    ] {
        let (got, answer) = admin(&setup, method, path, body).await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {answer}"
        );
    }
}
