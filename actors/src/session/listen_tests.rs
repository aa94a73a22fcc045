//! Unit tests of [`SessionCore`] speaking [`ClientProtocol::Listen`] (Deepgram-compatible live
//! transcription): synthetic time, no sockets.

use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;
use voxroute_codecs::{AudioFormat, SampleRate};

use super::*;
use crate::close_reason::SessionCloseReason;
use crate::protocol::RouteTarget;
use crate::protocol::listen::ListenOptions;
use crate::provider::deepgram::DeepgramSettings;
use crate::provider::gemini::GeminiSettings;
use crate::provider::openai::{DEFAULT_TRANSCRIPTION_MODEL, OpenAiSettings};
use crate::provider::{ProviderCommand, ProviderEvent, ProviderKind, ProviderSpec};

const SESSION_ID: Uuid = Uuid::from_u128(0x0190_b5e4_8f1c_7a3e_9d2b_5c4f_6e7a_8b9c);

fn spec(name: &str, kind: ProviderKind) -> ProviderSpec {
    ProviderSpec {
        name: name.into(),
        sample_rate: SampleRate::HZ_16000,
        output_sample_rate: SampleRate::HZ_16000,
        kind,
    }
}

fn deepgram() -> ProviderSpec {
    spec(
        "deepgram",
        ProviderKind::Deepgram(Box::new(DeepgramSettings::new(None))),
    )
}

fn drain(core: &mut SessionCore) -> (Vec<Output>, Instant) {
    let mut outputs = Vec::new();
    loop {
        match core.poll_output() {
            Output::Timeout(at) => return (outputs, at),
            output => outputs.push(output),
        }
    }
}

fn texts(outputs: &[Output]) -> Vec<Value> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::ToClientText(text) => Some(serde_json::from_str(text).unwrap()),
            _ => None,
        })
        .collect()
}

fn audio_frames(outputs: &[Output]) -> usize {
    outputs
        .iter()
        .filter(|o| matches!(o, Output::ToProvider(ProviderCommand::Audio(_))))
        .count()
}

/// A listen session (linear16 at 8 kHz) started from the query and admitted to `provider`
/// with `fallbacks`; returns the core and the `StartProvider` spec.
fn admitted(
    t0: Instant,
    interim_results: bool,
    provider: ProviderSpec,
    fallbacks: Vec<ProviderSpec>,
) -> (SessionCore, ProviderSpec) {
    let format = AudioFormat::pcm16_mono(SampleRate::HZ_8000);
    let mut core = SessionCore::new(
        ClientProtocol::Listen(ListenOptions {
            format,
            interim_results,
        }),
        SessionConfig::default(),
        t0,
    );
    core.handle_input(
        t0,
        Input::ClientStart(AuthorizeRequest {
            api_key: None,
            target: RouteTarget::Provider(provider.name.clone()),
            format,
        }),
    );
    let (outputs, _) = drain(&mut core);
    assert!(matches!(outputs.as_slice(), [Output::Authorize(r)] if r.format == format));
    core.handle_input(
        t0,
        Input::Admitted(Admission {
            session_id: SESSION_ID,
            provider,
            fallbacks,
        }),
    );
    let (outputs, _) = drain(&mut core);
    let [Output::StartProvider(started)] = outputs.as_slice() else {
        panic!("expected StartProvider only (no event to a Deepgram client), got {outputs:?}");
    };
    (core, started.clone())
}

/// Audio of any length is re-framed to 20 ms; transcripts become `Results` (interim ones
/// only when asked for); provider audio is dropped; `CloseStream` lets the provider finish,
/// then `Metadata` and a clean end.
#[test]
fn listen_transcribes_and_closes_the_stream() {
    let t0 = Instant::now();
    let (mut core, _) = admitted(t0, false, deepgram(), Vec::new());
    // 250 ms of audio in one message: 12 whole frames, 10 ms waiting for the next.
    core.handle_input(t0, Input::ClientBinary(&[0; 4_000]));
    assert_eq!(audio_frames(&drain(&mut core).0), 12);
    core.handle_input(t0, Input::ClientBinary(&[0; 160]));
    assert_eq!(audio_frames(&drain(&mut core).0), 1);

    let at = t0 + Duration::from_millis(300);
    for (text, is_final) in [("hel", false), ("hello", true)] {
        core.handle_input(
            at,
            Input::Provider(ProviderEvent::Transcript {
                text: text.into(),
                is_final,
            }),
        );
    }
    core.handle_input(at, Input::Provider(ProviderEvent::Audio(vec![0; 320])));
    let results = texts(&drain(&mut core).0);
    assert_eq!(results.len(), 1, "the interim and the audio are dropped");
    assert_eq!(results[0]["type"], "Results");
    assert_eq!(
        results[0]["channel"]["alternatives"][0]["transcript"],
        "hello"
    );
    assert_eq!(results[0]["duration"], 0.26);
    assert_eq!(results[0]["metadata"]["request_id"], SESSION_ID.to_string());

    core.handle_input(at, Input::ClientText(r#"{"type":"CloseStream"}"#));
    let (outputs, deadline) = drain(&mut core);
    assert!(matches!(
        outputs.as_slice(),
        [Output::ToProvider(ProviderCommand::Finish)]
    ));
    assert_eq!(deadline, at + CLOSE_STREAM_FLUSH_TIMEOUT);
    // Audio after CloseStream is not taken; the provider's last result still goes out.
    core.handle_input(at, Input::ClientBinary(&[0; 320]));
    assert_eq!(audio_frames(&drain(&mut core).0), 0);
    core.handle_input(
        at,
        Input::Provider(ProviderEvent::Transcript {
            text: "last".into(),
            is_final: true,
        }),
    );
    assert_eq!(texts(&drain(&mut core).0).len(), 1);
    core.handle_input(at, Input::Provider(ProviderEvent::Closed { error: false }));
    let (outputs, _) = drain(&mut core);
    let [Output::ToClientText(metadata), Output::Close(outcome)] = outputs.as_slice() else {
        panic!("expected Metadata then Close (no second Finish), got {outputs:?}");
    };
    let metadata: Value = serde_json::from_str(metadata).unwrap();
    assert_eq!(metadata["type"], "Metadata");
    assert_eq!(metadata["duration"], 0.26);
    assert_eq!(outcome.reason, SessionCloseReason::ClientHangup);
    assert_eq!(outcome.audio_in_ms, 260);
    assert_eq!(outcome.dropped_payloads, 1);
}

/// A provider that does not close after `CloseStream` is not waited for forever.
#[test]
fn close_stream_ends_at_the_flush_timeout() {
    let t0 = Instant::now();
    let (mut core, _) = admitted(t0, true, deepgram(), Vec::new());
    core.handle_input(t0, Input::ClientText(r#"{"type":"CloseStream"}"#));
    let (_, deadline) = drain(&mut core);
    core.handle_input(deadline, Input::Timeout);
    let (outputs, _) = drain(&mut core);
    assert!(
        matches!(outputs.as_slice(), [Output::ToClientText(t), Output::Close(o)]
            if t.contains(r#""type":"Metadata""#) && o.reason == SessionCloseReason::ClientHangup),
        "{outputs:?}"
    );
}

/// `KeepAlive` holds an idle stream open as audio does; without either the stream ends after
/// [`LISTEN_IDLE_TIMEOUT`]. `Finalize` asks the provider to flush (and is no activity).
#[test]
fn keepalive_holds_the_idle_timer() {
    let t0 = Instant::now();
    let (mut core, _) = admitted(t0, false, deepgram(), Vec::new());
    let (_, deadline) = drain(&mut core);
    assert_eq!(deadline, t0 + LISTEN_IDLE_TIMEOUT);
    let t9 = t0 + Duration::from_secs(9);
    core.handle_input(t9, Input::ClientText(r#"{"type":"KeepAlive"}"#));
    core.handle_input(t9, Input::ClientText(r#"{"type":"Finalize","channel":0}"#));
    let (outputs, deadline) = drain(&mut core);
    assert!(
        matches!(
            outputs.as_slice(),
            [Output::ToProvider(ProviderCommand::Flush)]
        ),
        "{outputs:?}"
    );
    assert_eq!(deadline, t9 + LISTEN_IDLE_TIMEOUT);
    core.handle_input(deadline, Input::Timeout);
    let (outputs, _) = drain(&mut core);
    assert!(
        matches!(outputs.as_slice(), [Output::ToProvider(ProviderCommand::Finish), Output::Close(o)]
            if o.reason == SessionCloseReason::IdleTimeout),
        "{outputs:?}"
    );
}

/// A malformed text frame ends the stream (`CLIENT_ERROR`, Deepgram's `DATA-0000`); an
/// unknown type and bad audio are skipped and counted.
#[test]
fn bad_frames_are_skipped_or_end_the_stream() {
    let t0 = Instant::now();
    let (mut core, _) = admitted(t0, false, deepgram(), Vec::new());
    core.handle_input(t0, Input::ClientText(r#"{"type":"Configure"}"#));
    core.handle_input(t0, Input::ClientBinary(&[]));
    core.handle_input(t0, Input::ClientBinary(&[0; 8_002]));
    // Odd-length PCM16 is not bad input: Deepgram reads a byte stream (the odd byte waits
    // for the next message).
    core.handle_input(t0, Input::ClientBinary(&[0; 3]));
    let (outputs, _) = drain(&mut core);
    assert!(
        outputs.is_empty(),
        "no reply on a Deepgram stream: {outputs:?}"
    );
    core.handle_input(t0, Input::ClientText("{not json"));
    let (outputs, _) = drain(&mut core);
    let [
        Output::ToProvider(ProviderCommand::Finish),
        Output::Close(outcome),
    ] = outputs.as_slice()
    else {
        panic!("expected the end, got {outputs:?}");
    };
    assert_eq!(outcome.reason, SessionCloseReason::ClientError);
    assert_eq!(outcome.bad_frames, 4);
}

/// `CloseStream` before admission ends at once, without `Metadata` (there is no session yet).
#[test]
fn close_stream_before_admission_ends_at_once() {
    let t0 = Instant::now();
    let format = AudioFormat::pcm16_mono(SampleRate::HZ_16000);
    let options = ListenOptions {
        format,
        interim_results: false,
    };
    let mut core = SessionCore::new(
        ClientProtocol::Listen(options),
        SessionConfig::default(),
        t0,
    );
    core.handle_input(t0, Input::ClientText(r#"{"type":"CloseStream"}"#));
    let (outputs, _) = drain(&mut core);
    assert!(
        matches!(outputs.as_slice(), [Output::Close(o)] if o.reason == SessionCloseReason::ClientHangup),
        "{outputs:?}"
    );
}

/// Gemini is set up to transcribe the caller only; a fallback that cannot transcribe is
/// dropped; a failover keeps the stream (no event to the client) and the next provider's
/// transcripts keep coming as `Results`.
#[test]
fn providers_are_set_up_for_transcription_and_fail_over() {
    let t0 = Instant::now();
    let gemini = spec(
        "gemini",
        ProviderKind::Gemini(Box::new(GeminiSettings::new(None))),
    );
    let echo = spec("echo", ProviderKind::Echo);
    let (mut core, started) = admitted(t0, true, deepgram(), vec![echo, gemini]);
    assert_eq!(started.name, "deepgram");
    core.handle_input(t0, Input::ClientBinary(&[0; 1_600]));
    drain(&mut core);
    core.handle_input(t0, Input::Provider(ProviderEvent::Closed { error: true }));
    let (outputs, _) = drain(&mut core);
    let [Output::StartProvider(next)] = outputs.as_slice() else {
        panic!("expected the failover to Gemini only, got {outputs:?}");
    };
    let ProviderKind::Gemini(settings) = &next.kind else {
        panic!("echo was dropped from the fallbacks: {next:?}");
    };
    assert!(settings.transcribe_input && !settings.transcribe_output);
    core.handle_input(t0, Input::Provider(ProviderEvent::Ready));
    assert_eq!(audio_frames(&drain(&mut core).0), 5, "the replay");
    core.handle_input(
        t0,
        Input::Provider(ProviderEvent::Transcript {
            text: "audio".into(),
            is_final: false,
        }),
    );
    let results = texts(&drain(&mut core).0);
    assert_eq!(results[0]["metadata"]["model_info"]["name"], "gemini");
    assert_eq!(results[0]["is_final"], false);
}

/// OpenAI Realtime transcribes for `/v1/listen` without answering: input transcription on
/// (its default model when the configuration turned it off), no responses; the settings of
/// a speech-to-speech session are left alone.
#[test]
fn openai_transcribes_without_answering() {
    let configured = OpenAiSettings {
        transcription_model: None,
        ..OpenAiSettings::default()
    };
    let openai = spec("openai", ProviderKind::OpenAi(Box::new(configured)));
    let listening = openai.for_transcription().expect("OpenAI can transcribe");
    let ProviderKind::OpenAi(settings) = &listening.kind else {
        panic!("still OpenAI: {listening:?}");
    };
    assert!(!settings.reply);
    assert_eq!(
        settings.transcription_model.as_deref(),
        Some(DEFAULT_TRANSCRIPTION_MODEL)
    );
    let ProviderKind::OpenAi(original) = &openai.kind else {
        unreachable!()
    };
    assert!(original.reply && original.transcription_model.is_none());
    assert!(
        spec("echo", ProviderKind::Echo)
            .for_transcription()
            .is_none()
    );
}

/// `CloseStream` while the next provider connects (a failover): `Finish` waits until that
/// provider has had the audio held for it, so the held audio is transcribed too; a Gemini
/// `goAway` while finishing opens no new connection.
#[test]
fn close_stream_during_failover_finishes_after_the_replay() {
    let t0 = Instant::now();
    let gemini = spec(
        "gemini",
        ProviderKind::Gemini(Box::new(GeminiSettings::new(None))),
    );
    let (mut core, _) = admitted(t0, false, deepgram(), vec![gemini]);
    core.handle_input(t0, Input::ClientBinary(&[0; 1_600]));
    assert_eq!(audio_frames(&drain(&mut core).0), 5);
    core.handle_input(t0, Input::Provider(ProviderEvent::Closed { error: true }));
    let (outputs, _) = drain(&mut core);
    assert!(
        matches!(outputs.as_slice(), [Output::StartProvider(next)] if next.name == "gemini"),
        "{outputs:?}"
    );
    core.handle_input(t0, Input::ClientText(r#"{"type":"CloseStream"}"#));
    let (outputs, _) = drain(&mut core);
    assert!(
        outputs.is_empty(),
        "no Finish to a provider still connecting: {outputs:?}"
    );

    core.handle_input(t0, Input::Provider(ProviderEvent::Ready));
    assert_audio_then_finish(&drain(&mut core).0, 5);

    core.handle_input(
        t0,
        Input::Provider(ProviderEvent::GoAway {
            resumption_handle: Some("h".into()),
        }),
    );
    assert!(
        drain(&mut core).0.is_empty(),
        "no resumption while finishing"
    );
    core.handle_input(t0, Input::Provider(ProviderEvent::Closed { error: false }));
    let (outputs, _) = drain(&mut core);
    let texts = texts(&outputs);
    assert_eq!(texts.last().unwrap()["type"], "Metadata", "{texts:?}");
    assert!(
        matches!(outputs.last(), Some(Output::Close(o)) if o.reason == SessionCloseReason::ClientHangup),
        "{outputs:?}"
    );
}

/// `CloseStream` while the key is checked: once admitted, the audio held for admission goes
/// to the provider, then `Finish`; nothing is discarded.
#[test]
fn close_stream_during_admission_sends_the_held_audio_first() {
    let t0 = Instant::now();
    let format = AudioFormat::pcm16_mono(SampleRate::HZ_8000);
    let mut core = SessionCore::new(
        ClientProtocol::Listen(ListenOptions {
            format,
            interim_results: false,
        }),
        SessionConfig::default(),
        t0,
    );
    core.handle_input(
        t0,
        Input::ClientStart(AuthorizeRequest {
            api_key: None,
            target: RouteTarget::Provider("deepgram".into()),
            format,
        }),
    );
    drain(&mut core);
    core.handle_input(t0, Input::ClientBinary(&[0; 1_600]));
    core.handle_input(t0, Input::ClientText(r#"{"type":"CloseStream"}"#));
    assert!(
        drain(&mut core).0.is_empty(),
        "nothing ends before admission"
    );
    core.handle_input(
        t0,
        Input::Admitted(Admission {
            session_id: SESSION_ID,
            provider: deepgram(),
            fallbacks: Vec::new(),
        }),
    );
    let (outputs, _) = drain(&mut core);
    assert!(
        matches!(outputs.first(), Some(Output::StartProvider(_))),
        "{outputs:?}"
    );
    assert_audio_then_finish(&outputs, 5);
}

/// `outputs` send `frames` audio frames to the provider, then `Finish`.
fn assert_audio_then_finish(outputs: &[Output], frames: usize) {
    assert_eq!(audio_frames(outputs), frames, "{outputs:?}");
    assert!(
        matches!(
            outputs.last(),
            Some(Output::ToProvider(ProviderCommand::Finish))
        ),
        "Finish after the audio: {outputs:?}"
    );
}
