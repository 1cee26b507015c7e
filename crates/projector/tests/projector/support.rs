//! Test support: a writer that decides commands with the domain, seals them and appends them
//! to a store, keeping each account folded in memory — the reference the views must equal.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use ledger_domain::command::*;
use ledger_domain::envelope::{seal, stream_name, Cause, GENESIS_HASH};
use ledger_domain::events::{Billing, Via};
use ledger_domain::state::{PlanState, Trials};
use ledger_domain::usage::Stored;
use ledger_domain::{decide, Account, Catalog, Instant, Tier};
use ledger_projector::storage::{read_all_rows, view_path, StoredRow};
use ledger_projector::{ViewName, Views};
use ledger_store::{Attachment, EventStore, ExpectedVersion, NewEvent};
use ledger_store_sqlite::SqliteStore;

pub fn at(text: &str) -> Instant {
    text.parse().expect("test instant")
}

pub const T0: &str = "2026-01-31T08:00:00Z";

/// A temporary directory, in memory when the machine has `/dev/shm`: the tests append with
/// `synchronous = FULL`, and a disk would make every append wait for an fsync.
pub fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("ledger-projector-")
            .tempdir_in(shm)
        {
            return dir;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

/// One account as the writer knows it.
pub struct Written {
    pub account: Account,
    /// The usage view's row, folded from the same events at their `occurred_at`.
    pub usage: ledger_domain::usage::Usage,
    pub prev_hash: String,
    /// The versions of the last events that could change the plan and the trials: what the
    /// sparse views' rows keep (the others keep the account's version).
    pub plan_version: u64,
    pub trials_version: u64,
}

/// Decides commands and seals their events, as the service would.
pub struct Writer {
    pub catalog: Catalog,
    pub accounts: BTreeMap<String, Written>,
    pub now: Instant,
    /// Types of every event decided so far, in order.
    pub event_types: Vec<&'static str>,
    /// `recorded_at` of the events sealed from now on; `None`: the real clock.
    pub recorded_at: Option<Instant>,
    commands: u64,
}

/// An append ready to send: stream, expectation, events.
pub struct Append {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer {
            catalog: Catalog::shipped(),
            accounts: BTreeMap::new(),
            now: at(T0),
            event_types: Vec::new(),
            recorded_at: None,
            commands: 0,
        }
    }

    pub fn advance(&mut self, seconds: i64) {
        self.now += TimeDelta::seconds(seconds);
    }

    /// Decides `command` on `account_id`; on success folds its events into the account and
    /// returns them sealed. A rejection (or an idempotent replay) returns `None`.
    pub fn decide(&mut self, account_id: &str, command: &Command) -> Option<Append> {
        let written = self
            .accounts
            .entry(account_id.to_owned())
            .or_insert_with(|| Written {
                account: Account::new(account_id),
                usage: Default::default(),
                prev_hash: GENESIS_HASH.to_owned(),
                plan_version: 0,
                trials_version: 0,
            });
        let decision = decide(&written.account, &self.catalog, command, self.now).ok()?;
        if decision.events.is_empty() {
            return None;
        }
        self.commands += 1;
        let stream = stream_name(account_id);
        let expected = ExpectedVersion::from_last_version(written.account.version);
        let cause = Cause {
            command_id: format!("{}#{}", command.command_id(self.now), self.commands),
            actor: "test".into(),
        };
        // Recorded now, by the real clock, as the store would record it: the projectors tell
        // history (caught up on in large batches) from fresh events by it.
        let sealed = seal(
            &stream,
            written.account.version,
            &written.prev_hash,
            &cause,
            self.now,
            self.recorded_at.unwrap_or_else(chrono::Utc::now),
            decision.events,
        );
        let mut events = Vec::with_capacity(sealed.len());
        for (envelope, payload) in sealed {
            written.prev_hash = envelope.hash.clone();
            self.event_types.push(envelope.event.type_name());
            events.push(NewEvent {
                event_id: envelope.event_id,
                event_type: envelope.event.type_name().to_owned(),
                payload,
                // As the command handler does: live views fold the sealed envelope, and the
                // kill test holds them byte for byte to a rebuild that parses the payloads.
                attachment: Some(Attachment(Arc::new(envelope.clone()))),
            });
            written.usage.apply(&envelope.event, Stored::of(&envelope));
            if PlanState::changed_by(&envelope.event) {
                written.plan_version = envelope.version;
            }
            if Trials::changed_by(&envelope.event) {
                written.trials_version = envelope.version;
            }
            written.account.apply(envelope.event);
        }
        Some(Append {
            stream,
            expected,
            events,
        })
    }

    /// Decides and appends; panics if the store refuses.
    pub async fn run(
        &mut self,
        store: &dyn EventStore,
        account_id: &str,
        command: &Command,
    ) -> bool {
        match self.decide(account_id, command) {
            Some(append) => {
                store
                    .append(&append.stream, append.expected, append.events)
                    .await
                    .expect("append");
                true
            }
            None => false,
        }
    }
}

impl Default for Writer {
    fn default() -> Self {
        Writer::new()
    }
}

pub fn open() -> Command {
    Command::OpenAccount
}

pub fn charge(id: &str, model: &str, images: Option<u32>, seconds: Option<u32>) -> Command {
    Command::Charge(Charge {
        charge_id: id.into(),
        run_id: "run".into(),
        node_id: format!("node-{id}"),
        model: model.into(),
        quantity: Quantity { images, seconds },
        via: Via::App,
    })
}

pub fn chat(id: &str) -> Command {
    charge(id, "assistant-chat", None, None)
}

pub fn top_up(id: &str, credits: u64) -> Command {
    Command::PurchaseTopUp(PurchaseTopUp {
        purchase_id: id.into(),
        credits,
        expires_at: None,
    })
}

pub fn subscribe(tier: Tier, now: Instant, months: u32, reference: &str) -> Command {
    Command::ChangeSubscription(ChangeSubscription {
        tier,
        billing: (tier != Tier::Free).then_some(Billing::Monthly),
        period_start: now,
        period_end: ledger_domain::time::add_months(now, months),
        reference: reference.into(),
        allowance: None,
    })
}

/// A mixed workload for `accounts` accounts: opens them, gives some a plan and credits, then
/// mostly charges, with holds, refunds and housekeeping mixed in. Deterministic in `seed`.
pub struct Workload {
    pub writer: Writer,
    rng: u64,
    step: u64,
    accounts: usize,
}

impl Workload {
    pub fn new(accounts: usize, seed: u64) -> Workload {
        Workload {
            writer: Writer::new(),
            rng: seed | 1,
            step: 0,
            accounts,
        }
    }

    pub fn next_random(&mut self) -> u64 {
        // xorshift64*: enough for picking workloads, and reproducible from the seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn account_id(index: usize) -> String {
        format!("acct-{index:04}")
    }

    /// The next append of the workload (skipping rejected commands).
    pub fn next_append(&mut self) -> Append {
        loop {
            self.step += 1;
            let index = usize::try_from(self.next_random() % self.accounts as u64).unwrap_or(0);
            let account_id = Self::account_id(index);
            let opened = self
                .writer
                .accounts
                .get(&account_id)
                .is_some_and(|written| written.account.is_open());
            let step = self.step;
            let command = if !opened {
                open()
            } else {
                match self.next_random() % 40 {
                    0 => top_up(&format!("p{step}"), 5_000),
                    1 => subscribe(Tier::Pro, self.writer.now, 1, &format!("sub{step}")),
                    2 => Command::Tick,
                    3 => Command::PlaceHold(PlaceHold {
                        hold_id: format!("h{step}"),
                        run_id: "run".into(),
                        node_id: "n".into(),
                        model: "flux-schnell".into(),
                        quantity: Quantity {
                            images: Some(2),
                            seconds: None,
                        },
                        via: Via::App,
                        ttl: None,
                    }),
                    4 => Command::RefundCharge {
                        charge_id: format!("c{}", step.saturating_sub(3)),
                        reason: "failed".into(),
                    },
                    5 => charge(&format!("c{step}"), "flux-pro", Some(1), None),
                    6 => charge(&format!("c{step}"), "kling-2", None, Some(3)),
                    7 => {
                        self.writer.advance(3_600);
                        Command::Tick
                    }
                    _ => chat(&format!("c{step}")),
                }
            };
            if let Some(append) = self.writer.decide(&account_id, &command) {
                return append;
            }
        }
    }
}

/// Opens a fresh SQLite store in `dir`.
pub fn store_in(dir: &Path) -> (Arc<SqliteStore>, PathBuf) {
    let path = dir.join("events.sqlite");
    (Arc::new(SqliteStore::open(&path).expect("store")), path)
}

/// Waits until every view has applied everything the store holds.
pub async fn caught_up(views: &Views, store: &dyn EventStore) {
    let head = store.head_position().await.expect("head");
    if let Some(head) = head {
        views
            .wait_for(head, Duration::from_secs(20))
            .await
            .expect("views catch up");
    }
}

/// Every view row equals the same part of the account folded by the domain, at the same
/// version.
pub fn assert_views_equal_fold(views: &Views, writer: &Writer) {
    let mut open = 0;
    for (account_id, written) in &writer.accounts {
        let Some(core) = written.account.core.as_ref() else {
            assert!(
                views.account(account_id).is_none(),
                "{account_id} is not open"
            );
            continue;
        };
        open += 1;
        let tier = views.tier.get(account_id).expect("tier row");
        let balance = views.balance.get(account_id).expect("balance row");
        let trials = views.trial_usage.get(account_id).expect("trial row");
        let usage = views.usage.get(account_id).expect("usage row");
        assert_eq!(usage.row, written.usage, "usage of {account_id}");
        assert_eq!(tier.row, core.plan, "tier of {account_id}");
        assert_eq!(balance.row, core.balance, "balance of {account_id}");
        assert_eq!(trials.row, core.trials, "trials of {account_id}");
        for version in [balance.version, usage.version] {
            assert_eq!(version, written.account.version, "version of {account_id}");
        }
        assert_eq!(
            tier.version, written.plan_version,
            "tier version of {account_id}"
        );
        assert_eq!(
            trials.version, written.trials_version,
            "trial-usage version of {account_id}"
        );
    }
    assert_eq!(views.balance.len(), open);
    assert_eq!(views.tier.len(), open);
    assert_eq!(views.trial_usage.len(), open);
    assert_eq!(views.usage.len(), open);
}

/// Every row of a view file, sorted by account.
pub fn file_rows(data_dir: &Path, view: ViewName) -> Vec<StoredRow> {
    read_all_rows(&view_path(data_dir, view), view)
        .expect("view file")
        .1
}

/// The checkpoint position of a view file, if the file exists and has one.
pub fn file_position(data_dir: &Path, view: ViewName) -> Option<u64> {
    read_all_rows(&view_path(data_dir, view), view)
        .ok()
        .and_then(|(checkpoint, _)| checkpoint.position)
}
