//! A local HTTPS server standing in for api.github.com, slack.com and friends: its own CA and
//! certificate (generated here), every request recorded. `/echo` sends the request's
//! Authorization back raw (split across chunks), base64- and URL-encoded, and in a header.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub host: String,
    pub path: String,
    pub authorization: Option<String>,
    pub headers: Vec<(String, String)>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    /// The same server over plain HTTP.
    pub plain_addr: SocketAddr,
    /// The CA that signed the upstream's certificate (PEM), for chiron's `extra_ca`.
    pub ca_pem: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn start(hosts: &[&str]) -> Upstream {
    let (config, ca_pem) = chiron_egress::testing::upstream_tls(hosts);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(request, &log).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let plain = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let plain_addr = plain.local_addr().unwrap();
    let plain_log = seen.clone();
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = plain.accept().await else {
                continue;
            };
            let log = plain_log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(answer(request, &log).await)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        plain_addr,
        ca_pem,
        seen,
        _runtime: runtime,
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
    log: &Mutex<Vec<Seen>>,
) -> hyper::Response<Body> {
    use base64::Engine;
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header("authorization");
    let seen = Seen {
        host: header("host").unwrap_or_default(),
        path: request.uri().path().to_owned(),
        authorization: authorization.clone(),
        headers: request
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
    };
    log.lock().unwrap().push(seen);
    let path = request.uri().path().to_owned();
    let full = |text: String| -> Body { http_body_util::Full::new(Bytes::from(text)).boxed() };
    if path == "/echo" {
        let auth = authorization.unwrap_or_default();
        let (first, second) = auth.split_at(auth.len() / 2);
        let frames = Frames(
            [
                format!("raw={first}"),
                format!("{second}\n"),
                format!(
                    "b64={}\n",
                    base64::engine::general_purpose::STANDARD.encode(&auth)
                ),
                format!("url={}\n", url_encode(&auth)),
            ]
            .into_iter()
            .map(Bytes::from)
            .collect(),
        );
        let body = frames.boxed();
        return hyper::Response::builder()
            .header("x-echo", auth)
            .body(body)
            .unwrap();
    }
    if let Some(rest) = path.strip_prefix("/repos/") {
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() == 4 && parts[2] == "issues" {
            let issue = serde_json::json!({
                "number": parts[3].parse::<u64>().unwrap_or(0),
                "title": "Proxy works",
                "state": "open",
                "user": {"login": "octocat"},
                "html_url": format!("https://github.com/{}/{}/issues/{}", parts[0], parts[1], parts[3]),
                "body": "Seen through chiron's egress proxy",
                "comments": 2
            });
            return hyper::Response::builder()
                .header("content-type", "application/json")
                .body(full(issue.to_string()))
                .unwrap();
        }
    }
    if path == "/api/conversations.list" {
        let channels = serde_json::json!({"ok": true, "channels": [{"id": "C1", "name": "general", "topic": {"value": "hi"}, "num_members": 3}]});
        return hyper::Response::builder()
            .header("content-type", "application/json")
            .body(full(channels.to_string()))
            .unwrap();
    }
    hyper::Response::builder()
        .header("content-type", "application/json")
        .body(full(
            serde_json::json!({"ok": true, "path": path}).to_string(),
        ))
        .unwrap()
}

/// A body sent as separate frames (so values can straddle chunk boundaries).
struct Frames(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|data| Ok(Frame::data(data))))
    }
}
