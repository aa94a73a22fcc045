//! The hosted-provider adapters end to end: a real router dials the stand-in providers
//! (`voxroute-standin`, hosted in this process) over their real wire protocols, with the base
//! URLs and keys given as a user gives them (`VOXROUTE_*_URL`, `*_API_KEY`).
//!
//! What they prove, per provider: a native caller's speech reaches the provider and what the
//! provider answers comes back (speech-to-speech providers echo it: it must correlate with what
//! was sent, through every resampler of the path, including Gemini's 16 kHz in / 24 kHz out);
//! transcripts arrive as `transcript` events; the record names the provider; and provider
//! misbehaviour (refused key, malformed frames) gets the caller a clear answer, never a stuck
//! session.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use voxroute_loadtest::standin::{Knobs, Provider};

use crate::harness::{
    NATIVE, NativeCaller, RouterOptions, Setup, TestDb, WAIT, eventually, pcm16_samples, speech_8k,
    standin_with,
};

/// A router whose hosted providers all point at the stand-in at `addr`, with keys set; plus
/// `config` (TOML).
pub(crate) async fn router_for(addr: SocketAddr, config: Option<&str>) -> Setup {
    let base = format!("ws://{addr}");
    let mut env = Vec::new();
    for kind in voxroute::hosted::Hosted::ALL {
        env.push((kind.url_var().to_owned(), base.clone()));
        env.push((
            kind.key_var().to_owned(),
            format!("test-key-{}", kind.name()),
        ));
    }
    let options = RouterOptions {
        config: config.map(str::to_owned),
        env,
        ..RouterOptions::default()
    };
    Setup::new(TestDb::sqlite(), options).await
}

/// ElevenLabs needs a table: its agent id.
pub(crate) const ELEVENLABS_TABLE: &str =
    "[providers.elevenlabs]\nkind = \"elevenlabs\"\nagent_id = \"agent_test\"\n";

/// No reply audio for this long means the reply is complete (the stand-ins answer within
/// tens of milliseconds of each frame).
const REPLY_DONE: Duration = Duration::from_millis(500);

/// The share of `sent`'s voiced 20 ms windows (8 kHz) found in `back` with a correlation above
/// 0.8 at a delay of at most 200 ms. Window by window, because a barge-in (`clear`) rightly
/// drops the reply audio queued at that moment, shifting everything after it: one
/// correlation over the whole call would fail on a correct flush.
pub(crate) fn matching_windows(sent: &[i16], back: &[i16]) -> f64 {
    const WINDOW: usize = 160;
    const MAX_DELAY: usize = 1_600;
    let (mut voiced, mut matched) = (0usize, 0usize);
    for (index, window) in sent.chunks_exact(WINDOW).enumerate() {
        // About -40 dBFS: below it a window is a pause, not speech.
        if voxroute_codecs::measure::rms(window) < 0.01 {
            continue;
        }
        voiced += 1;
        let start = index * WINDOW;
        let from = start.saturating_sub(MAX_DELAY);
        let to = (start + MAX_DELAY).min(back.len().saturating_sub(WINDOW));
        let found = (from..=to).any(|at| {
            back.get(at..at + WINDOW).is_some_and(|candidate| {
                voxroute_codecs::measure::correlation(window, candidate) > 0.8
            })
        });
        matched += usize::from(found);
    }
    assert!(voiced > 0, "the fixture has speech");
    matched as f64 / voiced as f64
}

/// A native caller (PCM16 8 kHz) on `provider`, started.
async fn native_on(setup: &Setup, key: &str, provider: &str) -> NativeCaller {
    let mut caller = NativeCaller::connect(&setup.router.ws_url(NATIVE), None)
        .await
        .expect("the native upgrade succeeds");
    caller
        .start(json!({"codec": "pcm16", "sample_rate": 8000, "api_key": key, "provider": provider}))
        .await;
    caller.wait_started().await;
    caller
}

fn transcripts(caller: &NativeCaller) -> Vec<Value> {
    caller
        .conn
        .events()
        .into_iter()
        .filter(|e| e["type"] == "transcript")
        .collect()
}

/// Proves each speech-to-speech adapter end to end through the stand-in: 2 s of speech sent at
/// real time comes back (at least 90% of its voiced 20 ms windows are found in the reply,
/// through every resampler of the path), at least one transcript arrives (Gemini's stay
/// interim until the turn ends), the stand-in counted the audio, and the record names the provider with
/// `CLIENT_HANGUP`.
#[tokio::test]
async fn speech_to_speech_providers_answer_through_their_protocols() {
    let (addr, stats) = standin_with(Knobs::default()).await;
    let setup = router_for(addr, Some(ELEVENLABS_TABLE)).await;
    let (key_id, key) = setup.key("providers", None).await;
    let speech = speech_8k(2.0);
    for (name, provider) in [
        ("openai", Provider::OpenAi),
        ("elevenlabs", Provider::ElevenLabs),
        ("gemini", Provider::Gemini),
    ] {
        let mut caller = native_on(&setup, &key, name).await;
        caller.stream_pcm(&speech, Duration::from_millis(20)).await;
        caller
            .conn
            .wait_audio(speech.len() * 2 * 9 / 10, WAIT)
            .await;
        // The whole reply, not its first 90%: the windows are matched against all of it.
        caller.conn.wait_quiet(REPLY_DONE, WAIT).await;
        let back = pcm16_samples(&caller.conn.audio());
        let clears = caller
            .conn
            .events()
            .iter()
            .filter(|e| e["type"] == "clear")
            .count();
        let matching = matching_windows(&speech, &back);
        println!(
            "{name}: {} samples back for {} sent, {clears} barge-in clears, {:.0}% of voiced \
             20 ms windows match",
            back.len(),
            speech.len(),
            matching * 100.0
        );
        assert!(
            matching >= 0.9,
            "{name}: only {:.0}% of the voiced windows came back",
            matching * 100.0
        );
        caller
            .conn
            .wait_event(&format!("{name}: a transcript"), |e| {
                e["type"] == "transcript"
            })
            .await;
        caller.stop().await;
        assert_eq!(caller.wait_ended().await, "CLIENT_HANGUP", "{name}");
        let seen = stats.provider(provider);
        assert_eq!(seen.connections, 1, "{name}: {seen:?}");
        assert!(
            seen.audio_received_ms >= 1_900,
            "{name}: the stand-in received {} ms",
            seen.audio_received_ms
        );
    }
    let rows = setup.ended_for_key(key_id, 3).await;
    let providers: Vec<_> = rows.iter().map(|r| r.provider.as_str()).collect();
    assert_eq!(providers, ["openai", "elevenlabs", "gemini"], "{rows:#?}");
    for row in &rows {
        assert_eq!(
            row.close_reason.as_deref(),
            Some("CLIENT_HANGUP"),
            "{row:#?}"
        );
        assert!((row.audio_in_ms - 2_000).abs() <= 40, "{row:#?}");
        assert!(row.audio_out_ms >= 1_800, "{row:#?}");
    }
}

/// Proves the Deepgram adapter end to end: 2.5 s of speech at real time gives interim and
/// final transcripts in order (the stand-in's text names the second of audio it covers), no
/// audio comes back (speech to text), and the record names `deepgram`.
#[tokio::test]
async fn deepgram_transcribes_through_its_protocol() {
    let (addr, stats) = standin_with(Knobs::default()).await;
    let setup = router_for(addr, None).await;
    let (key_id, key) = setup.key("deepgram", None).await;
    let mut caller = native_on(&setup, &key, "deepgram").await;
    caller
        .stream_pcm(&speech_8k(2.5), Duration::from_millis(20))
        .await;
    caller
        .conn
        .wait_event("the final transcript of the second second", |e| {
            e["type"] == "transcript"
                && e["final"] == true
                && e["text"].as_str().is_some_and(|t| t.contains("1.0-2.0"))
        })
        .await;
    let seen = transcripts(&caller);
    assert!(
        seen.iter().any(|e| e["final"] == false),
        "interim transcripts too: {seen:#?}"
    );
    assert!(
        seen.iter().any(
            |e| e["final"] == true && e["text"].as_str().is_some_and(|t| t.contains("0.0-1.0"))
        ),
        "{seen:#?}"
    );
    assert_eq!(caller.conn.audio_len(), 0, "speech to text sends no audio");
    caller.stop().await;
    assert_eq!(caller.wait_ended().await, "CLIENT_HANGUP");
    assert_eq!(stats.provider(Provider::Deepgram).connections, 1);
    let row = setup.ended_for_key(key_id, 1).await.remove(0);
    assert_eq!(row.provider, "deepgram", "{row:#?}");
    assert_eq!(row.audio_out_ms, 0, "{row:#?}");
}

/// Proves a provider that refuses voxroute's key ends the session at once with an `error`
/// event `provider_error` and `PROVIDER_ERROR` (no stuck session, no key echoed), on record.
#[tokio::test]
async fn provider_refusing_our_key_ends_the_session_clearly() {
    let (addr, _) = standin_with(Knobs {
        refuse_auth: true,
        ..Knobs::default()
    })
    .await;
    let setup = router_for(addr, None).await;
    let (key_id, key) = setup.key("refused", None).await;
    let caller = native_on(&setup, &key, "openai").await;
    let error = caller
        .conn
        .wait_event("an error event", |e| e["type"] == "error")
        .await;
    assert_eq!(error["code"], "provider_error", "{error}");
    assert!(
        !error.to_string().contains("test-key"),
        "the key never reaches the caller: {error}"
    );
    assert_eq!(caller.wait_ended().await, "PROVIDER_ERROR");
    let row = setup.ended_for_key(key_id, 1).await.remove(0);
    assert_eq!(
        row.close_reason.as_deref(),
        Some("PROVIDER_ERROR"),
        "{row:#?}"
    );
}

/// Proves malformed provider frames are dropped one by one with a non-fatal `error` event
/// while the call goes on: with every 5th stand-in message malformed, audio still comes back
/// and the caller ends the call normally.
#[tokio::test]
async fn malformed_provider_frames_are_reported_and_skipped() {
    let (addr, _) = standin_with(Knobs {
        malformed_every: Some(5),
        ..Knobs::default()
    })
    .await;
    let setup = router_for(addr, None).await;
    let (_, key) = setup.key("malformed", None).await;
    let mut caller = native_on(&setup, &key, "openai").await;
    let speech = speech_8k(1.0);
    caller.stream_pcm(&speech, Duration::from_millis(20)).await;
    caller
        .conn
        .wait_event("a provider error event", |e| e["type"] == "error")
        .await;
    let conn = &caller.conn;
    eventually(WAIT, "half of the audio back", async || {
        (conn.audio_len() >= speech.len()).then_some(())
    })
    .await;
    caller.assert_echoes("after malformed frames").await;
    caller.stop().await;
    assert_eq!(caller.wait_ended().await, "CLIENT_HANGUP");
}

/// Proves Gemini's `goAway` is handled by resuming, not by dropping or failing over: with the
/// stand-in announcing `goAway` 1 s after each setup, a 3 s native call reconnects to Gemini
/// with the resumption handle it was given (the stand-in counts the resumed setups), the
/// caller hears its audio throughout and gets no `provider.switched`, and the record shows one
/// provider and no failover.
#[tokio::test]
async fn gemini_go_away_resumes_on_a_new_connection() {
    let (addr, stats) = standin_with(Knobs {
        gemini_go_away_after_secs: Some(1.0),
        ..Knobs::default()
    })
    .await;
    let setup = router_for(addr, None).await;
    let (key_id, key) = setup.key("resume", None).await;
    let mut caller = native_on(&setup, &key, "gemini").await;
    let speech = speech_8k(3.0);
    caller.stream_pcm(&speech, Duration::from_millis(20)).await;
    caller
        .conn
        .wait_audio(speech.len() * 2 * 9 / 10, WAIT)
        .await;
    caller.conn.wait_quiet(REPLY_DONE, WAIT).await;
    let back = pcm16_samples(&caller.conn.audio());
    let matching = matching_windows(&speech, &back);
    let seen = stats.provider(Provider::Gemini);
    println!(
        "gemini with goAway: {} connections, {} resumed, {:.0}% of voiced windows back",
        seen.connections,
        seen.resumed_sessions,
        matching * 100.0
    );
    assert!(matching >= 0.9, "{:.0}% came back", matching * 100.0);
    assert!(seen.connections >= 2, "{seen:?}");
    assert!(seen.resumed_sessions >= 1, "{seen:?}");
    assert!(
        !caller
            .conn
            .events()
            .iter()
            .any(|e| e["type"] == "provider.switched"),
        "a resumption is not a switch"
    );
    caller.stop().await;
    assert_eq!(caller.wait_ended().await, "CLIENT_HANGUP");
    let row = setup.ended_for_key(key_id, 1).await.remove(0);
    assert_eq!(row.providers_tried, ["gemini"], "{row:#?}");
    assert_eq!(row.failovers, 0, "{row:#?}");
    assert!((row.audio_in_ms - 3_000).abs() <= 40, "{row:#?}");
}
