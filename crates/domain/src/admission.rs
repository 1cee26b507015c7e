//! The admission check: may this workflow run, and what would each node cost? Answered from
//! the views (never the stream), so it is advisory: charges decide again on the stream.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, ModelKind, Scope, Tier, TrialTerms};
use crate::command::Quantity;
use crate::credits::Credits;
use crate::decide::{check_access, cost_of, priced_quantity, Access};
use crate::events::{PaidBy, Via};
use crate::rejection::Rejection;
use crate::state::{Core, Trial};
use crate::time::Instant;

/// A workflow node type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeType {
    ImageGenerator,
    VideoGenerator,
    MusicGenerator,
    Assistant,
    CustomModel,
    RequestInput,
    HttpRequest,
    List,
    ResponseOutput,
}

impl NodeType {
    /// The type's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::ImageGenerator => "image_generator",
            NodeType::VideoGenerator => "video_generator",
            NodeType::MusicGenerator => "music_generator",
            NodeType::Assistant => "assistant",
            NodeType::CustomModel => "custom_model",
            NodeType::RequestInput => "request_input",
            NodeType::HttpRequest => "http_request",
            NodeType::List => "list",
            NodeType::ResponseOutput => "response_output",
        }
    }

    /// The model kind an AI node runs, or `None` for a node that never costs credits.
    /// `Some(None)` means any kind (custom models).
    pub fn model_kind(self) -> Option<Option<ModelKind>> {
        match self {
            NodeType::ImageGenerator => Some(Some(ModelKind::Image)),
            NodeType::VideoGenerator => Some(Some(ModelKind::Video)),
            NodeType::MusicGenerator => Some(Some(ModelKind::Music)),
            NodeType::Assistant => Some(Some(ModelKind::Assistant)),
            NodeType::CustomModel => Some(None),
            NodeType::RequestInput
            | NodeType::HttpRequest
            | NodeType::List
            | NodeType::ResponseOutput => None,
        }
    }
}

/// One node of the workflow to admit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionNode {
    pub node_id: String,
    pub node_type: NodeType,
    pub model: Option<String>,
    pub quantity: Quantity,
}

/// One node's price in an admitted workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCost {
    pub node_id: String,
    pub cost: Credits,
    pub paid_by: PaidBy,
}

/// An admitted workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub total_cost: Credits,
    pub nodes: Vec<NodeCost>,
    /// What would be left after paying every node; `None` when unlimited.
    pub balance: Option<Credits>,
}

/// Why a workflow may not run: the first blocking node and its rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub node_id: Option<String>,
    pub rejection: Rejection,
}

/// What admission reads of an account's three views, taken once.
struct View<'a> {
    tier: Tier,
    scope: Scope,
    unlimited: bool,
    /// Credits available now (live buckets, holds excluded).
    available: Credits,
    trials: &'a BTreeMap<String, Trial>,
}

/// At most this many nodes per admission: bounds the work one request can ask for.
pub const ADMISSION_NODES_MAX: usize = 1_000;

/// Admits a workflow, walking its nodes in order; the first node that cannot run blocks it.
/// Trials are counted across the workflow: two runs of a model with one free run left block
/// on the second.
pub fn admit(
    account: &Core,
    catalog: &Catalog,
    via: Via,
    nodes: &[AdmissionNode],
    now: Instant,
) -> Result<Admission, Blocked> {
    let view = View {
        tier: account.plan.tier,
        scope: account.plan.scope,
        unlimited: account.plan.unlimited,
        available: account.available(now),
        trials: &account.trials.models,
    };
    let whole = |rejection: Rejection| Blocked {
        node_id: None,
        rejection,
    };
    if nodes.is_empty() || nodes.len() > ADMISSION_NODES_MAX {
        return Err(whole(Rejection::invalid(format!(
            "nodes must hold 1 to {ADMISSION_NODES_MAX} nodes"
        ))));
    }
    if via == Via::Api && !view.scope.allows_api_runs() {
        return Err(whole(Rejection::ScopeRequired {
            scope: view.scope.as_str(),
        }));
    }
    let mut trials_used: HashMap<&str, Trial> = HashMap::new();
    let mut total = Credits::ZERO;
    let mut costs = Vec::with_capacity(nodes.len());
    for node in nodes {
        let blocked = |rejection: Rejection| Blocked {
            node_id: Some(node.node_id.clone()),
            rejection,
        };
        if node.node_id.is_empty() || node.node_id.len() > crate::decide::ID_LEN_MAX {
            return Err(blocked(Rejection::invalid(
                "node_id must be 1 to 128 characters",
            )));
        }
        let Some(kind) = node.node_type.model_kind() else {
            if node.model.is_some() || node.quantity != Quantity::default() {
                return Err(blocked(Rejection::invalid(format!(
                    "node {} is not an AI node: send no model, images or seconds",
                    node.node_id
                ))));
            }
            costs.push(NodeCost {
                node_id: node.node_id.clone(),
                cost: Credits::ZERO,
                paid_by: PaidBy::FreeNode,
            });
            continue;
        };
        let model_id = node.model.as_deref().ok_or_else(|| {
            blocked(Rejection::invalid(format!(
                "AI node {} needs a model",
                node.node_id
            )))
        })?;
        let model = catalog.model(model_id).ok_or_else(|| {
            blocked(Rejection::UnknownModel {
                model: model_id.to_string(),
            })
        })?;
        if kind.is_some_and(|kind| kind != model.kind) {
            return Err(blocked(Rejection::invalid(format!(
                "model {} cannot run in a {:?} node",
                model.id, node.node_type
            ))));
        }
        let quantity = priced_quantity(model, node.quantity).map_err(blocked)?;
        let trial = trials_used
            .get(model.id.as_str())
            .or_else(|| view.trials.get(&model.id));
        let access = check_access(view.tier, trial, model, now).map_err(blocked)?;
        let cost = cost_of(model, quantity).map_err(blocked)?;
        let (cost, paid_by) = match access {
            Access::Trial => {
                let mut next = trial
                    .cloned()
                    .unwrap_or_else(|| fresh_trial(model.free_trial));
                next.used = next.used.saturating_add(1);
                if next.opened_at.is_none() && next.kind == crate::events::TrialKind::Window {
                    next.opened_at = Some(now);
                }
                trials_used.insert(model.id.as_str(), next);
                (Credits::ZERO, PaidBy::Trial)
            }
            Access::Paid if view.unlimited => (cost, PaidBy::Unlimited),
            Access::Paid => {
                total = total
                    .checked_add(cost)
                    .ok_or_else(|| blocked(Rejection::invalid("cost overflows")))?;
                if total > view.available {
                    return Err(blocked(Rejection::InsufficientCredits {
                        required: total,
                        available: view.available,
                    }));
                }
                (cost, PaidBy::Credits)
            }
        };
        costs.push(NodeCost {
            node_id: node.node_id.clone(),
            cost,
            paid_by,
        });
    }
    let total_cost = costs
        .iter()
        .filter(|node| node.paid_by != PaidBy::Trial)
        .map(|node| node.cost)
        .sum();
    Ok(Admission {
        total_cost,
        nodes: costs,
        balance: (!view.unlimited)
            .then(|| view.available.checked_sub(total).unwrap_or(Credits::ZERO)),
    })
}

fn fresh_trial(terms: Option<TrialTerms>) -> Trial {
    let (kind, limit, window_s) = match terms {
        Some(TrialTerms::Runs(runs)) => (crate::events::TrialKind::Runs, runs, 0),
        Some(TrialTerms::Window(window)) => (crate::events::TrialKind::Window, 0, window.as_secs()),
        None => (crate::events::TrialKind::Runs, 0, 0),
    };
    Trial {
        kind,
        limit,
        used: 0,
        window_s,
        opened_at: None,
        closes_at: None,
        closed: false,
    }
}
