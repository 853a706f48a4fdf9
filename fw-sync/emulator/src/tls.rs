//! A throw-away CA and a server certificate signed by it, so tests exercise real TLS
//! verification (the client trusts the CA file, not "any certificate").

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// A server TLS config for `names` (DNS names or IP addresses), and the CA's PEM, which is
/// also written to `ca_pem_path` when given.
pub fn server_config(names: &[&str], ca_pem_path: Option<&Path>) -> anyhow::Result<(Arc<rustls::ServerConfig>, String)> {
    let ca_key = KeyPair::generate().context("CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "bulkhead emulator test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).context("CA certificate")?;

    let key = KeyPair::generate().context("server key")?;
    let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).context("server params")?;
    params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("localhost"));
    let cert = params.signed_by(&key, &ca_cert, &ca_key).context("server certificate")?;

    let ca_pem = ca_cert.pem();
    if let Some(p) = ca_pem_path {
        std::fs::write(p, &ca_pem).with_context(|| format!("writing {}", p.display()))?;
    }
    let chain = vec![cert.der().clone(), ca_cert.der().clone()];
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow::anyhow!("server key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .context("server TLS config")?;
    Ok((Arc::new(config), ca_pem))
}
