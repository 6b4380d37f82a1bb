//! A test app over a given store, driven with `oneshot` (no socket).

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use chiron_auth::{AuthService, IssueRequest};
use chiron_core::{Actor, Config, CreatedVia, PrincipalId, Scope, Scopes};
use chiron_server::{router, setup, AppState};
use chiron_store::Store;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub struct TestApp {
    pub state: AppState,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| panic!("not JSON: {}", self.text))
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl TestApp {
    pub fn new(store: Store) -> Self {
        Self::with_config(store, Config::default())
    }

    pub fn with_config(store: Store, config: Config) -> Self {
        let auth: AuthService = setup::auth_service(&config, store.clone()).unwrap();
        Self {
            state: AppState::new(config, store, auth),
        }
    }

    pub async fn token(&self, principal_id: PrincipalId, scopes: &[Scope]) -> String {
        self.state
            .auth
            .issue(IssueRequest {
                principal_id,
                name: "test".into(),
                scopes: Scopes::new(scopes.iter().copied()),
                ttl: None,
                created_via: CreatedVia::Cli,
                actor: Actor::cli(),
            })
            .await
            .unwrap()
            .secret
            .expose()
            .to_owned()
    }

    /// An admin principal and its admin token.
    pub async fn admin(&self) -> (PrincipalId, String) {
        let admin = self.state.store.create_principal("admin").await.unwrap();
        let token = self.token(admin.id, &[Scope::Admin]).await;
        (admin.id, token)
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call("GET", path, token, None).await
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(json) => {
                builder = builder.header("content-type", "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.send(builder.body(body).unwrap()).await
    }
}

/// `app` served over a real socket on two HTTP threads, shutting down (with `grace`) when
/// `stop` fires.
pub struct Served {
    pub addr: std::net::SocketAddr,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub server: tokio::task::JoinHandle<std::io::Result<chiron_server::serve::HttpThreads>>,
}

pub async fn serve_on_two_threads(app: axum::Router, grace: std::time::Duration) -> Served {
    let listener = chiron_server::serve::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(chiron_server::serve::serve(
        listener,
        app,
        async move {
            let _ = stopped.await;
        },
        grace,
        2,
    ));
    Served { addr, stop, server }
}
