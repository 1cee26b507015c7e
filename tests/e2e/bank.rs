//! The Jepsen "bank" workload adapted to credits (issue 15): 16 clients run a seeded random
//! mix of every credit-moving command (charges, holds, captures, releases, refunds, top-ups,
//! grants, renewals, tier changes) on three accounts over real HTTP, retrying some with the
//! same idempotency key. Every read of an account's events is folded here, independently of
//! the domain crate, and checked: contiguous versions, no bucket below zero, every hold
//! resolved at most once, every recorded forfeit equal to what its bucket had left. A checker
//! pauses one account at a time and holds the views (summary) and the server's replay
//! (explain) to the fold: granted − charged + refunded − forfeited = balance + held. At the end
//! `ledger audit reconcile` and `verify` run on every node's data. It runs on the SQLite
//! store, on PostgreSQL, and on three nodes sharing one PostgreSQL database.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::RwLock;

use crate::cluster::{ledger, start_options, TestDatabase};
use crate::support::*;

const ACCOUNTS: [&str; 3] = ["bank-a", "bank-b", "bank-c"];
const CLIENTS: usize = 16;
/// Random operations per store: enough to interleave every command type many times over,
/// small enough that a store's run stays well under a minute on two cores.
const OPERATIONS: usize = 1_200;
/// Share of keyed commands sent a second time with the same key.
const RETRY_PERCENT: u64 = 25;

// ---------------------------------------------------------------------------------------------
// A seeded generator, so that a failing mix can be run again from the printed seed.
// ---------------------------------------------------------------------------------------------

/// SplitMix64: tiny, seedable, and good enough to pick operations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// `LEDGER_TEST_SEED` to repeat a run, else a fresh seed; printed either way.
pub fn seed(what: &str) -> u64 {
    let seed = std::env::var("LEDGER_TEST_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |elapsed| elapsed.as_nanos() as u64)
        });
    println!("{what}: seed {seed} (LEDGER_TEST_SEED={seed} repeats the mix)");
    seed
}

// ---------------------------------------------------------------------------------------------
// The fold: an account's history replayed from the events endpoint, with the invariants.
// ---------------------------------------------------------------------------------------------

/// An account replayed from its events, written apart from the domain crate's own fold so a
/// defect in one is not mirrored in the other.
#[derive(Debug, Default, Clone)]
pub struct Fold {
    pub version: u64,
    pub position: u64,
    /// Remaining credits by (bucket kind, id); allowance ids are normalised instants.
    buckets: BTreeMap<(String, String), i64>,
    allowance: Option<(String, String)>,
    /// Open holds and what each earmarked.
    open_holds: BTreeMap<String, i64>,
    resolved_holds: HashSet<String>,
    /// What each charge drew, for its refund.
    charges: HashMap<String, i64>,
    refunded_charges: HashSet<String>,
    pub granted: i64,
    pub charged: i64,
    pub refunded: i64,
    pub forfeited: i64,
    /// Each charge id and how many `credits_charged` events carry it.
    pub charge_events: HashMap<String, usize>,
    /// Each charge id and the global position of its event.
    pub charge_positions: HashMap<String, u64>,
    pub hold_placed: usize,
    pub hold_resolutions: usize,
}

fn amount(value: &Value, what: &str) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("{what} is not an integer amount: {value}"))
}

/// Parts as `((kind, id), amount)`, allowance ids normalised so that two spellings of one
/// instant name one bucket.
fn parts(value: &Value) -> Vec<((String, String), i64)> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("parts are an array: {value}"))
        .iter()
        .map(|part| {
            let kind = part["bucket"].as_str().expect("a bucket kind").to_string();
            let id = part["id"].as_str().expect("a part id");
            let id = if kind == "allowance" {
                instant_key(id)
            } else {
                id.to_string()
            };
            ((kind, id), amount(&part["amount"], "a part's amount"))
        })
        .collect()
}

fn parts_sum(value: &Value) -> i64 {
    parts(value).iter().map(|(_, amount)| amount).sum()
}

fn instant_key(text: &str) -> String {
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|err| panic!("not an RFC 3339 instant ({err}): {text}"));
    at.with_timezone(&chrono::Utc)
        .format("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string()
}

impl Fold {
    /// Folds a whole stream, checking every invariant after every event.
    pub fn of(account: &str, events: &[Value]) -> Fold {
        let mut fold = Fold::default();
        for event in events {
            fold.apply(account, event);
        }
        fold
    }

    /// Credits available: every bucket (nothing in these runs reaches its expiry).
    pub fn available(&self) -> i64 {
        self.buckets.values().sum()
    }

    pub fn held(&self) -> i64 {
        self.open_holds.values().sum()
    }

    /// `granted − charged + refunded − forfeited`.
    pub fn net(&self) -> i64 {
        self.granted - self.charged + self.refunded - self.forfeited
    }

    fn take(&mut self, context: &str, parts_value: &Value) {
        for (key, amount) in parts(parts_value) {
            let remaining = self
                .buckets
                .get_mut(&key)
                .unwrap_or_else(|| panic!("{context}: draws from {key:?}, which is not live"));
            *remaining -= amount;
            assert!(
                *remaining >= 0,
                "{context}: bucket {key:?} went negative ({remaining})"
            );
        }
    }

    fn give_back(&mut self, context: &str, parts_value: &Value) {
        for (key, amount) in parts(parts_value) {
            *self
                .buckets
                .get_mut(&key)
                .unwrap_or_else(|| panic!("{context}: returns to {key:?}, which is not live")) +=
                amount;
        }
    }

    fn reset_allowance(&mut self, context: &str, data: &Value) {
        let left = self
            .allowance
            .take()
            .and_then(|key| self.buckets.remove(&key))
            .unwrap_or(0);
        let forfeited = amount(&data["forfeited"], "forfeited");
        assert_eq!(
            forfeited, left,
            "{context}: the reset forfeits what the allowance had left"
        );
        self.forfeited += forfeited;
        if !data["allowance"].is_null() {
            let credits = amount(&data["allowance"], "allowance");
            let start = data["allowance_period_start"]
                .as_str()
                .expect("allowance_period_start");
            let key = ("allowance".to_string(), instant_key(start));
            self.buckets.insert(key.clone(), credits);
            self.allowance = Some(key);
            self.granted += credits;
        }
    }

    fn expire(&mut self, context: &str, key: (String, String), forfeited: i64) {
        let left = self
            .buckets
            .remove(&key)
            .unwrap_or_else(|| panic!("{context}: expires {key:?}, which is not live"));
        assert_eq!(
            forfeited, left,
            "{context}: the expiry forfeits what is left"
        );
        self.forfeited += forfeited;
    }

    /// Applies one envelope after checking it continues the stream.
    pub fn apply(&mut self, account: &str, event: &Value) {
        let version = event["version"].as_u64().expect("a version");
        let position = event["position"].as_u64().expect("a position");
        let kind = event["type"].as_str().expect("a type");
        let context = format!("{account} v{version} {kind}");
        assert_eq!(
            version,
            self.version + 1,
            "{context}: stream versions are contiguous"
        );
        assert!(
            position > self.position,
            "{context}: positions grow along the stream ({position} after {})",
            self.position
        );
        assert_eq!(event["stream"], format!("account-{account}"), "{context}");
        self.version = version;
        self.position = position;
        let data = &event["data"];
        match kind {
            "account_opened" => {
                let credits = amount(&data["allowance"], "allowance");
                let key = (
                    "allowance".to_string(),
                    instant_key(data["period_start"].as_str().expect("period_start")),
                );
                self.buckets.insert(key.clone(), credits);
                self.allowance = Some(key);
                self.granted += credits;
            }
            "tier_changed" | "allowance_renewed" => self.reset_allowance(&context, data),
            "top_up_purchased" | "grant_added" => {
                let (bucket, id) = if kind == "grant_added" {
                    ("grant", &data["grant_id"])
                } else {
                    ("top_up", &data["purchase_id"])
                };
                let key = (bucket.to_string(), id.as_str().expect("an id").to_string());
                let credits = amount(&data["credits"], "credits");
                assert!(
                    self.buckets.insert(key.clone(), credits).is_none(),
                    "{context}: {key:?} added twice"
                );
                self.granted += credits;
            }
            "top_up_expired" | "top_up_revoked" => {
                let key = (
                    "top_up".to_string(),
                    data["purchase_id"].as_str().expect("purchase_id").into(),
                );
                let field = if kind == "top_up_expired" {
                    "forfeited"
                } else {
                    "revoked"
                };
                self.expire(&context, key, amount(&data[field], field));
            }
            "grant_expired" => {
                let key = (
                    "grant".to_string(),
                    data["grant_id"].as_str().expect("grant_id").into(),
                );
                self.expire(&context, key, amount(&data["forfeited"], "forfeited"));
            }
            "credits_charged" => {
                let drawn = parts_sum(&data["drawn_from"]);
                if data["paid_by"] == "credits" {
                    assert_eq!(
                        drawn,
                        amount(&data["cost"], "cost"),
                        "{context}: the parts pay the cost"
                    );
                }
                self.take(&context, &data["drawn_from"]);
                self.charged += drawn;
                let id = data["charge_id"].as_str().expect("charge_id").to_string();
                *self.charge_events.entry(id.clone()).or_default() += 1;
                self.charge_positions.insert(id.clone(), position);
                assert!(
                    self.charges.insert(id, drawn).is_none(),
                    "{context}: one charge id, one charge"
                );
            }
            "charge_refunded" => {
                let id = data["charge_id"].as_str().expect("charge_id").to_string();
                let drawn = *self
                    .charges
                    .get(&id)
                    .unwrap_or_else(|| panic!("{context}: refunds {id}, never charged"));
                assert!(
                    self.refunded_charges.insert(id),
                    "{context}: a charge is refunded once"
                );
                let returned = parts_sum(&data["returned"]);
                let forfeited = parts_sum(&data["forfeited"]);
                assert_eq!(
                    returned + forfeited,
                    drawn,
                    "{context}: a refund accounts for every part"
                );
                self.give_back(&context, &data["returned"]);
                self.refunded += returned + forfeited;
                self.forfeited += forfeited;
            }
            "hold_placed" => {
                let earmarked = parts_sum(&data["earmarked"]);
                if data["paid_by"] == "credits" {
                    assert_eq!(
                        earmarked,
                        amount(&data["cost"], "cost"),
                        "{context}: the parts earmark the cost"
                    );
                }
                self.take(&context, &data["earmarked"]);
                let id = data["hold_id"].as_str().expect("hold_id").to_string();
                assert!(
                    !self.resolved_holds.contains(&id)
                        && self.open_holds.insert(id, earmarked).is_none(),
                    "{context}: one hold id, one hold"
                );
                self.hold_placed += 1;
            }
            "hold_captured" | "hold_released" | "hold_expired" => {
                let id = data["hold_id"].as_str().expect("hold_id").to_string();
                let held = self.open_holds.remove(&id).unwrap_or_else(|| {
                    panic!("{context}: resolves {id}, which is not open (resolved before?)")
                });
                assert!(self.resolved_holds.insert(id), "{context}: resolved twice");
                self.hold_resolutions += 1;
                let drawn = if kind == "hold_captured" {
                    parts_sum(&data["drawn_from"])
                } else {
                    0
                };
                let returned = parts_sum(&data["returned"]);
                let forfeited = parts_sum(&data["forfeited"]);
                assert_eq!(
                    drawn + returned + forfeited,
                    held,
                    "{context}: what the hold earmarked is charged, returned or forfeited"
                );
                self.give_back(&context, &data["returned"]);
                self.charged += drawn;
                self.forfeited += forfeited;
            }
            // Plan, verification, trial and alert events move no credits.
            _ => {}
        }
        assert_eq!(
            self.net(),
            self.available() + self.held(),
            "{context}: granted − charged + refunded − forfeited = balance + held"
        );
    }

    /// The balance view (an account summary) equals this replay.
    #[track_caller]
    pub fn check_summary(&self, account: &str, summary: &Value) {
        let balance = &summary["balance"];
        let context = format!(
            "{account} at v{} (position {})",
            self.version, self.position
        );
        assert_eq!(
            balance["total"].as_i64(),
            Some(self.available()),
            "{context}: the view's total is the replay's: {summary}"
        );
        assert_eq!(
            balance["held"].as_i64(),
            Some(self.held()),
            "{context}: the view's held is the replay's: {summary}"
        );
        let allowance = self
            .allowance
            .as_ref()
            .and_then(|key| self.buckets.get(key))
            .copied()
            .unwrap_or(0);
        assert_eq!(
            balance["allowance"].as_i64(),
            Some(allowance),
            "{context}: allowance: {summary}"
        );
        for (list, id_field, kind) in [
            ("top_ups", "lot_id", "top_up"),
            ("grants", "grant_id", "grant"),
        ] {
            let viewed: BTreeMap<String, i64> = balance[list]
                .as_array()
                .expect("a bucket list")
                .iter()
                .map(|lot| {
                    (
                        lot[id_field].as_str().expect("an id").to_string(),
                        amount(&lot["remaining"], "remaining"),
                    )
                })
                .filter(|(_, remaining)| *remaining > 0)
                .collect();
            let replayed: BTreeMap<String, i64> = self
                .buckets
                .iter()
                .filter(|((bucket, _), remaining)| bucket == kind && **remaining > 0)
                .map(|((_, id), remaining)| (id.clone(), *remaining))
                .collect();
            assert_eq!(
                viewed, replayed,
                "{context}: {list} of the view and the replay"
            );
        }
        assert_eq!(
            self.net(),
            amount(&balance["total"], "total") + amount(&balance["held"], "held"),
            "{context}: granted − charged + refunded − forfeited = balance + held"
        );
    }

    /// The server's own replay (explain) agrees with this one, totals included.
    #[track_caller]
    pub fn check_explain(&self, account: &str, explain: &Value) {
        let context = format!("{account} at v{}", self.version);
        assert_eq!(explain["version"].as_u64(), Some(self.version), "{context}");
        let balance = &explain["balance"];
        let totals = &balance["totals"];
        for (name, mine) in [
            ("granted", self.granted),
            ("charged", self.charged),
            ("refunded", self.refunded),
            ("forfeited", self.forfeited),
        ] {
            assert_eq!(
                totals[name].as_i64(),
                Some(mine),
                "{context}: explain's {name} total: {totals}"
            );
        }
        assert_eq!(
            balance["total"].as_i64(),
            Some(self.available()),
            "{context}"
        );
        assert_eq!(balance["held"].as_i64(), Some(self.held()), "{context}");
    }
}

// ---------------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------------

/// What the clients share: the ids they may act on and what they saw.
#[derive(Debug, Default)]
struct Shared {
    /// (account, charge id) of acknowledged charges, for refunds.
    charges: Vec<(usize, String)>,
    /// charge id → the position its first answer gave.
    charge_positions: HashMap<String, u64>,
    /// (account, hold id, quantity field, quantity) of placed holds.
    holds: Vec<(usize, String, &'static str, u64)>,
    /// Every successful resolution of a hold: (capture|release, answer).
    resolutions: HashMap<String, Vec<(&'static str, Value)>>,
    /// Operation kind and outcome → count.
    counts: BTreeMap<String, usize>,
}

/// The refusals a command may meet in this mix; anything else fails the run.
fn allowed_refusal(kind: &str, status: u16, code: Option<&str>) -> bool {
    matches!(
        (kind, status, code),
        (
            "charge" | "hold",
            402,
            Some("INSUFFICIENT_CREDITS")
        ) | (
            "charge" | "hold",
            403,
            Some("MODEL_TIER_REQUIRED" | "TRIAL_EXHAUSTED" | "TRIAL_EXPIRED")
        ) | ("capture" | "release", 409, Some("HOLD_CLOSED" | "IDEMPOTENCY_CONFLICT"))
            | ("renewal", 409, Some("STALE_RENEWAL"))
            // A tier change to free may land between the pick and the renewal.
            | ("renewal", 400, Some("INVALID_REQUEST"))
    )
}

/// One request of the mix: who sends it, where, what, and whether it has a caller key.
#[derive(Debug)]
struct Request {
    kind: &'static str,
    role: Role,
    path: String,
    body: Option<Value>,
    keyed: bool,
}

impl Request {
    async fn send(&self, api: &Api) -> Reply {
        match &self.body {
            Some(body) => api.post(self.role, &self.path, body.clone()).await,
            None => api.post_empty(self.role, &self.path).await,
        }
    }
}

/// Picks the next operation; `None` for a read.
fn pick(rng: &mut Rng, n: usize, account: usize, shared: &Mutex<Shared>) -> Option<Request> {
    let id = ACCOUNTS[account];
    let base = format!("/v1/accounts/{id}");
    let roll = rng.below(100);
    let (model, field, quantity) = match rng.below(5) {
        0 => ("assistant-chat", None, 0),
        1 => ("flux-schnell", Some("images"), rng.between(1, 3)),
        2 => ("flux-pro", Some("images"), rng.between(1, 2)),
        // Long videos drain an account, so that refusals for want of credits happen too.
        3 => ("kling-2", Some("seconds"), rng.between(1, 120)),
        _ => ("seedance-2.0-i2v", Some("seconds"), rng.between(1, 300)),
    };
    let run = |key: &str| {
        let mut body = json!({"run_id": format!("run-{n}"), "node_id": "node", "model": model});
        body[key] = json!(format!("{key}-{n}"));
        if let Some(field) = field {
            body[field] = json!(quantity);
        }
        body
    };
    let request = match roll {
        0..=29 => Request {
            kind: "charge",
            role: Role::Executor,
            path: format!("{base}/charges"),
            body: Some(run("charge_id")),
            keyed: true,
        },
        30..=41 => {
            let mut body = run("hold_id");
            if field.is_none() {
                // A per-call model has nothing to capture less of.
                body["model"] = json!("kling-2");
                body["seconds"] = json!(quantity.max(1));
            }
            if rng.chance(50) {
                body["ttl"] = json!("1h");
            }
            Request {
                kind: "hold",
                role: Role::Executor,
                path: format!("{base}/holds"),
                body: Some(body),
                keyed: true,
            }
        }
        42..=55 => {
            let held = {
                let shared = shared.lock().expect("shared");
                let mine: Vec<_> = shared.holds.iter().filter(|h| h.0 == account).collect();
                if mine.is_empty() {
                    return None;
                }
                mine[rng.below(mine.len() as u64) as usize].clone()
            };
            let (_, hold_id, field, quantity) = held;
            if rng.chance(55) {
                let mut body = json!({});
                if quantity > 0 {
                    body[field] = json!(rng.between(1, quantity));
                }
                Request {
                    kind: "capture",
                    role: Role::Executor,
                    path: format!("{base}/holds/{hold_id}/capture"),
                    body: Some(body),
                    keyed: true,
                }
            } else {
                Request {
                    kind: "release",
                    role: Role::Executor,
                    path: format!("{base}/holds/{hold_id}/release"),
                    body: None,
                    keyed: true,
                }
            }
        }
        56..=63 => {
            let charge_id = {
                let shared = shared.lock().expect("shared");
                let mine: Vec<_> = shared.charges.iter().filter(|c| c.0 == account).collect();
                if mine.is_empty() {
                    return None;
                }
                mine[rng.below(mine.len() as u64) as usize].1.clone()
            };
            Request {
                kind: "refund",
                role: Role::Executor,
                path: format!("{base}/charges/{charge_id}/refund"),
                body: Some(json!({"reason": "the run failed"})),
                keyed: true,
            }
        }
        64..=72 => Request {
            kind: "top_up",
            role: Role::Billing,
            path: format!("{base}/top-ups"),
            body: Some(json!({"purchase_id": format!("p-{n}"), "credits": rng.between(10, 120)})),
            keyed: true,
        },
        73..=79 => Request {
            kind: "grant",
            role: Role::Support,
            path: format!("{base}/grants"),
            body: Some(
                json!({"grant_id": format!("g-{n}"), "credits": rng.between(5, 50),
                              "reason": "bank"}),
            ),
            keyed: true,
        },
        80..=85 => Request {
            kind: "renewal",
            role: Role::Billing,
            path: format!("{base}/renewals"),
            body: Some(
                json!({"invoice_id": format!("in-{n}"), "period_start": from_now(0),
                              "period_end": from_now(30 * 86_400)}),
            ),
            keyed: true,
        },
        86..=91 => {
            let tier = ["free", "free", "pro", "pro", "business"][rng.below(5) as usize];
            let billing = (tier != "free").then_some("monthly");
            Request {
                kind: "subscription",
                role: Role::Billing,
                path: format!("{base}/subscription"),
                body: Some(subscription(tier, billing, &format!("sub-{n}"))),
                keyed: true,
            }
        }
        _ => return None,
    };
    Some(request)
}

/// Records what an answer means for the shared pools, and checks it.
fn record(shared: &Mutex<Shared>, account: usize, request: &Request, reply: &Reply) {
    let mut shared = shared.lock().expect("shared");
    let outcome = match reply.status {
        200 | 201 => "ok".to_string(),
        status => {
            let code = reply.code();
            assert!(
                allowed_refusal(request.kind, status, code.as_deref()),
                "{} answered {status}: {}",
                reply.request,
                reply.text
            );
            code.unwrap_or_default().to_lowercase()
        }
    };
    *shared
        .counts
        .entry(format!("{} {outcome}", request.kind))
        .or_default() += 1;
    if outcome != "ok" {
        return;
    }
    let body = request.body.clone().unwrap_or(Value::Null);
    match request.kind {
        "charge" => {
            let id = body["charge_id"].as_str().expect("charge_id").to_string();
            let position = position(&reply.json);
            let first = *shared
                .charge_positions
                .entry(id.clone())
                .or_insert(position);
            assert_eq!(
                first, position,
                "{}: a replay answers the first position",
                reply.request
            );
            shared.charges.push((account, id));
        }
        "hold" => {
            let id = body["hold_id"].as_str().expect("hold_id").to_string();
            let (field, quantity) = ["images", "seconds"]
                .into_iter()
                .find_map(|field| body[field].as_u64().map(|q| (field, q)))
                .unwrap_or(("images", 0));
            shared.holds.push((account, id, field, quantity));
        }
        "capture" | "release" => {
            let hold_id = reply.json["hold_id"].as_str().expect("hold_id").to_string();
            shared
                .resolutions
                .entry(hold_id)
                .or_default()
                .push((request.kind, reply.json.clone()));
        }
        _ => {}
    }
}

/// The nodes under test and how to stop them for the offline checks.
#[derive(Debug)]
pub struct Nodes {
    pub servers: Vec<Server>,
    pub store: Option<String>,
}

impl Nodes {
    fn apis(&self) -> Vec<Api> {
        self.servers
            .iter()
            .map(|server| server.api.clone())
            .collect()
    }
}

/// Pauses one account's writers, then holds every node's views and the server's replay to
/// the fold of the account's events.
async fn barrier_check(apis: &[Api], locks: &[RwLock<()>], account: usize, turn: usize) {
    let _paused = locks[account].write().await;
    let id = ACCOUNTS[account];
    let reader = &apis[turn % apis.len()];
    let events = all_events(reader, id).await;
    let fold = Fold::of(id, &events);
    for api in apis {
        let view = read_at(api, &format!("/v1/accounts/{id}"), fold.position).await;
        fold.check_summary(id, &view);
    }
    let explain = read_at(reader, &format!("/v1/accounts/{id}/explain"), fold.position).await;
    fold.check_explain(id, &explain);
}

/// A read once the node's views have reached `position`. A node whose projector is busier
/// than the 2 s a read waits answers 503; that is the documented answer, so ask again.
pub async fn read_at(api: &Api, path: &str, position: u64) -> Value {
    let path = format!("{path}?min_position={position}");
    for _ in 0..30 {
        let reply = api.get(Role::Finance, &path).await;
        if reply.status != 503 {
            return reply.expect(200);
        }
    }
    panic!("{path}: the views never reached position {position}");
}

/// Runs the mix against `nodes` and checks everything; `label` names the store in the output.
pub async fn run_bank(label: &str, nodes: Nodes) {
    let seed = seed(&format!("bank on {label}"));
    let apis = nodes.apis();
    let api = &apis[0];
    let verification =
        json!({"company_name": "Bank GmbH", "country": "DE", "registration_number": "HRB 1"});
    for id in ACCOUNTS {
        open(api, id).await;
        api.post(
            Role::Billing,
            &format!("/v1/accounts/{id}/business-verification"),
            verification.clone(),
        )
        .await
        .expect(202);
        api.post_empty(
            Role::Admin,
            &format!("/v1/accounts/{id}/business-verification/approve"),
        )
        .await
        .expect(200);
        top_up(api, id, &format!("seed-{id}"), 100).await;
    }

    let shared = Arc::new(Mutex::new(Shared::default()));
    let locks: Arc<Vec<RwLock<()>>> = Arc::new(ACCOUNTS.iter().map(|_| RwLock::new(())).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let replays = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicBool::new(true));

    let checker = {
        let apis = apis.clone();
        let locks = locks.clone();
        let running = running.clone();
        tokio::spawn(async move {
            let mut turn = 0;
            while running.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(150)).await;
                barrier_check(&apis, &locks, turn % ACCOUNTS.len(), turn).await;
                turn += 1;
            }
            turn
        })
    };

    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let apis: Vec<Api> = apis.iter().map(Api::fresh).collect();
        let shared = shared.clone();
        let locks = locks.clone();
        let next = next.clone();
        let replays = replays.clone();
        let reads = reads.clone();
        let mut rng = Rng::new(seed ^ (client as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        clients.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= OPERATIONS {
                    return;
                }
                let account = rng.below(ACCOUNTS.len() as u64) as usize;
                let node = rng.below(apis.len() as u64) as usize;
                let _writing = locks[account].read().await;
                let Some(request) = pick(&mut rng, n, account, &shared) else {
                    // A read: the events so far must fold without breaking an invariant.
                    let id = ACCOUNTS[account];
                    let events = all_events(&apis[node], id).await;
                    Fold::of(id, &events);
                    reads.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let first = request.send(&apis[node]).await;
                record(&shared, account, &request, &first);
                if request.keyed && rng.chance(RETRY_PERCENT) {
                    // The retry goes to another node where there is one.
                    let again = request.send(&apis[(node + 1) % apis.len()]).await;
                    if matches!(first.status, 200 | 201) {
                        assert_eq!(
                            (again.status, &again.json),
                            (200, &first.json),
                            "{}: a retry with the same key answers as a replay",
                            first.request
                        );
                        replays.fetch_add(1, Ordering::Relaxed);
                    } else {
                        record(&shared, account, &request, &again);
                    }
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("a client");
    }
    running.store(false, Ordering::Relaxed);
    let barrier_checks = checker.await.expect("the checker");
    for account in 0..ACCOUNTS.len() {
        barrier_check(&apis, &locks, account, account).await;
    }

    // Every hold resolved at most once as the clients saw it: any second success is a replay
    // of the first (same kind, same answer).
    let shared = Arc::try_unwrap(shared)
        .map_err(|_| ())
        .expect("no client left")
        .into_inner()
        .expect("shared");
    for (hold_id, answers) in &shared.resolutions {
        let (kind, answer) = &answers[0];
        for (other_kind, other) in &answers[1..] {
            assert_eq!(
                (other_kind, other),
                (kind, answer),
                "hold {hold_id} resolved twice"
            );
        }
    }
    let mut totals = (0, 0, 0, 0);
    for id in ACCOUNTS {
        let fold = Fold::of(id, &all_events(api, id).await);
        for (charge_id, count) in &fold.charge_events {
            assert_eq!(*count, 1, "{id}: charge {charge_id} recorded once");
            assert_eq!(
                shared.charge_positions.get(charge_id),
                fold.charge_positions.get(charge_id),
                "{id}: charge {charge_id} was answered with the position of its event"
            );
        }
        totals.0 += fold.version;
        totals.1 += fold.hold_placed;
        totals.2 += fold.hold_resolutions;
        totals.3 += fold.charge_events.len();
    }
    println!(
        "bank on {label}: {OPERATIONS} operations by {CLIENTS} clients on {} node(s), \
         {} replays, {} reads, {barrier_checks} paused checks; {} events, {} charges, \
         {} holds placed, {} resolved",
        apis.len(),
        replays.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
        totals.0,
        totals.3,
        totals.1,
        totals.2,
    );
    println!("bank on {label}: outcomes {:?}", shared.counts);
    for kind in [
        "charge",
        "hold",
        "capture",
        "release",
        "refund",
        "top_up",
        "grant",
        "renewal",
        "subscription",
    ] {
        assert!(
            shared
                .counts
                .get(&format!("{kind} ok"))
                .is_some_and(|n| *n > 0),
            "the mix ran at least one successful {kind}: {:?}",
            shared.counts
        );
    }

    // Offline: each node's views equal a replay, and the history verifies.
    let mut stopped = Vec::new();
    for server in nodes.servers {
        stopped.push(server.stop().await);
    }
    for node in &stopped {
        let data = node.data();
        let data = data.to_str().expect("a UTF-8 path");
        let mut args = vec!["audit", "reconcile", "--data", data];
        if let Some(store) = &nodes.store {
            args.extend(["--store", store.as_str()]);
        }
        let (ok, out, err) = ledger(&args);
        assert!(ok, "reconcile on {data}: {out}\n{err}");
        args[1] = "verify";
        let (ok, out, err) = ledger(&args);
        assert!(ok, "verify on {data}: {out}\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_invariants_hold_on_the_sqlite_store() {
    let server = Server::start().await;
    run_bank(
        "sqlite",
        Nodes {
            servers: vec![server],
            store: None,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_invariants_hold_on_postgres() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let server = Server::start_with(start_options(&database.url)).await;
    run_bank(
        "postgres",
        Nodes {
            servers: vec![server],
            store: Some(database.url.clone()),
        },
    )
    .await;
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_invariants_hold_on_three_postgres_nodes() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Server::start_with(start_options(&database.url)).await);
    }
    run_bank(
        "three postgres nodes",
        Nodes {
            servers,
            store: Some(database.url.clone()),
        },
    )
    .await;
    database.drop_now().await;
}

/// An envelope as the events endpoint answers it, with only what the fold reads.
fn envelope(version: u64, kind: &str, data: Value) -> Value {
    json!({"stream": "account-x", "version": version, "position": version * 10,
           "type": kind, "data": data})
}

/// The fold's panic message for `events`, or `None` when they fold cleanly.
fn fold_failure(events: &[Value]) -> Option<String> {
    let events = events.to_vec();
    std::panic::catch_unwind(move || {
        Fold::of("x", &events);
    })
    .err()
    .map(|panic| panic.downcast_ref::<String>().cloned().unwrap_or_default())
}

/// The checker is only worth its runs if it fails on the histories it exists to catch.
#[test]
fn the_bank_fold_rejects_gaps_overdrafts_and_holds_resolved_twice() {
    let start = "2026-01-01T00:00:00Z";
    let opened = envelope(
        1,
        "account_opened",
        json!({"period_start": start, "allowance": 10}),
    );
    let part = |amount: i64| json!([{"bucket": "allowance", "id": "2026-01-01T00:00:00.000Z", "amount": amount}]);
    let placed = envelope(
        2,
        "hold_placed",
        json!({"hold_id": "h", "cost": 4, "paid_by": "credits", "earmarked": part(4)}),
    );
    let released = |version| {
        envelope(
            version,
            "hold_released",
            json!({"hold_id": "h", "returned": part(4), "forfeited": []}),
        )
    };
    assert_eq!(
        fold_failure(&[opened.clone(), placed.clone(), released(3)]),
        None,
        "a clean history folds"
    );
    let twice = fold_failure(&[opened.clone(), placed.clone(), released(3), released(4)]);
    assert!(
        twice.is_some_and(|m| m.contains("not open")),
        "a hold resolved twice"
    );
    let gap = fold_failure(&[opened.clone(), released(3)]);
    assert!(
        gap.is_some_and(|m| m.contains("contiguous")),
        "a version gap"
    );
    let overdraft = envelope(
        2,
        "credits_charged",
        json!({"charge_id": "c", "cost": 11, "paid_by": "credits", "drawn_from": part(11)}),
    );
    let negative = fold_failure(&[opened, overdraft]);
    assert!(
        negative.is_some_and(|m| m.contains("negative")),
        "an overdraft"
    );
}
