//! Prometheus metrics: request counts and latencies per route and status, command outcomes,
//! and the projections' positions and lag, rendered in the text exposition format.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::views::ViewStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViewLabels {
    view: String,
}

/// The service's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    view_position: Family<ViewLabels, Gauge>,
    view_lag_events: Family<ViewLabels, Gauge>,
    view_lag_ms: Family<ViewLabels, Gauge>,
    view_applied: Family<ViewLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ledger");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        // 25 µs to ~0.8 s: admission answers in microseconds, appends in milliseconds.
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        let view_position = Family::<ViewLabels, Gauge>::default();
        registry.register(
            "projection_position",
            "Global position each view has applied",
            view_position.clone(),
        );
        let view_lag_events = Family::<ViewLabels, Gauge>::default();
        registry.register(
            "projection_lag_events",
            "Events each view is behind the store",
            view_lag_events.clone(),
        );
        let view_lag_ms = Family::<ViewLabels, Gauge>::default();
        registry.register(
            "projection_lag_milliseconds",
            "How old the newest applied event was when a view was behind",
            view_lag_ms.clone(),
        );
        let view_applied = Family::<ViewLabels, Gauge>::default();
        registry.register(
            "projection_events_applied",
            "Events each view has applied since start",
            view_applied.clone(),
        );
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            requests,
            latency,
            view_position,
            view_lag_events,
            view_lag_ms,
            view_applied,
        }
    }

    /// Counts one request. `route` is the route template, never the raw path, so account
    /// ids do not explode the label space.
    pub fn observe(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Renders everything, with the views' progress as of now.
    pub fn render(&self, views: &[ViewStatus]) -> String {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        for view in views {
            let labels = ViewLabels {
                view: view.name.to_string(),
            };
            self.view_position
                .get_or_create(&labels)
                .set(gauge(view.position.unwrap_or(0)));
            self.view_lag_events
                .get_or_create(&labels)
                .set(gauge(view.lag_events));
            self.view_lag_ms
                .get_or_create(&labels)
                .set(gauge(view.lag_ms));
            self.view_applied
                .get_or_create(&labels)
                .set(gauge(view.events_applied));
        }
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }
}
