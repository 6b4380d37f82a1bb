//! The gate in front of rmcp: everything chiron checks before an MCP message is parsed.
//!
//! Order (each step can end the request):
//! 1. `Host` must be allowed, and `Origin`, when present (browsers), must be allowed → 403.
//!    This is the DNS-rebinding defence and runs before anything else.
//! 2. Bearer token from the `Authorization` header only → 401 with `WWW-Authenticate`
//!    (`error="invalid_token"` when a token was presented), 403 `insufficient_scope` without
//!    `mcp:tools`, 503 when storage is down (fail closed).
//! 3. `Mcp-Session-Id` must belong to this principal → otherwise 404, exactly as rmcp answers
//!    for a session it does not know.
//! 4. The body is read up to `mcp.max_body_bytes` → 413; `tools/call` is rate limited per
//!    principal → 429 with `Retry-After`; a new session needs room under the caps → 429.
//! 5. The verified [`chiron_auth::Authenticated`] goes into the request extensions for the handler; a
//!    session id in the response is bound to the principal, and a successful `DELETE`
//!    forgets it. A JSON body that is no JSON-RPC message gets 400 with a JSON-RPC error
//!    (-32700 when it is not JSON at all) instead of rmcp's 415, and rmcp's other plain-text
//!    refusals (4xx) become JSON-RPC errors with the same status and message.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::json;

use chiron_auth::{AuthService, VerifyError};
use chiron_core::{PrincipalId, Scope};

use crate::sessions::{SessionCheck, SessionRegistry};

/// The session header (lowercase, as HTTP/2 sends it).
pub const SESSION_HEADER: &str = "mcp-session-id";

/// What the gate needs; shared by every request.
pub struct Gate {
    /// Token verification.
    pub auth: AuthService,
    /// Session ownership and caps.
    pub sessions: SessionRegistry,
    /// Accepted `Host` values, lowercase.
    pub allowed_hosts: HashSet<String>,
    /// Accepted `Origin` values, lowercase, no trailing slash.
    pub allowed_origins: HashSet<String>,
    /// URL of the protected-resource metadata, for `WWW-Authenticate`.
    pub resource_metadata_url: String,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// `tools/call` rate per principal.
    pub limiter: DefaultKeyedRateLimiter<PrincipalId>,
}

impl Gate {
    /// Builds the per-principal `tools/call` limiter.
    pub fn limiter(per_minute: u32, burst: u32) -> DefaultKeyedRateLimiter<PrincipalId> {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
    }

    fn challenge(&self, error: Option<&str>) -> String {
        let mut value = format!(
            r#"Bearer resource_metadata="{}", scope="mcp:tools""#,
            self.resource_metadata_url
        );
        if let Some(error) = error {
            value.push_str(&format!(r#", error="{error}""#));
        }
        value
    }
}

/// A JSON-RPC error body with no id (the message was not processed).
fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    let body =
        json!({ "jsonrpc": "2.0", "id": null, "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

/// rmcp answers transport-level refusals (no session id, an unknown session, a missing
/// `Accept`) in plain text: clients get them as JSON-RPC errors with the same status, message
/// and headers.
async fn as_rpc_error(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let text = to_bytes(body, 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let mut answer = rpc_error(parts.status, -32600, &text);
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    answer.headers_mut().extend(parts.headers);
    answer
}

/// The media type of `Content-Type`, without parameters, lower case ("" when absent).
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_json_or_sse(headers: &HeaderMap) -> bool {
    matches!(
        media_type(headers).as_str(),
        "application/json" | "text/event-stream"
    )
}

fn with_header(mut response: Response, name: header::HeaderName, value: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
    response
}

/// Whether `value` is in `allowed` (which holds lowercase entries), ignoring ASCII case.
fn listed(allowed: &HashSet<String>, value: &str) -> bool {
    allowed.contains(value)
        || (value.bytes().any(|b| b.is_ascii_uppercase())
            && allowed.contains(&value.to_ascii_lowercase()))
}

fn host_allowed(gate: &Gate, request: &Request) -> bool {
    match request.headers().get(header::HOST) {
        Some(value) => value
            .to_str()
            .is_ok_and(|host| listed(&gate.allowed_hosts, host)),
        // HTTP/2 carries the authority in the URI instead of a Host header.
        None => request
            .uri()
            .authority()
            .is_some_and(|a| listed(&gate.allowed_hosts, a.as_str())),
    }
}

fn origin_allowed(gate: &Gate, headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN) {
        None => true,
        Some(value) => value
            .to_str()
            .is_ok_and(|origin| listed(&gate.allowed_origins, origin.trim_end_matches('/'))),
    }
}

/// The token of an `Authorization: Bearer` header; tokens anywhere else are never read.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[derive(Deserialize)]
struct MethodProbe {
    method: Option<String>,
}

/// The middleware. See the module documentation for the order of checks.
pub async fn gate(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    if !host_allowed(&gate, &request) {
        return rpc_error(StatusCode::FORBIDDEN, -32600, "Host header is not allowed");
    }
    let headers = request.headers();
    if !origin_allowed(&gate, headers) {
        return rpc_error(StatusCode::FORBIDDEN, -32600, "Origin is not allowed");
    }

    let Some(token) = bearer_token(headers) else {
        let response = rpc_error(
            StatusCode::UNAUTHORIZED,
            -32001,
            "a bearer token is required",
        );
        return with_header(response, header::WWW_AUTHENTICATE, &gate.challenge(None));
    };
    let caller = match gate.auth.verify(token, Scope::McpTools).await {
        Ok(caller) => caller,
        Err(VerifyError::Invalid(reason)) => {
            tracing::debug!(reason = reason.as_str(), "mcp token refused");
            let response = rpc_error(
                StatusCode::UNAUTHORIZED,
                -32001,
                "the bearer token is invalid, expired or revoked",
            );
            return with_header(
                response,
                header::WWW_AUTHENTICATE,
                &gate.challenge(Some("invalid_token")),
            );
        }
        Err(VerifyError::InsufficientScope(_)) => {
            let response = rpc_error(
                StatusCode::FORBIDDEN,
                -32001,
                "the bearer token lacks the mcp:tools scope",
            );
            return with_header(
                response,
                header::WWW_AUTHENTICATE,
                &gate.challenge(Some("insufficient_scope")),
            );
        }
        Err(VerifyError::Unavailable(err)) => {
            tracing::warn!(error = %err, "mcp token verification failed closed");
            return rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                -32603,
                "authentication is unavailable",
            );
        }
    };
    let principal = caller.principal.id;

    let session_id = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = &session_id {
        if gate.sessions.check(id, principal) == SessionCheck::Foreign {
            // Identical to rmcp's answer for an unknown session: the id reveals nothing.
            return as_rpc_error(
                (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response(),
            )
            .await;
        }
    }

    let method = request.method().clone();
    let (mut parts, body) = request.into_parts();
    let json_body = media_type(&parts.headers) == "application/json";
    let mut unparsable = None;
    let mut reservation = None;
    let body = if method == Method::POST {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > gate.max_body_bytes) {
            return rpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                "request body too large",
            );
        }
        let Ok(bytes) = to_bytes(body, gate.max_body_bytes).await else {
            return rpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                "request body too large",
            );
        };
        let probe = serde_json::from_slice::<MethodProbe>(&bytes);
        if let Err(err) = &probe {
            if err.is_syntax() || err.is_eof() {
                unparsable = Some(err.to_string());
            }
        }
        let probed = probe.ok().and_then(|p| p.method);
        match probed.as_deref() {
            Some("tools/call") => {
                if let Err(not_until) = gate.limiter.check_key(&principal) {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    let response = rpc_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        -32000,
                        "too many tool calls; slow down",
                    );
                    return with_header(response, header::RETRY_AFTER, &seconds.max(1).to_string());
                }
            }
            Some("initialize") if session_id.is_none() => match gate.sessions.reserve(principal) {
                Ok(slot) => reservation = Some(slot),
                Err(limit) => {
                    tracing::warn!(principal_id = %principal, error = %limit, "session refused");
                    return rpc_error(StatusCode::TOO_MANY_REQUESTS, -32000, &limit.to_string());
                }
            },
            _ => {}
        }
        Body::from(bytes)
    } else {
        body
    };

    parts.extensions.insert(caller);
    let mut response = next.run(Request::from_parts(parts, body)).await;

    // rmcp answers a JSON body it cannot read as a JSON-RPC message with 415 and plain text,
    // as if the media type were wrong: it is a bad request, answered as JSON-RPC says.
    if method == Method::POST
        && json_body
        && response.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE
    {
        return match unparsable {
            Some(reason) => rpc_error(
                StatusCode::BAD_REQUEST,
                -32700,
                &format!("Parse error: the body is not JSON ({reason})"),
            ),
            None => rpc_error(
                StatusCode::BAD_REQUEST,
                -32600,
                "Invalid Request: the body is not a JSON-RPC request, notification or response",
            ),
        };
    }

    if response.status().is_client_error() && !is_json_or_sse(response.headers()) {
        return as_rpc_error(response).await;
    }

    if response.status().is_success() {
        if let Some(slot) = reservation {
            if let Some(id) = response
                .headers()
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                slot.bind(id.to_owned());
            }
        }
        if method == Method::DELETE {
            if let Some(id) = &session_id {
                gate.sessions.remove(id);
            }
            // rmcp answers a session DELETE with 202; clients (the Python SDK among them)
            // expect 200 for a completed termination.
            if response.status() == StatusCode::ACCEPTED {
                *response.status_mut() = StatusCode::OK;
            }
        }
    }
    response
}
