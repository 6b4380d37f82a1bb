//! Requests through the egress proxy vs straight to the same local HTTPS upstream, with the
//! same client (reqwest, one reused connection each), in the same run: latency p50/p99 of
//! sequential requests, and throughput with 16 concurrent requests. The proxied path does the
//! real work: credential lookup, grant check, TLS interception, secret lookup and opening,
//! header injection, dial policy, upstream TLS, response scrubbing and an audit row.
//!
//! Run: `cargo bench -p chiron-egress --bench proxy`; `CHIRON_BENCH_REQUESTS` (default 2000)
//! and `CHIRON_BENCH_SECONDS` (default 3) adjust it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chiron_core::{Actor, PrincipalId};
use chiron_egress::ca::CertificateAuthority;
use chiron_egress::proxy::package_hosts;
use chiron_egress::{EgressProxy, EgressSettings, Keyring, MasterKey, Secrets};
use chiron_runner::egress::{Credentials, EgressHook, ProcessIdentity, RunnerEgress};
use chiron_store::grants::GrantSubject;
use chiron_store::secrets::SecretOwner;
use chiron_tools::{EgressHost, Injection, SecretInjection};
use tokio_util::sync::CancellationToken;

const HOST: &str = "api.bench.test";

async fn upstream() -> (std::net::SocketAddr, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "bench CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![HOST.to_owned()])
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
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from_static(
                            b"{\"ok\":true,\"items\":[1,2,3]}",
                        )),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, ca.pem())
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

async fn latency(client: &reqwest::Client, url: &str, n: usize) -> (Duration, Duration) {
    for _ in 0..50 {
        client.get(url).send().await.unwrap().bytes().await.unwrap();
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let response = client.get(url).send().await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.bytes().await.unwrap();
        samples.push(started.elapsed());
    }
    (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    )
}

async fn throughput(client: &reqwest::Client, url: &str, seconds: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, url) = (client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let response = client.get(&url).send().await.unwrap();
                assert!(response.status().is_success());
                response.bytes().await.unwrap();
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / seconds as f64
}

fn main() {
    let requests: usize = std::env::var("CHIRON_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seconds: u64 = std::env::var("CHIRON_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (upstream, upstream_ca) = upstream().await;
        let dir = tempfile::tempdir().unwrap();
        // Storage as a gateway has it by default: SQLite with 8 connections.
        let db = chiron_store::Store::connect(&chiron_store::ConnectOptions {
            url: format!("sqlite:{}", dir.path().join("bench.db").display()),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
        })
        .await
        .unwrap();
        db.migrate().await.unwrap();
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path()).unwrap());
        // As a gateway has it: values cached between requests, behind the change marker.
        let secrets = Arc::new(
            Secrets::with_keyring(db.clone(), Keyring::single(MasterKey::from_bytes(&[3; 32])))
                .with_change_marker(dir.path().join("secrets.changed")),
        );
        let alice = db.create_principal("alice").await.unwrap();
        db.add_grant("bench", GrantSubject::Principal(alice.id), Actor::cli())
            .await
            .unwrap();
        secrets
            .set(
                "BENCH_TOKEN",
                SecretOwner::Principal(alice.id),
                "bench-secret-value-123",
                Actor::cli(),
            )
            .await
            .unwrap();
        let mut settings = EgressSettings::default();
        settings
            .allowed_networks
            .push(("127.0.0.1".parse().unwrap(), 32));
        settings.resolve.insert(HOST.to_owned(), upstream);
        use rustls_pki_types::pem::PemObject;
        settings.extra_ca.push(
            rustls_pki_types::CertificateDer::from_pem_slice(upstream_ca.as_bytes()).unwrap(),
        );
        let proxy = EgressProxy::new(db.clone(), secrets, ca.clone(), settings).unwrap();
        let package = chiron_tools::ToolPackage {
            dir: dir.path().to_owned(),
            name: "bench".into(),
            version: "1".into(),
            description: String::new(),
            kind: chiron_tools::PackageKind::Command,
            command: vec!["true".into()],
            env: Default::default(),
            source: None,
            timeout: Duration::from_secs(10),
            tools: vec![],
            egress: vec![EgressHost {
                host: HOST.into(),
                path_prefix: "/".into(),
                secrets: vec![SecretInjection {
                    name: "BENCH_TOKEN".into(),
                    injection: Injection::Header {
                        header: "Authorization".into(),
                        template: "Bearer {value}".into(),
                    },
                }],
            }],
        };
        proxy.set_packages(package_hosts([&package]));
        let runner = Arc::new(RunnerEgress {
            runner_id: "runner-bench".into(),
            principal: PrincipalId(alice.id.0),
            credentials: Arc::new(Credentials::default()),
        });
        let guard = runner.credentials.issue(ProcessIdentity {
            package: "bench".into(),
            call_id: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = listener.local_addr().unwrap();
        proxy.serve(runner, listener, CancellationToken::new());

        let upstream_cert = reqwest::Certificate::from_pem(upstream_ca.as_bytes()).unwrap();
        let direct = reqwest::Client::builder()
            .add_root_certificate(upstream_cert)
            .resolve(HOST, upstream)
            .pool_max_idle_per_host(32)
            .http1_only()
            .build()
            .unwrap();
        let proxy_url = guard
            .proxy_url()
            .replace("127.0.0.1:3128", &proxy_addr.to_string());
        let proxied = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .proxy(reqwest::Proxy::all(&proxy_url).unwrap())
            .pool_max_idle_per_host(32)
            .http1_only()
            .build()
            .unwrap();
        let url = format!("https://{HOST}:{}/items", upstream.port());
        let url_proxied = format!("https://{HOST}/items");

        println!(
            "egress benchmark: {requests} sequential requests, then 16 concurrent for {seconds}s"
        );
        if std::env::var("CHIRON_BENCH_ONLY").as_deref() == Ok("proxy") {
            // For profiling the proxied path alone.
            let rps = throughput(&proxied, &url_proxied, seconds).await;
            println!("through the proxy only: {rps:.0} req/s");
            return;
        }
        let (direct_p50, direct_p99) = latency(&direct, &url, requests).await;
        let (proxy_p50, proxy_p99) = latency(&proxied, &url_proxied, requests).await;
        let direct_rps = throughput(&direct, &url, seconds).await;
        let proxy_rps = throughput(&proxied, &url_proxied, seconds).await;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "direct TLS            p50 {:>7.3} ms  p99 {:>7.3} ms  {:>8.0} req/s",
            ms(direct_p50),
            ms(direct_p99),
            direct_rps
        );
        println!(
            "through the proxy     p50 {:>7.3} ms  p99 {:>7.3} ms  {:>8.0} req/s",
            ms(proxy_p50),
            ms(proxy_p99),
            proxy_rps
        );
        println!(
            "added p50: {:.3} ms   throughput ratio: {:.2}x",
            ms(proxy_p50) - ms(direct_p50),
            proxy_rps / direct_rps
        );
        proxy.flush_audit().await;
        let audited = db.egress_requests(None, 5).await.unwrap();
        assert!(
            audited.iter().all(|r| r.injected == ["BENCH_TOKEN"]),
            "every proxied request was injected and audited"
        );
        drop(guard);
    });
}
