//! Mid-call failover through a running router, against the stand-in providers
//! (`voxroute_loadtest::standin`, hosted in this process, one instance per provider so that
//! one can fail while the other stays healthy).
//!
//! What they prove:
//!
//! - a **Twilio** call on a route `deepgram → openai` survives the stand-in killing the
//!   Deepgram connection 1.5 s into the call, by a close frame (1011) and by a TCP reset: the
//!   caller's socket stays open, reply audio flows from OpenAI within 500 ms of the drop
//!   (measured at the caller against the drop instant the stand-in reports, one clock), no
//!   speech is lost (the second provider received the whole call, thanks to the replay), and
//!   the record has `failovers = 1`, `providers_tried = [deepgram, openai]` and
//!   `CLIENT_HANGUP` after the hang-up;
//! - on a speech-to-speech route (two OpenAI stand-ins) the caller hears the second provider
//!   within 500 ms of the first one's last audio;
//! - a **native** caller on a route of two Deepgram stand-ins keeps getting transcripts across
//!   the drop, is told with `provider.switched`, and the gap from the last transcript of the
//!   first provider to the first of the second is under 500 ms;
//! - a first provider that **refuses the key** fails over at connect time;
//! - a route whose providers **all fail** ends with `PROVIDER_ERROR`.
//!
//! Gaps are printed (`cargo test ... -- --nocapture` shows them).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use voxroute::store::SessionRow;
use voxroute_loadtest::standin::{FailMode, Knobs, Provider, Stats};

use crate::harness::{
    Conn, NATIVE, NativeCaller, RouterOptions, Setup, TestDb, TwilioCaller, WAIT, mulaw,
    pcm16_bytes, speech_8k, standin_with,
};

/// When the failing stand-in kills its connection, after the upgrade, in seconds.
const FAIL_AFTER_SECS: f64 = 1.5;

/// The failover target: audio (or transcripts) again within this of the drop.
const MAX_GAP: Duration = Duration::from_millis(500);

/// How often the streaming loop looks at what has arrived (the gaps' resolution).
const SAMPLE_EVERY: Duration = Duration::from_millis(2);

/// Knobs that kill every connection `FAIL_AFTER_SECS` after its upgrade, the `mode` way.
fn failing(mode: FailMode, after_secs: f64) -> Knobs {
    Knobs {
        fail_after_secs: Some(after_secs),
        fail_mode: mode,
        ..Knobs::default()
    }
}

/// A router on SQLite with `config`, Deepgram at `deepgram` and OpenAI at `openai`, keys set.
async fn router(config: &str, deepgram: SocketAddr, openai: SocketAddr) -> Setup {
    let env = vec![
        ("VOXROUTE_DEEPGRAM_URL".into(), format!("ws://{deepgram}")),
        ("DEEPGRAM_API_KEY".into(), "test".into()),
        ("VOXROUTE_OPENAI_URL".into(), format!("ws://{openai}")),
        ("OPENAI_API_KEY".into(), "test".into()),
    ];
    let options = RouterOptions {
        config: Some(config.to_owned()),
        env,
        ..RouterOptions::default()
    };
    Setup::new(TestDb::sqlite(), options).await
}

/// A caller of either protocol, for the streaming loop.
enum Caller {
    Twilio(TwilioCaller),
    Native(NativeCaller),
}

impl Caller {
    fn conn(&self) -> &Conn {
        match self {
            Caller::Twilio(caller) => &caller.conn,
            Caller::Native(caller) => &caller.conn,
        }
    }

    /// Sends 20 ms of 8 kHz speech in the caller's format.
    async fn send(&mut self, pcm: &[i16]) {
        match self {
            Caller::Twilio(caller) => caller.media(&mulaw(pcm)).await,
            Caller::Native(caller) => caller.conn.binary(pcm16_bytes(pcm)).await,
        }
    }
}

/// What had arrived at the caller, and when: one sample every [`SAMPLE_EVERY`] while
/// streaming, plus the instant the failing stand-in reported its connection ended.
#[derive(Debug, Default)]
struct Timeline {
    /// (when, audio bytes received so far, events received so far).
    samples: Vec<(Instant, usize, usize)>,
    /// When the failing stand-in's connection ended (its `connections_ended` went up).
    dropped_at: Option<Instant>,
}

impl Timeline {
    /// When the audio first grew after `after`.
    fn first_audio_after(&self, after: Instant) -> Option<Instant> {
        let base = self
            .samples
            .iter()
            .take_while(|(at, ..)| *at <= after)
            .last()
            .map_or(0, |s| s.1);
        self.samples
            .iter()
            .find(|(at, audio, _)| *at > after && *audio > base)
            .map(|s| s.0)
    }

    /// When the audio last grew at or before `at`.
    fn last_audio_until(&self, at: Instant) -> Option<Instant> {
        self.samples
            .windows(2)
            .rfind(|w| w[1].0 <= at && w[1].1 > w[0].1)
            .map(|w| w[1].0)
    }

    /// When the event at `index` (in the final event list) had arrived.
    fn event_arrived(&self, index: usize) -> Option<Instant> {
        self.samples
            .iter()
            .find(|(_, _, events)| *events > index)
            .map(|s| s.0)
    }
}

/// Streams `speech` in real time (one 20 ms frame every 20 ms), sampling the caller's inbox and
/// the failing stand-in's counters between frames, then keeps sampling for `tail`.
async fn stream_watching(
    caller: &mut Caller,
    speech: &[i16],
    failing: &Stats,
    failing_provider: Provider,
    tail: Duration,
) -> Timeline {
    let mut timeline = Timeline::default();
    let start = Instant::now();
    let frames = speech.chunks(160).count();
    let sample = |caller: &Caller, timeline: &mut Timeline| {
        let now = Instant::now();
        let (audio, events) = caller.conn().inbox(|i| (i.audio.len(), i.events.len()));
        timeline.samples.push((now, audio, events));
        if timeline.dropped_at.is_none() && failing.provider(failing_provider).connections_ended > 0
        {
            timeline.dropped_at = Some(now);
        }
    };
    for (i, frame) in speech.chunks(160).enumerate() {
        caller.send(frame).await;
        let next = start + Duration::from_millis(20 * (i as u64 + 1));
        loop {
            sample(caller, &mut timeline);
            if Instant::now() >= next {
                break;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }
    let end = start + Duration::from_millis(20 * frames as u64) + tail;
    while Instant::now() < end {
        sample(caller, &mut timeline);
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    timeline
}

/// The gap the router itself measured (`gap_ms=N` in its log), if it logged one.
fn router_gap_ms(setup: &Setup) -> Option<u64> {
    let log = setup.router.stderr_text();
    log.lines()
        .filter(|line| line.contains("failover: the new provider answers"))
        .find_map(|line| {
            let rest = &line[line.find("gap_ms=")? + "gap_ms=".len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

/// The one ended record of `key_id`.
async fn the_record(setup: &Setup, key_id: uuid::Uuid) -> SessionRow {
    setup
        .ended_for_key(key_id, 1)
        .await
        .pop()
        .expect("one record")
}

fn mode_name(mode: FailMode) -> &'static str {
    match mode {
        FailMode::Close => "close 1011",
        FailMode::Drop => "TCP reset",
    }
}

/// Proves the "done when" for both ways a provider dies: a Twilio call routed
/// `deepgram → openai` survives the Deepgram stand-in killing the connection 1.5 s in; the
/// caller's socket never closes, OpenAI's audio reaches the caller within 500 ms of the drop
/// (the drop instant is the stand-in's, the arrival the caller's, one clock), OpenAI received
/// the whole call (the replay covered what Deepgram had heard), and the record shows the
/// failover, both providers and `CLIENT_HANGUP`.
#[tokio::test]
async fn twilio_call_survives_the_first_provider_dying_mid_call() {
    for mode in [FailMode::Close, FailMode::Drop] {
        let what = mode_name(mode);
        let (deepgram, deepgram_stats) = standin_with(failing(mode, FAIL_AFTER_SECS)).await;
        let (openai, openai_stats) = standin_with(Knobs::default()).await;
        let config = "[routes.stt-then-s2s]\nproviders = [\"deepgram\", \"openai\"]\n";
        let setup = router(config, deepgram, openai).await;
        let (key_id, key) = setup.key("failover", None).await;

        let mut twilio = TwilioCaller::connect(&setup.router.ws_url(crate::harness::TWILIO), None)
            .await
            .expect("the Twilio upgrade succeeds");
        twilio
            .start(&[("api_key", key.as_str()), ("route", "stt-then-s2s")])
            .await;
        let mut caller = Caller::Twilio(twilio);
        // The whole speech fixture: 3.4 s.
        let speech = speech_8k(4.0);
        let timeline = stream_watching(
            &mut caller,
            &speech,
            &deepgram_stats,
            Provider::Deepgram,
            Duration::from_millis(500),
        )
        .await;

        let dropped_at = timeline
            .dropped_at
            .unwrap_or_else(|| panic!("{what}: the Deepgram stand-in never dropped"));
        let resumed_at = timeline
            .first_audio_after(dropped_at)
            .unwrap_or_else(|| panic!("{what}: no audio after the drop"));
        let gap = resumed_at - dropped_at;
        println!(
            "failover gap ({what}, twilio deepgram → openai): {} ms from the drop to the first \
             openai audio at the caller; the router measured {:?} ms from detecting the failure",
            gap.as_millis(),
            router_gap_ms(&setup)
        );
        assert!(gap < MAX_GAP, "{what}: gap {gap:?}");
        assert!(
            caller
                .conn()
                .inbox(|i| i.closed.is_none() && i.ended.is_none()),
            "{what}: the caller's socket stayed open"
        );
        // Audio kept flowing: the echo of everything from the drop on, at least.
        let after_drop = caller.conn().audio_len()
            - timeline
                .samples
                .iter()
                .take_while(|s| s.0 <= dropped_at)
                .last()
                .map_or(0, |s| s.1);
        assert!(
            after_drop >= 8 * 2_000,
            "{what}: {after_drop} bytes of audio after the drop"
        );
        // No speech lost: OpenAI heard the whole call (the replay covered Deepgram's part).
        let heard_ms = openai_stats.provider(Provider::OpenAi).audio_received_ms;
        let sent_ms = speech.len() as u64 / 8;
        assert!(
            heard_ms + 40 >= sent_ms,
            "{what}: openai received {heard_ms} ms of the {sent_ms} ms sent"
        );

        let Caller::Twilio(mut twilio) = caller else {
            unreachable!()
        };
        let closed = twilio.hang_up().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (1000, "CLIENT_HANGUP"),
            "{what}"
        );
        let row = the_record(&setup, key_id).await;
        assert_eq!(row.close_reason.as_deref(), Some("CLIENT_HANGUP"), "{what}");
        assert_eq!(row.failovers, 1, "{what}: {row:#?}");
        assert_eq!(row.providers_tried, ["deepgram", "openai"], "{what}");
        assert_eq!(row.provider, "openai", "{what}");
        assert_eq!(row.route.as_deref(), Some("stt-then-s2s"), "{what}");
    }
}

/// Proves the gap as a caller hears it on a speech-to-speech route (two OpenAI stand-ins, the
/// first killed 1.5 s in, both ways): from the last audio of the first provider to the first
/// audio of the second, at the Twilio caller, under 500 ms; the call goes on and is recorded
/// with the failover.
#[tokio::test]
async fn twilio_speech_to_speech_gap_is_under_500_ms() {
    for mode in [FailMode::Close, FailMode::Drop] {
        let what = mode_name(mode);
        let (first, first_stats) = standin_with(failing(mode, FAIL_AFTER_SECS)).await;
        let (second, _) = standin_with(Knobs::default()).await;
        let config = format!(
            "[providers.oa-a]\nkind = \"openai\"\nurl = \"ws://{first}\"\n\
             [providers.oa-b]\nkind = \"openai\"\nurl = \"ws://{second}\"\n\
             [routes.s2s]\nproviders = [\"oa-a\", \"oa-b\"]\n"
        );
        let setup = router(&config, first, second).await;
        let (key_id, key) = setup.key("failover", None).await;
        let mut twilio = TwilioCaller::connect(&setup.router.ws_url(crate::harness::TWILIO), None)
            .await
            .expect("the Twilio upgrade succeeds");
        twilio
            .start(&[("api_key", key.as_str()), ("route", "s2s")])
            .await;
        let mut caller = Caller::Twilio(twilio);
        let timeline = stream_watching(
            &mut caller,
            &speech_8k(4.0),
            &first_stats,
            Provider::OpenAi,
            Duration::from_millis(500),
        )
        .await;
        let dropped_at = timeline.dropped_at.expect("the first stand-in dropped");
        let last_first = timeline
            .last_audio_until(dropped_at)
            .unwrap_or_else(|| panic!("{what}: no audio from oa-a"));
        let first_second = timeline
            .first_audio_after(dropped_at)
            .unwrap_or_else(|| panic!("{what}: no audio from oa-b"));
        let gap = first_second - last_first;
        println!(
            "failover gap ({what}, twilio openai → openai): {} ms from the last audio of oa-a \
             to the first of oa-b at the caller ({} ms after the drop); the router measured \
             {:?} ms",
            gap.as_millis(),
            (first_second - dropped_at).as_millis(),
            router_gap_ms(&setup)
        );
        assert!(gap < MAX_GAP, "{what}: gap {gap:?}");
        let Caller::Twilio(mut twilio) = caller else {
            unreachable!()
        };
        assert_eq!(twilio.hang_up().await.reason, "CLIENT_HANGUP", "{what}");
        let row = the_record(&setup, key_id).await;
        assert_eq!(row.failovers, 1, "{what}: {row:#?}");
        assert_eq!(row.providers_tried, ["oa-a", "oa-b"], "{what}");
    }
}

/// Proves transcripts continue across a drop for a native caller on a route of two Deepgram
/// providers (two stand-ins): `provider.switched` names both, transcripts come from the second
/// provider after it, the gap from the first provider's last transcript to the second's first
/// is under 500 ms (and so is the gap from the drop), and the record shows the failover.
///
/// The drop is placed at 1.75 s: the stand-in sends a transcript every half second of audio,
/// so a drop right on a half second would measure the race between that transcript and the
/// drop rather than the failover.
#[tokio::test]
async fn native_transcripts_continue_across_a_drop() {
    for mode in [FailMode::Close, FailMode::Drop] {
        let what = mode_name(mode);
        let (first, first_stats) = standin_with(failing(mode, 1.75)).await;
        let (second, _) = standin_with(Knobs::default()).await;
        let config = format!(
            "[providers.dg-a]\nkind = \"deepgram\"\nurl = \"ws://{first}\"\n\
             [providers.dg-b]\nkind = \"deepgram\"\nurl = \"ws://{second}\"\n\
             [routes.stt]\nproviders = [\"dg-a\", \"dg-b\"]\n"
        );
        let setup = router(&config, first, second).await;
        let (key_id, key) = setup.key("failover", None).await;
        let mut native = NativeCaller::connect(&setup.router.ws_url(NATIVE), None)
            .await
            .expect("the native upgrade succeeds");
        native
            .start(json!({"codec": "pcm16", "sample_rate": 8000, "api_key": key, "route": "stt"}))
            .await;
        native.wait_started().await;
        let mut caller = Caller::Native(native);
        let timeline = stream_watching(
            &mut caller,
            &speech_8k(4.0),
            &first_stats,
            Provider::Deepgram,
            Duration::from_millis(500),
        )
        .await;
        let events = caller.conn().events();
        let switched = events
            .iter()
            .position(|e| e["type"] == "provider.switched")
            .unwrap_or_else(|| panic!("{what}: no provider.switched in {events:#?}"));
        assert_eq!(
            events[switched],
            json!({"type": "provider.switched", "from": "dg-a", "to": "dg-b", "reason": "PROVIDER_ERROR"}),
            "{what}"
        );
        let is_transcript = |e: &Value| e["type"] == "transcript";
        let last_before = events[..switched]
            .iter()
            .rposition(is_transcript)
            .unwrap_or_else(|| panic!("{what}: no transcript before the switch"));
        let first_after = switched
            + events[switched..]
                .iter()
                .position(is_transcript)
                .unwrap_or_else(|| panic!("{what}: no transcript after the switch"));
        let transcripts_after = events[switched..]
            .iter()
            .filter(|e| is_transcript(e))
            .count();
        assert!(
            transcripts_after >= 4,
            "{what}: the transcript stream continued: {events:#?}"
        );
        let last_at = timeline.event_arrived(last_before).expect("sampled");
        let first_at = timeline.event_arrived(first_after).expect("sampled");
        let dropped_at = timeline.dropped_at.expect("the first stand-in dropped");
        let gap = first_at - last_at;
        let from_drop = first_at.saturating_duration_since(dropped_at);
        println!(
            "failover gap ({what}, native deepgram → deepgram): {} ms from the last transcript \
             of dg-a to the first of dg-b at the caller; {} ms from the drop; the router \
             measured {:?} ms",
            gap.as_millis(),
            from_drop.as_millis(),
            router_gap_ms(&setup)
        );
        assert!(gap < MAX_GAP, "{what}: gap {gap:?}");
        assert!(from_drop < MAX_GAP, "{what}: {from_drop:?} from the drop");

        let Caller::Native(mut native) = caller else {
            unreachable!()
        };
        native.stop().await;
        assert_eq!(native.wait_ended().await, "CLIENT_HANGUP", "{what}");
        let row = the_record(&setup, key_id).await;
        assert_eq!(row.failovers, 1, "{what}: {row:#?}");
        assert_eq!(row.providers_tried, ["dg-a", "dg-b"], "{what}");
        assert_eq!(row.close_reason.as_deref(), Some("CLIENT_HANGUP"), "{what}");
    }
}

/// Proves a provider that refuses the key (HTTP 401 on the upgrade) is failed over at connect
/// time: the native caller is told, the second provider answers (OpenAI's stand-in echoes),
/// and it got the audio sent while the first was being refused.
#[tokio::test]
async fn refused_key_fails_over_at_connect() {
    let (deepgram, deepgram_stats) = standin_with(Knobs {
        refuse_auth: true,
        ..Knobs::default()
    })
    .await;
    let (openai, openai_stats) = standin_with(Knobs::default()).await;
    let config = "[routes.main]\nproviders = [\"deepgram\", \"openai\"]\n";
    let setup = router(config, deepgram, openai).await;
    let (key_id, key) = setup.key("refused", None).await;
    let mut native = NativeCaller::connect(&setup.router.ws_url(NATIVE), None)
        .await
        .expect("the native upgrade succeeds");
    native
        .start(json!({"codec": "pcm16", "sample_rate": 8000, "api_key": key, "route": "main"}))
        .await;
    native.wait_started().await;
    let speech = speech_8k(1.0);
    native.stream_pcm(&speech, Duration::ZERO).await;
    let switched = native
        .conn
        .wait_event("provider.switched", |e| e["type"] == "provider.switched")
        .await;
    assert_eq!(switched["from"], "deepgram");
    assert_eq!(switched["to"], "openai");
    native.conn.wait_audio(8_000, WAIT).await;
    assert_eq!(
        deepgram_stats
            .provider(Provider::Deepgram)
            .rejected_upgrades,
        1
    );
    assert!(
        openai_stats.provider(Provider::OpenAi).audio_received_ms >= 900,
        "the audio sent during the refused connect reached openai: {:?}",
        openai_stats.provider(Provider::OpenAi)
    );
    native.stop().await;
    assert_eq!(native.wait_ended().await, "CLIENT_HANGUP");
    let row = the_record(&setup, key_id).await;
    assert_eq!(
        (
            row.failovers,
            row.providers_tried.as_slice(),
            row.provider.as_str()
        ),
        (
            1,
            ["deepgram".to_owned(), "openai".to_owned()].as_slice(),
            "openai"
        )
    );
}

/// Proves a route whose every provider fails ends with `PROVIDER_ERROR` (close 1011), after
/// trying each once, on record.
#[tokio::test]
async fn all_providers_failing_ends_with_provider_error() {
    let (deepgram, _) = standin_with(Knobs {
        refuse_auth: true,
        ..Knobs::default()
    })
    .await;
    let (openai, _) = standin_with(Knobs {
        rate_limit: true,
        ..Knobs::default()
    })
    .await;
    let config = "[routes.doomed]\nproviders = [\"deepgram\", \"openai\"]\n";
    let setup = router(config, deepgram, openai).await;
    let (key_id, key) = setup.key("doomed", None).await;
    let mut native = NativeCaller::connect(&setup.router.ws_url(NATIVE), None)
        .await
        .expect("the native upgrade succeeds");
    native
        .start(json!({"codec": "pcm16", "sample_rate": 8000, "api_key": key, "route": "doomed"}))
        .await;
    native.wait_started().await;
    native.stream_pcm(&speech_8k(0.2), Duration::ZERO).await;
    assert_eq!(native.wait_ended().await, "PROVIDER_ERROR");
    let closed = native.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1011, "PROVIDER_ERROR")
    );
    assert!(
        native
            .conn
            .events()
            .iter()
            .any(|e| e["type"] == "provider.switched"),
        "it tried the second provider first"
    );
    let row = the_record(&setup, key_id).await;
    assert_eq!(row.close_reason.as_deref(), Some("PROVIDER_ERROR"));
    assert_eq!(row.failovers, 1);
    assert_eq!(row.providers_tried, ["deepgram", "openai"]);
}
