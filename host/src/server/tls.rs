//! TLS: the server's acceptor (a certificate chain and key in PEM, rustls on ring)
//! and the clients' trust (the CLI and `plughost worker`: a CA file in PEM, else the
//! web PKI roots).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The acceptor for `serve`, from PEM files; the error names the file and what is wrong.
pub(super) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls.cert {}: no certificate in the file (PEM expected)", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls.key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.cert and tls.key do not make a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What an HTTPS client trusts: the certificates of `ca` (PEM) when given, else the
/// web PKI roots.
pub fn client_config(ca: Option<&Path>) -> Result<ureq::tls::TlsConfig, String> {
    let Some(ca) = ca else { return Ok(ureq::tls::TlsConfig::default()) };
    let pem = std::fs::read(ca).map_err(|e| format!("tls.ca {}: {e}", ca.display()))?;
    let mut roots = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| format!("tls.ca {}: {e}", ca.display()))? {
            roots.push(c);
        }
    }
    if roots.is_empty() {
        return Err(format!("tls.ca {}: no certificate in the file (PEM expected)", ca.display()));
    }
    Ok(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots))).build())
}
