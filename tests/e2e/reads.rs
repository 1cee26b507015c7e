//! The read side over HTTP: the events endpoint (paging, envelopes, the hash chain), explain
//! (timeline, balance as of an instant, why a model is blocked), the NDJSON audit export in
//! global order, `/healthz` and `/metrics` (classic Prometheus text, or OpenMetrics on request).

use std::collections::{BTreeMap, HashMap};

use prometheus_parse::{Scrape, Value as Parsed};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::support::*;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An envelope with `data` kept byte for byte, to recompute its hash.
#[derive(Debug, Deserialize)]
struct Sealed {
    event_id: String,
    stream: String,
    version: u64,
    position: u64,
    #[serde(rename = "type")]
    type_name: String,
    schema_version: u32,
    occurred_at: String,
    recorded_at: String,
    command_id: String,
    actor: String,
    prev_hash: String,
    hash: String,
    data: Box<RawValue>,
}

impl Sealed {
    /// The chain hash as ARCHITECTURE.md defines it: SHA-256 over the fields, each followed
    /// by a newline, `data` exactly as stored.
    fn computed_hash(&self) -> String {
        let mut hasher = Sha256::new();
        for field in [
            self.prev_hash.as_str(),
            &self.event_id,
            &self.stream,
            &self.version.to_string(),
            &self.type_name,
            &self.schema_version.to_string(),
            &self.occurred_at,
            &self.recorded_at,
            &self.command_id,
            &self.actor,
            self.data.get(),
        ] {
            hasher.update(field.as_bytes());
            hasher.update(b"\n");
        }
        hex::encode(hasher.finalize())
    }
}

#[derive(Debug, Deserialize)]
struct Page {
    events: Vec<Sealed>,
}

/// Checks one stream's envelopes: versions 1, 2, 3, ... with no gaps, positions rising,
/// each `prev_hash` the previous `hash`, every `hash` recomputable.
fn assert_chain(events: &[&Sealed], whence: &str) {
    let mut prev = GENESIS.to_string();
    let mut last_position = None;
    for (index, event) in events.iter().enumerate() {
        assert_eq!(
            event.version,
            index as u64 + 1,
            "{whence}: versions without gaps"
        );
        assert_eq!(
            event.prev_hash, prev,
            "{whence}: version {} prev_hash",
            event.version
        );
        assert_eq!(
            event.computed_hash(),
            event.hash,
            "{whence}: version {} ({}) hash does not match its fields",
            event.version,
            event.type_name
        );
        assert!(
            last_position < Some(event.position),
            "{whence}: positions rise"
        );
        last_position = Some(event.position);
        prev = event.hash.clone();
    }
}

async fn account_with_events(api: &Api, id: &str, charges: usize) -> u64 {
    open(api, id).await;
    let mut last = 0;
    for n in 0..charges {
        let receipt = charge(
            api,
            id,
            charge_body(&format!("c{n}"), "assistant-chat", None),
        )
        .await
        .expect(201);
        last = position(&receipt);
    }
    last
}

#[tokio::test]
async fn events_page_by_version_with_after_and_limit() {
    let server = Server::start().await;
    let api = &server.api;
    account_with_events(api, "ev", 24).await;
    let page = |after: u64, limit: u64| {
        let api = api.clone();
        async move {
            let reply = api
                .get(
                    Role::Support,
                    &format!("/v1/accounts/ev/events?after={after}&limit={limit}"),
                )
                .await
                .expect(200);
            reply["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|event| event["version"].as_u64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(0, 10).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(page(10, 10).await, (11..=20).collect::<Vec<_>>());
    assert_eq!(page(20, 10).await, (21..=25).collect::<Vec<_>>());
    assert_eq!(page(25, 10).await, Vec::<u64>::new());
    assert_eq!(page(3, 1).await, vec![4]);
    assert_eq!(page(0, 10_000).await.len(), 25);
    // The default page holds up to 1,000 events.
    let all = api
        .get(Role::Finance, "/v1/accounts/ev/events")
        .await
        .expect(200);
    assert_eq!(all["events"].as_array().unwrap().len(), 25);
    for limit in ["10001", "0", "1000000"] {
        api.get(
            Role::Support,
            &format!("/v1/accounts/ev/events?limit={limit}"),
        )
        .await
        .expect_error(400, "INVALID_REQUEST");
    }
    let types: Vec<&str> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types[0], "account_opened");
    assert!(types[1..].iter().all(|t| *t == "credits_charged"));
}

#[tokio::test]
async fn events_carry_the_envelope_and_a_hash_chain_verifiable_from_the_answer() {
    let server = Server::start().await;
    let api = &server.api;
    account_with_events(api, "hc", 3).await;
    top_up(api, "hc", "lot", 10).await;
    let reply = api
        .get(Role::Finance, "/v1/accounts/hc/events")
        .await
        .expect(200);
    let object = &reply["events"][0];
    for field in [
        "event_id",
        "stream",
        "version",
        "position",
        "type",
        "schema_version",
        "occurred_at",
        "recorded_at",
        "command_id",
        "actor",
        "prev_hash",
        "hash",
        "data",
    ] {
        assert!(object.get(field).is_some(), "envelope field {field}");
    }
    assert_eq!(object["stream"], "account-hc");
    assert_eq!(object["actor"], "billing");
    assert_eq!(reply["events"][1]["actor"], "executor");
    let page: Page =
        serde_json::from_str(&api.get(Role::Finance, "/v1/accounts/hc/events").await.text).unwrap();
    assert_eq!(page.events.len(), 5);
    assert_chain(&page.events.iter().collect::<Vec<_>>(), "events endpoint");
}

#[tokio::test]
async fn explain_replays_the_timeline_and_the_balance_as_of_any_instant() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "x1").await;
    top_up(api, "x1", "lot", 1_000).await;
    let charged = charge(
        api,
        "x1",
        charge_body("c1", "flux-schnell", Some(("images", 100))),
    )
    .await
    .expect(201);
    for n in 1..=3 {
        charge(
            api,
            "x1",
            charge_body(&format!("t{n}"), "flux-pro", Some(("images", 1))),
        )
        .await
        .expect(201);
    }
    let now = api
        .get(Role::Support, "/v1/accounts/x1/explain")
        .await
        .expect(200);
    assert_eq!(
        (now["account_id"].as_str(), now["exists"].as_bool()),
        (Some("x1"), Some(true))
    );
    let timeline = now["timeline"].as_array().unwrap();
    let events = all_events(api, "x1").await;
    assert_eq!(timeline.len(), events.len());
    assert_eq!(now["version"], events.len());
    for (entry, event) in timeline.iter().zip(&events) {
        assert_eq!(
            (&entry["version"], &entry["type"]),
            (&event["version"], &event["type"])
        );
    }
    let charge_entry = timeline
        .iter()
        .find(|entry| entry["type"] == "credits_charged")
        .unwrap();
    assert_eq!(charge_entry["drawn_from"], charged["drawn_from"]);
    assert_eq!(now["balance"]["total"], 1_300);
    assert_eq!(now["balance"]["totals"]["charged"], 200);
    // Why a model is blocked.
    let flux_pro = now["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "flux-pro")
        .unwrap();
    assert_eq!(
        (
            flux_pro["access"].as_str(),
            flux_pro["reason_code"].as_str()
        ),
        (Some("blocked"), Some("TRIAL_EXHAUSTED"))
    );
    let seedance = now["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "seedance-2.0-i2v")
        .unwrap();
    assert_eq!(seedance["reason_code"], "MODEL_TIER_REQUIRED");

    // As of the top-up: the charge has not happened yet.
    let top_up_at = events
        .iter()
        .find(|e| e["type"] == "top_up_purchased")
        .unwrap()["occurred_at"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/accounts/x1/explain?at={top_up_at}");
    let then = api.get(Role::Finance, &path).await.expect(200);
    assert_eq!(then["balance"]["total"], 1_500);
    assert_eq!(then["version"], 2);
    // The balance as of an instant is the same whenever it is asked.
    charge(
        api,
        "x1",
        charge_body("c2", "flux-schnell", Some(("images", 1))),
    )
    .await
    .expect(201);
    let later = api.get(Role::Finance, &path).await.expect(200);
    assert_eq!(later, then);
    // Before the account was opened it does not exist.
    let opened_at = instant(&events[0]["occurred_at"]);
    let before = (opened_at - chrono::TimeDelta::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    api.get(
        Role::Support,
        &format!("/v1/accounts/x1/explain?at={before}"),
    )
    .await
    .expect_error(404, "ACCOUNT_NOT_FOUND");
}

#[tokio::test]
async fn explain_refuses_an_at_later_than_now_with_400_invalid_request() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "fx").await;
    // The balance as of a later instant could still change, so no answer is given for it.
    for ahead in [2, 3_600] {
        let at = from_now(ahead);
        let reply = api
            .get(Role::Support, &format!("/v1/accounts/fx/explain?at={at}"))
            .await;
        reply.expect_error(400, "INVALID_REQUEST");
        let message = reply.json["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("later than now"), "{message}");
    }
    // Refused before the account is looked up: the instant is wrong whoever asks.
    api.get(
        Role::Finance,
        &format!("/v1/accounts/ghost/explain?at={}", from_now(3_600)),
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
    // An instant that has passed still answers (taken after the account was opened).
    let past = from_now(0);
    api.get(Role::Finance, &format!("/v1/accounts/fx/explain?at={past}"))
        .await
        .expect(200);
}

#[tokio::test]
async fn audit_export_is_ndjson_of_every_account_in_global_order() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "g1").await;
    open(api, "g2").await;
    for n in 0..3 {
        charge(
            api,
            "g1",
            charge_body(&format!("a{n}"), "assistant-chat", None),
        )
        .await
        .expect(201);
        charge(
            api,
            "g2",
            charge_body(&format!("b{n}"), "assistant-chat", None),
        )
        .await
        .expect(201);
    }
    top_up(api, "g2", "lot", 5).await;
    let reply = api.get(Role::Finance, "/v1/audit/events").await;
    reply.expect(200);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/x-ndjson")
    );
    let lines: Vec<Sealed> = reply
        .text
        .lines()
        .map(|line| serde_json::from_str(line).expect("an envelope per line"))
        .collect();
    // g1: opened + 3 charges; g2: opened + 3 charges + a top-up.
    assert_eq!(lines.len(), 4 + 5);
    assert!(
        lines
            .windows(2)
            .all(|pair| pair[0].position < pair[1].position),
        "global order"
    );
    // Interleaved streams, each a complete chain.
    let streams: Vec<&str> = lines.iter().map(|e| e.stream.as_str()).collect();
    assert_eq!(
        &streams[..4],
        ["account-g1", "account-g2", "account-g1", "account-g2"]
    );
    let mut by_stream: BTreeMap<&str, Vec<&Sealed>> = BTreeMap::new();
    for event in &lines {
        by_stream
            .entry(event.stream.as_str())
            .or_default()
            .push(event);
    }
    assert_eq!(by_stream.len(), 2);
    for (stream, events) in &by_stream {
        assert_chain(events, stream);
    }

    // since/until select by recorded_at, [since, until).
    let middle = &lines[5];
    let since = api
        .get(
            Role::Finance,
            &format!("/v1/audit/events?since={}", middle.recorded_at),
        )
        .await;
    since.expect(200);
    let selected: Vec<Sealed> = since
        .text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let at = |text: &str| instant(&json!(text));
    let pivot = at(&middle.recorded_at);
    assert!(!selected.is_empty() && selected.iter().all(|e| at(&e.recorded_at) >= pivot));
    assert!(selected.iter().any(|e| e.event_id == middle.event_id));
    let until = api
        .get(
            Role::Finance,
            &format!("/v1/audit/events?until={}", middle.recorded_at),
        )
        .await;
    until.expect(200);
    let earlier: Vec<Sealed> = until
        .text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(earlier.iter().all(|e| at(&e.recorded_at) < pivot));
    assert_eq!(earlier.len() + selected.len(), lines.len());
    api.get(
        Role::Finance,
        &format!(
            "/v1/audit/events?since={}&until={}",
            middle.recorded_at, middle.recorded_at
        ),
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
}

#[tokio::test]
async fn healthz_answers_ok_without_a_token() {
    let server = Server::start().await;
    let reply = server.api.send(None, "GET", "/healthz", Body::None).await;
    assert_eq!(reply.expect(200), json!({"status": "ok"}));
}

/// Parses Prometheus text into (name, labels) → value.
fn samples(text: &str) -> HashMap<(String, BTreeMap<String, String>), f64> {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels: BTreeMap<String, String> = labels
            .split(',')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').expect("label=value");
                (key.to_string(), value.trim_matches('"').to_string())
            })
            .collect();
        samples.insert(
            (name.to_string(), labels),
            value.parse::<f64>().expect("a number"),
        );
    }
    samples
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_request_counts_latencies_and_projection_progress() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "m1").await;
    let mut last = 0;
    for n in 0..3 {
        last = position(
            &charge(
                api,
                "m1",
                charge_body(&format!("c{n}"), "assistant-chat", None),
            )
            .await
            .expect(201),
        );
    }
    charge(api, "m1", charge_body("bad", "nope", None))
        .await
        .expect_error(400, "UNKNOWN_MODEL");
    summary(api, "m1", last).await;
    let reply = server.api.send(None, "GET", "/metrics", Body::None).await;
    reply.expect(200);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = &reply.text;
    assert!(
        text.contains("# TYPE ledger_http_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE ledger_http_request_duration_seconds histogram"),
        "{text}"
    );
    let samples = samples(text);
    let count = |route: &str, method: &str, status: &str| {
        let labels: BTreeMap<String, String> =
            [("route", route), ("method", method), ("status", status)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        samples
            .get(&("ledger_http_requests_total".to_string(), labels))
            .copied()
    };
    assert_eq!(count("/v1/accounts", "POST", "201"), Some(1.0), "{text}");
    assert_eq!(
        count("/v1/accounts/{id}/charges", "POST", "201"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        count("/v1/accounts/{id}/charges", "POST", "400"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count("/v1/accounts/{id}", "GET", "200"),
        Some(1.0),
        "{text}"
    );
    let latency_count = samples
        .iter()
        .find(|((name, labels), _)| {
            name == "ledger_http_request_duration_seconds_count"
                && labels.get("route").map(String::as_str) == Some("/v1/accounts/{id}/charges")
        })
        .map(|(_, value)| *value);
    assert_eq!(latency_count, Some(4.0), "{text}");
    let views: Vec<(&String, f64)> = samples
        .iter()
        .filter(|((name, _), _)| name == "ledger_projection_position")
        .map(|((_, labels), value)| (labels.get("view").expect("a view label"), *value))
        .collect();
    assert!(
        views.len() >= 3,
        "one position per view (balance, trial-usage, tier): {text}"
    );
    for (view, value) in views {
        assert!(
            value >= last as f64,
            "view {view} at {value}, the answer needed {last}"
        );
    }
    assert!(
        samples
            .keys()
            .any(|(name, _)| name == "ledger_projection_lag_events"),
        "{text}"
    );
    assert!(
        samples
            .keys()
            .any(|(name, _)| name == "ledger_projection_lag_milliseconds"),
        "{text}"
    );
}

/// The series a classic TYPE line covers: a histogram's `_bucket`, `_sum` and `_count`, any
/// other type's own name (a counter's TYPE names its `_total` series).
fn typed_by(sample: &str, types: &HashMap<String, String>) -> Option<String> {
    if let Some(kind) = types.get(sample) {
        return Some(kind.clone());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let family = sample.strip_suffix(suffix)?;
        types
            .get(family)
            .filter(|kind| *kind == "histogram")
            .cloned()
    })
}

#[tokio::test]
async fn metrics_answer_classic_prometheus_text_unless_openmetrics_is_asked_for() {
    let server = Server::start().await;
    let api = &server.api;
    let opened = open(api, "mx").await;
    charge(api, "mx", charge_body("c1", "assistant-chat", None))
        .await
        .expect(201);
    summary(api, "mx", position(&opened)).await;
    api.get(Role::Finance, "/v1/audit/events").await.expect(200);

    for accept in [None, Some("*/*"), Some("text/plain")] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let reply = api
            .send_with_headers(None, "GET", "/metrics", Body::None, &headers)
            .await;
        reply.expect(200);
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            "Accept {accept:?}"
        );
        let text = &reply.text;
        assert!(
            !text.contains("# UNIT") && !text.contains("# EOF"),
            "{text}"
        );
        // Every sample is covered by a TYPE line that names it as the classic format does.
        let types: HashMap<String, String> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE ")?.split_once(' '))
            .map(|(name, kind)| (name.to_string(), kind.to_string()))
            .collect();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let kind = typed_by(name, &types);
            assert!(kind.is_some(), "{name} has no TYPE line naming it:\n{text}");
            if name.ends_with("_total") {
                assert_eq!(kind.as_deref(), Some("counter"), "{name}");
            }
        }
        // And a real parser reads the types. prometheus-parse skips samples whose labels hold
        // a `}` (the `{id}` routes); the routes without one are enough to see each type.
        let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).unwrap();
        let values = |name: &str| -> Vec<&Parsed> {
            scrape
                .samples
                .iter()
                .filter(|sample| sample.metric == name)
                .map(|sample| &sample.value)
                .collect()
        };
        let requests = values("ledger_http_requests_total");
        assert!(
            !requests.is_empty() && requests.iter().all(|v| matches!(v, Parsed::Counter(_))),
            "request counters are counters: {requests:?}\n{text}"
        );
        let latency = values("ledger_http_request_duration_seconds");
        assert!(
            !latency.is_empty() && latency.iter().all(|v| matches!(v, Parsed::Histogram(_))),
            "latencies are histograms: {latency:?}\n{text}"
        );
        for gauge in [
            "ledger_projection_position",
            "ledger_projection_lag_events",
            "ledger_projection_lag_milliseconds",
        ] {
            let lag = values(gauge);
            assert!(
                lag.len() >= 3 && lag.iter().all(|v| matches!(v, Parsed::Gauge(_))),
                "{gauge} is a gauge per view: {lag:?}\n{text}"
            );
        }
    }

    let prometheus = "application/openmetrics-text;version=1.0.0,\
                      text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for accept in ["application/openmetrics-text", prometheus] {
        let reply = api
            .send_with_headers(None, "GET", "/metrics", Body::None, &[("accept", accept)])
            .await;
        reply.expect(200);
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "Accept {accept:?}"
        );
        assert!(reply.text.ends_with("# EOF\n"), "{}", reply.text);
        assert!(
            reply.text.contains("# TYPE ledger_http_requests counter\n"),
            "{}",
            reply.text
        );
    }
}
