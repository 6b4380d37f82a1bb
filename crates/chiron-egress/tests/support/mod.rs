//! Shared by the proxy tests and the proxy benchmark.

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
