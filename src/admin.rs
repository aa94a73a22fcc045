//! The admin API (`/admin/...`): live sessions, ending one, session history, API keys, and
//! the GDPR requests (export and erase everything recorded for one key).
//!
//! # Access
//!
//! Every route needs `Authorization: Bearer $VOXROUTE_ADMIN_TOKEN`, compared in constant time.
//! With the variable unset (or empty) the API is closed: every route answers `401` saying so,
//! whatever is presented. Errors are `application/problem+json` like the rest of the edge.
//!
//! # Routes
//!
//! | route | what |
//! | --- | --- |
//! | `GET /admin/sessions/live` | the live sessions: of every replica on PostgreSQL (each with its `node_id`), of this process on SQLite |
//! | `DELETE /admin/sessions/{id}` | end a live session with `KILLED_BY_ADMIN`: `204` if it was live here, `202` if another replica holds it (asked by `NOTIFY`), `404` `not_live_here` if no replica does |
//! | `GET /admin/sessions?api_key_id=&provider=&close_reason=&since=&until=&limit=` | history from the store, newest first (RFC 3339 times; limit 1–10000, default 100) |
//! | `GET /admin/keys`, `POST /admin/keys` (`{"name", "max_sessions"}`), `DELETE /admin/keys/{id}` | list, create (the key is in the answer, once), revoke |
//! | `GET /admin/keys/{id}/export` | the key's row, every session record of it, and its usage per day and provider |
//! | `DELETE /admin/keys/{id}/data` | erase the key's session records and the key |
//!
//! With several replicas on one PostgreSQL ([`crate::replicas`]) any replica answers for all:
//! the live list comes from the session leases (plus this process's own sessions, so one
//! admitted while the leases were out of reach still shows), and a session held elsewhere is
//! ended by its holder, which `LISTEN`s for the request. If the database does not answer, the
//! live list is this replica's alone and says so (`"partial": true`). The answer names the
//! replica that gave it (`node_id`). On SQLite the live list
//! and ending a session are this process's only.

use std::collections::HashSet;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use uuid::Uuid;
use voxroute_actors::close_reason::SessionCloseReason;
use voxroute_actors::supervisor::{EndOne, ListLive, LiveSession};

use crate::edge::{AppState, problem};
use crate::replicas::ClusterSession;
use crate::store::{QueryError, SessionFilter};

/// Most history rows one request returns.
pub const MAX_HISTORY_ROWS: u32 = 10_000;

/// Registers the admin routes under `/admin`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .route("/sessions/live", web::get().to(live_sessions))
            .route("/sessions", web::get().to(history))
            .route("/sessions/{id}", web::delete().to(end_session))
            .route("/keys", web::get().to(list_keys))
            .route("/keys", web::post().to(create_key))
            .route("/keys/{id}", web::delete().to(revoke_key))
            .route("/keys/{id}/export", web::get().to(export_key))
            .route("/keys/{id}/data", web::delete().to(erase_key))
            .default_service(web::to(not_found)),
    );
}

/// The refusal, if the request may not use the admin API.
fn refuse(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let Some(token) = state.admin_token.as_deref() else {
        return Some(problem(
            StatusCode::UNAUTHORIZED,
            "admin_disabled",
            "the admin API is closed: set VOXROUTE_ADMIN_TOKEN to open it",
        ));
    };
    let presented = crate::edge::bearer_key(req).unwrap_or_default();
    let equal: bool = presented.as_bytes().ct_eq(token.as_bytes()).into();
    (!equal).then(|| {
        problem(
            StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
            "a valid `Authorization: Bearer <admin token>` is required",
        )
    })
}

type State = web::Data<Arc<AppState>>;

fn store_failed(error: &QueryError) -> HttpResponse {
    match error {
        QueryError::InvalidInput(detail) => {
            problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", detail)
        }
        _ => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the session store did not answer",
        ),
    }
}

/// The id of the path of an authorised request, or the answer that refuses it: 401 for the
/// token, 400 for an id that is not a UUID.
fn authorised_id(
    req: &HttpRequest,
    state: &AppState,
    raw: &str,
) -> Result<Uuid, Box<HttpResponse>> {
    if let Some(refusal) = refuse(req, state) {
        return Err(Box::new(refusal));
    }
    raw.parse().map_err(|_| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            "the id in the path is not a UUID",
        ))
    })
}

async fn not_found(req: HttpRequest, state: State) -> HttpResponse {
    refuse(&req, &state).unwrap_or_else(|| {
        problem(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such admin route (see the README's Operations section)",
        )
    })
}

async fn live_sessions(req: HttpRequest, state: State) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    let local = match state.supervisor.send(ListLive).await {
        Ok(live) => live,
        Err(_) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "supervisor_unavailable",
                "the supervisor is not running",
            );
        }
    };
    let Some(cluster) = &state.cluster else {
        return HttpResponse::Ok().json(serde_json::json!({ "sessions": local }));
    };
    let as_cluster = |live: LiveSession| ClusterSession {
        id: live.id,
        api_key_id: live.api_key_id,
        endpoint: Some(live.endpoint),
        provider: Some(live.provider),
        started_at: live.started_at,
        node_id: cluster.node_id(),
    };
    match cluster.live_sessions().await {
        Ok(mut sessions) => {
            let leased: HashSet<Uuid> = sessions.iter().map(|s| s.id).collect();
            sessions.extend(
                local
                    .into_iter()
                    .filter(|live| !leased.contains(&live.id))
                    .map(as_cluster),
            );
            HttpResponse::Ok().json(serde_json::json!({
                "node_id": cluster.node_id(),
                "sessions": sessions,
            }))
        }
        Err(_) => {
            let sessions: Vec<ClusterSession> = local.into_iter().map(as_cluster).collect();
            HttpResponse::Ok().json(serde_json::json!({
                "node_id": cluster.node_id(),
                "sessions": sessions,
                "partial": true,
            }))
        }
    }
}

async fn end_session(req: HttpRequest, state: State, id: web::Path<String>) -> HttpResponse {
    let id = match authorised_id(&req, &state, &id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let reason = SessionCloseReason::KilledByAdmin;
    match state.supervisor.send(EndOne { id, reason }).await {
        Ok(true) => return HttpResponse::NoContent().finish(),
        Ok(false) => {}
        Err(_) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "supervisor_unavailable",
                "the supervisor is not running",
            );
        }
    }
    let Some(cluster) = &state.cluster else {
        return problem(
            StatusCode::NOT_FOUND,
            "not_live_here",
            "no live session with this id on this replica",
        );
    };
    let holder = match cluster.holder(id).await {
        Ok(Some(node_id)) => node_id,
        Ok(None) => {
            return problem(
                StatusCode::NOT_FOUND,
                "not_live_here",
                "no live session with this id on any replica",
            );
        }
        Err(error) => return store_failed(&error),
    };
    match cluster.request_end(id).await {
        Ok(()) => HttpResponse::Accepted().json(serde_json::json!({
            "id": id,
            "node_id": holder,
            "status": "forwarded",
        })),
        Err(error) => store_failed(&error),
    }
}

/// `GET /admin/sessions` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    api_key_id: Option<Uuid>,
    provider: Option<String>,
    close_reason: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    limit: Option<u32>,
}

async fn history(req: HttpRequest, state: State) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    let query = match web::Query::<HistoryQuery>::from_query(req.query_string()) {
        Ok(query) => query.into_inner(),
        Err(error) => {
            return problem(StatusCode::BAD_REQUEST, "invalid_query", &error.to_string());
        }
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_HISTORY_ROWS).contains(&limit) {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit must be between 1 and 10000",
        );
    }
    let filter = SessionFilter {
        api_key_id: query.api_key_id,
        provider: query.provider,
        close_reason: query.close_reason,
        since: query.since,
        until: query.until,
        limit,
    };
    match state.store.find_sessions(&filter).await {
        Ok(rows) => HttpResponse::Ok().json(serde_json::json!({ "sessions": rows })),
        Err(error) => store_failed(&error),
    }
}

async fn list_keys(req: HttpRequest, state: State) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    match state.store.list_keys().await {
        Ok(keys) => HttpResponse::Ok().json(serde_json::json!({ "keys": keys })),
        Err(error) => store_failed(&error),
    }
}

/// `POST /admin/keys` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    max_sessions: Option<u32>,
}

async fn create_key(req: HttpRequest, state: State, body: web::Bytes) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    let new: NewKey = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(error) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                &format!("expected {{\"name\": ..., \"max_sessions\": ...}}: {error}"),
            );
        }
    };
    if new.max_sessions == Some(0) || new.max_sessions.is_some_and(|n| n > i32::MAX as u32) {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "max_sessions must be at least 1",
        );
    }
    match state.store.create_key(&new.name, new.max_sessions).await {
        Ok((key, plaintext)) => {
            HttpResponse::Created().json(serde_json::json!({ "key": key, "api_key": plaintext }))
        }
        Err(error) => store_failed(&error),
    }
}

async fn revoke_key(req: HttpRequest, state: State, id: web::Path<String>) -> HttpResponse {
    let id = match authorised_id(&req, &state, &id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match state.store.get_key(id).await {
        Ok(None) => return problem(StatusCode::NOT_FOUND, "unknown_key", "no key with this id"),
        Err(error) => return store_failed(&error),
        Ok(Some(_)) => {}
    }
    match state.store.revoke_key(id).await {
        Ok(_) => HttpResponse::NoContent().finish(),
        Err(error) => store_failed(&error),
    }
}

async fn export_key(req: HttpRequest, state: State, id: web::Path<String>) -> HttpResponse {
    let id = match authorised_id(&req, &state, &id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let key = match state.store.get_key(id).await {
        Ok(Some(key)) => key,
        Ok(None) => return problem(StatusCode::NOT_FOUND, "unknown_key", "no key with this id"),
        Err(error) => return store_failed(&error),
    };
    let filter = SessionFilter {
        api_key_id: Some(id),
        limit: u32::MAX,
        ..SessionFilter::default()
    };
    let sessions = match state.store.find_sessions(&filter).await {
        Ok(sessions) => sessions,
        Err(error) => return store_failed(&error),
    };
    // The per-provider audio of those sessions, per day, over all time (timestamps both
    // backends can compare: no session starts before 1970 or after tomorrow).
    let until = Utc::now() + chrono::Duration::days(1);
    let usage = match state
        .store
        .key_usage(id, DateTime::<Utc>::UNIX_EPOCH, until)
        .await
    {
        Ok(usage) => usage,
        Err(error) => return store_failed(&error),
    };
    let usage: Vec<serde_json::Value> = usage
        .days
        .iter()
        .map(|day| {
            serde_json::json!({
                "date": day.day.to_string(),
                "provider": day.provider,
                "sessions": day.sessions,
                "audio_in_ms": day.audio_in_ms,
                "audio_out_ms": day.audio_out_ms,
            })
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "key": key,
        "sessions": sessions,
        "usage": usage,
    }))
}

async fn erase_key(req: HttpRequest, state: State, id: web::Path<String>) -> HttpResponse {
    let id = match authorised_id(&req, &state, &id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match state.store.erase_key(id).await {
        Ok((0, 0)) => problem(
            StatusCode::NOT_FOUND,
            "unknown_key",
            "nothing is recorded for this id",
        ),
        Ok((sessions, keys)) => HttpResponse::Ok().json(serde_json::json!({
            "sessions_deleted": sessions,
            "keys_deleted": keys,
        })),
        Err(error) => store_failed(&error),
    }
}
