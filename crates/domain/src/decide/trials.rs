//! The events a free trial run records: the grant before first use, then the count or the
//! window.

use chrono::{DateTime, Utc};

use crate::catalog::{Model, TrialTerms};
use crate::events::*;
use crate::state::Trial;
use crate::time::{DurationS, Instant};

/// The events that record one free trial run: the grant before its first use, then the
/// count or the window.
pub(super) fn trial_run_events(
    trial: Option<&Trial>,
    model: &Model,
    run_ref: &str,
    now: Instant,
) -> Vec<Event> {
    let mut events = Vec::with_capacity(2);
    let Some(terms) = model.free_trial else {
        return events;
    };
    if trial.is_none() {
        events.push(
            TrialGranted {
                model: model.id.clone(),
                kind: terms.kind(),
                runs: match terms {
                    TrialTerms::Runs(runs) => Some(runs),
                    TrialTerms::Window(_) => None,
                },
                window_s: match terms {
                    TrialTerms::Runs(_) => None,
                    TrialTerms::Window(window) => Some(window.as_secs()),
                },
            }
            .into(),
        );
    }
    match terms {
        TrialTerms::Runs(runs) => {
            let (used, limit) = trial.map_or((0, runs), |trial| (trial.used, trial.limit));
            events.push(
                TrialRunConsumed {
                    model: model.id.clone(),
                    run_ref: run_ref.to_string(),
                    used: used + 1,
                    limit,
                }
                .into(),
            );
        }
        TrialTerms::Window(window) => {
            let opened = trial.is_some_and(|trial| trial.opened_at.is_some());
            if !opened {
                // The granted window length wins over today's catalog.
                let window_s = trial.map_or(window.as_secs(), |trial| trial.window_s);
                let closes_at = DurationS::from_secs(window_s)
                    .after(now)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                events.push(
                    TrialWindowOpened {
                        model: model.id.clone(),
                        opened_at: now,
                        closes_at,
                    }
                    .into(),
                );
            }
        }
    }
    events
}
