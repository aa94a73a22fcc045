//! `voxroute serve --tls-cert --tls-key`: HTTPS/WSS with rustls, against a self-signed
//! certificate made for the test (by the `openssl` command, which `scripts/test` installs).
//!
//! What they prove: a WSS caller that trusts the certificate runs a real session (TLS 1.3 by
//! default, TLS 1.2 when that is all the client offers); garbage instead of a TLS hello, and a
//! plain `ws://` upgrade on the TLS port, are refused without harming the next caller; and a
//! bad certificate file stops `serve` at start with a message naming the file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream};

use crate::harness::{Router, RouterOptions, TempDir, TestDb, WAIT, within};

/// A self-signed certificate for `localhost` and 127.0.0.1: (directory, cert, key).
fn self_signed() -> (TempDir, PathBuf, PathBuf) {
    let dir = TempDir::new();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A leaf, not a CA: webpki refuses a CA certificate as the server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl command runs (scripts/test installs it)");
    assert!(status.success(), "openssl made the certificate");
    (dir, cert, key)
}

fn tls_options(cert: &Path, key: &Path) -> RouterOptions {
    RouterOptions {
        dev: true,
        args: vec![
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ],
        ..RouterOptions::default()
    }
}

/// A client configuration trusting only `cert`, offering `versions`.
fn client_config(
    cert: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(der.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A keyless (`--dev`) native session over WSS: `session.started`, then 100 ms of tone in and
/// audio back. Returns the negotiated TLS version.
async fn wss_session(
    router: &Router,
    config: Arc<rustls::ClientConfig>,
) -> rustls::ProtocolVersion {
    let port = router.ws_url("").rsplit(':').next().unwrap().to_owned();
    let url = format!("wss://localhost:{port}/v1/ws");
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(Connector::Rustls(config)),
    )
    .await
    .expect("the WSS upgrade succeeds");
    let version = match ws.get_ref() {
        MaybeTlsStream::Rustls(stream) => stream.get_ref().1.protocol_version(),
        _ => None,
    }
    .expect("a TLS connection");
    ws.send(Message::text(
        json!({"type": "start", "codec": "pcm16", "sample_rate": 8000}).to_string(),
    ))
    .await
    .unwrap();
    let tone = voxroute_codecs::measure::sine(440.0, 8_000, 8_000.0, 800);
    let bytes: Vec<u8> = tone.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut started = false;
    let mut audio_bytes = 0;
    within(WAIT, "a session and its echo over WSS", async {
        while audio_bytes < bytes.len() / 2 {
            match ws.next().await.expect("the socket stays open").unwrap() {
                Message::Text(text) => {
                    let event: Value = serde_json::from_str(&text).unwrap();
                    if event["type"] == "session.started" && !started {
                        started = true;
                        for frame in bytes.chunks(320) {
                            ws.send(Message::binary(frame.to_vec())).await.unwrap();
                        }
                    }
                }
                Message::Binary(audio) => audio_bytes += audio.len(),
                _ => {}
            }
        }
    })
    .await;
    ws.send(Message::text(json!({"type": "stop"}).to_string()))
        .await
        .unwrap();
    version
}

/// Proves `--tls-cert`/`--tls-key` serve WSS with TLS 1.3 preferred and TLS 1.2 accepted, and
/// that the listening line says `https://`.
#[tokio::test]
async fn wss_sessions_run_over_tls_1_3_and_1_2() {
    let (_dir, cert, key) = self_signed();
    let db = TestDb::sqlite();
    let router = Router::start(&db.url(), tls_options(&cert, &key)).await;
    let (stdout, _) = router.output();
    assert!(
        String::from_utf8_lossy(&stdout).contains("voxroute listening on https://"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
    let both = client_config(&cert, &[&rustls::version::TLS13, &rustls::version::TLS12]);
    assert_eq!(
        wss_session(&router, both).await,
        rustls::ProtocolVersion::TLSv1_3
    );
    let only_12 = client_config(&cert, &[&rustls::version::TLS12]);
    assert_eq!(
        wss_session(&router, only_12).await,
        rustls::ProtocolVersion::TLSv1_2
    );
}

/// Proves bad input on the TLS port hurts nobody: bytes that are not a TLS hello get the
/// connection closed (after at most a TLS alert), a plain-text WebSocket upgrade fails, and a
/// WSS session right after works.
#[tokio::test]
async fn tls_garbage_and_plain_upgrades_are_refused() {
    let (_dir, cert, key) = self_signed();
    let db = TestDb::sqlite();
    let router = Router::start(&db.url(), tls_options(&cert, &key)).await;
    let port = router.ws_url("").rsplit(':').next().unwrap().to_owned();

    let mut socket = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    socket
        .write_all(b"\x16\x03\x01\x00\x05garbage that is not a client hello\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let read = within(
        Duration::from_secs(10),
        "the server to drop a garbage handshake",
        socket.read_to_end(&mut reply),
    )
    .await;
    if let Err(error) = read {
        // A reset is an end too; anything else is not.
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    }
    assert!(
        reply.is_empty() || reply[0] == 0x15,
        "nothing but a TLS alert comes back: {reply:?}"
    );

    let plain = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/ws")).await;
    assert!(plain.is_err(), "a plain upgrade on the TLS port must fail");

    let config = client_config(&cert, &[&rustls::version::TLS13]);
    assert_eq!(
        wss_session(&router, config).await,
        rustls::ProtocolVersion::TLSv1_3
    );
}

/// Proves a certificate file that holds no certificate stops `serve` at start, with a message
/// naming the file.
#[tokio::test]
async fn unusable_certificate_stops_serve_at_start() {
    let (dir, _cert, key) = self_signed();
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let db = TestDb::sqlite();
    let output = Command::new(env!("CARGO_BIN_EXE_voxroute"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url"])
        .arg(db.url())
        .arg("--tls-cert")
        .arg(&bogus)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .expect("voxroute runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bogus.pem"), "{stderr}");
}
