//! For tests and benchmarks (the `testing` feature): TLS for local upstreams that stand in for
//! real APIs.

use std::sync::Arc;

/// A server TLS configuration for `hosts` (HTTP/1.1) under a CA of its own, both generated
/// here, and that CA's PEM (for the proxy's `extra_ca`).
///
/// # Panics
/// When the generated certificates do not build, which is a bug in the test setup.
pub fn upstream_tls(hosts: &[&str]) -> (rustls::ServerConfig, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "test upstream CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).expect("a CA certificate");
    let key = KeyPair::generate().expect("a leaf key");
    let names = hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
    let leaf = CertificateParams::new(names)
        .and_then(|params| params.signed_by(&key, &ca, &ca_key))
        .expect("a leaf certificate for the hosts");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("a server configuration for the leaf");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (config, ca.pem())
}
