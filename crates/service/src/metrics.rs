//! Prometheus metrics: request counts and latencies per route and status, command outcomes,
//! and the projections' positions and lag, rendered in the format the scraper asks for: the
//! classic text format 0.0.4 by default, OpenMetrics 1.0.0 when the `Accept` header names it.

use std::collections::HashSet;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    status: &'static str,
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
    process_threads: Gauge,
    process_open_files: Gauge,
    process_resident_bytes: Gauge,
    alerts: Family<AlertLabels, Gauge>,
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
        let process_threads = Gauge::default();
        registry.register(
            "process_threads",
            "Threads of the ledger process",
            process_threads.clone(),
        );
        let process_open_files = Gauge::default();
        registry.register(
            "process_open_files",
            "Open file descriptors of the ledger process (files, sockets, pipes)",
            process_open_files.clone(),
        );
        let process_resident_bytes = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the ledger process",
            process_resident_bytes.clone(),
        );
        let alerts = Family::<AlertLabels, Gauge>::default();
        registry.register(
            "alerts_notifications",
            "Alert notifications in the outbox by status: pending, delivered, failed (parked)",
            alerts.clone(),
        );
        Metrics {
            alerts,
            registry: Arc::new(Mutex::new(registry)),
            requests,
            latency,
            view_position,
            view_lag_events,
            view_lag_ms,
            view_applied,
            process_threads,
            process_open_files,
            process_resident_bytes,
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

    /// Records the alerts outbox's counts for the next render.
    pub fn set_alerts(&self, counts: crate::alerts::OutboxCounts) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        for (status, count) in [
            ("pending", counts.pending),
            ("delivered", counts.delivered),
            ("failed", counts.failed),
        ] {
            self.alerts
                .get_or_create(&AlertLabels { status })
                .set(gauge(count));
        }
    }

    /// Renders everything in `format`, with the views' progress as of now.
    pub fn render(&self, views: &[ViewStatus], format: Format) -> String {
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
        if let Some(stats) = crate::process::sample() {
            self.process_threads.set(gauge(stats.threads));
            self.process_open_files.set(gauge(stats.open_files));
            self.process_resident_bytes.set(gauge(stats.resident_bytes));
        }
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = encode(&mut text, &registry);
        match format {
            Format::OpenMetrics => text,
            Format::Classic => classic_from_openmetrics(&text),
        }
    }
}

/// The exposition formats `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4: what classic scrapers, parsers and tools read.
    Classic,
    /// OpenMetrics 1.0.0, for scrapers that ask for it.
    OpenMetrics,
}

/// Weights in an `Accept` header, in thousandths (`q=0.5` is 500), so no float is needed.
const QUALITY_MAX: u16 = 1_000;

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` with a weight above zero and no lower than the one it
    /// gives plain text (as Prometheus itself asks); classic otherwise, including without a
    /// header or with `*/*`.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Classic;
        };
        let mut openmetrics = 0;
        let mut plain = 0;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let quality = parts
                .filter_map(|param| param.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .map_or(QUALITY_MAX, |(_, value)| quality(value.trim()));
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
                "text/plain" | "text/*" | "*/*" => plain = plain.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0 && openmetrics >= plain {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A `q` value (`0`, `0.5`, `1.000`) in thousandths; anything malformed counts as zero, so a
/// garbled weight never wins the negotiation.
fn quality(text: &str) -> u16 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().unwrap_or(0);
    match whole {
        "0" => thousandths,
        "1" if thousandths == 0 => QUALITY_MAX,
        _ => 0,
    }
}

/// Rewrites the OpenMetrics text `prometheus-client` encodes as the classic text format
/// 0.0.4. The samples are the same; the metadata differs: OpenMetrics names a counter family
/// without the `_total` its samples carry, while a classic parser types a sample only when
/// the TYPE line names its own series, so a counter's HELP and TYPE name the `_total` series
/// here. `unknown` becomes `untyped`, HELP drops the quote escaping only OpenMetrics has, and
/// the OpenMetrics-only `# UNIT` and `# EOF` lines go.
fn classic_from_openmetrics(text: &str) -> String {
    let counters: HashSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let series = |name: &str| {
        if counters.contains(name) {
            format!("{name}_total")
        } else {
            name.to_string()
        }
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {}\n", series(name), classic_help(help)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = if kind == "unknown" { "untyped" } else { kind };
            out.push_str(&format!("# TYPE {} {kind}\n", series(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// HELP text from OpenMetrics escaping (`\\`, `\n`, `\"`) to the classic one (`\\`, `\n`).
fn classic_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some(next) => {
                out.push('\\');
                out.push(next);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_parse::{Scrape, Value};

    use super::*;

    /// Traffic on two routes. Their templates have no `{param}`: prometheus-parse skips a
    /// sample whose label value holds a `}` (the format allows it), which would hide it here.
    fn metrics_with_traffic() -> (Metrics, Vec<ViewStatus>) {
        let metrics = Metrics::new();
        metrics.observe("/v1/accounts", "POST", 201, Duration::from_millis(3));
        metrics.observe("/v1/audit/events", "GET", 200, Duration::from_micros(40));
        let views = vec![ViewStatus {
            name: "balance",
            position: Some(7),
            lag_events: 2,
            lag_ms: 15,
            events_applied: 7,
        }];
        (metrics, views)
    }

    #[test]
    fn classic_text_types_counters_histograms_and_gauges_for_prometheus_parsers() {
        let (metrics, views) = metrics_with_traffic();
        let text = metrics.render(&views, Format::Classic);
        let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).unwrap();
        let kinds = |name: &str| -> Vec<&Value> {
            scrape
                .samples
                .iter()
                .filter(|sample| sample.metric == name)
                .map(|sample| &sample.value)
                .collect()
        };
        let requests = kinds("ledger_http_requests_total");
        assert_eq!(requests.len(), 2, "{text}");
        assert!(
            requests.iter().all(|v| matches!(v, Value::Counter(_))),
            "request counters are counters: {requests:?}\n{text}"
        );
        let latency = kinds("ledger_http_request_duration_seconds");
        assert_eq!(latency.len(), 2, "one histogram per route: {text}");
        assert!(
            latency.iter().all(|v| matches!(v, Value::Histogram(_))),
            "latencies are histograms: {latency:?}"
        );
        for gauge in [
            "ledger_projection_position",
            "ledger_projection_lag_events",
            "ledger_projection_lag_milliseconds",
            "ledger_projection_events_applied",
        ] {
            let values = kinds(gauge);
            assert!(
                !values.is_empty() && values.iter().all(|v| matches!(v, Value::Gauge(_))),
                "{gauge} is a gauge: {values:?}"
            );
        }
        assert!(
            text.contains("# TYPE ledger_http_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP ledger_http_requests_total "),
            "{text}"
        );
        assert!(
            !text.contains("# UNIT") && !text.contains("# EOF"),
            "{text}"
        );
    }

    #[test]
    fn openmetrics_answer_is_openmetrics_and_ends_with_eof() {
        let (metrics, views) = metrics_with_traffic();
        let text = metrics.render(&views, Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE ledger_http_requests counter\n"),
            "{text}"
        );
        assert!(text.contains("\nledger_http_requests_total{"), "{text}");
    }

    #[test]
    fn classic_translation_drops_openmetrics_only_lines_and_escapes() {
        let openmetrics = concat!(
            r#"# HELP jobs Jobs \"done\" \\ here."#,
            "\n# TYPE jobs counter\n# UNIT jobs jobs\njobs_total 3\n",
            "# HELP odd Odd.\n# TYPE odd unknown\nodd 1\n# EOF\n",
        );
        let classic = concat!(
            r#"# HELP jobs_total Jobs "done" \\ here."#,
            "\n# TYPE jobs_total counter\njobs_total 3\n",
            "# HELP odd Odd.\n# TYPE odd untyped\nodd 1\n",
        );
        assert_eq!(classic_from_openmetrics(openmetrics), classic);
    }

    #[test]
    fn the_accept_header_chooses_openmetrics_only_when_it_asks_for_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,\
                          application/openmetrics-text;version=0.0.1;q=0.75,\
                          text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, expected) in [
            (None, Format::Classic),
            (Some("*/*"), Format::Classic),
            (Some("text/plain"), Format::Classic),
            (Some("text/plain;version=0.0.4"), Format::Classic),
            (Some("application/json"), Format::Classic),
            (Some(prometheus), Format::OpenMetrics),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; version=1.0.0"),
                Format::OpenMetrics,
            ),
            (Some("application/openmetrics-text;q=0"), Format::Classic),
            (
                Some("application/openmetrics-text;q=0.4, text/plain;q=0.9"),
                Format::Classic,
            ),
            (
                Some("text/plain;q=0.5, application/openmetrics-text"),
                Format::OpenMetrics,
            ),
            (Some("application/openmetrics-text;q=2"), Format::Classic),
        ] {
            assert_eq!(Format::negotiate(accept), expected, "{accept:?}");
        }
        assert_eq!(
            Format::Classic.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            Format::OpenMetrics.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }
}
