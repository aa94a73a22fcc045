//! Bad input from callers, against a running router (no `--dev`, so every caller needs a key).
//!
//! What they prove, for each kind of bad input: the caller gets a clear answer (a native
//! `error` event with a stable code, a close frame whose reason is the record's close reason,
//! or an HTTP 401 `application/problem+json` before the upgrade); a bad frame that the
//! protocol lets the router skip is skipped and the same call goes on echoing (Twilio has no
//! error channel: skipping is its answer); every session that existed is on record with the
//! right close reason, and refused upgrades leave no record; and a healthy call on the same
//! router, live throughout, still echoes afterwards.

use serde_json::json;
use tokio_tungstenite::tungstenite::{self, Message};
use uuid::Uuid;

use crate::harness::{
    MULAW_FRAME, NATIVE, NativeCaller, Setup, TWILIO, TwilioCaller, WAIT, eventually,
};

/// A router with a healthy Twilio call on it, live for the whole test.
struct Scene {
    setup: Setup,
    neighbour: TwilioCaller,
    neighbour_key: Uuid,
}

impl Scene {
    async fn new() -> Scene {
        let setup = Setup::sqlite().await;
        let (neighbour_key, key) = setup.key("neighbour", None).await;
        let mut neighbour = setup.twilio(&key).await;
        neighbour
            .assert_echoes("the healthy neighbour, at first")
            .await;
        Scene {
            setup,
            neighbour,
            neighbour_key,
        }
    }

    /// A fresh key: (id, plaintext).
    async fn key(&self, name: &str) -> (Uuid, String) {
        self.setup.key(name, None).await
    }

    /// The neighbour still echoes, the router still answers `/healthz`, and once the
    /// neighbour hangs up its record is a plain `CLIENT_HANGUP`. Returns every record.
    async fn neighbour_unaffected(mut self) -> Vec<voxroute::store::SessionRow> {
        self.neighbour
            .assert_echoes("the healthy neighbour, after the bad input")
            .await;
        assert_eq!(self.setup.router.http_get("/healthz").await.0, 200);
        let closed = self.neighbour.hang_up().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (1000, "CLIENT_HANGUP")
        );
        let row = self
            .setup
            .ended_for_key(self.neighbour_key, 1)
            .await
            .remove(0);
        assert_eq!(row.close_reason.as_deref(), Some("CLIENT_HANGUP"));
        self.setup.all_sessions().await
    }
}

/// A started Twilio call with its own key, which must echo.
async fn twilio_call(scene: &Scene, name: &str) -> (TwilioCaller, Uuid) {
    let (key_id, key) = scene.key(name).await;
    let call = scene.setup.twilio(&key).await;
    (call, key_id)
}

/// Hangs up `call` and returns its record, which must be `CLIENT_HANGUP` with exactly
/// `audio_in_ms` of audio counted in (bad frames count for nothing).
async fn hang_up_recorded(scene: &Scene, call: &mut TwilioCaller, key_id: Uuid, audio_in_ms: i64) {
    let closed = call.hang_up().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1000, "CLIENT_HANGUP")
    );
    let row = scene.setup.ended_for_key(key_id, 1).await.remove(0);
    assert_eq!(
        row.close_reason.as_deref(),
        Some("CLIENT_HANGUP"),
        "{row:#?}"
    );
    assert_eq!(
        row.audio_in_ms, audio_in_ms,
        "only good audio counts: {row:#?}"
    );
}

/// Proves malformed JSON is refused frame by frame, not call by call: on Twilio each bad frame
/// is skipped and the call goes on echoing; on the native protocol each gets an `error` event
/// `malformed_json` and the session goes on.
#[tokio::test]
async fn malformed_json_is_skipped() {
    let scene = Scene::new().await;
    let (mut call, key_id) = twilio_call(&scene, "malformed twilio").await;
    for bad in ["{not json", "[1, 2, 3]", "{\"event\": 5}", "", "null"] {
        call.conn.text(bad).await;
    }
    call.assert_echoes("Twilio, after malformed JSON").await;
    hang_up_recorded(&scene, &mut call, key_id, 200).await;

    let (_, key) = scene.key("malformed native").await;
    let mut native = scene.setup.native(&key).await;
    native.conn.text("{not json").await;
    native.wait_error("malformed_json").await;
    native.assert_echoes("native, after malformed JSON").await;
    native.stop().await;
    assert_eq!(native.wait_ended().await, "CLIENT_HANGUP");
    scene.neighbour_unaffected().await;
}

/// Proves an unknown event is skipped: Twilio `{"event":"hello"}` is dropped and the call
/// echoes on; native `{"type":"hello"}` gets `error` `unknown_event` and the session goes on.
#[tokio::test]
async fn unknown_event_is_skipped() {
    let scene = Scene::new().await;
    let (mut call, key_id) = twilio_call(&scene, "unknown twilio").await;
    call.conn
        .text(json!({"event": "hello", "streamSid": "MZ1"}).to_string())
        .await;
    call.assert_echoes("Twilio, after an unknown event").await;
    hang_up_recorded(&scene, &mut call, key_id, 200).await;

    let (_, key) = scene.key("unknown native").await;
    let mut native = scene.setup.native(&key).await;
    native.conn.text(json!({"type": "hello"}).to_string()).await;
    native.wait_error("unknown_event").await;
    native.assert_echoes("native, after an unknown type").await;
    native.stop().await;
    assert_eq!(native.wait_ended().await, "CLIENT_HANGUP");
    scene.neighbour_unaffected().await;
}

/// Proves audio before `start` is refused and not counted, and a `start` after it still
/// works: Twilio `media` before `start` is dropped; a native binary frame before `start` gets
/// `error` `media_before_start`.
#[tokio::test]
async fn media_before_start_is_refused() {
    let scene = Scene::new().await;
    let (key_id, key) = scene.key("early twilio").await;
    let mut call = TwilioCaller::connect(&scene.setup.router.ws_url(TWILIO), None)
        .await
        .expect("upgrade");
    for _ in 0..3 {
        call.media(&[0xFF; MULAW_FRAME]).await;
    }
    call.start(&[("api_key", &key)]).await;
    call.assert_echoes("Twilio, started after early media")
        .await;
    hang_up_recorded(&scene, &mut call, key_id, 200).await;

    let (_, key) = scene.key("early native").await;
    let mut native = NativeCaller::connect(&scene.setup.router.ws_url(NATIVE), None)
        .await
        .expect("upgrade");
    native.conn.binary(vec![0u8; 320]).await;
    native.wait_error("media_before_start").await;
    native
        .start(json!({"codec": "pcm16", "sample_rate": 8000, "api_key": key}))
        .await;
    let id = native.wait_started().await;
    native
        .assert_echoes("native, started after early audio")
        .await;
    native.stop().await;
    assert_eq!(native.wait_ended().await, "CLIENT_HANGUP");
    assert_eq!(scene.setup.ended(id).await.audio_in_ms, 200);
    scene.neighbour_unaffected().await;
}

/// Proves a Twilio `media` payload that is not base64 is skipped (not decoded as garbage
/// audio, not counted) and the call echoes on.
#[tokio::test]
async fn bad_base64_is_skipped() {
    let scene = Scene::new().await;
    let (mut call, key_id) = twilio_call(&scene, "bad base64").await;
    for bad in ["@@@@not*base64!!", "////====", "a"] {
        call.media_payload(bad).await;
    }
    call.assert_echoes("Twilio, after bad base64").await;
    hang_up_recorded(&scene, &mut call, key_id, 200).await;
    scene.neighbour_unaffected().await;
}

/// Proves payloads of the wrong size are skipped and not counted: on Twilio an empty payload
/// and one over 960 bytes (120 ms); on the native protocol an empty binary frame (`error`
/// `payload_size`) and PCM16 of an odd byte count (`error` `bad_audio`).
#[tokio::test]
async fn payloads_of_the_wrong_size_are_skipped() {
    let scene = Scene::new().await;
    let (mut call, key_id) = twilio_call(&scene, "sizes twilio").await;
    call.media(&[]).await;
    call.media(&[0x7F; 961]).await;
    call.media(&[0x7F; 4_000]).await;
    call.assert_echoes("Twilio, after wrongly sized payloads")
        .await;
    hang_up_recorded(&scene, &mut call, key_id, 200).await;

    let (_, key) = scene.key("sizes native").await;
    let mut native = scene.setup.native(&key).await;
    native.conn.binary(Vec::new()).await;
    native.wait_error("payload_size").await;
    native.conn.binary(vec![1u8; 321]).await;
    native.wait_error("bad_audio").await;
    native
        .assert_echoes("native, after wrongly sized frames")
        .await;
    native.stop().await;
    assert_eq!(native.wait_ended().await, "CLIENT_HANGUP");
    scene.neighbour_unaffected().await;
}

/// Proves a binary frame on the Twilio endpoint (Twilio sends only text) is skipped, even one
/// holding valid mu-law, and not counted as audio.
#[tokio::test]
async fn binary_frame_on_twilio_is_skipped() {
    let scene = Scene::new().await;
    let (mut call, key_id) = twilio_call(&scene, "binary twilio").await;
    call.conn.binary(vec![0x55; MULAW_FRAME]).await;
    call.conn.binary(vec![0x00; 3]).await;
    call.assert_echoes("Twilio, after binary frames").await;
    hang_up_recorded(&scene, &mut call, key_id, 200).await;
    scene.neighbour_unaffected().await;
}

/// Proves a 1 MiB frame (far over the 64 KiB limit) ends the session: close 1008
/// `CLIENT_ERROR`, recorded so; a text frame on Twilio and a binary one on the native
/// protocol.
#[tokio::test]
async fn one_mebibyte_frame_ends_with_client_error() {
    let scene = Scene::new().await;
    let (mut call, key_id) = twilio_call(&scene, "huge twilio").await;
    call.assert_echoes("Twilio, before the huge frame").await;
    let huge = json!({"event": "media", "media": {"payload": "A".repeat(1 << 20)}}).to_string();
    // The router may stop reading mid-frame: a failed send is not the test's concern.
    let _ = call.conn.send(Message::text(huge)).await;
    let closed = call.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "CLIENT_ERROR")
    );
    let row = scene.setup.ended_for_key(key_id, 1).await.remove(0);
    assert_eq!(
        row.close_reason.as_deref(),
        Some("CLIENT_ERROR"),
        "{row:#?}"
    );

    let (_, key) = scene.key("huge native").await;
    let mut native = scene.setup.native(&key).await;
    let id = native.wait_started().await;
    let _ = native.conn.send(Message::binary(vec![0u8; 1 << 20])).await;
    let closed = native.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "CLIENT_ERROR")
    );
    assert_eq!(
        scene.setup.ended(id).await.close_reason.as_deref(),
        Some("CLIENT_ERROR")
    );
    scene.neighbour_unaffected().await;
}

/// Proves a caller with no key at all (the router runs without `--dev`) is refused after the
/// upgrade: Twilio gets close 1008 `AUTH_FAILED`; native gets an `error` event, `session.ended`
/// `AUTH_FAILED` and the same close; both are on record as `AUTH_FAILED` with no key.
#[tokio::test]
async fn missing_key_is_refused_with_auth_failed() {
    let scene = Scene::new().await;
    let mut call = TwilioCaller::connect(&scene.setup.router.ws_url(TWILIO), None)
        .await
        .expect("a keyless upgrade is allowed: the key may come in start");
    call.start(&[]).await;
    let closed = call.conn.wait_closed(WAIT).await;
    assert_eq!((closed.code, closed.reason.as_str()), (1008, "AUTH_FAILED"));

    let mut native = NativeCaller::connect(&scene.setup.router.ws_url(NATIVE), None)
        .await
        .expect("upgrade");
    native
        .start(json!({"codec": "pcm16", "sample_rate": 8000}))
        .await;
    assert_eq!(native.wait_ended().await, "AUTH_FAILED");
    assert!(!native.error_codes().is_empty(), "an error event says why");
    let closed = native.conn.wait_closed(WAIT).await;
    assert_eq!((closed.code, closed.reason.as_str()), (1008, "AUTH_FAILED"));

    assert_auth_failures_recorded(scene, 2).await;
}

/// Proves a wrong key (malformed, or well-formed but unknown) is refused before the upgrade
/// when presented there (`Authorization: Bearer` or `?api_key=`: HTTP 401,
/// `application/problem+json`, nothing routed or recorded) and with close 1008 `AUTH_FAILED`
/// when presented inside the protocol (recorded).
#[tokio::test]
async fn wrong_key_is_refused() {
    let scene = Scene::new().await;
    let unknown = format!("vxr_{}", "A".repeat(40));
    for wrong in ["not-a-key", unknown.as_str()] {
        refused_with_401(&scene, wrong).await;
    }
    refused_after_upgrade(&scene, &unknown).await;
    refused_after_upgrade(&scene, "not-a-key").await;
    assert_auth_failures_recorded(scene, 4).await;
}

/// Proves a revoked key is refused exactly like a wrong one: 401 before the upgrade, close
/// 1008 `AUTH_FAILED` after it, and a call that was admitted with it before the revocation is
/// not cut off.
#[tokio::test]
async fn revoked_key_is_refused() {
    let scene = Scene::new().await;
    let (key_id, key) = scene.key("to be revoked").await;
    let mut earlier = scene.setup.twilio(&key).await;
    earlier
        .assert_echoes("a call admitted before the revocation")
        .await;
    assert!(scene.setup.store.revoke_key(key_id).await.unwrap());
    refused_with_401(&scene, &key).await;
    refused_after_upgrade(&scene, &key).await;
    earlier
        .assert_echoes("a call admitted before the revocation, after it")
        .await;
    let closed = earlier.hang_up().await;
    assert_eq!(closed.reason, "CLIENT_HANGUP");
    assert_auth_failures_recorded(scene, 2).await;
}

/// `key` in a header and in the query string: both HTTP 401 with a problem+json body.
async fn refused_with_401(scene: &Scene, key: &str) {
    for path in [TWILIO, NATIVE] {
        let url = scene.setup.router.ws_url(path);
        let by_header = TwilioCaller::connect(&url, Some(key)).await.err();
        let by_query = TwilioCaller::connect(&format!("{url}?api_key={key}"), None)
            .await
            .err();
        for (how, error) in [("header", by_header), ("query", by_query)] {
            let Some(tungstenite::Error::Http(response)) = error else {
                panic!("{path} with a bad key by {how}: expected HTTP 401, got {error:?}");
            };
            assert_eq!(response.status(), 401, "{path} by {how}");
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "{path} by {how}"
            );
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .expect("a JSON problem body");
            assert_eq!(body["status"], 401, "{body}");
            assert!(
                !body.to_string().contains(key),
                "the problem must not echo the key: {body}"
            );
        }
    }
}

/// `key` in Twilio's custom parameters and in a native `start`: close 1008 `AUTH_FAILED`.
async fn refused_after_upgrade(scene: &Scene, key: &str) {
    let mut call = TwilioCaller::connect(&scene.setup.router.ws_url(TWILIO), None)
        .await
        .expect("upgrade");
    call.start(&[("api_key", key)]).await;
    let closed = call.conn.wait_closed(WAIT).await;
    assert_eq!((closed.code, closed.reason.as_str()), (1008, "AUTH_FAILED"));

    let mut native = NativeCaller::connect(&scene.setup.router.ws_url(NATIVE), None)
        .await
        .expect("upgrade");
    native
        .start(json!({"codec": "pcm16", "sample_rate": 8000, "api_key": key}))
        .await;
    assert_eq!(native.wait_ended().await, "AUTH_FAILED");
    let closed = native.conn.wait_closed(WAIT).await;
    assert_eq!((closed.code, closed.reason.as_str()), (1008, "AUTH_FAILED"));
}

/// After the neighbour's check: exactly `count` keyless `AUTH_FAILED` records besides the
/// neighbour's (and any key's own calls), none with audio.
async fn assert_auth_failures_recorded(scene: Scene, count: usize) {
    let store = scene.setup.store.clone();
    eventually(WAIT, &format!("{count} AUTH_FAILED records"), async || {
        let rows = store.list_sessions(1_000).await.ok()?;
        let failed = rows
            .iter()
            .filter(|r| r.close_reason.as_deref() == Some("AUTH_FAILED"))
            .count();
        (failed >= count).then_some(())
    })
    .await;
    let rows = scene.neighbour_unaffected().await;
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| r.close_reason.as_deref() == Some("AUTH_FAILED"))
        .collect();
    assert_eq!(failed.len(), count, "{rows:#?}");
    for row in failed {
        assert_eq!(row.api_key_id, None, "{row:#?}");
        assert_eq!(row.audio_in_ms, 0, "{row:#?}");
        assert_eq!(row.client_ip.as_deref(), Some("127.0.0.1"));
    }
    assert!(
        rows.iter().all(|r| r.close_reason.is_some()),
        "every session ended: {rows:#?}"
    );
}

/// Proves a flood of garbage ends the flooding session with `CLIENT_ERROR` (close 1008) after
/// the consecutive-bad-frame cap, with a bounded number of native `error` events, on record;
/// and the router is unaffected: the neighbour echoes, `/healthz` answers, a new call works.
#[tokio::test]
async fn garbage_flood_ends_with_client_error() {
    let scene = Scene::new().await;
    let (mut call, key_id) = twilio_call(&scene, "flood twilio").await;
    call.assert_echoes("Twilio, before the flood").await;
    for i in 0..500u32 {
        let garbage = if i % 2 == 0 {
            Message::text(format!(
                "\u{1}garbage {i} {}",
                "#".repeat((i % 97) as usize)
            ))
        } else {
            Message::binary(vec![(i % 251) as u8; (i % 300) as usize + 1])
        };
        if call.conn.send(garbage).await.is_err() || call.conn.inbox(|i| i.closed.is_some()) {
            break;
        }
    }
    let closed = call.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "CLIENT_ERROR")
    );
    let row = scene.setup.ended_for_key(key_id, 1).await.remove(0);
    assert_eq!(
        row.close_reason.as_deref(),
        Some("CLIENT_ERROR"),
        "{row:#?}"
    );

    let (_, key) = scene.key("flood native").await;
    let mut native = scene.setup.native(&key).await;
    let id = native.wait_started().await;
    for i in 0..500u32 {
        let garbage = Message::text(format!("garbage {i}"));
        if native.conn.send(garbage).await.is_err() || native.conn.inbox(|i| i.closed.is_some()) {
            break;
        }
    }
    assert_eq!(native.wait_ended().await, "CLIENT_ERROR");
    let closed = native.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "CLIENT_ERROR")
    );
    let errors = native.error_codes().len();
    assert!(
        (1..=10).contains(&errors),
        "{errors} error events for a flood (capped at 10)"
    );
    assert_eq!(
        scene.setup.ended(id).await.close_reason.as_deref(),
        Some("CLIENT_ERROR")
    );

    let (fresh_id, key) = scene.key("after the flood").await;
    let mut fresh = scene.setup.twilio(&key).await;
    fresh.assert_echoes("a new call after the flood").await;
    hang_up_recorded(&scene, &mut fresh, fresh_id, 200).await;
    scene.neighbour_unaffected().await;
}
