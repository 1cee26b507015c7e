//! The bank checker's fold: an account's history replayed from the events endpoint, apart
//! from the domain crate's own fold, with every invariant of issue 15 checked after every
//! event; and the seeded generator the workloads share, so a failing mix can be run again.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Value};

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

    /// Top-up and grant lots not yet expired, spent or not.
    pub fn lots(&self) -> usize {
        self.buckets
            .keys()
            .filter(|(kind, _)| kind != "allowance")
            .count()
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

    /// Takes a run's parts (`field` of `data`) from their buckets; a run paid from credits
    /// must be paid in full by them. Returns what the parts add up to.
    fn take_paid(&mut self, context: &str, data: &Value, field: &str) -> i64 {
        let sum = parts_sum(&data[field]);
        if data["paid_by"] == "credits" {
            assert_eq!(
                sum,
                amount(&data["cost"], "cost"),
                "{context}: the parts ({field}) cover the cost"
            );
        }
        self.take(context, &data[field]);
        sum
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
                let drawn = self.take_paid(&context, data, "drawn_from");
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
                let earmarked = self.take_paid(&context, data, "earmarked");
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
