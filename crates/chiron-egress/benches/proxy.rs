//! Requests through the egress proxy vs straight to the same local HTTPS upstream, with the
//! same client (reqwest, reused connections), in the same run: latency p50/p99 of sequential
//! requests, and throughput two ways: over one reused connection (requests back to back, as a
//! tool makes them), and with 16 concurrent connections, which keep both of this machine's
//! cores busy, so that the ratio compares CPU cost per request. The proxied path does the
//! real work: credential lookup, grant check, TLS interception, secret lookup and opening,
//! header injection, dial policy, upstream TLS, response scrubbing and an audit row.
//!
//! A third row is the floor for any TLS-intercepting proxy here: a bare relay built from the
//! same libraries (hyper, rustls, hyper-util's client) that terminates TLS and forwards each
//! request with none of chiron's work. Client, proxy and upstream share this machine's cores,
//! so the proxied path runs twice the TLS and HTTP endpoints of the direct one.
//!
//! Throughput is measured in short windows, direct, proxied and relayed in turn (the order
//! rotating), for several rounds: this machine's speed drifts by tens of percent within a
//! minute, and a ratio taken from windows far apart measures the drift as much as the proxy.
//! Each round gives its own ratios; the median round is reported, with the spread.
//!
//! Each window also reports the CPU time the process spent per request (client, proxy and
//! upstream together); the proxied path's CPU per request minus the relay's is what chiron's
//! own work costs per request. It drifts with the host as much as the rates do. The audit rows
//! of a proxied window's last moments are written during the next window (the writer lingers
//! up to 50 ms), so both figures flatter the proxy very slightly.
//!
//! The second core buys less than it seems. With `CHIRON_BENCH_WORKERS=1` (one runtime worker
//! instead of two) direct TLS over 16 connections ran faster than with two (63–67k against
//! 50–56k req/s, one host, same hour: two workers contend), while the proxied path changed
//! little (26–29k against 27–31k); so the 16-connection ratio moves with the worker count
//! (0.41–0.45× with one, 0.53–0.57× with two). The one-connection figures do not (0.45–0.48×
//! both ways): that chain runs on one core at a time either way.
//!
//! Last, the same comparison with the client tools mostly are: curl (when it is installed), one
//! process per window making `CHIRON_BENCH_CURL_REQUESTS` requests (default 3000) over one
//! reused connection, then four times as many over 16 parallel connections, direct, proxied
//! and relayed in turn, for rounds. The proxy adds about the same CPU per request whatever the
//! client; how large a share of the whole that is depends on what the client itself costs
//! (reqwest, above, costs about as little as the upstream).
//!
//! Run: `cargo bench -p chiron-egress --bench proxy`; `CHIRON_BENCH_REQUESTS` (default 2000),
//! `CHIRON_BENCH_ROUNDS` (default 12) and `CHIRON_BENCH_WINDOW_MS` (default 500) adjust it.
//! For profiling, `CHIRON_BENCH_ONLY=direct|proxy|relay` runs one path alone, for rounds ×
//! window, over `CHIRON_BENCH_CONNECTIONS` connections (default 16).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chiron_core::{Actor, PrincipalId};
use chiron_egress::ca::CertificateAuthority;
use chiron_egress::proxy::package_hosts;
use chiron_egress::{EgressProxy, Keyring, MasterKey, Secrets};
use chiron_runner::egress::{Credentials, EgressHook, ProcessIdentity, RunnerEgress};
use chiron_store::grants::GrantSubject;
use chiron_store::secrets::SecretOwner;
use chiron_tools::{EgressHost, Injection, SecretInjection};
use tokio_util::sync::CancellationToken;

#[path = "../../../benches/common.rs"]
mod common;

#[path = "../tests/support/mod.rs"]
mod support;

const HOST: &str = "api.bench.test";

/// Connections of the concurrent throughput windows: enough to keep both cores busy.
const CONCURRENT: usize = 16;

async fn upstream() -> (std::net::SocketAddr, String) {
    let (config, ca_pem) = chiron_egress::testing::upstream_tls(&[HOST]);
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
    (addr, ca_pem)
}

/// A bare TLS-intercepting relay: CONNECT, terminate TLS with `leaf`, forward each request
/// to the upstream over TLS, stream the answer back. No credentials, policy, secrets, audit
/// or scrubbing: the cost of the intercepting shape alone.
async fn bare_relay(
    upstream: std::net::SocketAddr,
    upstream_ca: &str,
    leaf: Arc<rustls::sign::CertifiedKey>,
) -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls_pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(upstream_ca.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
            HOST.try_into().unwrap(),
        ))
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, hyper::body::Incoming> = Client::builder(TokioExecutor::new())
        .http1_writev(false)
        .build(connector);
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(leaf)));
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let target: hyper::Uri = format!("https://{upstream}").parse().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, client, target) = (acceptor.clone(), client.clone(), target.clone());
            tokio::spawn(async move {
                let connect = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (acceptor, client, target) =
                            (acceptor.clone(), client.clone(), target.clone());
                        async move {
                            tokio::spawn(async move {
                                let upgraded = hyper::upgrade::on(request).await.unwrap();
                                let tls = acceptor.accept(TokioIo::new(upgraded)).await.unwrap();
                                let forward = hyper::service::service_fn(
                                    move |request: hyper::Request<hyper::body::Incoming>| {
                                        let (client, target) = (client.clone(), target.clone());
                                        async move {
                                            let (mut parts, body) = request.into_parts();
                                            let path = parts
                                                .uri
                                                .path_and_query()
                                                .map_or("/", |p| p.as_str());
                                            parts.uri =
                                                format!("{target}{}", path.trim_start_matches('/'))
                                                    .parse()
                                                    .unwrap();
                                            let response = client
                                                .request(hyper::Request::from_parts(parts, body))
                                                .await
                                                .unwrap();
                                            Ok::<_, std::convert::Infallible>(
                                                response.map(|b| b.boxed()),
                                            )
                                        }
                                    },
                                );
                                let mut builder = hyper::server::conn::http1::Builder::new();
                                builder.writev(false);
                                let _ = builder.serve_connection(TokioIo::new(tls), forward).await;
                            });
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Empty::<Bytes>::new(),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), connect)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

/// p50 and p99 of `n` sequential requests. They are sent from a task of the runtime, as the
/// throughput windows send theirs: the thread `block_on` runs on is not one of its workers,
/// so every answer to a request sent from there would cross threads.
async fn latency(client: &reqwest::Client, url: &str, n: usize) -> (Duration, Duration) {
    let (client, url) = (client.clone(), url.to_owned());
    tokio::spawn(async move { sequential(&client, &url, n).await })
        .await
        .unwrap()
}

async fn sequential(client: &reqwest::Client, url: &str, n: usize) -> (Duration, Duration) {
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

/// CPU time this process has used so far, on every thread: client, proxy and upstream alike.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// One throughput window: requests per second, and CPU time per request (of the whole
/// process, so client and upstream included).
#[derive(Clone, Copy)]
struct Window {
    rate: f64,
    cpu_per_request: f64,
}

/// Requests per second and CPU per request in `window`, from `connections` tasks sending back
/// to back (reqwest gives each its own pooled connection).
async fn throughput(
    client: &reqwest::Client,
    url: &str,
    window: Duration,
    connections: usize,
) -> Window {
    let cpu = cpu_time();
    let deadline = Instant::now() + window;
    let mut tasks = Vec::new();
    for _ in 0..connections {
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
    Window {
        rate: total as f64 / window.as_secs_f64(),
        cpu_per_request: (cpu_time() - cpu).as_secs_f64() / total as f64,
    }
}

/// A curl config file in `dir` that fetches `target` `requests` times.
fn curl_urls(dir: &std::path::Path, name: &str, target: &str, requests: usize) -> PathBuf {
    let config = dir.join(name);
    let line = format!("url = \"{target}\"\noutput = \"/dev/null\"\n");
    std::fs::write(&config, line.repeat(requests)).unwrap();
    config
}

/// Requests per second of one curl process fetching what `config` lists (`requests` URLs),
/// over one reused connection, or over 16 at once when `parallel`. The three paths differ in
/// `args` (CA bundle, and the proxy or a fixed resolution) and the URL.
async fn curl_rate(args: &[String], config: &Path, requests: usize, parallel: bool) -> f64 {
    let mut command = tokio::process::Command::new("curl");
    command
        .args(["--silent", "--show-error", "--fail"])
        .args(args)
        .arg("--config")
        .arg(config);
    if parallel {
        command.args(["--parallel", "--parallel-max", "16", "--no-progress-meter"]);
    }
    let started = Instant::now();
    let status = command.status().await.expect("curl runs");
    assert!(status.success(), "curl: {status}");
    requests as f64 / started.elapsed().as_secs_f64()
}

/// The median and the range of `values`.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn main() {
    let requests: usize = common::setting("CHIRON_BENCH_REQUESTS", 2000);
    let rounds: usize = common::setting("CHIRON_BENCH_ROUNDS", 12);
    let window = Duration::from_millis(common::setting("CHIRON_BENCH_WINDOW_MS", 500));
    let runtime = common::runtime();
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
        let settings = support::local_upstream_settings(HOST, upstream, &upstream_ca);
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
                ports: vec![],
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
        let relay_addr = bare_relay(upstream, &upstream_ca, ca.leaf(HOST).unwrap()).await;
        let relayed = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .proxy(reqwest::Proxy::all(format!("http://{relay_addr}")).unwrap())
            .pool_max_idle_per_host(32)
            .http1_only()
            .build()
            .unwrap();
        let url = format!("https://{HOST}:{}/items", upstream.port());
        let url_proxied = format!("https://{HOST}/items");

        println!(
            "egress benchmark: {requests} sequential requests, then throughput over 1 and {CONCURRENT} connections in {rounds} rounds of {} ms windows",
            window.as_millis()
        );
        // For profiling one path alone: CHIRON_BENCH_ONLY=direct, proxy or relay.
        if let Ok(only) = std::env::var("CHIRON_BENCH_ONLY") {
            let (client, target) = match only.as_str() {
                "direct" => (&direct, url.as_str()),
                "proxy" => (&proxied, url_proxied.as_str()),
                "relay" => (&relayed, url_proxied.as_str()),
                other => panic!("CHIRON_BENCH_ONLY: direct, proxy or relay, not {other}"),
            };
            let connections = common::setting("CHIRON_BENCH_CONNECTIONS", CONCURRENT);
            let run = throughput(client, target, window * rounds as u32, connections).await;
            println!(
                "{only} only, {connections} connection(s): {:.0} req/s, {:.1} us CPU per request",
                run.rate,
                run.cpu_per_request * 1e6
            );
            return;
        }
        let (direct_p50, direct_p99) = latency(&direct, &url, requests).await;
        let (proxy_p50, proxy_p99) = latency(&proxied, &url_proxied, requests).await;
        let (relay_p50, relay_p99) = latency(&relayed, &url_proxied, requests).await;
        let paths = [
            (&direct, url.as_str()),
            (&proxied, url_proxied.as_str()),
            (&relayed, url_proxied.as_str()),
        ];
        // Warm up: the first concurrent window of each path opens its connections and tunnels.
        for (client, target) in paths {
            throughput(client, target, window / 2, CONCURRENT).await;
        }
        // windows[connections][path]: for each connection count, rounds of three windows; the
        // order rotates so that no path always follows the same one (a window inherits a
        // little of the previous one's state).
        let mut windows = [vec![Vec::new(); 3], vec![Vec::new(); 3]];
        for round in 0..rounds {
            for (windows, connections) in windows.iter_mut().zip([1, CONCURRENT]) {
                for turn in 0..3 {
                    let which = (round + turn) % 3;
                    let (client, target) = paths[which];
                    windows[which].push(throughput(client, target, window, connections).await);
                }
            }
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mean = |r: &[Window], of: fn(&Window) -> f64| r.iter().map(of).sum::<f64>() / r.len() as f64;
        let rate: fn(&Window) -> f64 = |w| w.rate;
        let cpu: fn(&Window) -> f64 = |w| w.cpu_per_request * 1e6;
        println!(
            "{:<20} {:>10} {:>10} {:>14} {:>14} {:>17}",
            "", "p50", "p99", "1 conn", format!("{CONCURRENT} conns"), "CPU/request 1 | 16"
        );
        for (which, (name, p50, p99)) in [
            ("direct TLS", direct_p50, direct_p99),
            ("through the proxy", proxy_p50, proxy_p99),
            ("bare relay (floor)", relay_p50, relay_p99),
        ]
        .into_iter()
        .enumerate()
        {
            println!(
                "{name:<20} {:>7.3} ms {:>7.3} ms {:>8.0} req/s {:>8.0} req/s {:>6.1} | {:>5.1} us",
                ms(p50),
                ms(p99),
                mean(&windows[0][which], rate),
                mean(&windows[1][which], rate),
                mean(&windows[0][which], cpu),
                mean(&windows[1][which], cpu),
            );
        }
        println!("added p50: {:.3} ms", ms(proxy_p50) - ms(direct_p50));
        let show = |(median, low, high): (f64, f64, f64)| format!("{median:.2}x ({low:.2}-{high:.2})");
        for (windows, connections) in windows.iter().zip([1, CONCURRENT]) {
            let ratio = |of: usize, to: usize| {
                show(spread(windows[of].iter().zip(&windows[to]).map(|(a, b)| a.rate / b.rate).collect()))
            };
            println!(
                "throughput over {connections:>2} connection(s), median round (range): proxy/direct {}   relay/direct {}   proxy/relay {}",
                ratio(1, 0),
                ratio(2, 0),
                ratio(1, 2)
            );
        }
        // What chiron's own work costs beyond the intercepting shape: CPU per request of the
        // proxied path minus the bare relay's, round by round.
        for (windows, connections) in windows.iter().zip([1, CONCURRENT]) {
            let (median, low, high) = spread(
                windows[1].iter().zip(&windows[2]).map(|(a, b)| (a.cpu_per_request - b.cpu_per_request) * 1e6).collect(),
            );
            println!(
                "CPU per request, proxy minus relay, over {connections:>2} connection(s), median round (range): {median:.1} us ({low:.1} to {high:.1})"
            );
        }
        // The client tools mostly are: curl, when it is installed.
        let curl_requests: usize = common::setting("CHIRON_BENCH_CURL_REQUESTS", 3000);
        let curl_rounds = rounds.div_ceil(2);
        let upstream_pem = dir.path().join("upstream.pem");
        std::fs::write(&upstream_pem, &upstream_ca).unwrap();
        let chiron_pem = dir.path().join("chiron.pem");
        std::fs::write(&chiron_pem, ca.pem()).unwrap();
        let pem = |path: &std::path::Path| vec!["--cacert".to_owned(), path.display().to_string()];
        let via = |proxy: String| [pem(&chiron_pem), vec!["--proxy".into(), proxy]].concat();
        // Direct, proxied, relayed; direct fetches `url`, the others `url_proxied`.
        let curl_paths = [
            [
                pem(&upstream_pem),
                vec![
                    "--noproxy".into(),
                    "*".into(),
                    "--resolve".into(),
                    format!("{HOST}:{}:127.0.0.1", upstream.port()),
                ],
            ]
            .concat(),
            via(proxy_url.clone()),
            via(format!("http://{relay_addr}")),
        ];
        let has_curl = tokio::process::Command::new("curl")
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !has_curl {
            println!("curl: not installed, skipped");
        } else {
            println!(
                "curl: {curl_requests} requests over one connection, then {} over 16, in {curl_rounds} rounds",
                curl_requests * 4
            );
            for (parallel, requests, label) in
                [(false, curl_requests, " 1 connection"), (true, curl_requests * 4, "16 connections")]
            {
                let direct_urls = curl_urls(dir.path(), "curl-direct", &url, requests);
                let proxied_urls = curl_urls(dir.path(), "curl-proxied", &url_proxied, requests);
                let mut rates = vec![Vec::new(); 3];
                for round in 0..curl_rounds {
                    for turn in 0..3 {
                        let which = (round + turn) % 3;
                        let urls = if which == 0 { &direct_urls } else { &proxied_urls };
                        rates[which]
                            .push(curl_rate(&curl_paths[which], urls, requests, parallel).await);
                    }
                }
                let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
                let ratio = |of: usize, to: usize| {
                    show(spread(rates[of].iter().zip(&rates[to]).map(|(a, b)| a / b).collect()))
                };
                println!(
                    "curl over {label}: direct {:.0}, proxied {:.0}, relayed {:.0} req/s; median round (range): proxy/direct {}   relay/direct {}   proxy/relay {}",
                    mean(&rates[0]),
                    mean(&rates[1]),
                    mean(&rates[2]),
                    ratio(1, 0),
                    ratio(2, 0),
                    ratio(1, 2)
                );
            }
        }
        proxy.flush_audit().await;
        let audited = db.egress_requests(None, 5).await.unwrap();
        assert!(
            audited.iter().all(|r| r.injected == ["BENCH_TOKEN"]),
            "every proxied request was injected and audited"
        );
        drop(guard);
    });
}
