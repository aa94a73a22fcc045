//! The stand-in's two plain-HTTP endpoints, for the docker-compose stack and an out-of-process
//! load test: `GET /healthz` (`{"status":"ok"}`) and `GET /stats` (the [`Stats`] counters as
//! JSON, see [`Stats::to_json`]).
//!
//! They are recognised by peeking at the request line before the WebSocket handshake, so
//! every other request still goes to the upgrade path untouched. Anything else about HTTP
//! (keep-alive, other methods, bodies) is out of scope: one response, then the connection
//! closes.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Stats;

/// How long to wait for the request line to arrive, and for the request headers.
const PEEK_TIMEOUT: Duration = Duration::from_secs(2);

/// Most request bytes read before answering (headers beyond that are not read).
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// A plain-HTTP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Health,
    Stats,
}

impl Endpoint {
    const ALL: [(&'static [u8], Endpoint); 2] = [
        (b"GET /healthz ", Endpoint::Health),
        (b"GET /stats ", Endpoint::Stats),
    ];
}

/// Which endpoint the request waiting on `stream` is for, if it is one of them. Reads
/// nothing: the bytes stay for the WebSocket handshake.
pub(crate) async fn peek_endpoint(stream: &TcpStream) -> Option<Endpoint> {
    let mut buf = [0u8; 16];
    let deadline = tokio::time::Instant::now() + PEEK_TIMEOUT;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        let seen = &buf[..read];
        let mut still_possible = false;
        for (prefix, endpoint) in Endpoint::ALL {
            if seen.starts_with(prefix) {
                return Some(endpoint);
            }
            still_possible |= prefix.starts_with(seen);
        }
        if read == 0 || !still_possible {
            return None;
        }
        // A partial request line: wait for more bytes (peek returns at once with what it has).
        tokio::time::sleep(Duration::from_millis(5)).await;
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

/// Reads the request headers and writes the endpoint's response, then closes.
pub(crate) async fn respond(mut stream: TcpStream, endpoint: Endpoint, stats: &Stats) {
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let headers_read = tokio::time::timeout(PEEK_TIMEOUT, async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST_BYTES {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => request.extend_from_slice(&chunk[..read]),
            }
        }
    })
    .await;
    if headers_read.is_err() {
        return;
    }
    let body = match endpoint {
        Endpoint::Health => r#"{"status":"ok"}"#.to_owned(),
        Endpoint::Stats => stats.to_json().to_string(),
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
