//! Prometheus metrics: request counts by method, route and status, and latency histograms by
//! method and route. The registry belongs to the app (no global recorder), so several servers
//! in one test process do not share counters.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: &'static str,
}

/// The app's metric families and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    runners_active: Gauge,
    runners_busy_calls: Gauge,
    runners_queued_calls: Gauge,
    runner_starts: Gauge,
    runner_crashes: Gauge,
    runner_reaps: Gauge,
    runner_call_duration: Histogram,
    egress_requests: Family<OutcomeLabels, Gauge>,
    egress_bytes_out: Gauge,
    egress_bytes_in: Gauge,
    audit_dropped: Family<TableLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 0.1 ms … ~1.6 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

impl Metrics {
    /// A registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("chiron");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let runners_active = gauge(
            &mut registry,
            "runners_active",
            "Live per-principal runners",
        );
        let runners_busy_calls = gauge(
            &mut registry,
            "runner_calls_running",
            "Tool calls running in runners",
        );
        let runners_queued_calls = gauge(
            &mut registry,
            "runner_calls_queued",
            "Tool calls waiting for a runner slot",
        );
        let runner_starts = gauge(
            &mut registry,
            "runner_starts",
            "Runners started since the gateway started",
        );
        let runner_crashes = gauge(
            &mut registry,
            "runner_crashes",
            "Runners found dead since the gateway started",
        );
        let runner_reaps = gauge(
            &mut registry,
            "runner_reaps",
            "Runners stopped for idleness or to make room",
        );
        let egress_requests = Family::<OutcomeLabels, Gauge>::default();
        registry.register(
            "egress_requests",
            "Egress proxy requests since the gateway started, by outcome",
            egress_requests.clone(),
        );
        let egress_bytes_out = gauge(
            &mut registry,
            "egress_bytes_out",
            "Request body bytes the egress proxy sent upstream",
        );
        let egress_bytes_in = gauge(
            &mut registry,
            "egress_bytes_in",
            "Response body bytes the egress proxy received from upstream",
        );
        let audit_dropped = Family::<TableLabels, Gauge>::default();
        registry.register(
            "audit_rows_dropped",
            "Audit rows dropped since the gateway started because storage could not take them, \
             by table",
            audit_dropped.clone(),
        );
        let runner_call_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "runner_call_duration_seconds",
            "Tool calls in runners, from taking a runner slot to the result",
            runner_call_duration.clone(),
        );
        Self {
            runner_call_duration,
            registry,
            requests,
            latency,
            runners_active,
            runners_busy_calls,
            runners_queued_calls,
            runner_starts,
            runner_crashes,
            runner_reaps,
            egress_requests,
            egress_bytes_out,
            egress_bytes_in,
            audit_dropped,
        }
    }

    /// Copies the audit writers' dropped-row counts into the gauges (done at scrape time).
    pub fn observe_audit(&self, table: &'static str, dropped: u64) {
        self.audit_dropped
            .get_or_create(&TableLabels { table })
            .set(dropped as i64);
    }

    /// Copies the egress proxy's counts into the gauges (done at scrape time).
    pub fn observe_egress(&self, proxy: &chiron_egress::EgressProxy) {
        let counts = proxy.counts();
        for (outcome, count) in counts.by_outcome {
            self.egress_requests
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.as_str(),
                })
                .set(count as i64);
        }
        self.egress_bytes_out.set(counts.bytes_out as i64);
        self.egress_bytes_in.set(counts.bytes_in as i64);
        self.observe_audit("egress_requests", counts.audit_dropped);
    }

    /// Copies the runner pool's state into the gauges (done at scrape time).
    pub fn observe_runners(&self, pool: &chiron_runner::RunnerPool) {
        use std::sync::atomic::Ordering;
        let list = pool.list();
        self.runners_active.set(list.len() as i64);
        self.runners_busy_calls
            .set(list.iter().map(|r| r.running as i64).sum());
        self.runners_queued_calls
            .set(list.iter().map(|r| r.queued as i64).sum());
        let stats = pool.stats();
        self.runner_starts
            .set(stats.created.load(Ordering::Relaxed) as i64);
        self.runner_crashes
            .set(stats.crashed.load(Ordering::Relaxed) as i64);
        self.runner_reaps
            .set(stats.reaped.load(Ordering::Relaxed) as i64);
        for seconds in stats.take_call_seconds() {
            self.runner_call_duration.observe(seconds);
        }
    }

    /// Records one finished request.
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let labels = RequestLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        let route_labels = RouteLabels {
            method: method.to_owned(),
            route: route.to_owned(),
        };
        self.latency.get_or_create(&route_labels).observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("invariant: writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware recording every routed request. Unrouted requests are labelled `unmatched` so
/// scanners cannot blow up label cardinality.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    state.metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /metrics`.
pub async fn handler(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(pool) = &state.runners {
        state.metrics.observe_runners(pool);
    }
    if let Some(proxy) = &state.egress {
        state.metrics.observe_egress(proxy);
    }
    state
        .metrics
        .observe_audit("tool_calls", state.catalog.audit_dropped());
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
