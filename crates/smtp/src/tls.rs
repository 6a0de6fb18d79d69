//! TLS for both sides: the server's certificate (configured, or self-signed and kept in the
//! data directory) and the relay client's opportunistic policy.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

pub use rustls::ServerConfig;

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: `cert` and `key` PEM files, or when absent a self-signed certificate for
/// `hostname`, made once and kept as `tls-cert.pem`/`tls-key.pem` in `data_dir`.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    hostname: &str,
    data_dir: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    certified(cert, key, &[hostname.to_string()], data_dir, "tls")
}

/// The self-signed certificate the control endpoint makes when none is configured: the
/// file its clients trust (`mailsilo lb` and the other commands read it).
pub fn control_cert_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("control-tls-cert.pem")
}

/// The control endpoint's HTTPS: `cert` and `key`, or when absent a self-signed certificate
/// for `names` (the host name and the listening address, so clients can verify either),
/// kept as [`control_cert_path`] and its key in `data_dir`.
pub fn control_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    names: &[String],
    data_dir: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    certified(cert, key, names, data_dir, "control-tls")
}

fn certified(
    cert: Option<&Path>,
    key: Option<&Path>,
    names: &[String],
    data_dir: &Path,
    stem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        _ => {
            let c = data_dir.join(format!("{stem}-cert.pem"));
            let k = data_dir.join(format!("{stem}-key.pem"));
            if !c.exists() || !k.exists() {
                let generated = rcgen::generate_simple_self_signed(names.to_vec())?;
                let io = |e: std::io::Error| TlsError::File {
                    path: data_dir.display().to_string(),
                    message: e.to_string(),
                };
                std::fs::create_dir_all(data_dir).map_err(io)?;
                std::fs::write(&c, generated.cert.pem()).map_err(io)?;
                // The key is readable by its owner only, whatever the umask.
                let mut key = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&k)
                    .map_err(io)?;
                key.write_all(generated.key_pair.serialize_pem().as_bytes())
                    .map_err(io)?;
            }
            (c, k)
        }
    };
    let file_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| file_err(&cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&cert, &e))?;
    if certs.is_empty() {
        return Err(file_err(&cert, &"no certificate in file"));
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| file_err(&key, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// The relay client's TLS: encryption without certificate verification, as Postfix's
/// `may` and `encrypt` levels do (MX hosts rarely have certificates for their MX names).
pub fn client_config() -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth();
    Arc::new(config)
}

/// Accepts any certificate but still checks handshake signatures, so the session is at
/// least encrypted to whoever holds the presented key.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A short description of a TLS session for logs and Received: headers, in the names other
/// MTAs print (`TLSv1.3 with cipher TLS_AES_256_GCM_SHA384`), not rustls's own.
pub fn describe(conn: &rustls::CommonState) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => v.as_str().unwrap_or("TLS").replace('_', "."),
        None => "TLS".to_string(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .and_then(|c| c.suite().as_str())
        .map_or("unknown".to_string(), |c| c.replacen("TLS13_", "TLS_", 1));
    format!("{version} with cipher {cipher}")
}
