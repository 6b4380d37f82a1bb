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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

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
    assert_eq!(value(&server, alice).await, None);
    cli.set(
        "TOKEN",
        SecretOwner::Principal(alice),
        "first",
        Actor::cli(),
    )
    .await
    .unwrap();
    assert_eq!(value(&server, alice).await.as_deref(), Some("first"));
    cli.set("TOKEN", SecretOwner::Team, "team", Actor::cli())
        .await
        .unwrap();
    cli.set(
        "TOKEN",
        SecretOwner::Principal(alice),
        "second",
        Actor::cli(),
    )
    .await
    .unwrap();
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
    // Without a marker every read goes to storage.
    let uncached = Secrets::with_keyring(db.clone(), key());
    assert_eq!(
        value(&uncached, alice).await.as_deref(),
        Some("unannounced")
    );
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
        .set("TOKEN", SecretOwner::Principal(alice), "old", Actor::cli())
        .await
        .unwrap();
    assert!(changes.next().await.unwrap(), "the set was announced");
    assert_eq!(value(&replica, alice).await.as_deref(), Some("old"));
    writer
        .set("TOKEN", SecretOwner::Principal(alice), "new", Actor::cli())
        .await
        .unwrap();
    assert!(changes.next().await.unwrap(), "the change was announced");
    replica.changed_elsewhere();
    assert_eq!(value(&replica, alice).await.as_deref(), Some("new"));
    drop(changes);
    db.close().await;
    drop(guard);
}

async fn connect_request(addr: std::net::SocketAddr, credential: &str) -> String {
    use base64::Engine;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("chiron:{credential}"));
    stream
        .write_all(
            format!("CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n")
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
    let (db, _guard) = store(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(CertificateAuthority::load_or_create(dir.path()).unwrap());
    let secrets = Arc::new(Secrets::with_keyring(
        db.clone(),
        Keyring::single(MasterKey::from_bytes(&[1; 32])),
    ));
    let proxy = EgressProxy::new(db.clone(), secrets, ca, EgressSettings::default()).unwrap();
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
    let credential = url
        .trim_start_matches("http://chiron:")
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    // On its own runner's listener the credential is known (the host is then refused: no
    // package declares it for this principal).
    let own = connect_request(listeners[0], &credential).await;
    assert!(own.starts_with("HTTP/1.1 403"), "{own}");
    // On another runner's listener it is not.
    let other = connect_request(listeners[1], &credential).await;
    assert!(other.starts_with("HTTP/1.1 407"), "{other}");
    // Once the process is gone, not even on its own.
    drop(guard);
    let gone = connect_request(listeners[0], &credential).await;
    assert!(gone.starts_with("HTTP/1.1 407"), "{gone}");
    stop.cancel();
    proxy.flush_audit().await;
    let rows = db.egress_requests(None, 10).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows
        .iter()
        .any(|r| r.outcome == "unauthenticated" && r.runner_id == "runner-b"));
}
