//! Shared by the proxy tests and the proxy benchmark.

use std::sync::Arc;

/// A server TLS configuration for `host` (HTTP/1.1) under a CA of its own, both generated
/// here, and that CA's PEM for the proxy's `extra_ca`.
pub fn upstream_tls(host: &str) -> (rustls::ServerConfig, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (config, ca.pem())
}

/// Proxy settings that reach `host` at the local `addr`, trusting the upstream's `ca_pem`.
pub fn local_upstream_settings(
    host: &str,
    addr: std::net::SocketAddr,
    ca_pem: &str,
) -> chiron_egress::EgressSettings {
    use rustls_pki_types::pem::PemObject;
    let mut settings = chiron_egress::EgressSettings::default();
    settings
        .allowed_networks
        .push(("127.0.0.1".parse().unwrap(), 32));
    settings.resolve.insert(host.to_owned(), addr);
    settings
        .extra_ca
        .push(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap());
    settings
}
