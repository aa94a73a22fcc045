//! Unit tests of [`SessionCore`] through its sans-IO interface: synthetic time, no sockets.

use std::time::{Duration, Instant};

use base64::Engine as _;
use uuid::Uuid;
use voxroute_codecs::SampleRate;

use super::*;
use crate::close_reason::SessionCloseReason;
use crate::protocol::RouteTarget;
use crate::provider::gemini::GeminiSettings;
use crate::provider::{ProviderCommand, ProviderEvent, ProviderKind, ProviderSpec};
use crate::record::ProviderUsage;

const TWILIO_START: &str = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC01","streamSid":"MZ01","callSid":"CA01","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"api_key":"vxr_secret","provider":"echo"}},"streamSid":"MZ01"}"#;

fn media(payload: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
    format!(
        r#"{{"event":"media","sequenceNumber":"3","media":{{"track":"inbound","chunk":"1","timestamp":"20","payload":"{b64}"}},"streamSid":"MZ01"}}"#
    )
}

/// The driver's answer to `Authorize`: admitted, routed to echo.
fn admit_to_echo(core: &mut SessionCore, at: Instant) {
    core.handle_input(
        at,
        Input::Admitted(Admission {
            session_id: Uuid::now_v7(),
            provider: echo_spec(),
            fallbacks: Vec::new(),
        }),
    );
}

fn echo_spec() -> ProviderSpec {
    ProviderSpec {
        name: "echo".into(),
        sample_rate: SampleRate::HZ_16000,
        output_sample_rate: SampleRate::HZ_16000,
        kind: ProviderKind::Echo,
    }
}

/// Drains outputs up to the timeout, which it returns separately.
fn drain(core: &mut SessionCore) -> (Vec<Output>, Instant) {
    let mut outputs = Vec::new();
    loop {
        match core.poll_output() {
            Output::Timeout(at) => return (outputs, at),
            output => outputs.push(output),
        }
    }
}

fn admitted_twilio(t0: Instant) -> SessionCore {
    let mut core = SessionCore::new(ClientProtocol::Twilio, SessionConfig::default(), t0);
    core.handle_input(
        t0,
        Input::ClientText(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#),
    );
    core.handle_input(t0, Input::ClientText(TWILIO_START));
    let (outputs, _) = drain(&mut core);
    match outputs.as_slice() {
        [Output::Authorize(request)] => {
            assert_eq!(request.api_key.as_deref(), Some("vxr_secret"));
            assert_eq!(request.target, RouteTarget::Provider("echo".into()));
        }
        other => panic!("expected one Authorize, got {other:?}"),
    }
    admit_to_echo(&mut core, t0);
    let (outputs, _) = drain(&mut core);
    assert!(matches!(outputs.as_slice(), [Output::StartProvider(spec)] if spec.name == "echo"));
    core
}

/// A whole Twilio call: audio goes to the provider as 20 ms frames at its rate, provider audio
/// comes back as Twilio media followed by a mark, and `stop` ends it with the right counters.
#[test]
fn twilio_call_flows_both_ways_and_ends_on_stop() {
    let t0 = Instant::now();
    let mut core = admitted_twilio(t0);
    for i in 0..5 {
        core.handle_input(
            t0 + Duration::from_millis(20 * i),
            Input::ClientText(&media(&[0xFF; 160])),
        );
    }
    let (outputs, _) = drain(&mut core);
    let frames: Vec<usize> = outputs
        .iter()
        .map(|o| match o {
            Output::ToProvider(ProviderCommand::Audio(frame)) => frame.len(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(frames, vec![320; 5]);

    // 200 ms of provider audio in one chunk: ten media messages, then a mark.
    core.handle_input(
        t0 + Duration::from_millis(150),
        Input::Provider(ProviderEvent::Audio(vec![0; 3_200])),
    );
    let (outputs, _) = drain(&mut core);
    let texts: Vec<&str> = outputs
        .iter()
        .map(|o| match o {
            Output::ToClientText(text) => text.as_str(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(texts.len(), 11, "ten media messages and a mark: {texts:?}");
    assert!(texts[0].starts_with(r#"{"event":"media","streamSid":"MZ01""#));
    assert!(texts[10].contains(r#""event":"mark""#));
    // A short chunk right after gets no mark of its own.
    core.handle_input(
        t0 + Duration::from_millis(160),
        Input::Provider(ProviderEvent::Audio(vec![0; 320])),
    );
    assert_eq!(drain(&mut core).0.len(), 1);

    core.handle_input(t0 + Duration::from_millis(1_000), Input::ClientText(r#"{"event":"stop","sequenceNumber":"9","stop":{"accountSid":"AC01","callSid":"CA01"},"streamSid":"MZ01"}"#));
    let (outputs, _) = drain(&mut core);
    let [
        Output::ToProvider(ProviderCommand::Finish),
        Output::Close(outcome),
    ] = outputs.as_slice()
    else {
        panic!("expected Finish then Close, got {outputs:?}");
    };
    assert_eq!(outcome.reason, SessionCloseReason::ClientHangup);
    assert_eq!((outcome.audio_in_ms, outcome.audio_out_ms), (100, 220));
    assert_eq!(outcome.duration_ms, 1_000);
    assert_eq!(outcome.first_response_ms, Some(150));
    assert_eq!(outcome.providers_tried, vec!["echo".to_owned()]);
    assert!(core.is_ended());
}

/// Media that arrives while the key is being checked is held and forwarded once admitted.
#[test]
fn media_during_authorization_is_held_not_lost() {
    let t0 = Instant::now();
    let mut core = SessionCore::new(ClientProtocol::Twilio, SessionConfig::default(), t0);
    core.handle_input(t0, Input::ClientText(TWILIO_START));
    drain(&mut core);
    for _ in 0..3 {
        core.handle_input(t0, Input::ClientText(&media(&[0x7F; 160])));
    }
    assert!(drain(&mut core).0.is_empty());
    admit_to_echo(&mut core, t0);
    let (outputs, _) = drain(&mut core);
    let audio = outputs
        .iter()
        .filter(|o| matches!(o, Output::ToProvider(ProviderCommand::Audio(_))))
        .count();
    assert_eq!(audio, 3);
}

/// No caller audio for the idle time ends the session with IDLE_TIMEOUT; the core asks for a
/// timer at exactly that instant.
#[test]
fn idle_caller_times_out() {
    let t0 = Instant::now();
    let mut core = admitted_twilio(t0);
    core.handle_input(
        t0 + Duration::from_secs(1),
        Input::ClientText(&media(&[0xFF; 160])),
    );
    let (_, deadline) = drain(&mut core);
    assert_eq!(deadline, t0 + Duration::from_secs(1) + IDLE_TIMEOUT_DEFAULT);
    core.handle_input(deadline - Duration::from_millis(1), Input::Timeout);
    assert!(!core.is_ended(), "an early timer does nothing");
    core.handle_input(deadline, Input::Timeout);
    let (outputs, _) = drain(&mut core);
    assert!(
        matches!(outputs.last(), Some(Output::Close(o)) if o.reason == SessionCloseReason::IdleTimeout)
    );
}

/// A caller that never sends `start` is closed after START_TIMEOUT as a client error.
#[test]
fn missing_start_times_out() {
    let t0 = Instant::now();
    let mut core = SessionCore::new(ClientProtocol::Native, SessionConfig::default(), t0);
    let (_, deadline) = drain(&mut core);
    assert_eq!(deadline, t0 + START_TIMEOUT);
    core.handle_input(deadline, Input::Timeout);
    let (outputs, _) = drain(&mut core);
    assert!(
        matches!(outputs.last(), Some(Output::Close(o)) if o.reason == SessionCloseReason::ClientError && o.session_id.is_none())
    );
}

/// The provider's speech-started drops queued provider audio and tells the caller to drop
/// its own: Twilio `clear`, native `clear` event.
#[test]
fn barge_in_clears_both_transports() {
    let t0 = Instant::now();
    let mut core = admitted_twilio(t0);
    core.handle_input(t0, Input::Provider(ProviderEvent::Audio(vec![0; 100])));
    core.handle_input(t0, Input::Provider(ProviderEvent::SpeechStarted));
    let (outputs, _) = drain(&mut core);
    assert!(
        matches!(outputs.as_slice(), [Output::ToClientText(t)] if t.contains(r#""event":"clear""#))
    );
    // The 100 queued samples were dropped: 220 more make one frame only with a full 320.
    core.handle_input(t0, Input::Provider(ProviderEvent::Audio(vec![0; 220])));
    assert!(drain(&mut core).0.is_empty());

    let mut native = SessionCore::new(ClientProtocol::Native, SessionConfig::default(), t0);
    native.handle_input(
        t0,
        Input::ClientText(r#"{"type":"start","codec":"pcm16","sample_rate":16000}"#),
    );
    drain(&mut native);
    admit_to_echo(&mut native, t0);
    drain(&mut native);
    native.handle_input(t0, Input::Provider(ProviderEvent::SpeechStarted));
    let (outputs, _) = drain(&mut native);
    assert!(matches!(outputs.as_slice(), [Output::ToClientText(t)] if t == r#"{"type":"clear"}"#));
}

/// Garbage is skipped and counted while good frames keep flowing; a long run of garbage ends
/// the session as a client error.
#[test]
fn garbage_is_skipped_then_a_flood_ends_the_session() {
    let t0 = Instant::now();
    let mut core = admitted_twilio(t0);
    for bad in [
        "not json",
        r#"{"event":"nope"}"#,
        r#"{"event":"media","media":{"payload":"!!!"}}"#,
    ] {
        core.handle_input(t0, Input::ClientText(bad));
    }
    core.handle_input(t0, Input::ClientBinary(&[1, 2, 3]));
    core.handle_input(t0, Input::ClientText(&media(&[0xFF; 160])));
    let (outputs, _) = drain(&mut core);
    assert_eq!(
        outputs.len(),
        1,
        "the good frame still went through: {outputs:?}"
    );
    for _ in 0..MAX_CONSECUTIVE_BAD_FRAMES {
        core.handle_input(t0, Input::ClientText("garbage"));
    }
    let (outputs, _) = drain(&mut core);
    let Some(Output::Close(outcome)) = outputs.last() else {
        panic!("{outputs:?}")
    };
    assert_eq!(outcome.reason, SessionCloseReason::ClientError);
    assert_eq!(
        outcome.bad_frames,
        4 + u64::from(MAX_CONSECUTIVE_BAD_FRAMES)
    );
    assert_eq!(outcome.audio_in_ms, 20);
}

/// A refused native caller gets an `error` event, then `session.ended`, then the close.
#[test]
fn refused_native_caller_is_told_why() {
    let t0 = Instant::now();
    let mut core = SessionCore::new(ClientProtocol::Native, SessionConfig::default(), t0);
    core.handle_input(
        t0,
        Input::ClientText(r#"{"type":"start","codec":"mulaw","sample_rate":8000}"#),
    );
    drain(&mut core);
    core.handle_input(
        t0,
        Input::Refused {
            reason: SessionCloseReason::AuthFailed,
            message: "an API key is required",
        },
    );
    let (outputs, _) = drain(&mut core);
    let [
        Output::ToClientText(error),
        Output::ToClientText(ended),
        Output::Close(outcome),
    ] = outputs.as_slice()
    else {
        panic!("{outputs:?}");
    };
    assert!(error.contains(r#""type":"error""#) && error.contains("an API key is required"));
    assert_eq!(ended, r#"{"type":"session.ended","reason":"AUTH_FAILED"}"#);
    assert_eq!(outcome.reason, SessionCloseReason::AuthFailed);
}

/// A native `start` the server cannot use ends the session at once as a client error.
#[test]
fn unusable_start_ends_the_session() {
    let t0 = Instant::now();
    let mut core = SessionCore::new(ClientProtocol::Native, SessionConfig::default(), t0);
    core.handle_input(
        t0,
        Input::ClientText(r#"{"type":"start","codec":"mulaw","sample_rate":16000}"#),
    );
    let (outputs, _) = drain(&mut core);
    assert!(
        matches!(outputs.last(), Some(Output::Close(o)) if o.reason == SessionCloseReason::ClientError)
    );
}

/// How the provider ends decides the record: a failure is PROVIDER_ERROR, a goodbye is
/// PROVIDER_CLOSED; either way the provider gets `Finish` and nothing follows the close.
#[test]
fn provider_endings_map_to_close_reasons() {
    for (error, reason) in [
        (true, SessionCloseReason::ProviderError),
        (false, SessionCloseReason::ProviderClosed),
    ] {
        let t0 = Instant::now();
        let mut core = admitted_twilio(t0);
        core.handle_input(t0, Input::Provider(ProviderEvent::Closed { error }));
        let (outputs, _) = drain(&mut core);
        assert!(matches!(outputs.last(), Some(Output::Close(o)) if o.reason == reason));
        core.handle_input(t0, Input::ClientText(&media(&[0xFF; 160])));
        assert!(drain(&mut core).0.is_empty(), "nothing after the close");
    }
}

// ---------------------------------------------------------------------------------------------
// Failover

fn spec(name: &str, in_hz: u32, out_hz: u32) -> ProviderSpec {
    ProviderSpec {
        name: name.into(),
        sample_rate: SampleRate::new(in_hz).unwrap(),
        output_sample_rate: SampleRate::new(out_hz).unwrap(),
        kind: ProviderKind::Echo,
    }
}

/// A native caller (PCM16 8 kHz) admitted to `first` with `fallbacks`; the admission's
/// outputs are checked and drained.
fn admitted_native(t0: Instant, first: ProviderSpec, fallbacks: Vec<ProviderSpec>) -> SessionCore {
    let mut core = SessionCore::new(ClientProtocol::Native, SessionConfig::default(), t0);
    core.handle_input(
        t0,
        Input::ClientText(r#"{"type":"start","codec":"pcm16","sample_rate":8000,"route":"r"}"#),
    );
    drain(&mut core);
    let name = first.name.clone();
    core.handle_input(
        t0,
        Input::Admitted(Admission {
            session_id: Uuid::now_v7(),
            provider: first,
            fallbacks,
        }),
    );
    let (outputs, _) = drain(&mut core);
    assert!(
        matches!(outputs.as_slice(), [Output::StartProvider(s), Output::ToClientText(t)]
            if s.name == name && t.contains("session.started")),
        "{outputs:?}"
    );
    core
}

/// 20 ms of native PCM16 at 8 kHz whose samples all hold `value`.
fn pcm_frame(value: i16) -> Vec<u8> {
    [value; 160].iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Drains the outputs, then fires the replay's timers (each due within 100 ms) until it is
/// out; returns every output and the instant reached.
fn drain_replay(core: &mut SessionCore, mut now: Instant) -> (Vec<Output>, Instant) {
    let mut all = Vec::new();
    loop {
        let (outputs, deadline) = drain(core);
        all.extend(outputs);
        if deadline > now + Duration::from_millis(100) {
            return (all, now);
        }
        now = deadline;
        core.handle_input(now, Input::Timeout);
    }
}

/// The audio frames among `outputs` (their lengths), and whether anything else was there.
fn audio_frames(outputs: &[Output]) -> Vec<usize> {
    outputs
        .iter()
        .map(|o| match o {
            Output::ToProvider(ProviderCommand::Audio(frame)) => frame.len(),
            other => panic!("expected only audio for the provider, got {other:?}"),
        })
        .collect()
}

fn close_outcome(outputs: &[Output]) -> &SessionOutcome {
    match outputs.last() {
        Some(Output::Close(outcome)) => outcome,
        _ => panic!("expected a Close last: {outputs:?}"),
    }
}

/// The whole mid-call failover on the native protocol: the provider drops, the core starts the
/// next one, tells the caller (`provider.switched`, then `clear` for the stale reply), holds
/// the caller's audio while the new provider connects, replays the ring (audio from before the
/// drop and during the connect, oldest first) once it is ready, then streams as before; the
/// record counts the failover, both providers and the gap to the new provider's first answer.
#[test]
fn mid_call_drop_fails_over_replays_and_tells_the_native_caller() {
    let t0 = Instant::now();
    let mut core = admitted_native(
        t0,
        spec("a", 16_000, 16_000),
        vec![spec("b", 16_000, 16_000)],
    );
    core.handle_input(t0, Input::Provider(ProviderEvent::Ready));
    for i in 0..10 {
        core.handle_input(
            t0 + Duration::from_millis(20 * i),
            Input::ClientBinary(&pcm_frame(100 + i as i16)),
        );
    }
    assert_eq!(audio_frames(&drain(&mut core).0), vec![320; 10]);
    core.handle_input(
        t0 + Duration::from_millis(200),
        Input::Provider(ProviderEvent::Transcript {
            text: "hello".into(),
            is_final: true,
        }),
    );
    core.handle_input(
        t0 + Duration::from_millis(200),
        Input::Provider(ProviderEvent::Audio(vec![7; 100])),
    );
    let (outputs, _) = drain(&mut core);
    assert!(
        matches!(outputs.as_slice(), [Output::ToClientText(t)] if t.contains(r#""text":"hello""#)),
        "{outputs:?}"
    );

    // The provider drops mid-call.
    let failed_at = t0 + Duration::from_millis(300);
    core.handle_input(
        failed_at,
        Input::Provider(ProviderEvent::Error {
            message: "connection reset".into(),
            fatal: true,
        }),
    );
    let (outputs, _) = drain(&mut core);
    let [
        Output::StartProvider(next),
        Output::ToClientText(switched),
        Output::ToClientText(clear),
    ] = outputs.as_slice()
    else {
        panic!("expected StartProvider, provider.switched, clear: {outputs:?}");
    };
    assert_eq!(next.name, "b");
    assert_eq!(
        switched,
        r#"{"type":"provider.switched","from":"a","to":"b","reason":"PROVIDER_ERROR"}"#
    );
    assert_eq!(clear, r#"{"type":"clear"}"#);
    assert!(!core.is_ended(), "the caller's session goes on");

    // Caller audio while the new provider connects is held, not sent.
    for i in 0..2 {
        core.handle_input(
            failed_at + Duration::from_millis(20 * i),
            Input::ClientBinary(&pcm_frame(200 + i as i16)),
        );
    }
    let (outputs, _) = drain(&mut core);
    assert!(outputs.is_empty(), "{outputs:?}");

    // Ready: the ring goes out, oldest first (the first frames' values survive resampling
    // well enough to tell the order by their means).
    core.handle_input(
        failed_at + Duration::from_millis(60),
        Input::Provider(ProviderEvent::Ready),
    );
    let (outputs, _) = drain(&mut core);
    assert_eq!(audio_frames(&outputs), vec![320; 12]);
    let means: Vec<i32> = outputs
        .iter()
        .map(|o| match o {
            Output::ToProvider(ProviderCommand::Audio(f)) => {
                f.iter().map(|&s| i32::from(s)).sum::<i32>() / f.len() as i32
            }
            _ => unreachable!(),
        })
        .collect();
    assert!(
        means[5] < means[9] && means[9] < means[11],
        "replayed oldest first: {means:?}"
    );
    // After the replay, audio flows straight through again.
    core.handle_input(
        failed_at + Duration::from_millis(80),
        Input::ClientBinary(&pcm_frame(300)),
    );
    assert_eq!(audio_frames(&drain(&mut core).0), vec![320]);

    // The new provider's first answer closes the gap.
    core.handle_input(
        failed_at + Duration::from_millis(120),
        Input::Provider(ProviderEvent::Transcript {
            text: "again".into(),
            is_final: false,
        }),
    );
    assert_eq!(drain(&mut core).0.len(), 1);
    core.handle_input(
        failed_at + Duration::from_millis(500),
        Input::ClientText(r#"{"type":"stop"}"#),
    );
    let (outputs, _) = drain(&mut core);
    let outcome = close_outcome(&outputs);
    assert_eq!(outcome.reason, SessionCloseReason::ClientHangup);
    assert_eq!(outcome.provider, "b");
    assert_eq!(
        outcome.providers_tried,
        vec!["a".to_owned(), "b".to_owned()]
    );
    assert_eq!(outcome.failovers, 1);
    assert_eq!(outcome.failover_gap_ms, Some(120));
    // Caller audio is counted once, replayed or not: 13 frames.
    assert_eq!(outcome.audio_in_ms, 260);
}

/// Twilio has no event channel: a failover sends it only the `clear`, and still moves on. A
/// next provider at other rates gets rebuilt chains: the replay and new audio at its input
/// rate, and its replies at its output rate come back as Twilio media.
#[test]
fn twilio_fails_over_silently_across_rates() {
    let t0 = Instant::now();
    let mut core = SessionCore::new(ClientProtocol::Twilio, SessionConfig::default(), t0);
    core.handle_input(t0, Input::ClientText(TWILIO_START));
    drain(&mut core);
    core.handle_input(
        t0,
        Input::Admitted(Admission {
            session_id: Uuid::now_v7(),
            provider: spec("stt", 16_000, 16_000),
            fallbacks: vec![spec("s2s", 24_000, 24_000)],
        }),
    );
    drain(&mut core);
    for _ in 0..25 {
        core.handle_input(t0, Input::ClientText(&media(&[0xFF; 160])));
    }
    assert_eq!(audio_frames(&drain(&mut core).0), vec![320; 25]);

    core.handle_input(t0, Input::Provider(ProviderEvent::Closed { error: true }));
    let (outputs, _) = drain(&mut core);
    let [Output::StartProvider(next), Output::ToClientText(clear)] = outputs.as_slice() else {
        panic!("expected StartProvider then clear: {outputs:?}");
    };
    assert_eq!(next.name, "s2s");
    assert!(clear.contains(r#""event":"clear""#), "{clear}");

    core.handle_input(t0, Input::Provider(ProviderEvent::Ready));
    let (outputs, deadline) = drain(&mut core);
    assert_eq!(audio_frames(&outputs).len(), 20, "a first burst at once");
    assert_eq!(
        deadline,
        t0 + Duration::from_millis(10),
        "the next one 10 ms later"
    );
    core.handle_input(t0, Input::ClientText(&media(&[0xFF; 160])));
    assert!(
        drain(&mut core).0.is_empty(),
        "new audio waits behind the replay"
    );
    let (rest, _) = drain_replay(&mut core, t0);
    let replayed: Vec<usize> = audio_frames(&outputs)
        .into_iter()
        .chain(audio_frames(&rest))
        .collect();
    assert!(
        replayed.iter().all(|&n| n == 480) && (24..=26).contains(&replayed.len()),
        "the ring, moved to 24 kHz, and the frame that waited: {replayed:?}"
    );
    core.handle_input(t0, Input::ClientText(&media(&[0xFF; 160])));
    assert_eq!(audio_frames(&drain(&mut core).0), vec![480]);
    // 20 ms at 24 kHz back: one media message of 160 mu-law bytes.
    core.handle_input(
        t0 + Duration::from_millis(40),
        Input::Provider(ProviderEvent::Audio(vec![0; 480])),
    );
    let (outputs, _) = drain(&mut core);
    assert!(
        matches!(outputs.as_slice(), [Output::ToClientText(t)] if t.starts_with(r#"{"event":"media""#)),
        "{outputs:?}"
    );
    core.handle_input(t0 + Duration::from_millis(50), Input::ClientClosed);
    let (outputs, _) = drain(&mut core);
    let outcome = close_outcome(&outputs);
    assert_eq!(outcome.failovers, 1);
    assert_eq!(outcome.failover_gap_ms, Some(40));
    assert_eq!(
        outcome.providers_tried,
        vec!["stt".to_owned(), "s2s".to_owned()]
    );
}

/// The ring holds the last REPLAY_MS only: a long call replays exactly that much, and audio
/// held during a long connect pushes the oldest out rather than growing.
#[test]
fn replay_is_bounded_to_the_last_replay_ms() {
    let t0 = Instant::now();
    let mut core = admitted_native(t0, spec("a", 8_000, 8_000), vec![spec("b", 8_000, 8_000)]);
    let ring_frames = (REPLAY_MS / 20) as usize;
    for _ in 0..(ring_frames + 100) {
        core.handle_input(t0, Input::ClientBinary(&pcm_frame(1)));
    }
    drain(&mut core);
    core.handle_input(t0, Input::Provider(ProviderEvent::Closed { error: true }));
    drain(&mut core);
    for _ in 0..40 {
        core.handle_input(t0, Input::ClientBinary(&pcm_frame(2)));
    }
    assert!(drain(&mut core).0.is_empty());
    core.handle_input(t0, Input::Provider(ProviderEvent::Ready));
    let (outputs, _) = drain_replay(&mut core, t0);
    assert_eq!(audio_frames(&outputs), vec![160; ring_frames]);
    // The newest 40 frames (held during the connect) are the last ones out.
    let tail: Vec<i16> = outputs[ring_frames - 41..]
        .iter()
        .map(|o| match o {
            Output::ToProvider(ProviderCommand::Audio(f)) => f[0],
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(tail[0], 1);
    assert!(tail[1..].iter().all(|&s| s == 2), "{tail:?}");
}

/// A provider refused at connect time (before `Ready`) fails over too: the audio the caller
/// sent while it was connecting is in the ring and reaches the next provider.
#[test]
fn refused_at_connect_fails_over_with_the_early_audio() {
    let t0 = Instant::now();
    let mut core = admitted_native(
        t0,
        spec("a", 16_000, 16_000),
        vec![spec("b", 16_000, 16_000)],
    );
    for _ in 0..3 {
        core.handle_input(t0, Input::ClientBinary(&pcm_frame(5)));
    }
    // Sent to the connecting provider, which queues them; it is then refused.
    assert_eq!(audio_frames(&drain(&mut core).0), vec![320; 3]);
    core.handle_input(
        t0,
        Input::Provider(ProviderEvent::Error {
            message: "401".into(),
            fatal: true,
        }),
    );
    let (outputs, _) = drain(&mut core);
    assert!(matches!(outputs.first(), Some(Output::StartProvider(s)) if s.name == "b"));
    core.handle_input(t0, Input::Provider(ProviderEvent::Ready));
    assert_eq!(audio_frames(&drain(&mut core).0), vec![320; 3]);
}

/// When no provider is left the session ends with PROVIDER_ERROR, as it did before failover,
/// and the record still shows every provider tried and the failovers made.
#[test]
fn no_provider_left_ends_with_provider_error() {
    let t0 = Instant::now();
    let mut core = admitted_native(
        t0,
        spec("a", 16_000, 16_000),
        vec![spec("b", 16_000, 16_000)],
    );
    core.handle_input(t0, Input::Provider(ProviderEvent::Closed { error: true }));
    drain(&mut core);
    core.handle_input(
        t0,
        Input::Provider(ProviderEvent::Error {
            message: "refused".into(),
            fatal: true,
        }),
    );
    let (outputs, _) = drain(&mut core);
    let [
        Output::ToClientText(error),
        Output::ToProvider(ProviderCommand::Finish),
        Output::ToClientText(ended),
        Output::Close(outcome),
    ] = outputs.as_slice()
    else {
        panic!("expected error, Finish, session.ended, Close: {outputs:?}");
    };
    assert!(error.contains(r#""code":"provider_error""#), "{error}");
    assert_eq!(
        ended,
        r#"{"type":"session.ended","reason":"PROVIDER_ERROR"}"#
    );
    assert_eq!(outcome.reason, SessionCloseReason::ProviderError);
    assert_eq!(
        outcome.providers_tried,
        vec!["a".to_owned(), "b".to_owned()]
    );
    assert_eq!(outcome.failovers, 1);
    assert_eq!(
        outcome.failover_gap_ms, None,
        "nobody answered after the failure"
    );
}

/// A provider that ends the conversation normally is not a failure: PROVIDER_CLOSED, no
/// failover even with fallbacks left; a non-fatal error is only reported.
#[test]
fn a_normal_close_or_a_non_fatal_error_does_not_fail_over() {
    let t0 = Instant::now();
    let mut core = admitted_native(
        t0,
        spec("a", 16_000, 16_000),
        vec![spec("b", 16_000, 16_000)],
    );
    core.handle_input(
        t0,
        Input::Provider(ProviderEvent::Error {
            message: "bad frame".into(),
            fatal: false,
        }),
    );
    let (outputs, _) = drain(&mut core);
    assert!(
        matches!(outputs.as_slice(), [Output::ToClientText(t)] if t.contains("provider_error")),
        "{outputs:?}"
    );
    core.handle_input(t0, Input::Provider(ProviderEvent::Closed { error: false }));
    let (outputs, _) = drain(&mut core);
    assert!(
        !outputs
            .iter()
            .any(|o| matches!(o, Output::StartProvider(_)))
    );
    let outcome = close_outcome(&outputs);
    assert_eq!(outcome.reason, SessionCloseReason::ProviderClosed);
    assert_eq!(outcome.failovers, 0);
    assert_eq!(outcome.providers_tried, vec!["a".to_owned()]);
}

// ---------------------------------------------------------------------------------------------
// Metering

/// The usage of one provider segment, for comparisons.
fn usage(provider: &str, audio_in_ms: i64, audio_out_ms: i64) -> ProviderUsage {
    ProviderUsage {
        provider: provider.into(),
        audio_in_ms,
        audio_out_ms,
    }
}

/// A failover splits the session's audio exactly between the providers: caller audio up to
/// the failure is the failed provider's, audio held while the next one connects (and
/// replayed to it) is the next one's and counted once, each provider's replies are its own,
/// and the segments add up to the session's totals.
#[test]
fn a_failover_splits_usage_exactly() {
    let t0 = Instant::now();
    let mut core = admitted_native(
        t0,
        spec("a", 16_000, 16_000),
        vec![spec("b", 16_000, 16_000)],
    );
    core.handle_input(t0, Input::Provider(ProviderEvent::Ready));
    for _ in 0..10 {
        core.handle_input(t0, Input::ClientBinary(&pcm_frame(1)));
    }
    // Two 20 ms frames of reply at 16 kHz.
    core.handle_input(t0, Input::Provider(ProviderEvent::Audio(vec![3; 640])));
    drain(&mut core);

    let failed_at = t0 + Duration::from_millis(200);
    core.handle_input(
        failed_at,
        Input::Provider(ProviderEvent::Closed { error: true }),
    );
    drain(&mut core);
    // Held while b connects, then replayed along with a's last frames.
    for _ in 0..3 {
        core.handle_input(failed_at, Input::ClientBinary(&pcm_frame(2)));
    }
    core.handle_input(failed_at, Input::Provider(ProviderEvent::Ready));
    let (_, now) = drain_replay(&mut core, failed_at);
    for _ in 0..2 {
        core.handle_input(now, Input::ClientBinary(&pcm_frame(3)));
    }
    // Three frames of reply from b.
    core.handle_input(now, Input::Provider(ProviderEvent::Audio(vec![4; 960])));
    drain(&mut core);
    core.handle_input(now, Input::ClientText(r#"{"type":"stop"}"#));
    let (outputs, _) = drain(&mut core);
    let outcome = close_outcome(&outputs);
    assert_eq!(
        outcome.usage,
        vec![usage("a", 200, 40), usage("b", 100, 60)]
    );
    assert_eq!(
        outcome.usage.iter().map(|u| u.audio_in_ms).sum::<i64>(),
        outcome.audio_in_ms
    );
    assert_eq!(
        outcome.usage.iter().map(|u| u.audio_out_ms).sum::<i64>(),
        outcome.audio_out_ms
    );
    assert_eq!((outcome.audio_in_ms, outcome.audio_out_ms), (300, 100));
}

/// Without failover there is one segment, the session's totals; a provider that failed at
/// connect keeps its segment (it was tried) with what was sent to it; a session never admitted
/// has no usage at all.
#[test]
fn usage_has_a_segment_per_provider_tried_and_none_before_admission() {
    let t0 = Instant::now();
    let mut core = admitted_twilio(t0);
    for _ in 0..4 {
        core.handle_input(t0, Input::ClientText(&media(&[0xFF; 160])));
    }
    core.handle_input(
        t0,
        Input::ClientText(
            r#"{"event":"stop","sequenceNumber":"9","stop":{"accountSid":"AC01","callSid":"CA01"},"streamSid":"MZ01"}"#,
        ),
    );
    let (outputs, _) = drain(&mut core);
    assert_eq!(close_outcome(&outputs).usage, vec![usage("echo", 80, 0)]);

    let mut core = admitted_native(
        t0,
        spec("a", 16_000, 16_000),
        vec![spec("b", 16_000, 16_000)],
    );
    core.handle_input(t0, Input::ClientBinary(&pcm_frame(1)));
    core.handle_input(
        t0,
        Input::Provider(ProviderEvent::Error {
            message: "401".into(),
            fatal: true,
        }),
    );
    core.handle_input(t0, Input::Provider(ProviderEvent::Ready));
    core.handle_input(t0, Input::ClientText(r#"{"type":"stop"}"#));
    let (outputs, _) = drain(&mut core);
    assert_eq!(
        close_outcome(&outputs).usage,
        vec![usage("a", 20, 0), usage("b", 0, 0)]
    );

    let mut core = SessionCore::new(ClientProtocol::Native, SessionConfig::default(), t0);
    core.handle_input(
        t0,
        Input::ClientText(r#"{"type":"start","codec":"pcm16","sample_rate":8000}"#),
    );
    core.handle_input(
        t0,
        Input::Refused {
            reason: SessionCloseReason::AuthFailed,
            message: "bad key",
        },
    );
    let (outputs, _) = drain(&mut core);
    assert!(close_outcome(&outputs).usage.is_empty());
}

/// A provider going away (Gemini `goAway`) is reconnected, not failed over: the core starts
/// the same provider again with the resumption handle, sends the caller nothing, holds the
/// caller's audio while the new connection opens and sends exactly that audio (no replay of
/// older frames) once it is ready; the record shows one provider, no failover, one
/// reconnect.
#[test]
fn going_away_reconnects_to_the_same_provider_resuming() {
    let t0 = Instant::now();
    let gemini = ProviderSpec {
        kind: ProviderKind::Gemini(Box::new(GeminiSettings::new(None))),
        ..spec("gemini", 16_000, 24_000)
    };
    let mut core = admitted_native(t0, gemini, vec![spec("b", 16_000, 16_000)]);
    core.handle_input(t0, Input::Provider(ProviderEvent::Ready));
    for _ in 0..5 {
        core.handle_input(t0, Input::ClientBinary(&pcm_frame(1)));
    }
    let (outputs, _) = drain(&mut core);
    assert_eq!(audio_frames(&outputs), [320; 5]);

    let going = ProviderEvent::GoAway {
        resumption_handle: Some("h-1".into()),
    };
    core.handle_input(t0, Input::Provider(going));
    let (outputs, _) = drain(&mut core);
    let [Output::ResumeProvider(resumed)] = outputs.as_slice() else {
        panic!("expected only a new connection, got {outputs:?}");
    };
    assert_eq!(resumed.name, "gemini");
    let ProviderKind::Gemini(settings) = &resumed.kind else {
        panic!("a Gemini spec: {resumed:?}");
    };
    assert_eq!(settings.resumption_handle.as_deref(), Some("h-1"));

    for _ in 0..3 {
        core.handle_input(t0, Input::ClientBinary(&pcm_frame(2)));
    }
    let (outputs, _) = drain(&mut core);
    assert!(
        audio_frames(&outputs).is_empty(),
        "held while connecting: {outputs:?}"
    );
    core.handle_input(t0, Input::Provider(ProviderEvent::Ready));
    let (outputs, now) = drain_replay(&mut core, t0);
    assert_eq!(audio_frames(&outputs), [320; 3], "only the held frames");
    core.handle_input(now, Input::ClientBinary(&pcm_frame(3)));
    let (outputs, _) = drain(&mut core);
    assert_eq!(audio_frames(&outputs), [320], "then straight through");

    core.handle_input(now, Input::ClientText(r#"{"type":"stop"}"#));
    let (outputs, _) = drain(&mut core);
    let outcome = close_outcome(&outputs);
    assert_eq!(outcome.providers_tried, ["gemini"]);
    assert_eq!((outcome.failovers, outcome.reconnects), (0, 1));
    assert_eq!(outcome.audio_in_ms, 180);
}

/// The providers of a session carry its id where their protocol has a place for it:
/// Deepgram's `tag`, ElevenLabs' `user_id` (the fallbacks too); others are unchanged.
#[test]
fn providers_are_labelled_with_the_session_id() {
    use crate::provider::deepgram::DeepgramSettings;
    use crate::provider::elevenlabs::ElevenLabsSettings;
    let t0 = Instant::now();
    let deepgram = ProviderSpec {
        kind: ProviderKind::Deepgram(Box::new(DeepgramSettings::new(None))),
        ..spec("deepgram", 16_000, 16_000)
    };
    let elevenlabs = ProviderSpec {
        kind: ProviderKind::ElevenLabs(Box::new(ElevenLabsSettings::new("agent"))),
        ..spec("elevenlabs", 16_000, 16_000)
    };
    let mut core = SessionCore::new(ClientProtocol::Native, SessionConfig::default(), t0);
    core.handle_input(
        t0,
        Input::ClientText(r#"{"type":"start","codec":"pcm16","sample_rate":8000}"#),
    );
    drain(&mut core);
    let session_id = Uuid::now_v7();
    core.handle_input(
        t0,
        Input::Admitted(Admission {
            session_id,
            provider: deepgram,
            fallbacks: vec![elevenlabs],
        }),
    );
    let (outputs, _) = drain(&mut core);
    let Some(Output::StartProvider(first)) = outputs.first() else {
        panic!("{outputs:?}");
    };
    let ProviderKind::Deepgram(settings) = &first.kind else {
        panic!("{first:?}");
    };
    assert_eq!(settings.tag, Some(session_id.to_string()));
    core.handle_input(t0, Input::Provider(ProviderEvent::Closed { error: true }));
    let (outputs, _) = drain(&mut core);
    let next = outputs
        .iter()
        .find_map(|o| match o {
            Output::StartProvider(spec) => Some(spec),
            _ => None,
        })
        .expect("the fallback starts");
    let ProviderKind::ElevenLabs(settings) = &next.kind else {
        panic!("{next:?}");
    };
    assert_eq!(settings.user_id, Some(session_id.to_string()));
}

/// The JSON texts among `outputs`.
fn client_events(outputs: &[Output]) -> Vec<serde_json::Value> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::ToClientText(text) => Some(serde_json::from_str(text).expect("JSON")),
            _ => None,
        })
        .collect()
}

/// An OpenAI Realtime session: authorised at once (no `start`), an update before admission
/// answered right after `session.created`, a 100 ms append cut into five 20 ms provider
/// frames, a binary frame refused with an `error`, provider audio back as deltas inside a
/// response, the reply's end and barge-in as OpenAI events, a failover announced with
/// `voxroute.provider_switched`, and the end as `voxroute.session_ended`.
#[test]
fn realtime_session_speaks_openai_events() {
    let t0 = Instant::now();
    let mut core = SessionCore::new(ClientProtocol::Realtime, SessionConfig::default(), t0);
    let (outputs, _) = drain(&mut core);
    match outputs.as_slice() {
        [Output::Authorize(request)] => {
            assert_eq!(request.api_key, None);
            assert_eq!(request.target, RouteTarget::Default);
            assert_eq!(request.format.sample_rate, SampleRate::HZ_24000);
        }
        other => panic!("expected one Authorize, got {other:?}"),
    }
    core.handle_input(
        t0,
        Input::ClientText(r#"{"type":"session.update","session":{"audio":{"input":{"format":{"type":"audio/pcmu"}}}}}"#),
    );
    assert!(client_events(&drain(&mut core).0).is_empty());
    let session_id = Uuid::now_v7();
    let mut fallback = echo_spec();
    fallback.name = "echo-b".into();
    core.handle_input(
        t0,
        Input::Admitted(Admission {
            session_id,
            provider: echo_spec(),
            fallbacks: vec![fallback],
        }),
    );
    let (outputs, _) = drain(&mut core);
    let events = client_events(&outputs);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["session.created", "session.updated"]);
    assert_eq!(events[0]["session"]["id"], session_id.to_string());
    assert_eq!(
        events[1]["session"]["audio"]["input"]["format"]["type"],
        "audio/pcmu"
    );

    // 100 ms of mu-law: five 20 ms frames at the provider's 16 kHz.
    let b64 = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 800]);
    let append = format!(r#"{{"type":"input_audio_buffer.append","audio":"{b64}"}}"#);
    core.handle_input(t0, Input::ClientText(&append));
    let (outputs, _) = drain(&mut core);
    let frames: Vec<usize> = outputs
        .iter()
        .map(|o| match o {
            Output::ToProvider(ProviderCommand::Audio(frame)) => frame.len(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(frames, vec![320; 5]);
    core.handle_input(t0, Input::ClientBinary(&[0; 10]));
    let events = client_events(&drain(&mut core).0);
    assert_eq!(events[0]["error"]["code"], "binary_frame");

    // 40 ms of provider audio: a response with two 20 ms mu-law deltas; then its end.
    core.handle_input(t0, Input::Provider(ProviderEvent::Audio(vec![0; 640])));
    core.handle_input(
        t0,
        Input::Provider(ProviderEvent::ReplyTranscript {
            text: "Hi.".into(),
            is_final: true,
        }),
    );
    core.handle_input(t0, Input::Provider(ProviderEvent::ReplyDone));
    let events = client_events(&drain(&mut core).0);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.output_audio.delta",
            "response.output_audio.delta",
            "response.output_audio_transcript.delta",
            "response.output_audio_transcript.done",
            "response.output_audio.done",
            "response.done",
        ]
    );
    let delta = base64::engine::general_purpose::STANDARD
        .decode(events[1]["delta"].as_str().unwrap())
        .unwrap();
    assert_eq!(delta.len(), 160);

    // Barge-in mid-reply, the caller's words, and a failover.
    core.handle_input(t0, Input::Provider(ProviderEvent::Audio(vec![0; 320])));
    core.handle_input(t0, Input::Provider(ProviderEvent::SpeechStarted));
    core.handle_input(t0, Input::Provider(ProviderEvent::SpeechStopped));
    core.handle_input(
        t0,
        Input::Provider(ProviderEvent::Transcript {
            text: "wait".into(),
            is_final: true,
        }),
    );
    core.handle_input(t0, Input::Provider(ProviderEvent::Closed { error: true }));
    let (outputs, _) = drain(&mut core);
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, Output::StartProvider(spec) if spec.name == "echo-b"))
    );
    let events = client_events(&outputs);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.output_audio.delta",
            "response.output_audio.done",
            "response.done",
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "conversation.item.input_audio_transcription.completed",
            "voxroute.provider_switched",
        ]
    );
    assert_eq!(events[3]["response"]["status"], "cancelled");
    assert_eq!(events[7]["to"], "echo-b");

    core.handle_input(t0, Input::ClientClosed);
    let (outputs, _) = drain(&mut core);
    let events = client_events(&outputs);
    assert_eq!(events.last().unwrap()["reason"], "CLIENT_HANGUP");
    assert!(matches!(outputs.last(), Some(Output::Close(outcome)) if outcome.failovers == 1));
}
