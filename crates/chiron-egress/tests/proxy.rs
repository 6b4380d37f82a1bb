//! The secret store over real storage, and the proxy's runner identification over real
//! sockets.

use std::sync::Arc;

use chiron_core::{Actor, PrincipalId};
use chiron_egress::ca::CertificateAuthority;
use chiron_egress::{EgressProxy, EgressSettings, Keyring, MasterKey, Secrets};
use chiron_runner::egress::{Credentials, EgressHook, ProcessIdentity, RunnerEgress};
use chiron_store::secrets::SecretOwner;
use chiron_store::testing::store;
use chiron_store::Backend;
use chiron_tools::{EgressHost, Injection, SecretInjection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

mod support;

#[tokio::test]
async fn a_principals_own_value_wins_over_the_teams_and_rotation_keeps_values() {
    let (db, _guard) = store(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    Keyring::create_file(&key_file).unwrap();
    let secrets = Secrets::new(db.clone(), key_file.clone());
    let (alice, bob) = (PrincipalId::new(), PrincipalId::new());
    secrets
        .set("TOKEN", SecretOwner::Team, "team-value-1", Actor::cli())
        .await
        .unwrap();
    secrets
        .set(
            "TOKEN",
            SecretOwner::Principal(alice),
            "alice-value-1\n",
            Actor::cli(),
        )
        .await
        .unwrap();
    assert_eq!(
        secrets.values_for(alice).await.unwrap()["TOKEN"].as_str(),
        "alice-value-1"
    );
    assert_eq!(
        secrets.values_for(bob).await.unwrap()["TOKEN"].as_str(),
        "team-value-1"
    );
    assert!(secrets
        .set("bad name", SecretOwner::Team, "x", Actor::cli())
        .await
        .is_err());
    assert!(secrets
        .set("EMPTY", SecretOwner::Team, "\n", Actor::cli())
        .await
        .is_err());
    for (value, why) in [
        ("abc", "at least 4 bytes"),
        ("two\nlines", "control characters"),
        ("tab\tbed", "control characters"),
    ] {
        let err = secrets
            .set("ODD", SecretOwner::Team, value, Actor::cli())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{value:?}: {err}");
    }

    let before = secrets.status().unwrap();
    let (count, after) = secrets.rotate_key().await.unwrap();
    assert_eq!(count, 2);
    assert_ne!(before, after);
    assert_eq!(
        secrets.values_for(alice).await.unwrap()["TOKEN"].as_str(),
        "alice-value-1"
    );
    // A fresh store over the rotated key file opens them too.
    let reopened = Secrets::new(db.clone(), key_file);
    assert_eq!(
        reopened.values_for(bob).await.unwrap()["TOKEN"].as_str(),
        "team-value-1"
    );

    // Another key opens nothing and says why.
    let wrong = Secrets::with_keyring(db.clone(), Keyring::single(MasterKey::from_bytes(&[9; 32])));
    let err = wrong.values_for(alice).await.unwrap_err().to_string();
    assert!(err.contains("master key"), "{err}");
    // Listing shows names, never values.
    let listed = format!("{:?}", secrets.list(None).await.unwrap());
    assert!(
        listed.contains("TOKEN") && !listed.contains("value-1"),
        "{listed}"
    );
}

#[tokio::test]
async fn a_rotation_by_another_process_is_followed_and_loses_nothing() {
    let (db, _guard) = store(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    Keyring::create_file(&key_file).unwrap();
    let marker = dir.path().join("secrets.changed");
    // A running server, and the CLI that rotates the key under it.
    let server = Secrets::new(db.clone(), key_file.clone()).with_change_marker(marker.clone());
    let cli = Secrets::new(db.clone(), key_file.clone()).with_change_marker(marker);
    let alice = PrincipalId::new();
    let owner = SecretOwner::Principal(alice);
    server
        .set("TOKEN", owner, "before-rotation", Actor::cli())
        .await
        .unwrap();
    assert_eq!(value(&server, alice).await.unwrap(), "before-rotation");

    let (count, new_key) = cli.rotate_key().await.unwrap();
    assert_eq!(count, 1);
    // The server opens the re-sealed value with the new key, and seals with it.
    assert_eq!(value(&server, alice).await.unwrap(), "before-rotation");
    server
        .set("TOKEN", owner, "after-rotation", Actor::cli())
        .await
        .unwrap();
    let stored = db.all_secrets().await.unwrap();
    assert!(stored.iter().all(|s| s.key_id == new_key), "{stored:?}");
    // After a restart, everything opens.
    let restarted = Secrets::new(db.clone(), key_file);
    assert_eq!(value(&restarted, alice).await.unwrap(), "after-rotation");
}

/// The value of `TOKEN` that applies to `principal` now.
async fn value(secrets: &Secrets, principal: PrincipalId) -> Option<String> {
    let (values, _) = secrets.current(principal).await.unwrap();
    values.get("TOKEN").map(|v| v.as_str().to_owned())
}

/// The proxy keeps opened values between requests; a change made by another process on the
/// host (here: a second secret store over the same database and marker, as the CLI has) still
/// applies to the very next read, and nothing is read from storage while nothing changed.
#[tokio::test]
async fn cached_values_follow_changes_made_by_other_processes() {
    let (db, _guard) = store(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("secrets.changed");
    let key = || Keyring::single(MasterKey::from_bytes(&[5; 32]));
    let server = Secrets::with_keyring(db.clone(), key()).with_change_marker(marker.clone());
    let cli = Secrets::with_keyring(db.clone(), key()).with_change_marker(marker.clone());
    let alice = PrincipalId::new();
    // Alice's own value, set as the CLI sets it.
    let set =
        |value: &'static str| cli.set("TOKEN", SecretOwner::Principal(alice), value, Actor::cli());
    assert_eq!(value(&server, alice).await, None);
    set("first").await.unwrap();
    assert_eq!(value(&server, alice).await.as_deref(), Some("first"));
    cli.set("TOKEN", SecretOwner::Team, "team", Actor::cli())
        .await
        .unwrap();
    set("second").await.unwrap();
    assert_eq!(value(&server, alice).await.as_deref(), Some("second"));
    cli.delete("TOKEN", SecretOwner::Principal(alice), Actor::cli())
        .await
        .unwrap();
    assert_eq!(value(&server, alice).await.as_deref(), Some("team"));

    // A write that announces nothing (straight into storage) is not read: the cached values
    // serve requests without a storage read until a change is announced.
    let sealed = key().seal("TOKEN", SecretOwner::Principal(alice), b"unannounced");
    db.put_secret(&sealed).await.unwrap();
    assert_eq!(value(&server, alice).await.as_deref(), Some("team"));
    server.changed_elsewhere();
    assert_eq!(value(&server, alice).await.as_deref(), Some("unannounced"));

    // A marker deleted (or replaced) under a running server: the next change, which makes a
    // new marker, is still seen on the next read.
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(value(&server, alice).await.as_deref(), Some("unannounced"));
    set("third").await.unwrap();
    assert_eq!(value(&server, alice).await.as_deref(), Some("third"));
    // Without a marker every read goes to storage.
    let uncached = Secrets::with_keyring(db.clone(), key());
    assert_eq!(value(&uncached, alice).await.as_deref(), Some("third"));
}

/// On PostgreSQL every change is announced to other replicas (other hosts, other markers),
/// which drop their cached values on the notification.
#[tokio::test]
async fn secret_changes_are_announced_to_other_replicas() {
    if chiron_store::testing::postgres_skipped() {
        return;
    }
    let (guard, url) = chiron_store::testing::TestDb::create(Backend::Postgres).await;
    let db = chiron_store::Store::open(&chiron_store::ConnectOptions {
        url: url.clone(),
        max_connections: 2,
        acquire_timeout: std::time::Duration::from_secs(10),
    })
    .await
    .unwrap();
    let mut changes = chiron_store::secrets::SecretChanges::listen(&url)
        .await
        .unwrap();
    let (here, there) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = || Keyring::single(MasterKey::from_bytes(&[6; 32]));
    let writer = Secrets::with_keyring(db.clone(), key())
        .with_change_marker(here.path().join("secrets.changed"));
    let replica = Secrets::with_keyring(db.clone(), key())
        .with_change_marker(there.path().join("secrets.changed"));
    let alice = PrincipalId::new();
    writer
        .set(
            "TOKEN",
            SecretOwner::Principal(alice),
            "old-value",
            Actor::cli(),
        )
        .await
        .unwrap();
    assert!(changes.next().await.unwrap(), "the set was announced");
    assert_eq!(value(&replica, alice).await.as_deref(), Some("old-value"));
    writer
        .set(
            "TOKEN",
            SecretOwner::Principal(alice),
            "new-value",
            Actor::cli(),
        )
        .await
        .unwrap();
    assert!(changes.next().await.unwrap(), "the change was announced");
    replica.changed_elsewhere();
    assert_eq!(value(&replica, alice).await.as_deref(), Some("new-value"));
    drop(changes);
    db.close().await;
    drop(guard);
}

/// What a proxy needs besides storage: a CA in a directory of its own (kept while the
/// directory lives) and a secret store with a fixed key.
fn proxy_parts(
    db: &chiron_store::Store,
) -> (tempfile::TempDir, Arc<CertificateAuthority>, Arc<Secrets>) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(CertificateAuthority::load_or_create(dir.path()).unwrap());
    let secrets = Arc::new(Secrets::with_keyring(
        db.clone(),
        Keyring::single(MasterKey::from_bytes(&[1; 32])),
    ));
    (dir, ca, secrets)
}

/// A proxy with default settings over a fresh SQLite store (kept while the guard and the
/// directory live).
async fn plain_proxy() -> (
    chiron_store::Store,
    chiron_store::testing::TestDb,
    tempfile::TempDir,
    EgressProxy,
) {
    let (db, guard) = store(Backend::Sqlite).await;
    let (dir, ca, secrets) = proxy_parts(&db);
    let proxy = EgressProxy::new(db.clone(), secrets, ca, EgressSettings::default()).unwrap();
    (db, guard, dir, proxy)
}

/// The credential in a runner process's proxy URL (`http://chiron:<credential>@host:port`).
fn credential_in(proxy_url: &str) -> &str {
    proxy_url
        .trim_start_matches("http://chiron:")
        .split('@')
        .next()
        .unwrap()
}

/// The proxy's answer to `CONNECT target` with `credential`.
async fn connect_request(addr: std::net::SocketAddr, credential: &str, target: &str) -> String {
    use base64::Engine;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("chiron:{credential}"));
    stream
        .write_all(
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {auth}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut reply = vec![0u8; 4096];
    let n = stream.read(&mut reply).await.unwrap();
    String::from_utf8_lossy(&reply[..n]).into_owned()
}

#[tokio::test]
async fn a_credential_is_refused_on_another_runners_listener() {
    let (db, _guard, _dir, proxy) = plain_proxy().await;
    let stop = CancellationToken::new();
    let mut listeners = Vec::new();
    let mut runners = Vec::new();
    for name in ["runner-a", "runner-b"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listeners.push(listener.local_addr().unwrap());
        let runner = Arc::new(RunnerEgress {
            runner_id: name.into(),
            principal: PrincipalId::new(),
            credentials: Arc::new(Credentials::default()),
        });
        proxy.serve(runner.clone(), listener, stop.clone());
        runners.push(runner);
    }
    let guard = runners[0].credentials.issue(ProcessIdentity {
        package: "github".into(),
        call_id: Some("call-1".into()),
    });
    let url = guard.proxy_url();
    let credential = credential_in(&url).to_owned();
    // On its own runner's listener the credential is known (the host is then refused: no
    // package declares it for this principal).
    let own = connect_request(listeners[0], &credential, "api.github.com:443").await;
    assert!(own.starts_with("HTTP/1.1 403"), "{own}");
    // On another runner's listener it is not.
    let other = connect_request(listeners[1], &credential, "api.github.com:443").await;
    assert!(other.starts_with("HTTP/1.1 407"), "{other}");
    // Once the process is gone, not even on its own.
    drop(guard);
    let gone = connect_request(listeners[0], &credential, "api.github.com:443").await;
    assert!(gone.starts_with("HTTP/1.1 407"), "{gone}");
    stop.cancel();
    proxy.flush_audit().await;
    let rows = db.egress_requests(None, 10).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows
        .iter()
        .any(|r| r.outcome == "unauthenticated" && r.runner_id == "runner-b"));
}

#[tokio::test]
async fn storage_that_cannot_answer_is_a_503_not_a_refusal() {
    let (db, _guard, _dir, proxy) = plain_proxy().await;
    let stop = CancellationToken::new();
    let principal = db.create_principal("alice").await.unwrap().id;
    // A runner's listener, and the shared listener with a stored credential.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let runner_addr = listener.local_addr().unwrap();
    let runner = Arc::new(RunnerEgress {
        runner_id: "runner-a".into(),
        principal,
        credentials: Arc::new(Credentials::default()),
    });
    proxy.serve(runner.clone(), listener, stop.clone());
    let guard = runner.credentials.issue(ProcessIdentity {
        package: "github".into(),
        call_id: None,
    });
    let runner_credential = credential_in(&guard.proxy_url()).to_owned();
    let shared = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shared_addr = shared.local_addr().unwrap();
    let serving = proxy.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = shared.accept().await {
            let proxy = serving.clone();
            tokio::spawn(async move { proxy.serve_shared_connection(stream).await });
        }
    });
    let standalone = chiron_egress::proxy::new_credential();
    db.insert_egress_credential(
        &chiron_egress::proxy::credential_hash(&standalone),
        principal,
        "runner-s",
        "github",
    )
    .await
    .unwrap();

    db.close().await;
    for (addr, credential) in [
        (runner_addr, &runner_credential),
        (shared_addr, &standalone),
    ] {
        let answer = connect_request(addr, credential, "api.github.com:443").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("error=proxy_internal_error"), "{answer}");
        assert!(answer.contains("nothing is forwarded"), "{answer}");
    }
    stop.cancel();
    drop(guard);
}

/// What a test upstream received: each request's `Authorization` and query.
type Seen = Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A local HTTPS upstream for `host` with a CA of its own: answers every request with the
/// `Authorization` it received, and closes the connection after answering `/close`. Counts
/// the TCP connections it accepts, and keeps what it received.
async fn counting_upstream(
    host: &str,
) -> (
    std::net::SocketAddr,
    String,
    Arc<std::sync::atomic::AtomicUsize>,
    Seen,
) {
    let (config, ca_pem) = chiron_egress::testing::upstream_tls(&[host]);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let received = Seen::default();
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let seen = request
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let query = request.uri().query().unwrap_or_default().to_owned();
                        log.lock().unwrap().push((seen.clone(), query));
                        let gzip_accepted = request
                            .headers()
                            .get("accept-encoding")
                            .is_some_and(|v| v.to_str().unwrap().contains("gzip"));
                        let (body, encoding) = match request.uri().path() {
                            // Compressed when the client allows it (repeated so that it
                            // spans several frames of the decoder's output).
                            "/gzip" if gzip_accepted => {
                                use std::io::Write;
                                let mut encoder = flate2::write::GzEncoder::new(
                                    Vec::new(),
                                    flate2::Compression::default(),
                                );
                                encoder.write_all(seen.repeat(1000).as_bytes()).unwrap();
                                (encoder.finish().unwrap(), Some("gzip"))
                            }
                            "/brotli" => (seen.clone().into_bytes(), Some("br")),
                            "/te" => (
                                request
                                    .headers()
                                    .get("te")
                                    .map_or("none", |v| v.to_str().unwrap())
                                    .as_bytes()
                                    .to_vec(),
                                None,
                            ),
                            _ => (seen.clone().into_bytes(), None),
                        };
                        let mut response = hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body),
                        ));
                        if request.uri().path() == "/reason" {
                            let reason = hyper::ext::ReasonPhrase::try_from(seen.clone()).unwrap();
                            response.extensions_mut().insert(reason);
                        }
                        if let Some(encoding) = encoding {
                            response
                                .headers_mut()
                                .insert("content-encoding", encoding.parse().unwrap());
                        }
                        if request.uri().path() == "/close" {
                            response
                                .headers_mut()
                                .insert("connection", "close".parse().unwrap());
                        }
                        async { Ok::<_, std::convert::Infallible>(response) }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, ca_pem, accepted, received)
}

/// Serves a new runner of `principal` on its own listener; returns the credential guard of
/// one tool process of `package` and its proxy URL.
async fn package_runner(
    proxy: &EgressProxy,
    principal: PrincipalId,
    package: &str,
    stop: &CancellationToken,
) -> (chiron_runner::egress::CredentialGuard, String) {
    let runner = Arc::new(RunnerEgress {
        runner_id: format!("runner-{principal}"),
        principal,
        credentials: Arc::new(Credentials::default()),
    });
    let guard = runner.credentials.issue(ProcessIdentity {
        package: package.into(),
        call_id: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = guard.proxy_url().replace(
        "127.0.0.1:3128",
        &listener.local_addr().unwrap().to_string(),
    );
    proxy.serve(runner, listener, stop.clone());
    (guard, url)
}

/// Which protocols a test client offers the proxy (ALPN).
#[derive(Clone, Copy)]
enum Offers {
    Http1,
    /// HTTP/2 and HTTP/1.1, as reqwest, curl and Go do by default.
    Both,
    /// HTTP/2 alone, as gRPC clients do.
    Http2,
}

/// A client that trusts chiron's CA, goes through `proxy_url` and offers `protocols`.
fn proxied(ca: &CertificateAuthority, proxy_url: &str, protocols: Offers) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .proxy(reqwest::Proxy::all(proxy_url).unwrap());
    match protocols {
        Offers::Http1 => builder.http1_only(),
        Offers::Both => builder,
        Offers::Http2 => builder.http2_prior_knowledge(),
    }
    .build()
    .unwrap()
}

/// A manifest entry for `host` on `ports` (besides the standard one), path `/`, with
/// `secrets`.
fn entry(host: &str, ports: Vec<u16>, secrets: Vec<SecretInjection>) -> EgressHost {
    EgressHost {
        host: host.into(),
        ports,
        path_prefix: "/".into(),
        secrets,
    }
}

/// `name` injected as `Authorization: Bearer {value}`.
fn bearer(name: &str) -> SecretInjection {
    SecretInjection {
        name: name.into(),
        injection: Injection::Header {
            header: "Authorization".into(),
            template: "Bearer {value}".into(),
        },
    }
}

/// A proxy whose upstream for `host` (every port) is a [`counting_upstream`], and alice,
/// granted `package` and holding `secret` = `value`. Bind the guards by name: they keep the
/// database and the CA directory.
struct Fixture {
    db: chiron_store::Store,
    _db_guard: chiron_store::testing::TestDb,
    _ca_dir: tempfile::TempDir,
    ca: Arc<CertificateAuthority>,
    proxy: EgressProxy,
    secrets: Arc<Secrets>,
    alice: chiron_core::Principal,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    seen: Seen,
}

async fn fixture(host: &str, package: &str, secret: &str, value: &str) -> Fixture {
    use chiron_store::grants::GrantSubject;
    let (upstream, upstream_ca, accepted, seen) = counting_upstream(host).await;
    let (db, db_guard) = store(Backend::Sqlite).await;
    let (ca_dir, ca, secrets) = proxy_parts(&db);
    let alice = db.create_principal("alice").await.unwrap();
    db.add_grant(package, GrantSubject::Principal(alice.id), Actor::cli())
        .await
        .unwrap();
    secrets
        .set(
            secret,
            SecretOwner::Principal(alice.id),
            value,
            Actor::cli(),
        )
        .await
        .unwrap();
    let settings = support::local_upstream_settings(host, upstream, &upstream_ca);
    let proxy = EgressProxy::new(db.clone(), secrets.clone(), ca.clone(), settings).unwrap();
    Fixture {
        db,
        _db_guard: db_guard,
        _ca_dir: ca_dir,
        ca,
        proxy,
        secrets,
        alice,
        accepted,
        seen,
    }
}

#[tokio::test]
async fn a_tunnel_keeps_one_upstream_connection_and_hands_it_to_the_next_tunnel() {
    use chiron_store::grants::GrantSubject;
    use std::sync::atomic::Ordering;

    const HOST: &str = "api.reuse.test";
    let Fixture {
        db,
        ca,
        proxy,
        alice,
        accepted,
        _db_guard,
        _ca_dir,
        ..
    } = fixture(HOST, "reuse", "REUSE_TOKEN", "reuse-secret").await;
    let mut hosts = chiron_egress::proxy::PackageHosts::new();
    hosts.insert(
        "reuse".into(),
        vec![entry(HOST, vec![], vec![bearer("REUSE_TOKEN")])],
    );
    // Another of alice's packages reaches the host without the secret.
    hosts.insert("other".into(), vec![entry(HOST, vec![], vec![])]);
    db.add_grant("other", GrantSubject::Principal(alice.id), Actor::cli())
        .await
        .unwrap();
    proxy.set_packages(hosts);
    let stop = CancellationToken::new();
    let (guard, proxy_url) = package_runner(&proxy, PrincipalId(alice.id.0), "reuse", &stop).await;
    let client = || proxied(&ca, &proxy_url, Offers::Http1);
    let get = |client: reqwest::Client, path: &'static str| async move {
        let response = client
            .get(format!("https://{HOST}{path}"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.text().await.unwrap()
    };

    // One tunnel: its requests share one upstream connection, and the secret is injected
    // into each (the upstream answers with what it got; the proxy scrubs it on the way back).
    let first = client();
    for _ in 0..3 {
        assert_eq!(
            get(first.clone(), "/items").await,
            "Bearer [redacted by chiron]"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // The upstream closes its connection after this answer: the tunnel's next request goes
    // over a new one.
    get(first.clone(), "/close").await;
    assert_eq!(
        get(first.clone(), "/items").await,
        "Bearer [redacted by chiron]"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // When the tunnel ends, its connection waits for the next tunnel to the host.
    let mut idle = proxy.idle_upstreams();
    drop(first);
    idle.wait_for(|parked| *parked == 1).await.unwrap();
    assert_eq!(get(client(), "/items").await, "Bearer [redacted by chiron]");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // Nor does the principal's tunnel from another package (the upstream may have tied the
    // first package's authentication to the connection).
    idle.wait_for(|parked| *parked == 1).await.unwrap();
    let (others_guard, others_url) =
        package_runner(&proxy, PrincipalId(alice.id.0), "other", &stop).await;
    assert_eq!(
        get(proxied(&ca, &others_url, Offers::Http1), "/items").await,
        ""
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 3);

    // Another principal's tunnel to the same host never gets that connection (nor the value).
    idle.wait_for(|parked| *parked >= 1).await.unwrap();
    let bob = db.create_principal("bob").await.unwrap();
    db.add_grant("reuse", GrantSubject::Principal(bob.id), Actor::cli())
        .await
        .unwrap();
    let (bobs_guard, bobs_url) =
        package_runner(&proxy, PrincipalId(bob.id.0), "reuse", &stop).await;
    let bobs_client = proxied(&ca, &bobs_url, Offers::Http1);
    assert_eq!(get(bobs_client, "/items").await, "");
    assert_eq!(accepted.load(Ordering::SeqCst), 4);

    // Clients that speak only HTTP/2 (gRPC) are served too, over a pool of the principal's
    // own: bob's request does not reuse alice's connection. A client that offers both is
    // answered in HTTP/1.1: its tunnel takes alice's parked connection (the three HTTP/1.1
    // tunnels above have ended and parked theirs).
    idle.wait_for(|parked| *parked == 3).await.unwrap();
    for (url, offers, version, expected, connections) in [
        (
            &proxy_url,
            Offers::Http2,
            reqwest::Version::HTTP_2,
            "Bearer [redacted by chiron]",
            5,
        ),
        (&bobs_url, Offers::Http2, reqwest::Version::HTTP_2, "", 6),
        (
            &proxy_url,
            Offers::Both,
            reqwest::Version::HTTP_11,
            "Bearer [redacted by chiron]",
            6,
        ),
    ] {
        let response = proxied(&ca, url, offers)
            .get(format!("https://{HOST}/items"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), version);
        assert_eq!(response.text().await.unwrap(), expected);
        assert_eq!(accepted.load(Ordering::SeqCst), connections);
    }

    stop.cancel();
    proxy.flush_audit().await;
    let rows = db.egress_requests(None, 20).await.unwrap();
    assert_eq!(rows.len(), 11);
    assert!(rows.iter().all(|r| r.status == 200));
    assert!(rows
        .iter()
        .all(|r| (r.principal_id == alice.id && r.package == "reuse")
            == (r.injected == ["REUSE_TOKEN"])));
    drop((guard, others_guard, bobs_guard));
}

#[tokio::test]
async fn hosts_open_only_on_declared_ports_secrets_follow_ports_and_upgrades_are_refused() {
    use chiron_egress::proxy::Outcome;
    use chiron_store::grants::GrantSubject;

    const HOST: &str = "api.ports.test";
    let Fixture {
        db,
        ca,
        proxy,
        alice,
        _db_guard,
        _ca_dir,
        ..
    } = fixture(HOST, "std", "PORTS_TOKEN", "ports-secret").await;
    let mut hosts = chiron_egress::proxy::PackageHosts::new();
    // `std` declares the host (port 443) with the secret; `extra` declares port 8443 too.
    hosts.insert(
        "std".into(),
        vec![entry(HOST, vec![], vec![bearer("PORTS_TOKEN")])],
    );
    hosts.insert("extra".into(), vec![entry(HOST, vec![8443], vec![])]);
    proxy.set_packages(hosts);
    let stop = CancellationToken::new();
    let principal = PrincipalId(alice.id.0);
    let (std_guard, std_url) = package_runner(&proxy, principal, "std", &stop).await;
    let get = |url: &str, target: String| {
        let client = proxied(&ca, url, Offers::Http1);
        async move {
            let response = client.get(target).send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            response.text().await.unwrap()
        }
    };

    assert_eq!(
        get(&std_url, format!("https://{HOST}/items")).await,
        "Bearer [redacted by chiron]"
    );
    // Port 8443 is declared by no package granted to alice yet.
    let listener = std_url.rsplit('@').next().unwrap().parse().unwrap();
    let credential = credential_in(&std_url);
    let refused = connect_request(listener, credential, &format!("{HOST}:8443")).await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.contains("port 8443 of api.ports.test"), "{refused}");

    // Once `extra` is granted, the port is reachable, but `std`'s secret, declared for the
    // standard port only, is not injected there.
    db.add_grant("extra", GrantSubject::Principal(alice.id), Actor::cli())
        .await
        .unwrap();
    assert_eq!(
        get(&std_url, format!("https://{HOST}:8443/items")).await,
        ""
    );
    assert_eq!(
        get(&std_url, format!("https://{HOST}/items")).await,
        "Bearer [redacted by chiron]"
    );

    // Of the hop-by-hop headers, only `TE: trailers` is passed on.
    for (te, expected) in [
        ("trailers", "trailers"),
        ("gzip, trailers", "trailers"),
        ("gzip", "none"),
    ] {
        let answer = proxied(&ca, &std_url, Offers::Http1)
            .get(format!("https://{HOST}/te"))
            .header("te", te)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(answer, expected, "TE: {te}");
    }

    // A WebSocket upgrade is refused with a reason, not forwarded without its headers.
    let upgrade = proxied(&ca, &std_url, Offers::Http1)
        .get(format!("https://{HOST}/socket"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .send()
        .await
        .unwrap();
    assert_eq!(upgrade.status(), 501);
    assert!(upgrade.text().await.unwrap().contains("WebSocket"));

    stop.cancel();
    proxy.flush_audit().await;
    let rows = db.egress_requests(None, 10).await.unwrap();
    assert_eq!(
        rows.iter().filter(|r| r.outcome == "denied_host").count(),
        1
    );
    assert!(rows
        .iter()
        .any(|r| r.outcome == "unsupported" && r.path == "/socket"));
    // Every finished request is counted by outcome.
    let counts = proxy.counts();
    let count = |outcome: Outcome| {
        counts
            .by_outcome
            .iter()
            .find(|(o, _)| *o == outcome)
            .map(|(_, n)| *n)
    };
    assert_eq!(count(Outcome::Ok), Some(6));
    assert_eq!(count(Outcome::DeniedHost), Some(1));
    assert_eq!(count(Outcome::Unsupported), Some(1));
    assert_eq!(counts.by_outcome.iter().map(|(_, n)| n).sum::<u64>(), 8);
    assert!(counts.bytes_in > 0);
    // Rows name a port that is not the standard one.
    let to_8443: Vec<_> = rows
        .iter()
        .filter(|r| r.host == "api.ports.test:8443")
        .map(|r| r.outcome.as_str())
        .collect();
    assert_eq!(to_8443, ["ok", "denied_host"], "newest first");
    assert!(rows
        .iter()
        .filter(|r| r.host != "api.ports.test:8443")
        .all(|r| r.host == HOST));
    drop(std_guard);
}

#[tokio::test]
async fn basic_query_and_compressed_echoes_of_values_never_reach_the_tool() {
    const HOST: &str = "api.creds.test";
    const VALUE: &str = "creds-secret-value";
    const KEY: &str = "query-key-value/+=";
    let Fixture {
        db,
        ca,
        proxy,
        secrets,
        alice,
        seen,
        _db_guard,
        _ca_dir,
        ..
    } = fixture(HOST, "creds", "CREDS_TOKEN", VALUE).await;
    secrets
        .set(
            "CREDS_KEY",
            SecretOwner::Principal(alice.id),
            KEY,
            Actor::cli(),
        )
        .await
        .unwrap();
    let mut hosts = chiron_egress::proxy::PackageHosts::new();
    hosts.insert(
        "creds".into(),
        vec![entry(
            HOST,
            vec![],
            vec![
                SecretInjection {
                    name: "CREDS_TOKEN".into(),
                    injection: Injection::Basic {
                        username: "bot".into(),
                    },
                },
                SecretInjection {
                    name: "CREDS_KEY".into(),
                    injection: Injection::Placeholder,
                },
            ],
        )],
    );
    proxy.set_packages(hosts);
    let stop = CancellationToken::new();
    let (guard, url) = package_runner(&proxy, PrincipalId(alice.id.0), "creds", &stop).await;
    let client = proxied(&ca, &url, Offers::Http1);

    // The placeholder as a client that encodes query values sends it (colon as %3A), and as
    // written.
    for query in [
        "key=chiron-secret%3ACREDS_KEY",
        "key=chiron-secret:CREDS_KEY",
    ] {
        let answer = client
            .get(format!("https://{HOST}/items?{query}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // The upstream echoes the Basic header it got: the tool sees neither the value nor
        // the base64 of `bot:value`.
        assert_eq!(answer, "Basic [redacted by chiron]");
    }
    // A tool that asks for compression cannot slip the echo past the scrubber: the proxy
    // asks the upstream for gzip only, decodes it, and sends the body scrubbed and plain.
    for accept in ["gzip", "br"] {
        let response = client
            .get(format!("https://{HOST}/gzip"))
            .header("accept-encoding", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers().get("content-encoding"), None);
        let body = response.text().await.unwrap();
        assert_eq!(body, "Basic [redacted by chiron]".repeat(1000));
    }
    // A range is asked for plain (a piece of a gzip stream cannot be decoded alone).
    let ranged = client
        .get(format!("https://{HOST}/gzip"))
        .header("accept-encoding", "gzip")
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ranged, "Basic [redacted by chiron]");

    // Nor in a reason phrase: the standard one replaces it.
    let response = client
        .get(format!("https://{HOST}/reason"))
        .send()
        .await
        .unwrap();
    let reason = response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
    assert_eq!(reason, None, "the standard reason phrase");
    assert_eq!(response.text().await.unwrap(), "Basic [redacted by chiron]");

    // An encoding the proxy cannot read is not passed on to a principal with secrets.
    let refused = client
        .get(format!("https://{HOST}/brotli"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 502);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("content-encoding br"));
    let pair = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("bot:{VALUE}"),
    );
    let encoded_key: String = url::form_urlencoded::byte_serialize(KEY.as_bytes()).collect();
    let received = seen.lock().unwrap().clone();
    assert_eq!(received.len(), 7);
    assert!(received
        .iter()
        .all(|(authorization, _)| *authorization == format!("Basic {pair}")));
    let queries: Vec<&str> = received.iter().map(|(_, q)| q.as_str()).collect();
    let key = format!("key={encoded_key}");
    assert_eq!(queries, [key.as_str(), key.as_str(), "", "", "", "", ""]);
    stop.cancel();
    proxy.flush_audit().await;
    // When alice's runner stops, the values opened for her are dropped.
    let principal = PrincipalId(alice.id.0);
    assert!(secrets.opened_patterns(principal).is_some());
    proxy.stopped(principal);
    assert!(secrets.opened_patterns(principal).is_none());
    let rows = db.egress_requests(None, 10).await.unwrap();
    for row in &rows {
        let expected: &[&str] = match row.path.as_str() {
            "/items" => &["CREDS_KEY", "CREDS_TOKEN"],
            _ => &["CREDS_TOKEN"],
        };
        assert_eq!(row.injected, expected, "{row:?}");
    }
    assert_eq!(
        rows.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(),
        ["upstream_error", "ok", "ok", "ok", "ok", "ok", "ok"],
        "newest first"
    );
    drop(guard);
}
