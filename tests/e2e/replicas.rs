//! Several replicas on one PostgreSQL, as `docker-compose.yml` runs them, here as two
//! `voxroute serve` processes on one test database.
//!
//! What they prove: a key with `max_sessions = 1` admitted on replica A is refused
//! (`LIMIT_EXCEEDED`) on replica B; B's admin API lists A's session with A's node id and ends
//! it (`202`, then `KILLED_BY_ADMIN` on the caller's socket and on record); once A is killed
//! with SIGKILL while holding the key's only slot, B admits the key again within the lease
//! TTL (short here: `VOXROUTE_REPLICA_TTL_SECS`); and a lease whose `expires_at` is past (a
//! dead replica's, or one written by a replica with a skewed clock) neither holds a slot nor
//! lists.

use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::harness::{Router, RouterOptions, TWILIO, TestDb, TwilioCaller, WAIT, ended_record};

const TOKEN: &str = "replicas-admin-token-0123456789";

/// The lease TTL the routers get: short, so that the SIGKILL case runs in seconds.
const TTL_SECS: u64 = 3;

fn options() -> RouterOptions {
    RouterOptions {
        env: vec![
            ("VOXROUTE_ADMIN_TOKEN".into(), TOKEN.into()),
            ("VOXROUTE_REPLICA_TTL_SECS".into(), TTL_SECS.to_string()),
        ],
        ..RouterOptions::default()
    }
}

async fn admin(router: &Router, method: &str, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = router
        .http(method, path, &[("Authorization", auth.as_str())], "")
        .await;
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    };
    (status, value)
}

/// A Twilio call on `router` with `key`.
async fn call(router: &Router, key: &str) -> TwilioCaller {
    let mut caller = TwilioCaller::connect(&router.ws_url(TWILIO), None)
        .await
        .expect("the Twilio upgrade succeeds");
    caller.start(&[("api_key", key)]).await;
    caller
}

/// Whether a call just started is refused with `LIMIT_EXCEEDED` (within `wait`) rather than
/// admitted (it echoes).
async fn refused(caller: &mut TwilioCaller, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if let Some(closed) = caller.conn.inbox(|inbox| inbox.closed.clone()) {
            assert_eq!(
                (closed.code, closed.reason.as_str()),
                (1008, "LIMIT_EXCEEDED")
            );
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The live sessions `router` lists for key `key_id`: (session id, node id).
async fn live_of_key(router: &Router, key_id: Uuid) -> (String, Vec<(String, String)>) {
    let (status, live) = admin(router, "GET", "/admin/sessions/live").await;
    assert_eq!(status, 200, "{live}");
    let node = live["node_id"]
        .as_str()
        .expect("the answering replica")
        .to_owned();
    let sessions = live["sessions"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|s| s["api_key_id"] == key_id.to_string().as_str())
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["node_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (node, sessions)
}

/// Proves the limit, the listing and the kill across two replicas, then the expiry of a
/// SIGKILLed replica's lease.
#[sqlx::test(migrations = false)]
async fn two_replicas_share_limits_live_list_and_kill(pool: sqlx::PgPool) {
    let db = TestDb::postgres(pool);
    let a = Router::start(&db.url(), options()).await;
    let mut b = Some(Router::start(&db.url(), options()).await);
    let store = db.store().await;
    let (key, plaintext) = store
        .create_key("one at a time", Some(1))
        .await
        .expect("creating a key");
    let key_id = key.id;

    // The limit holds across replicas.
    let mut on_a = call(&a, &plaintext).await;
    on_a.assert_echoes("the call on replica A").await;
    let replica_b = b.as_ref().unwrap();
    let mut on_b = call(replica_b, &plaintext).await;
    assert!(
        refused(&mut on_b, WAIT).await,
        "replica B refuses the key's second session"
    );
    on_a.assert_echoes("the call on A, after B's refusal").await;

    // B lists A's session, held by A.
    let (node_a, on_a_list) = live_of_key(&a, key_id).await;
    let (node_b, on_b_list) = live_of_key(replica_b, key_id).await;
    assert_ne!(node_a, node_b, "each replica has its own node id");
    assert_eq!(on_a_list.len(), 1, "{on_a_list:?}");
    assert_eq!(on_b_list, on_a_list, "both replicas list the same session");
    let (session_id, holder) = on_b_list[0].clone();
    assert_eq!(holder, node_a, "A holds it");

    // B ends it: A's caller is told KILLED_BY_ADMIN, and the record says so.
    let (status, answer) = admin(
        replica_b,
        "DELETE",
        &format!("/admin/sessions/{session_id}"),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["node_id"], node_a.as_str());
    let closed = on_a.conn.wait_closed(WAIT).await;
    assert_eq!(closed.reason, "KILLED_BY_ADMIN");
    let id: Uuid = session_id.parse().unwrap();
    let row = ended_record(&store, id).await;
    assert_eq!(row.close_reason.as_deref(), Some("KILLED_BY_ADMIN"));
    let (status, again) = admin(
        replica_b,
        "DELETE",
        &format!("/admin/sessions/{session_id}"),
    )
    .await;
    assert_eq!(
        (status, again["code"].as_str()),
        (404, Some("not_live_here"))
    );

    // A takes the key's only slot again (once its kill released the lease) and is SIGKILLed
    // while holding it.
    let mut holder_call = None;
    for _ in 0..50 {
        let mut attempt = call(&a, &plaintext).await;
        if !refused(&mut attempt, Duration::from_millis(1_000)).await {
            holder_call = Some(attempt);
            break;
        }
    }
    let mut holder_call = holder_call.expect("A admits the key once the killed session is gone");
    holder_call
        .assert_echoes("the slot-holding call on A")
        .await;
    let mut on_b = call(replica_b, &plaintext).await;
    assert!(refused(&mut on_b, WAIT).await, "the slot is still A's");
    let killed_at = Instant::now();
    drop(a); // SIGKILL: no release, no deregistration.
    let replica_b = b.as_ref().unwrap();
    let deadline = Duration::from_secs(TTL_SECS + 5);
    let admitted = loop {
        let mut attempt = call(replica_b, &plaintext).await;
        if !refused(&mut attempt, Duration::from_millis(1_000)).await {
            break attempt;
        }
        assert!(
            killed_at.elapsed() < deadline,
            "B still refuses the key {deadline:?} after A died; B's stderr:\n{}",
            replica_b.stderr_text()
        );
    };
    let mut admitted = admitted;
    admitted.assert_echoes("the call on B after A died").await;
    let waited = killed_at.elapsed();
    assert!(
        waited < deadline,
        "the dead replica's lease expired within the TTL: {waited:?}"
    );
    // A's dead session no longer lists; B's does.
    let (_, listed) = live_of_key(replica_b, key_id).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].1, node_b);
    drop(b.take());
}

/// Proves that a lease whose `expires_at` is in the past (a dead replica's, or one written
/// with a skewed clock) holds no slot and does not list.
#[sqlx::test(migrations = false)]
async fn a_stale_lease_is_ignored(pool: sqlx::PgPool) {
    let db = TestDb::postgres(pool.clone());
    let router = Router::start(&db.url(), options()).await;
    let store = db.store().await;
    let (key, plaintext) = store
        .create_key("stale", Some(1))
        .await
        .expect("creating a key");
    let stale = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO session_leases (session_id, api_key_id, node_id, acquired_at, expires_at) \
         VALUES ($1, $2, $3, now() - interval '1 hour', now() - interval '1 second')",
    )
    .bind(stale)
    .bind(key.id)
    .bind(Uuid::now_v7())
    .execute(&pool)
    .await
    .expect("inserting a stale lease");
    let (_, listed) = live_of_key(&router, key.id).await;
    assert!(listed.is_empty(), "{listed:?}");
    let mut caller = call(&router, &plaintext).await;
    assert!(
        !refused(&mut caller, Duration::from_millis(1_000)).await,
        "the stale lease holds no slot"
    );
    caller.assert_echoes("the call despite a stale lease").await;
    let (status, _) = admin(&router, "DELETE", &format!("/admin/sessions/{stale}")).await;
    assert_eq!(status, 404, "a stale lease's session is not live anywhere");
}
