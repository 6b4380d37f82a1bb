//! The egress proxy. It serves every runner's listener (an [`EgressHook`]): a connection there
//! comes from that runner's principal; the `Proxy-Authorization` credential names the tool
//! process, hence its package and MCP call. Then, per request:
//!
//! 1. The host must be declared by one of the principal's granted packages, on the scheme's
//!    standard port or one the entry lists (else `403`).
//! 2. `CONNECT` is intercepted with a leaf certificate from chiron's CA; SNI, `Host` and the
//!    CONNECT target must agree.
//! 3. Secrets are injected only as the sending package's manifest declares for that host, port
//!    and path (header template, Basic, or a `chiron-secret:NAME` placeholder), only over TLS.
//!    Protocol upgrades are refused; upstreams are asked for gzip or nothing.
//! 4. The upstream is resolved, each address checked against the dial policy (no private,
//!    loopback, link-local, CGNAT or metadata addresses unless allowed), and the checked
//!    address is dialled; TLS is verified against the system roots plus `extra_ca`.
//! 5. Secret values (and Basic `user:value` pairs) are scrubbed from response headers, the
//!    streamed body (gzip decoded first), trailers and a non-standard reason phrase.
//! 6. One egress audit row per request — never a value — and a count by [`Outcome`].
//!
//! Without a usable master key every request is refused: the proxy fails closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use chiron_core::time_util::now;
use chiron_core::PrincipalId;
use chiron_runner::egress::{EgressHook, ProcessIdentity, RunnerEgress};
use chiron_store::batch::BatchWriter;
use chiron_store::secrets::EgressRecord;
use chiron_store::Store;
use chiron_tools::{standard_port, EgressHost, Injection};

use crate::ca::CertificateAuthority;
use crate::scrub::{Patterns, StreamScrubber, REDACTED};
use crate::secrets::{Secrets, Values};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Response bodies up to this size with a declared length are scrubbed whole and sent with
/// their new length; longer or open-ended ones stream through the scrubber.
const WHOLE_BODY_LIMIT: usize = 256 * 1024;

/// Dial policy and upstream trust.
#[derive(Debug, Clone, Default)]
pub struct EgressSettings {
    /// Networks that may be dialled although they are private, loopback, link-local or CGNAT
    /// (`10.1.0.0/16`, `127.0.0.1/32`, …).
    pub allowed_networks: Vec<(IpAddr, u8)>,
    /// Fixed resolutions, `host:port` or `host` (any port) → the address to dial; used before
    /// DNS (tests point real host names at local servers this way).
    pub resolve: HashMap<String, SocketAddr>,
    /// Extra PEM certificates upstream TLS may chain to, besides the system roots.
    pub extra_ca: Vec<rustls_pki_types::CertificateDer<'static>>,
}

/// Parses `a.b.c.d/n` or `addr` (a single address).
pub fn parse_network(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, bits) = match text.split_once('/') {
        Some((addr, bits)) => (addr, Some(bits)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an address or network"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(bits) => bits
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| format!("{text:?} has a bad prefix length"))?,
        None => max,
    };
    Ok((addr, bits))
}

fn in_network(ip: IpAddr, (net, bits): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Whether `ip` is an address tools must not reach by default: loopback, private, link-local
/// (including the 169.254.169.254 metadata service), CGNAT, unspecified, multicast,
/// broadcast, or IPv6 unique-local.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Why the dialler refused an upstream.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The host resolved to an address the policy forbids.
    #[error("{host} resolves to {ip}, which egress may not reach")]
    Refused {
        /// The host.
        host: String,
        /// The forbidden address.
        ip: IpAddr,
    },
    /// Resolution or connection failed.
    #[error("cannot reach {host}: {reason}")]
    Unreachable {
        /// The host.
        host: String,
        /// What failed.
        reason: String,
    },
}

/// Resolves, checks every address against the policy, and connects to the checked one.
#[derive(Clone)]
struct Dialer {
    settings: Arc<EgressSettings>,
}

impl Dialer {
    fn permitted(&self, ip: IpAddr) -> bool {
        !is_internal(ip)
            || self
                .settings
                .allowed_networks
                .iter()
                .any(|net| in_network(ip, *net))
    }

    async fn dial(self, uri: Uri) -> Result<TokioIo<TcpStream>, DialError> {
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let unreachable = |reason: String| DialError::Unreachable {
            host: host.clone(),
            reason,
        };
        let fixed = self
            .settings
            .resolve
            .get(&format!("{host}:{port}"))
            .copied()
            .or_else(|| self.settings.resolve.get(&host).copied());
        let addrs: Vec<SocketAddr> = match fixed {
            Some(addr) => vec![addr],
            None => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .collect(),
        };
        // A name with any forbidden address is refused whole (no rebinding games).
        if let Some(bad) = addrs.iter().find(|a| !self.permitted(a.ip())) {
            return Err(DialError::Refused {
                host: host.clone(),
                ip: bad.ip(),
            });
        }
        let mut last = String::from("no addresses");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(TokioIo::new(stream));
                }
                Err(err) => last = err.to_string(),
            }
        }
        Err(unreachable(last))
    }
}

impl tower_service::Service<Uri> for Dialer {
    type Response = TokioIo<TcpStream>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().dial(uri))
    }
}

/// How many idle upstream connections wait per principal and `host:port` between tunnels.
const IDLE_PER_HOST: usize = 8;

/// How long an idle upstream connection waits for the next tunnel.
const IDLE_FOR: Duration = Duration::from_secs(90);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One upstream HTTP/1.1 connection's request side.
type Sender = hyper::client::conn::http1::SendRequest<ProxyBody>;

/// Upstream connections of intercepted HTTP/1.1 tunnels. A tunnel's requests come one after
/// another, so the tunnel keeps one upstream connection for all of them (no pool checkout per
/// request, see [`TunnelUpstream`]); when the tunnel ends, its connection waits here for the
/// same principal's and package's next tunnel to the same `host:port`, so a tool that opens a
/// tunnel per request (curl, `urllib`) still reuses one upstream TLS session. Neither
/// principals nor packages share a connection: a server may tie state to one
/// (connection-bound authentication), which must not carry one package's secret to another.
struct Upstreams {
    /// Dial policy, then TLS offering only HTTP/1.1.
    connector: hyper_rustls::HttpsConnector<Dialer>,
    idle: Mutex<HashMap<String, Vec<(Instant, Sender)>>>,
    /// How many idle connections wait (after the last park or take).
    parked: tokio::sync::watch::Sender<usize>,
}

impl Upstreams {
    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(Instant, Sender)>>> {
        self.idle
            .lock()
            .expect("invariant: the idle upstream lock is never poisoned")
    }

    /// An idle connection under `key` that can take a request now.
    fn take(&self, key: &str) -> Option<Sender> {
        let mut idle = self.idle();
        let parked = idle.get_mut(key)?;
        let mut found = None;
        while let Some((since, sender)) = parked.pop() {
            if since.elapsed() < IDLE_FOR && sender.is_ready() {
                found = Some(sender);
                break;
            }
        }
        if parked.is_empty() {
            idle.remove(key);
        }
        self.parked.send_replace(idle.values().map(Vec::len).sum());
        found
    }

    /// Keeps `sender` under `key` for the next tunnel, if it can take another request.
    fn park(&self, key: String, sender: Sender) {
        if !sender.is_ready() {
            return;
        }
        let mut idle = self.idle();
        let parked = idle.entry(key).or_default();
        parked.retain(|(since, sender)| since.elapsed() < IDLE_FOR && !sender.is_closed());
        if parked.len() < IDLE_PER_HOST {
            parked.push((Instant::now(), sender));
        }
        self.parked.send_replace(idle.values().map(Vec::len).sum());
    }

    /// A new connection to `host:port`, through the dial policy and verified TLS.
    async fn dial(&self, host: &str, port: u16) -> Result<Sender, BoxError> {
        let uri: Uri = format!("https://{host}:{port}").parse()?;
        let io = tower_service::Service::call(&mut self.connector.clone(), uri).await?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            // Head and body in one buffer: over TLS each written slice becomes its own record.
            .writev(false)
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "egress upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// The upstream side of one HTTP/1.1 tunnel: one connection, taken from the idle ones or
/// dialled on the first request, kept for the tunnel's later requests, parked when it ends.
struct TunnelUpstream {
    proxy: EgressProxy,
    /// Who opened the tunnel.
    caller: Caller,
    host: String,
    port: u16,
    sender: Mutex<Option<Sender>>,
}

impl TunnelUpstream {
    /// Where its connection waits between tunnels: the principal's and package's, for
    /// `host:port`.
    fn idle_key(&self) -> String {
        format!(
            "{}/{}/{}:{}",
            self.caller.runner.principal, self.caller.process.package, self.host, self.port
        )
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Sender>> {
        self.sender
            .lock()
            .expect("invariant: a tunnel's upstream lock is never poisoned")
    }

    /// Sends `request` (origin-form, with `Host`). A connection that turns out closed before
    /// the request went out is replaced once by a new one.
    async fn send(&self, mut request: Request<ProxyBody>) -> Result<Response<Incoming>, BoxError> {
        let upstreams = &self.proxy.inner.upstreams;
        for _ in 0..2 {
            let kept = self.slot().take();
            let reused = kept.or_else(|| upstreams.take(&self.idle_key()));
            let mut sender = match reused {
                Some(mut sender) => match sender.ready().await {
                    Ok(()) => sender,
                    Err(_) => upstreams.dial(&self.host, self.port).await?,
                },
                None => upstreams.dial(&self.host, self.port).await?,
            };
            let sent = sender.try_send_request(request);
            *self.slot() = Some(sender);
            match sent.await {
                Ok(response) => return Ok(response),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => {
                        self.slot().take();
                        request = unsent;
                    }
                    None => return Err(err.into_error().into()),
                },
            }
        }
        Err("the upstream closed the connection twice before the request went out".into())
    }
}

impl Drop for TunnelUpstream {
    fn drop(&mut self) {
        let kept = self.sender.get_mut().map(Option::take).unwrap_or_default();
        if let Some(sender) = kept {
            self.proxy.inner.upstreams.park(self.idle_key(), sender);
        }
    }
}

type PoolClient = Client<hyper_rustls::HttpsConnector<Dialer>, ProxyBody>;

/// Pooled upstream connections for plain HTTP and HTTP/2 tunnels (which multiplex, so they
/// cannot keep one connection per tunnel): hyper-util's pool, one per principal and package,
/// so that, as with [`Upstreams`], neither share a connection.
struct Pools {
    /// Dial policy, then TLS offering HTTP/2 and HTTP/1.1 (or plain HTTP).
    connector: hyper_rustls::HttpsConnector<Dialer>,
    clients: Mutex<HashMap<(PrincipalId, String), PoolClient>>,
}

impl Pools {
    /// The pool of `caller`'s principal and package (a handle to it: clients are cheap to
    /// clone).
    fn client(&self, caller: &Caller) -> PoolClient {
        let key = (caller.runner.principal, caller.process.package.clone());
        self.clients
            .lock()
            .expect("invariant: the pools lock is never poisoned")
            .entry(key)
            .or_insert_with(|| {
                Client::builder(TokioExecutor::new())
                    // Head and body in one buffer: over TLS each written slice becomes its
                    // own record.
                    .http1_writev(false)
                    .build(self.connector.clone())
            })
            .clone()
    }
}

/// How a request reaches its upstream.
enum Via<'a> {
    /// The principal's pool (plain HTTP, HTTP/2 tunnels): absolute URI, HTTP/1.1 or HTTP/2.
    Pool,
    /// The tunnel's own HTTP/1.1 connection.
    Tunnel(&'a TunnelUpstream),
}

/// What each package may reach, from the loaded manifests.
pub type PackageHosts = HashMap<String, Vec<EgressHost>>;

struct Inner {
    store: Store,
    /// Egress audit rows, written in batches off the request path, and counted.
    audit: AuditSink,
    secrets: Arc<Secrets>,
    ca: Arc<CertificateAuthority>,
    packages: RwLock<Arc<PackageHosts>>,
    /// Plain HTTP and HTTP/2 tunnels: one connection pool per principal.
    pools: Pools,
    /// Upstream connections of HTTP/1.1 tunnels (see [`TunnelUpstream`]).
    upstreams: Upstreams,
    /// The runtime the proxy was made on: runner listeners are served there, with work
    /// stealing, rather than on the HTTP thread whose request started the runner.
    runtime: tokio::runtime::Handle,
}

/// The egress proxy; cheap to clone.
#[derive(Clone)]
pub struct EgressProxy {
    inner: Arc<Inner>,
}

fn client_tls(settings: &EgressSettings) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for cert in &settings.extra_ca {
        roots
            .add(cert.clone())
            .map_err(|e| format!("extra_ca: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl EgressProxy {
    /// A proxy over the secret store and CA, with `settings`.
    pub fn new(
        store: Store,
        secrets: Arc<Secrets>,
        ca: Arc<CertificateAuthority>,
        settings: EgressSettings,
    ) -> Result<Self, String> {
        let tls = client_tls(&settings)?;
        let dialer = Dialer {
            settings: Arc::new(settings),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(dialer.clone());
        let tunnel_connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(dialer);
        Ok(Self {
            inner: Arc::new(Inner {
                audit: AuditSink {
                    writer: {
                        let store = store.clone();
                        BatchWriter::start("egress requests", move |rows| {
                            let store = store.clone();
                            async move { store.record_egress_batch(&rows).await }
                        })
                    },
                    counters: Arc::default(),
                },
                store,
                secrets,
                ca,
                packages: RwLock::new(Arc::default()),
                pools: Pools {
                    connector,
                    clients: Mutex::default(),
                },
                upstreams: Upstreams {
                    connector: tunnel_connector,
                    idle: Mutex::default(),
                    parked: tokio::sync::watch::Sender::new(0),
                },
                runtime: tokio::runtime::Handle::current(),
            }),
        })
    }

    /// Waits until every egress row recorded so far is in storage.
    pub async fn flush_audit(&self) {
        self.inner.audit.writer.flush().await;
    }

    /// What the proxy has done since it started.
    pub fn counts(&self) -> EgressCounts {
        let counters = &self.inner.audit.counters;
        EgressCounts {
            by_outcome: Outcome::ALL
                .iter()
                .map(|o| (*o, counters.by_outcome[*o as usize].load(Ordering::Relaxed)))
                .collect(),
            bytes_out: counters.bytes_out.load(Ordering::Relaxed),
            bytes_in: counters.bytes_in.load(Ordering::Relaxed),
            audit_dropped: self.inner.audit.writer.dropped(),
        }
    }

    /// The number of idle upstream connections kept for the next tunnel to their host,
    /// updated as tunnels end and begin.
    pub fn idle_upstreams(&self) -> tokio::sync::watch::Receiver<usize> {
        self.inner.upstreams.parked.subscribe()
    }

    /// Replaces what packages may reach (after loading or reloading tool packages).
    pub fn set_packages(&self, packages: PackageHosts) {
        let mut basic: HashMap<String, Vec<String>> = HashMap::new();
        for secret in packages.values().flatten().flat_map(|host| &host.secrets) {
            if let Injection::Basic { username } = &secret.injection {
                let users = basic.entry(secret.name.clone()).or_default();
                if !users.contains(username) {
                    users.push(username.clone());
                }
            }
        }
        self.inner.secrets.set_basic_usernames(basic);
        *self
            .inner
            .packages
            .write()
            .expect("invariant: packages lock is never poisoned") = Arc::new(packages);
    }

    fn packages(&self) -> Arc<PackageHosts> {
        self.inner
            .packages
            .read()
            .expect("invariant: packages lock is never poisoned")
            .clone()
    }

    /// Serves one accepted connection from `runner`'s listener.
    pub async fn serve_connection(&self, runner: Arc<RunnerEgress>, stream: TcpStream) {
        self.serve_origin(Origin::Runner(runner), stream).await;
    }

    /// Serves one connection to the standalone proxy (`chiron egress`), where each request
    /// names its runner, principal and package with a stored egress credential.
    pub async fn serve_shared_connection(&self, stream: TcpStream) {
        self.serve_origin(Origin::Shared, stream).await;
    }

    async fn serve_origin(&self, origin: Origin, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let proxy = self.clone();
        let service = hyper::service::service_fn(move |request| {
            let (proxy, origin) = (proxy.clone(), origin.clone());
            async move { Ok::<_, Infallible>(proxy.handle(origin, request).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await;
        if let Err(err) = served {
            tracing::debug!(error = %err, "egress connection ended");
        }
    }
}

impl EgressHook for EgressProxy {
    fn serve(&self, runner: Arc<RunnerEgress>, listener: TcpListener, stop: CancellationToken) {
        let proxy = self.clone();
        // Moved to this runtime's reactor: the listener may come from another runtime.
        let listener = listener.into_std();
        self.inner.runtime.spawn(async move {
            let listener = match listener.and_then(TcpListener::from_std) {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::error!(runner = %runner.runner_id, error = %err, "egress listener unusable");
                    return;
                }
            };
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = stop.cancelled() => break,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (proxy, runner) = (proxy.clone(), runner.clone());
                tokio::spawn(async move { proxy.serve_connection(runner, stream).await });
            }
        });
    }

    fn stopped(&self, principal: PrincipalId) {
        self.inner.secrets.forget(principal);
    }
}

/// Where a connection came from: a runner's own listener, or the shared standalone listener.
#[derive(Clone)]
enum Origin {
    Runner(Arc<RunnerEgress>),
    Shared,
}

/// The SHA-256 (hex) under which a standalone credential is stored.
pub fn credential_hash(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new standalone credential's secret.
pub fn new_credential() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    format!(
        "chre_{}",
        Alphanumeric.sample_string(&mut rand::rngs::OsRng, 40)
    )
}

/// Everything known about the request's sender.
#[derive(Clone)]
struct Caller {
    runner: Arc<RunnerEgress>,
    process: ProcessIdentity,
}

fn refusal(status: StatusCode, error: &str, details: &str) -> Response<ProxyBody> {
    let details = details.replace(['"', '\\'], "'");
    let body = format!("chiron egress: {details}\n");
    Response::builder()
        .status(status)
        .header(
            "proxy-status",
            format!("chiron; error={error}; details=\"{details}\""),
        )
        .header("content-type", "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("invariant: a static response is valid")
}

/// `authority` split into host and port, when it ends in one.
fn split_port(authority: &str) -> (&str, Option<u16>) {
    match authority
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse().ok()?)))
    {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

fn host_of(authority: &str) -> (String, Option<u16>) {
    let (host, port) = split_port(authority);
    (host.to_ascii_lowercase(), port)
}

/// Whether `authority` (a `Host` value) names `host` (lowercase), on `port` if it has one.
fn names_target(authority: &str, host: &str, port: u16) -> bool {
    let (named, named_port) = split_port(authority);
    named.eq_ignore_ascii_case(host) && named_port.is_none_or(|p| p == port)
}

/// The credential in `Proxy-Authorization: Basic base64(chiron:<credential>)`.
fn credential(request: &Request<Incoming>) -> Option<String> {
    let value = request
        .headers()
        .get(http::header::PROXY_AUTHORIZATION)?
        .to_str()
        .ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, secret)| secret.to_owned())
}

/// Whether `name` is a hop-by-hop header, never forwarded in either direction (plus
/// `Proxy-*`, which only the proxy reads or writes).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers: those [`is_hop_by_hop`] names and those `Connection` lists.
/// One pass over the names finds them, so a message without any (the usual case) costs no
/// lookups.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let mut found: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name))
        .cloned()
        .collect();
    if found.is_empty() {
        return;
    }
    if found.contains(&http::header::CONNECTION) {
        found.extend(
            headers
                .get_all(http::header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok()),
        );
    }
    for name in found {
        headers.remove(name);
    }
}

/// [`strip_hop_by_hop`] for a request, but `TE: trailers` is the one hop-by-hop value passed
/// on: the client reads trailers (which come back scrubbed), and gRPC servers refuse requests
/// without it.
fn strip_request_hop_by_hop(headers: &mut http::HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let wants_trailers = headers
        .get_all(http::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(headers);
    if wants_trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The `chiron-secret:NAME` placeholders in `text`.
fn placeholders(text: &str) -> Vec<String> {
    const MARK: &str = "chiron-secret:";
    // Built once: `str::find` prepares its searcher on every call, for every header value.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(MARK));
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = FINDER.find(rest.as_bytes()) {
        let after = &rest[at + MARK.len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &after[name.len()..];
        if !name.is_empty() {
            found.push(name);
        }
    }
    found
}

/// `host`, with `:port` when the port is not the standard one of the scheme (HTTPS when
/// `tls`), as audit rows show it.
fn shown_host(host: &str, port: u16, tls: bool) -> String {
    if port == standard_port(tls) {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    }
}

/// Why [`EgressProxy::host_allowed`] refused a target.
enum HostRefused {
    /// No granted package declares it: 403.
    Undeclared(String),
    /// Storage could not say: 503.
    GrantsUnavailable(String),
}

impl HostRefused {
    /// Finishes `audit` and answers the refusal.
    fn answer(self, audit: Audit) -> Response<ProxyBody> {
        match self {
            Self::Undeclared(details) => audit.refuse(
                StatusCode::FORBIDDEN,
                Outcome::DeniedHost,
                "http_request_denied",
                &details,
            ),
            Self::GrantsUnavailable(details) => audit.storage_unavailable(&details),
        }
    }
}

/// How an egress request ended, as its audit row and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded, and the whole answer went back.
    Ok,
    /// Forwarded, but the answer stopped early (the tool or the upstream went away).
    Incomplete,
    /// The upstream could not be reached or failed.
    UpstreamError,
    /// Neither CONNECT nor an absolute `http://` URL.
    BadRequest,
    /// No package granted to the principal declares the host (and port).
    DeniedHost,
    /// The host resolved to an internal address that is not allowed.
    DeniedAddress,
    /// A secret placeholder for a host that does not declare it.
    PlaceholderRefused,
    /// SNI or `Host` disagreed with the CONNECT target.
    Mismatch,
    /// No valid proxy credential.
    Unauthenticated,
    /// The master key is missing or wrong: nothing is forwarded.
    SecretsUnavailable,
    /// A protocol upgrade (WebSocket).
    Unsupported,
    /// The proxy itself failed (a leaf certificate could not be made, storage could not be
    /// read).
    ProxyError,
}

impl Outcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [Outcome; 12] = [
        Outcome::Ok,
        Outcome::Incomplete,
        Outcome::UpstreamError,
        Outcome::BadRequest,
        Outcome::DeniedHost,
        Outcome::DeniedAddress,
        Outcome::PlaceholderRefused,
        Outcome::Mismatch,
        Outcome::Unauthenticated,
        Outcome::SecretsUnavailable,
        Outcome::Unsupported,
        Outcome::ProxyError,
    ];

    /// The name audit rows and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Incomplete => "incomplete",
            Outcome::UpstreamError => "upstream_error",
            Outcome::BadRequest => "bad_request",
            Outcome::DeniedHost => "denied_host",
            Outcome::DeniedAddress => "denied_address",
            Outcome::PlaceholderRefused => "placeholder_refused",
            Outcome::Mismatch => "mismatch",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::SecretsUnavailable => "secrets_unavailable",
            Outcome::Unsupported => "unsupported",
            Outcome::ProxyError => "proxy_error",
        }
    }
}

/// Requests by outcome since the proxy started, and the body bytes they moved.
#[derive(Default)]
struct Counters {
    by_outcome: [AtomicU64; Outcome::ALL.len()],
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
}

/// What the proxy has done since it started, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressCounts {
    /// Requests by outcome, in [`Outcome::ALL`] order.
    pub by_outcome: Vec<(Outcome, u64)>,
    /// Request body bytes sent upstream.
    pub bytes_out: u64,
    /// Response body bytes received from upstream.
    pub bytes_in: u64,
    /// Audit rows dropped because storage could not take them (see `chiron_store::batch`).
    pub audit_dropped: u64,
}

/// Where finished audit rows go: the batch writer, and the counters.
#[derive(Clone)]
struct AuditSink {
    writer: BatchWriter<EgressRecord>,
    counters: Arc<Counters>,
}

/// An audit row in the making.
struct Audit {
    sink: AuditSink,
    record: EgressRecord,
    started: Instant,
}

impl Audit {
    /// A row for a request to `host` (as [`shown_host`] writes it).
    fn new(
        sink: &AuditSink,
        caller: Option<&Caller>,
        runner: &RunnerEgress,
        method: &Method,
        host: String,
        path: &str,
    ) -> Self {
        Self {
            sink: sink.clone(),
            record: EgressRecord {
                at: now(),
                principal_id: runner.principal,
                runner_id: runner.runner_id.clone(),
                package: caller
                    .map(|c| c.process.package.clone())
                    .unwrap_or_default(),
                call_id: caller.and_then(|c| c.process.call_id.clone()),
                method: method.as_str().to_owned(),
                host,
                path: path.to_owned(),
                status: 0,
                bytes_out: 0,
                bytes_in: 0,
                duration_ms: 0,
                injected: Vec::new(),
                outcome: String::new(),
            },
            started: Instant::now(),
        }
    }

    /// Counts the request and hands the finished row to the audit writer.
    fn finish(mut self, status: StatusCode, outcome: Outcome) {
        self.record.status = i64::from(status.as_u16());
        self.record.outcome = outcome.as_str().to_owned();
        self.record.duration_ms = self.started.elapsed().as_millis() as i64;
        let counters = &self.sink.counters;
        counters.by_outcome[outcome as usize].fetch_add(1, Ordering::Relaxed);
        counters
            .bytes_out
            .fetch_add(self.record.bytes_out as u64, Ordering::Relaxed);
        counters
            .bytes_in
            .fetch_add(self.record.bytes_in as u64, Ordering::Relaxed);
        let _ = self.sink.writer.write(self.record);
    }

    /// Finishes the row as refused and answers the refusal ([`refusal`]).
    fn refuse(
        self,
        status: StatusCode,
        outcome: Outcome,
        error: &str,
        details: &str,
    ) -> Response<ProxyBody> {
        self.finish(status, outcome);
        refusal(status, error, details)
    }

    /// Finishes the row and answers 503: storage could not say whether the request is
    /// allowed. Not a policy answer, so the tool may try again.
    fn storage_unavailable(self, details: &str) -> Response<ProxyBody> {
        self.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            Outcome::ProxyError,
            "proxy_internal_error",
            details,
        )
    }
}

impl EgressProxy {
    /// Identifies the sender: on a runner's listener by the process credential, on the shared
    /// listener by a stored egress credential (unrevoked). `Err` when storage could not say.
    async fn identify(
        &self,
        origin: Origin,
        request: &Request<Incoming>,
    ) -> Result<(Arc<RunnerEgress>, Option<Caller>), String> {
        match origin {
            Origin::Runner(runner) => {
                let caller = credential(request)
                    .and_then(|secret| runner.credentials.lookup(&secret))
                    .map(|process| Caller {
                        runner: runner.clone(),
                        process,
                    });
                Ok((runner, caller))
            }
            Origin::Shared => {
                let found = match credential(request) {
                    Some(secret) => self
                        .inner
                        .store
                        .find_egress_credential(&credential_hash(&secret))
                        .await
                        .map_err(|err| {
                            tracing::warn!(error = %err, "egress credential lookup failed");
                            format!(
                                "the credential could not be checked ({err}); nothing is \
                                 forwarded"
                            )
                        })?,
                    None => None,
                };
                match found {
                    Some(stored) => {
                        let runner = Arc::new(RunnerEgress {
                            runner_id: stored.runner_id,
                            principal: stored.principal_id,
                            credentials: Arc::default(),
                        });
                        let caller = Caller {
                            runner: runner.clone(),
                            process: ProcessIdentity {
                                package: stored.package,
                                call_id: None,
                            },
                        };
                        Ok((runner, Some(caller)))
                    }
                    None => Ok((Self::unknown_runner(), None)),
                }
            }
        }
    }

    /// Who sent a request that names no known runner, as its audit row shows it.
    fn unknown_runner() -> Arc<RunnerEgress> {
        Arc::new(RunnerEgress {
            runner_id: String::new(),
            principal: PrincipalId(uuid::Uuid::nil()),
            credentials: Arc::default(),
        })
    }

    async fn handle(&self, origin: Origin, request: Request<Incoming>) -> Response<ProxyBody> {
        // Storage failing to identify the sender is audited like any refusal, below.
        let (runner, caller, unidentified) = match self.identify(origin, &request).await {
            Ok((runner, caller)) => (runner, caller, None),
            Err(details) => (Self::unknown_runner(), None, Some(details)),
        };
        let is_connect = request.method() == Method::CONNECT;
        let (host, port) = if is_connect {
            host_of(request.uri().authority().map_or("", |a| a.as_str()))
        } else {
            (
                request
                    .uri()
                    .host()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                request.uri().port_u16(),
            )
        };
        let port = port.unwrap_or(standard_port(is_connect));
        let path = request.uri().path().to_owned();
        let audit = Audit::new(
            &self.inner.audit,
            caller.as_ref(),
            &runner,
            request.method(),
            shown_host(&host, port, is_connect),
            if is_connect { "" } else { &path },
        );
        if let Some(details) = unidentified {
            return audit.storage_unavailable(&details);
        }
        let Some(caller) = caller else {
            audit.finish(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                Outcome::Unauthenticated,
            );
            let mut response = refusal(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "http_request_denied",
                "no valid proxy credential for this runner",
            );
            response.headers_mut().insert(
                "proxy-authenticate",
                HeaderValue::from_static("Basic realm=\"chiron\""),
            );
            return response;
        };
        if host.is_empty() || (!is_connect && request.uri().scheme_str() != Some("http")) {
            return audit.refuse(
                StatusCode::BAD_REQUEST,
                Outcome::BadRequest,
                "http_request_error",
                "send CONNECT for https, or an absolute http:// URL",
            );
        }
        if let Err(refused) = self.host_allowed(&caller, &host, port, is_connect).await {
            return refused.answer(audit);
        }
        if !is_connect {
            return self
                .forward(&caller, &host, port, false, Via::Pool, request)
                .await;
        }
        let leaf = match self.inner.ca.leaf(&host) {
            Ok(leaf) => leaf,
            Err(err) => {
                return audit.refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Outcome::ProxyError,
                    "proxy_internal_error",
                    &err,
                );
            }
        };
        let proxy = self.clone();
        tokio::spawn(async move {
            let upgraded = match hyper::upgrade::on(request).await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(error = %err, "CONNECT upgrade failed");
                    return;
                }
            };
            proxy.intercept(caller, host, port, leaf, upgraded).await;
        });
        Response::new(Empty::new().map_err(|never| match never {}).boxed())
    }

    /// Whether some package granted to the principal declares `host` on `port` (HTTPS when
    /// `tls`).
    async fn host_allowed(
        &self,
        caller: &Caller,
        host: &str,
        port: u16,
        tls: bool,
    ) -> Result<(), HostRefused> {
        let packages = self.packages();
        let granted = self
            .inner
            .store
            .granted_packages(caller.runner.principal)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "egress grants lookup failed");
                HostRefused::GrantsUnavailable(format!(
                    "the principal's grants could not be read ({e}); nothing is forwarded"
                ))
            })?;
        let entries = || {
            granted
                .iter()
                .filter_map(|name| packages.get(name))
                .flatten()
                .filter(|h| h.host == host)
        };
        if entries().any(|h| h.allows_port(port, tls)) {
            Ok(())
        } else if entries().next().is_some() {
            Err(HostRefused::Undeclared(format!(
                "port {port} of {host} is not declared by any package granted to this principal \
                 (a package lists other ports than {} in egress.hosts[].ports)",
                standard_port(tls)
            )))
        } else {
            Err(HostRefused::Undeclared(format!(
                "{host} is not declared by any package granted to this principal"
            )))
        }
    }

    /// Terminates TLS for `host` with a CA-issued leaf and serves the tunnel's requests.
    async fn intercept(
        &self,
        caller: Caller,
        host: String,
        port: u16,
        leaf: Arc<rustls::sign::CertifiedKey>,
        upgraded: hyper::upgrade::Upgraded,
    ) {
        let resolver = OneHost {
            host: host.clone(),
            leaf,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_no_client_auth()
                    .with_cert_resolver(Arc::new(resolver))
            });
        let Ok(mut config) = config else { return };
        // HTTP/1.1 first (rustls picks the first of ours the client offers): a client that
        // offers both (curl, Go, reqwest) gets the tunnel's own upstream connection. Over
        // HTTP/2 its requests would go through the pool and HTTP/2 framing: curl through the
        // proxy measured 0.5–0.65× of its direct rate that way, 0.83–0.89× over HTTP/1.1.
        // Clients that offer only h2 (gRPC) still get it.
        config.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let tls = match acceptor.accept(TokioIo::new(upgraded)).await {
            Ok(tls) => tls,
            Err(err) => {
                // Most often: the client asked for another name (SNI) than it CONNECTed to.
                let audit = Audit::new(
                    &self.inner.audit,
                    Some(&caller),
                    &caller.runner,
                    &Method::CONNECT,
                    shown_host(&host, port, true),
                    "",
                );
                audit.finish(StatusCode::MISDIRECTED_REQUEST, Outcome::Mismatch);
                tracing::debug!(host = %host, error = %err, "egress TLS handshake refused");
                return;
            }
        };
        // The client chose the protocol (ALPN). HTTP/1.1 requests come one at a time, so the
        // tunnel has its own upstream connection; HTTP/2 multiplexes, so it uses the pool.
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let tunnel = Arc::new((self.clone(), caller, host));
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let tunnel = tunnel.clone();
                async move {
                    let (proxy, caller, host) = &*tunnel;
                    Ok::<_, Infallible>(
                        proxy
                            .forward(caller, host, port, true, Via::Pool, request)
                            .await,
                    )
                }
            });
            let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(error = %err, "egress tunnel ended");
            }
            return;
        }
        let tunnel = Arc::new(TunnelUpstream {
            proxy: self.clone(),
            caller,
            host,
            port,
            sender: Mutex::new(None),
        });
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let upstream = tunnel.clone();
            async move {
                Ok::<_, Infallible>(
                    upstream
                        .proxy
                        .forward(
                            &upstream.caller,
                            &upstream.host,
                            port,
                            true,
                            Via::Tunnel(&upstream),
                            request,
                        )
                        .await,
                )
            }
        });
        let served = hyper::server::conn::http1::Builder::new()
            // Head and body in one buffer: over TLS each written slice becomes its own record.
            .writev(false)
            .serve_connection(TokioIo::new(tls), service)
            .await;
        if let Err(err) = served {
            tracing::debug!(error = %err, "egress tunnel ended");
        }
    }

    /// Checks, injects, forwards and scrubs one request to `host:port`.
    async fn forward(
        &self,
        caller: &Caller,
        host: &str,
        port: u16,
        tls: bool,
        via: Via<'_>,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let mut audit = Audit::new(
            &self.inner.audit,
            Some(caller),
            &caller.runner,
            &parts.method,
            shown_host(host, port, tls),
            &path,
        );

        // SNI (checked at the handshake), Host and the CONNECT target must agree.
        if tls {
            let named = parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| parts.uri.authority().map(|a| a.as_str()));
            let agrees = named.is_some_and(|authority| names_target(authority, host, port));
            if !agrees {
                return audit.refuse(
                    StatusCode::MISDIRECTED_REQUEST,
                    Outcome::Mismatch,
                    "http_request_denied",
                    "Host does not match the CONNECT target",
                );
            }
        }

        // A protocol switch (WebSocket) would carry frames the scrubber cannot see: say so
        // rather than forward a request whose upgrade headers were stripped.
        if parts.headers.contains_key(http::header::UPGRADE) {
            return audit.refuse(
                StatusCode::NOT_IMPLEMENTED,
                Outcome::Unsupported,
                "http_request_error",
                "protocol upgrades (WebSocket) are not forwarded: secrets in their frames could \
                 not be scrubbed",
            );
        }

        // Fail closed: no secrets, no egress.
        let (values, patterns) = match self.inner.secrets.current(caller.runner.principal).await {
            Ok(current) => current,
            Err(err) => {
                return audit.refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Outcome::SecretsUnavailable,
                    "proxy_configuration_error",
                    &format!("secrets unavailable, nothing is forwarded: {err}"),
                );
            }
        };
        let packages = self.packages();
        let declared: Vec<&EgressHost> = packages
            .get(&caller.process.package)
            .map(|hosts| {
                hosts
                    .iter()
                    .filter(|h| {
                        h.host == host
                            && h.allows_port(port, tls)
                            && path.starts_with(&h.path_prefix)
                    })
                    .collect()
            })
            .unwrap_or_default();

        strip_request_hop_by_hop(&mut parts.headers);
        match inject(&mut parts, tls, &declared, &values) {
            Ok(names) => audit.record.injected = names,
            Err(details) => {
                return audit.refuse(
                    StatusCode::FORBIDDEN,
                    Outcome::PlaceholderRefused,
                    "http_request_denied",
                    &details,
                );
            }
        }

        // The proxy must read what it scrubs: upstreams may compress with gzip, which it
        // decodes, and nothing else (a tool asking for br or zstd gets the body plain). A range
        // of a compressed body cannot be decoded on its own: ranges are asked for plain.
        let accepted = if parts.headers.contains_key(http::header::RANGE) {
            "identity"
        } else {
            "gzip"
        };
        parts.headers.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static(accepted),
        );

        parts.version = http::Version::HTTP_11;
        match via {
            // The pool routes by an absolute URI and writes `Host` from it.
            Via::Pool => {
                let scheme = if tls { "https" } else { "http" };
                let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                parts.uri = match format!("{scheme}://{host}:{port}{path_and_query}").parse() {
                    Ok(uri) => uri,
                    Err(_) => {
                        return audit.refuse(
                            StatusCode::BAD_REQUEST,
                            Outcome::BadRequest,
                            "http_request_error",
                            "bad target",
                        );
                    }
                };
                parts.headers.remove(http::header::HOST);
            }
            // The tunnel's connection is already to the host: origin-form and the `Host` the
            // client sent (checked above to name the CONNECT target).
            Via::Tunnel(_) => {
                if let Some(authority) = parts.uri.authority().cloned() {
                    if !parts.headers.contains_key(http::header::HOST) {
                        if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                            parts.headers.insert(http::header::HOST, value);
                        }
                    }
                    parts.uri = Uri::from(
                        parts
                            .uri
                            .path_and_query()
                            .cloned()
                            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
                    );
                }
            }
        }
        let is_head = parts.method == Method::HEAD;
        let counted = Counted::new(body.boxed());
        let sent = counted.bytes.clone();
        let request = Request::from_parts(parts, counted.boxed());

        let response = match via {
            Via::Pool => self
                .inner
                .pools
                .client(caller)
                .request(request)
                .await
                .map_err(BoxError::from),
            Via::Tunnel(upstream) => upstream.send(request).await,
        };
        let response = match response {
            Ok(response) => response,
            Err(err) => {
                let refused = dial_refusal(&*err);
                audit.record.bytes_out = sent.load(std::sync::atomic::Ordering::Relaxed) as i64;
                return match refused {
                    Some(details) => audit.refuse(
                        StatusCode::FORBIDDEN,
                        Outcome::DeniedAddress,
                        "destination_ip_prohibited",
                        &details,
                    ),
                    None => upstream_failed(audit, host, &*err),
                };
            }
        };

        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        scrub_headers(&mut parts.headers, &patterns);
        // A reason phrase other than the standard one is passed on to the tool: not with a
        // value in it (the standard one is written instead).
        if parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .is_some_and(|reason| patterns.found_in(reason.as_bytes()))
        {
            parts.extensions.remove::<hyper::ext::ReasonPhrase>();
        }
        audit.record.status = i64::from(parts.status.as_u16());
        let has_body = !is_head && !matches!(parts.status.as_u16(), 100..=199 | 204 | 304);
        let encoding = parts
            .headers
            .get(http::header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
        let gunzip = match encoding.as_deref() {
            None | Some("" | "identity") => false,
            Some("gzip" | "x-gzip") => {
                parts.headers.remove(http::header::CONTENT_ENCODING);
                has_body
            }
            // Not asked for, and not readable here: with values to hide, not passed on.
            Some(other) if !patterns.is_empty() => {
                audit.record.bytes_out = sent.load(std::sync::atomic::Ordering::Relaxed) as i64;
                return audit.refuse(
                    StatusCode::BAD_GATEWAY,
                    Outcome::UpstreamError,
                    "http_response_content_coding_error",
                    &format!(
                        "{host} answered with content-encoding {other}, which chiron cannot scrub"
                    ),
                );
            }
            Some(_) => false,
        };
        // Lengths change when values are replaced: the body is delimited anew. A small body of
        // known length is read whole, scrubbed and sent with its new length in one piece (one
        // write to the tool instead of a chunked stream); anything else streams.
        let length = parts.headers.remove(http::header::CONTENT_LENGTH);
        let whole = length
            .as_ref()
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .filter(|len| *len <= WHOLE_BODY_LIMIT)
            .is_some()
            && has_body
            && !gunzip;
        if let (true, Some(length)) = (whole, length) {
            let received = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) => {
                    audit.record.bytes_out = sent.load(std::sync::atomic::Ordering::Relaxed) as i64;
                    return upstream_failed(audit, host, &err);
                }
            };
            audit.record.bytes_in = received.len() as i64;
            // Unchanged, the body keeps the length it came with (hyper held the upstream to it).
            let (clean, length) = if !patterns.is_empty() && patterns.found_in(&received) {
                let scrubbed = patterns.scrub(&received);
                let length = HeaderValue::from(scrubbed.len());
                (Bytes::from(scrubbed), length)
            } else {
                (received, length)
            };
            audit.record.bytes_out = sent.load(std::sync::atomic::Ordering::Relaxed) as i64;
            audit.finish(parts.status, Outcome::Ok);
            parts.headers.insert(http::header::CONTENT_LENGTH, length);
            return Response::from_parts(
                parts,
                Full::new(clean).map_err(|never| match never {}).boxed(),
            );
        }
        let body = Scrubbed {
            inner: body,
            gunzip: gunzip.then(|| flate2::write::GzDecoder::new(Vec::new())),
            scrubber: StreamScrubber::new((*patterns).clone()),
            finished: false,
            received: 0,
            sent,
            audit: Some(audit),
        };
        Response::from_parts(parts, body.boxed())
    }
}

/// Replaces secret values in header (or trailer) values.
fn scrub_headers(headers: &mut http::HeaderMap, patterns: &Patterns) {
    if patterns.is_empty() {
        return;
    }
    for value in headers.values_mut() {
        if patterns.found_in(value.as_bytes()) {
            let scrubbed = patterns.scrub(value.as_bytes());
            *value = HeaderValue::from_bytes(&scrubbed).unwrap_or_else(|_| {
                HeaderValue::from_bytes(REDACTED)
                    .expect("invariant: the redaction marker is a valid header value")
            });
        }
    }
}

/// Applies the package's declared injections (TLS only) and placeholders; returns the names
/// injected, or why the request must not be forwarded.
fn inject(
    parts: &mut http::request::Parts,
    tls: bool,
    declared: &[&EgressHost],
    values: &Values,
) -> Result<Vec<String>, String> {
    let mut injected = Vec::new();
    let allowed_placeholder = |name: &str| {
        tls && declared.iter().any(|h| {
            h.secrets
                .iter()
                .any(|s| s.name == name && s.injection == Injection::Placeholder)
        })
    };
    // Placeholders in headers and the query: each must be declared for this host.
    let mut replaced_headers = Vec::new();
    for (name, value) in parts.headers.iter() {
        let Ok(text) = value.to_str() else { continue };
        let wanted = placeholders(text);
        if wanted.is_empty() {
            continue;
        }
        let mut text = text.to_owned();
        for secret in wanted {
            let value = values
                .get(&secret)
                .filter(|_| allowed_placeholder(&secret))
                .ok_or_else(|| format!("placeholder for {secret} is not allowed for this host"))?;
            text = text.replace(&format!("chiron-secret:{secret}"), value);
            injected.push(secret);
        }
        replaced_headers.push((name.clone(), text));
    }
    for (name, text) in replaced_headers {
        let mut value = HeaderValue::from_str(&text).map_err(|_| "bad header value".to_owned())?;
        value.set_sensitive(true);
        parts.headers.insert(name, value);
    }
    if let Some(query) = parts.uri.query().filter(|q| q.contains("chiron-secret")) {
        // Clients that encode query values write the placeholder's colon as %3A.
        let query = query
            .replace("chiron-secret%3A", "chiron-secret:")
            .replace("chiron-secret%3a", "chiron-secret:");
        let wanted = placeholders(&query);
        if !wanted.is_empty() {
            let mut query = query;
            for secret in wanted {
                let value = values
                    .get(&secret)
                    .filter(|_| allowed_placeholder(&secret))
                    .ok_or_else(|| {
                        format!("placeholder for {secret} is not allowed for this host")
                    })?;
                let encoded: String =
                    url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
                query = query.replace(&format!("chiron-secret:{secret}"), &encoded);
                injected.push(secret);
            }
            let path_and_query = format!("{}?{query}", parts.uri.path());
            let mut uri = http::uri::Parts::default();
            uri.path_and_query = path_and_query.parse().ok();
            parts.uri = Uri::from_parts(uri).map_err(|_| "bad query".to_owned())?;
        }
    }
    if !tls {
        return Ok(injected);
    }
    for host in declared {
        for secret in &host.secrets {
            let Some(value) = values.get(&secret.name) else {
                continue;
            };
            let (header, text) = match &secret.injection {
                Injection::Header { header, template } => {
                    (header.as_str(), template.replace("{value}", value))
                }
                Injection::Basic { username } => {
                    let pair = format!("{username}:{}", value.as_str());
                    (
                        "authorization",
                        format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(pair)
                        ),
                    )
                }
                Injection::Placeholder => continue,
            };
            let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(header.as_bytes()),
                HeaderValue::from_str(&text),
            ) else {
                continue;
            };
            value.set_sensitive(true);
            parts.headers.insert(name, value);
            injected.push(secret.name.clone());
        }
    }
    Ok(injected)
}

/// Audits and answers a request the upstream failed (connection, TLS or a broken body).
fn upstream_failed(
    audit: Audit,
    host: &str,
    err: &(dyn std::error::Error + 'static),
) -> Response<ProxyBody> {
    let details = format!("{host}: {}", error_chain(err));
    audit.refuse(
        StatusCode::BAD_GATEWAY,
        Outcome::UpstreamError,
        "destination_unavailable",
        &details,
    )
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn dial_refusal(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(DialError::Refused { .. }) = current.downcast_ref::<DialError>() {
            return Some(current.to_string());
        }
        source = current.source();
    }
    None
}

/// Serves the leaf for exactly one name: a client that asks (SNI) for another is refused.
#[derive(Debug)]
struct OneHost {
    host: String,
    leaf: Arc<rustls::sign::CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for OneHost {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        (hello.server_name().map(str::to_ascii_lowercase).as_deref() == Some(self.host.as_str()))
            .then(|| self.leaf.clone())
    }
}

/// A request body that counts what it sends.
struct Counted {
    inner: BoxBody<Bytes, hyper::Error>,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Counted {
    fn new(inner: BoxBody<Bytes, hyper::Error>) -> Self {
        Self {
            inner,
            bytes: Arc::default(),
        }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes
                    .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body with secrets scrubbed as it streams; records the audit row at its end.
struct Scrubbed<B = Incoming> {
    inner: B,
    /// Decodes a gzip body (fed as it arrives) before it is scrubbed.
    gunzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
    scrubber: StreamScrubber,
    finished: bool,
    received: u64,
    sent: Arc<std::sync::atomic::AtomicU64>,
    audit: Option<Audit>,
}

impl<B> Scrubbed<B> {
    fn record(&mut self, outcome: Outcome) {
        if let Some(mut audit) = self.audit.take() {
            audit.record.bytes_in = self.received as i64;
            audit.record.bytes_out = self.sent.load(std::sync::atomic::Ordering::Relaxed) as i64;
            let status = StatusCode::from_u16(audit.record.status as u16).unwrap_or(StatusCode::OK);
            audit.finish(status, outcome);
        }
    }
}

impl<B: Unpin> Scrubbed<B> {
    /// A gzip body that does not decode: the tool's answer ends here (what was decoded so far
    /// went out scrubbed), audited as an upstream error.
    fn corrupt(mut self: Pin<&mut Self>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.finished = true;
        self.record(Outcome::UpstreamError);
        Poll::Ready(None)
    }
}

impl<B> Drop for Scrubbed<B> {
    fn drop(&mut self) {
        self.record(Outcome::Incomplete);
    }
}

impl<B: Body<Data = Bytes, Error = hyper::Error> + Unpin> Body for Scrubbed<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(err))) => {
                    self.record(Outcome::UpstreamError);
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let this = &mut *self;
                        this.received += data.len() as u64;
                        let clean = match &mut this.gunzip {
                            None => this.scrubber.push(&data),
                            Some(decoder) => match std::io::Write::write_all(decoder, &data) {
                                Ok(()) => this.scrubber.push(&std::mem::take(decoder.get_mut())),
                                Err(_) => return self.corrupt(),
                            },
                        };
                        if !clean.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(clean)))));
                        }
                    }
                    // Trailers are headers too: scrubbed the same way.
                    Err(frame) => match frame.into_trailers() {
                        Ok(mut trailers) => {
                            scrub_headers(&mut trailers, self.scrubber.patterns());
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                },
                Poll::Ready(None) => {
                    let this = &mut *self;
                    let mut rest = Vec::new();
                    if let Some(decoder) = &mut this.gunzip {
                        if decoder.try_finish().is_err() {
                            return self.corrupt();
                        }
                        rest = this.scrubber.push(&std::mem::take(decoder.get_mut()));
                    }
                    rest.extend(this.scrubber.finish());
                    this.finished = true;
                    this.record(Outcome::Ok);
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// The hosts each package may reach, from loaded packages.
pub fn package_hosts<'a>(
    packages: impl IntoIterator<Item = &'a chiron_tools::ToolPackage>,
) -> PackageHosts {
    packages
        .into_iter()
        .map(|p| (p.name.clone(), p.egress.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that yields the given frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    const SECRET: &str = "trailer-secret-value";

    fn scrubbed(frames: Vec<Frame<Bytes>>, gzip: bool) -> Scrubbed<Frames> {
        Scrubbed {
            inner: Frames(frames.into()),
            gunzip: gzip.then(|| flate2::write::GzDecoder::new(Vec::new())),
            scrubber: StreamScrubber::new(Patterns::new([SECRET])),
            finished: false,
            received: 0,
            sent: Arc::default(),
            audit: None,
        }
    }

    #[tokio::test]
    async fn streamed_bodies_are_scrubbed_across_frames_in_trailers_and_through_gzip() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-echo", HeaderValue::from_static(SECRET));
        let body = scrubbed(
            vec![
                Frame::data(Bytes::from("abc trailer-sec")),
                Frame::data(Bytes::from("ret-value xyz")),
                Frame::trailers(trailers),
            ],
            false,
        );
        let collected = body.collect().await.unwrap();
        assert_eq!(
            collected.trailers().unwrap()["x-echo"],
            "[redacted by chiron]"
        );
        assert_eq!(collected.to_bytes(), "abc [redacted by chiron] xyz");

        // gzip, split mid-stream: decoded, then scrubbed.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, format!("[{SECRET}]").repeat(50).as_bytes())
            .unwrap();
        let gzipped = encoder.finish().unwrap();
        let (a, b) = gzipped.split_at(gzipped.len() / 2);
        let frames = vec![
            Frame::data(Bytes::copy_from_slice(a)),
            Frame::data(Bytes::copy_from_slice(b)),
        ];
        let plain = scrubbed(frames, true).collect().await.unwrap().to_bytes();
        assert_eq!(plain, "[[redacted by chiron]]".repeat(50));

        // Not gzip after all: the body ends, and nothing of the value got out.
        let frames = vec![Frame::data(Bytes::from(format!("not gzip {SECRET}")))];
        let cut = scrubbed(frames, true).collect().await.unwrap().to_bytes();
        assert!(!cut.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.2.3.4",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "140.82.112.6", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn networks_parse_and_match() {
        let net = parse_network("127.0.0.1/32").unwrap();
        assert!(in_network("127.0.0.1".parse().unwrap(), net));
        assert!(!in_network("127.0.0.2".parse().unwrap(), net));
        let net = parse_network("10.0.0.0/8").unwrap();
        assert!(in_network("10.9.9.9".parse().unwrap(), net));
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("nope").is_err());
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_lists_are_removed() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("proxy-authorization", "Basic eA=="),
            ("transfer-encoding", "chunked"),
            ("te", "gzip, trailers"),
            ("accept", "*/*"),
            ("x-end-to-end", "2"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let mut response = headers.clone();
        strip_hop_by_hop(&mut response);
        let mut left: Vec<&str> = response.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-end-to-end"]);
        // A request keeps `TE: trailers` alone.
        strip_request_hop_by_hop(&mut headers);
        assert_eq!(headers.get("te").unwrap(), "trailers");
        assert_eq!(headers.len(), 3);
        // Nothing to strip: nothing changes.
        let mut plain = http::HeaderMap::new();
        plain.insert("accept", HeaderValue::from_static("*/*"));
        strip_request_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn host_headers_are_matched_against_the_target() {
        assert!(names_target("API.example.com", "api.example.com", 443));
        assert!(names_target("api.example.com:443", "api.example.com", 443));
        assert!(!names_target(
            "api.example.com:8443",
            "api.example.com",
            443
        ));
        assert!(!names_target("other.example.com", "api.example.com", 443));
        assert!(names_target("[::1]:8443", "[::1]", 8443));
        assert!(!names_target("api.example.com:x", "api.example.com", 443));
    }

    #[test]
    fn placeholders_are_found() {
        assert_eq!(
            placeholders("token chiron-secret:API_KEY and chiron-secret:B2"),
            ["API_KEY", "B2"]
        );
        assert!(placeholders("chiron-secret:").is_empty());
    }
}
