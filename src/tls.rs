//! HTTPS and WSS for `voxroute serve --tls-cert FILE --tls-key FILE`: the rustls server
//! configuration built from PEM files.
//!
//! Only TLS 1.3 and 1.2 are offered (rustls implements nothing older), TLS 1.3 first, with
//! rustls's `ring` cipher suites; no client certificates. The files are read once at start: a
//! missing file, a file without a certificate or key, or a key that does not match the
//! certificate stops `serve` with an error naming the file, before the listener binds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("cannot read a PEM certificate chain from {}: {detail}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The key file could not be read or holds no PEM private key.
    #[error("cannot read a PEM private key from {}: {detail}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("the TLS certificate and key cannot be used together: {0}")]
    Pair(#[from] rustls::Error),
}

/// The server configuration for `cert_path` (PEM chain, leaf first) and `key_path` (PEM
/// PKCS#8, PKCS#1 or SEC1 key).
///
/// # Errors
/// [`TlsSetupError`] naming the file and the problem.
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsSetupError::Certificate {
            path: cert_path.to_owned(),
            detail: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Certificate {
            path: cert_path.to_owned(),
            detail: "no CERTIFICATE block".to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|error| TlsSetupError::Key {
        path: key_path.to_owned(),
        detail: error.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_name_the_file() {
        let dir = std::env::temp_dir().join(format!("voxroute-tls-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let missing = dir.join("missing.pem");
        let message = server_config(&missing, &empty).unwrap_err().to_string();
        assert!(message.contains("missing.pem"), "{message}");
        let message = server_config(&empty, &empty).unwrap_err().to_string();
        assert!(
            message.contains("empty.pem") && message.contains("certificate"),
            "{message}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
