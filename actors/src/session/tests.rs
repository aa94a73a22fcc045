//! Unit tests of [`SessionCore`] through its sans-IO interface: synthetic time, no sockets.

use std::time::{Duration, Instant};

use base64::Engine as _;
use uuid::Uuid;
use voxroute_codecs::SampleRate;

use super::*;
use crate::close_reason::SessionCloseReason;
use crate::protocol::RouteTarget;
use crate::provider::{ProviderCommand, ProviderEvent, ProviderKind, ProviderSpec};

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
