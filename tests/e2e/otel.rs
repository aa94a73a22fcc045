//! OpenTelemetry export (cargo feature `otel`): the session spans reach an OTLP/HTTP collector.
//!
//! The collector is a tiny HTTP/1.1 server in the test (a real socket, answering every
//! `POST /v1/traces` with 200 and keeping the body), and the bodies are decoded as the
//! `ExportTraceServiceRequest` protobuf of `opentelemetry-proto`.
//!
//! What they prove: after one call and a SIGTERM, the collector holds a span named `session`
//! whose `session_id` and `transport` are the call's, under the configured `service.name`, and
//! the caller's key is nowhere in what was sent; the batch delay is a minute, so the span can
//! only have come from the flush at shutdown. And a collector that refuses connections does not
//! disturb calls or the shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::harness::{NATIVE, NativeCaller, RouterOptions, Setup, TestDb, WAIT, eventually};

/// The largest request body the test collector accepts.
const MAX_BODY: usize = 16 << 20;

/// What the test collector received: one `(path, body)` per request.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Starts the test collector on a loopback port: every request is answered 200 with an empty
/// body (an empty `ExportTraceServiceResponse`) and kept.
async fn collector() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("the collector binds");
    let addr = listener.local_addr().expect("the collector's address");
    let received = Received::default();
    let kept = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(stream, Arc::clone(&kept)));
        }
    });
    (addr, received)
}

/// Serves the HTTP/1.1 requests of one connection (kept alive by the client) until it closes.
async fn serve_connection(stream: TcpStream, received: Received) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match stream.read_line(&mut request_line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut length = 0;
        loop {
            let mut header = String::new();
            if stream.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        assert!(length <= MAX_BODY, "a {length}-byte export");
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        received.lock().unwrap().push((path, body));
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n\
                      content-length: 0\r\n\r\n";
        if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The string form of an attribute value (strings as they are, other kinds by `Debug`).
fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The value of attribute `key` among `attributes`, as text.
fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(kv.value.as_ref()))
}

/// A native call with `key`: started, echoed, hung up; returns its session id.
async fn one_call(setup: &Setup, key: &str) -> Uuid {
    let mut call = NativeCaller::connect(&setup.router.ws_url(NATIVE), None)
        .await
        .expect("the native upgrade succeeds");
    call.start(json!({"codec": "pcm16", "sample_rate": 8000, "api_key": key}))
        .await;
    let id = call.wait_started().await;
    call.assert_echoes("a call").await;
    call.stop().await;
    assert_eq!(call.wait_ended().await, "CLIENT_HANGUP");
    id
}

/// Proves the export: one call, then SIGTERM; the collector got, on `/v1/traces`, a span named
/// `session` with the call's `session_id`, `transport` `websocket` and provider `echo`, under
/// `service.name` from `OTEL_SERVICE_NAME`; no attribute (nor any byte sent) holds the key.
#[tokio::test]
async fn session_spans_reach_the_collector_by_shutdown() {
    let (addr, received) = collector().await;
    let options = RouterOptions {
        env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{addr}"),
            ),
            ("OTEL_SERVICE_NAME".into(), "voxroute-e2e".into()),
            // A minute: what arrives is what the shutdown flushed.
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "60000".into()),
        ],
        ..RouterOptions::default()
    };
    let mut setup = Setup::new(TestDb::sqlite(), options).await;
    let (_, key) = setup.key("otel", None).await;
    let id = one_call(&setup, &key).await;
    setup.ended(id).await;

    let status = setup.router.terminate(Duration::from_secs(30)).await;
    let stderr = setup.router.stderr_text();
    assert!(
        status.success(),
        "the router exited with {status}:\n{stderr}"
    );
    assert!(
        stderr.contains("exporting session spans to an OpenTelemetry collector"),
        "{stderr}"
    );

    let bodies = received.lock().unwrap().clone();
    assert!(
        !bodies.is_empty(),
        "nothing reached the collector:\n{stderr}"
    );
    let mut sessions = Vec::new();
    for (path, body) in &bodies {
        assert_eq!(path, "/v1/traces");
        assert!(
            !body.windows(key.len()).any(|w| w == key.as_bytes()),
            "the key went to the collector"
        );
        let request = ExportTraceServiceRequest::decode(body.as_slice())
            .expect("an ExportTraceServiceRequest");
        for resource_spans in &request.resource_spans {
            let resource = resource_spans.resource.clone().unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .iter()
                .flat_map(|scope| &scope.spans)
            {
                for kv in &span.attributes {
                    let value = text(kv.value.as_ref());
                    assert!(!value.contains(&key), "{}: the key", kv.key);
                }
                sessions.push((
                    span.name.clone(),
                    attribute(&resource.attributes, "service.name"),
                    span.attributes.clone(),
                ));
            }
        }
    }
    let id = id.to_string();
    let (name, service, attributes) = sessions
        .iter()
        .find(|(_, _, attributes)| attribute(attributes, "session_id").as_deref() == Some(&id))
        .unwrap_or_else(|| panic!("no span with session_id {id} in {sessions:#?}"));
    assert_eq!(name, "session");
    assert_eq!(service.as_deref(), Some("voxroute-e2e"));
    assert_eq!(
        attribute(attributes, "transport").as_deref(),
        Some("websocket")
    );
    assert_eq!(attribute(attributes, "provider").as_deref(), Some("echo"));
    // Only session spans are exported.
    for (name, _, _) in &sessions {
        assert_eq!(name, "session", "{sessions:#?}");
    }
}

/// Proves a dead collector is harmless: with the endpoint on a closed port and a 50 ms batch
/// delay, exports fail (and are logged as errors) while two calls in a row are echoed and
/// recorded, and SIGTERM still ends the router promptly with exit status 0.
#[tokio::test]
async fn an_unreachable_collector_does_not_disturb_calls() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
        listener.local_addr().expect("its address")
    };
    let options = RouterOptions {
        env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{closed}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "50".into()),
        ],
        ..RouterOptions::default()
    };
    let mut setup = Setup::new(TestDb::sqlite(), options).await;
    let (_, key) = setup.key("otel-down", None).await;
    for _ in 0..2 {
        let id = one_call(&setup, &key).await;
        assert_eq!(
            setup.ended(id).await.close_reason.as_deref(),
            Some("CLIENT_HANGUP")
        );
        // Let the batch processor try (and fail) an export of that call's span.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let router = &setup.router;
    eventually(WAIT, "a failed export in the logs", async || {
        router
            .stderr_text()
            .contains("BatchSpanProcessor.ExportError")
            .then_some(())
    })
    .await;
    assert_eq!(router.http_get("/readyz").await.0, 200);
    let status = setup.router.terminate(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "the router exited with {status}:\n{}",
        setup.router.stderr_text()
    );
}
