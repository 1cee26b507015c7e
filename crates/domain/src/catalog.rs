//! The catalog: plans, models, prices and trials, loaded from JSON (SPEC section 4) and
//! validated so that every later decision can trust it.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::credits::Credits;
use crate::time::DurationS;

/// The catalog the project ships with.
pub const DEFAULT_CATALOG_JSON: &str = include_str!("../catalog/default.json");

/// Subscription tiers, ordered from least to most access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Free,
    Pro,
    Business,
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Pro, Tier::Business, Tier::Enterprise];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Business => "business",
            Tier::Enterprise => "enterprise",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// API key scope, inherited from the tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Free,
    Deployment,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Free => "free",
            Scope::Deployment => "deployment",
            Scope::Admin => "admin",
        }
    }

    /// Whether keys of this scope may start runs through the API.
    pub fn allows_api_runs(self) -> bool {
        matches!(self, Scope::Deployment | Scope::Admin)
    }
}

/// What kind of output a model makes; decides which node types may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Image,
    Video,
    Music,
    Assistant,
    Custom,
}

/// How a model is priced: a unit price and what the quantity counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceUnit {
    PerImage,
    PerSecond,
    PerCall,
}

impl PriceUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            PriceUnit::PerImage => "per_image",
            PriceUnit::PerSecond => "per_second",
            PriceUnit::PerCall => "per_call",
        }
    }
}

/// A model's price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub unit: PriceUnit,
    pub unit_price: Credits,
}

/// A free trial of a `pro` model for free accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialTerms {
    /// The first `runs` runs are free, for the account's lifetime.
    Runs(u32),
    /// Runs are free for this long after the first one.
    Window(DurationS),
}

impl TrialTerms {
    /// The kind of trial these terms grant.
    pub fn kind(self) -> crate::events::TrialKind {
        match self {
            TrialTerms::Runs(_) => crate::events::TrialKind::Runs,
            TrialTerms::Window(_) => crate::events::TrialKind::Window,
        }
    }
}

/// One plan's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Credits per month; `None` means unlimited (enterprise without a custom amount).
    pub monthly_allowance: Option<Credits>,
    pub scope: Scope,
    pub requires_verification: bool,
}

/// One model's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub id: String,
    pub kind: ModelKind,
    pub price: Price,
    pub min_tier: Tier,
    pub free_trial: Option<TrialTerms>,
}

/// A validated catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    plans: [Plan; 4],
    pub annual_bonus_percent: u32,
    pub top_up_expiry: DurationS,
    models: Vec<Model>,
    by_id: HashMap<String, usize, foldhash::fast::FixedState>,
}

/// A catalog that could not be loaded. `field` is the JSON path of the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("catalog: {field}: {message}")]
pub struct CatalogError {
    pub field: String,
    pub message: String,
}

impl CatalogError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        CatalogError {
            field: field.into(),
            message: message.into(),
        }
    }
}

// The wire format, kept apart from the validated types so that every rule can name its field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    plans: HashMap<String, RawPlan>,
    #[serde(default = "default_annual_bonus_percent")]
    annual_bonus_percent: u32,
    top_up_expiry: String,
    models: Vec<RawModel>,
}

fn default_annual_bonus_percent() -> u32 {
    20
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    monthly_allowance: Option<u64>,
    scope: Scope,
    #[serde(default)]
    requires_verification: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    id: String,
    kind: ModelKind,
    price: HashMap<String, i64>,
    min_tier: String,
    #[serde(default)]
    free_trial: Option<RawTrial>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrial {
    #[serde(default)]
    runs: Option<i64>,
    #[serde(default)]
    window: Option<String>,
}

fn parse_tier(text: &str, field: &str) -> Result<Tier, CatalogError> {
    Tier::ALL
        .into_iter()
        .find(|tier| tier.as_str() == text)
        .ok_or_else(|| {
            CatalogError::new(
                field,
                format!("unknown tier {text:?}: expected one of free, pro, business, enterprise"),
            )
        })
}

impl Catalog {
    /// The catalog shipped with the project.
    pub fn shipped() -> Catalog {
        // The shipped file is covered by a test; failing here means the build itself is broken.
        Catalog::from_json(DEFAULT_CATALOG_JSON).expect("the shipped catalog is valid")
    }

    /// Parses and validates a catalog document.
    pub fn from_json(text: &str) -> Result<Catalog, CatalogError> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let raw: RawCatalog = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            CatalogError::new(
                if path == "." {
                    "(document)".to_string()
                } else {
                    path
                },
                err.inner().to_string(),
            )
        })?;
        Catalog::validate(raw)
    }

    fn validate(raw: RawCatalog) -> Result<Catalog, CatalogError> {
        for name in raw.plans.keys() {
            parse_tier(name, &format!("plans.{name}"))?;
        }
        let plan = |tier: Tier| -> Result<Plan, CatalogError> {
            let field = format!("plans.{tier}");
            let raw_plan = raw
                .plans
                .get(tier.as_str())
                .ok_or_else(|| CatalogError::new(&field, "missing plan"))?;
            let monthly_allowance = match raw_plan.monthly_allowance {
                Some(amount) if amount == 0 || amount > Credits::MAX_COMMAND.get() => {
                    return Err(CatalogError::new(
                        format!("{field}.monthly_allowance"),
                        format!("must be between 1 and {}", Credits::MAX_COMMAND),
                    ))
                }
                Some(amount) => Some(Credits::new(amount)),
                None if tier == Tier::Enterprise => None,
                None => {
                    return Err(CatalogError::new(
                        format!("{field}.monthly_allowance"),
                        "only enterprise may be unlimited (null)",
                    ))
                }
            };
            Ok(Plan {
                monthly_allowance,
                scope: raw_plan.scope,
                requires_verification: raw_plan.requires_verification,
            })
        };
        let plans = [
            plan(Tier::Free)?,
            plan(Tier::Pro)?,
            plan(Tier::Business)?,
            plan(Tier::Enterprise)?,
        ];
        if raw.annual_bonus_percent > 100 {
            return Err(CatalogError::new(
                "annual_bonus_percent",
                "must be between 0 and 100",
            ));
        }
        let top_up_expiry: DurationS =
            raw.top_up_expiry
                .parse()
                .map_err(|err: crate::time::DurationError| {
                    CatalogError::new("top_up_expiry", err.to_string())
                })?;

        let mut models = Vec::with_capacity(raw.models.len());
        let mut by_id = HashMap::with_capacity_and_hasher(
            raw.models.len(),
            foldhash::fast::FixedState::default(),
        );
        for (index, raw_model) in raw.models.into_iter().enumerate() {
            let field = format!("models[{index}]");
            if raw_model.id.is_empty() || raw_model.id.len() > 128 {
                return Err(CatalogError::new(
                    format!("{field}.id"),
                    "must be 1 to 128 characters",
                ));
            }
            if by_id.contains_key(&raw_model.id) {
                return Err(CatalogError::new(
                    format!("{field}.id"),
                    format!("duplicate model id {:?}", raw_model.id),
                ));
            }
            let min_tier = parse_tier(&raw_model.min_tier, &format!("{field}.min_tier"))?;
            let price = parse_price(&raw_model.price, &format!("{field}.price"))?;
            let free_trial = match raw_model.free_trial {
                None => None,
                Some(trial) => Some(parse_trial(
                    trial,
                    min_tier,
                    &format!("{field}.free_trial"),
                )?),
            };
            by_id.insert(raw_model.id.clone(), index);
            models.push(Model {
                id: raw_model.id,
                kind: raw_model.kind,
                price,
                min_tier,
                free_trial,
            });
        }
        Ok(Catalog {
            plans,
            annual_bonus_percent: raw.annual_bonus_percent,
            top_up_expiry,
            models,
            by_id,
        })
    }

    pub fn plan(&self, tier: Tier) -> &Plan {
        &self.plans[tier as usize]
    }

    pub fn model(&self, id: &str) -> Option<&Model> {
        self.by_id.get(id).map(|index| &self.models[*index])
    }

    pub fn models(&self) -> &[Model] {
        &self.models
    }
}

fn parse_price(raw: &HashMap<String, i64>, field: &str) -> Result<Price, CatalogError> {
    if raw.len() != 1 {
        return Err(CatalogError::new(
            field,
            "must hold exactly one of per_image, per_second, per_call",
        ));
    }
    let (name, amount) = raw.iter().next().expect("exactly one entry");
    let unit = match name.as_str() {
        "per_image" => PriceUnit::PerImage,
        "per_second" => PriceUnit::PerSecond,
        "per_call" => PriceUnit::PerCall,
        other => {
            return Err(CatalogError::new(
                format!("{field}.{other}"),
                "unknown price kind: expected per_image, per_second or per_call",
            ))
        }
    };
    // Zero is allowed (a free model); negative prices are a catalog bug.
    let unit_price = u64::try_from(*amount)
        .ok()
        .filter(|price| *price <= 1_000_000)
        .ok_or_else(|| {
            CatalogError::new(
                format!("{field}.{name}"),
                format!("price {amount} must be between 0 and 1000000"),
            )
        })?;
    Ok(Price {
        unit,
        unit_price: Credits::new(unit_price),
    })
}

fn parse_trial(raw: RawTrial, min_tier: Tier, field: &str) -> Result<TrialTerms, CatalogError> {
    if min_tier != Tier::Pro {
        return Err(CatalogError::new(
            field,
            format!("free trials are allowed only on pro models, this one is {min_tier}"),
        ));
    }
    match (raw.runs, raw.window) {
        (Some(runs), None) => u32::try_from(runs)
            .ok()
            .filter(|runs| (1..=1_000).contains(runs))
            .map(TrialTerms::Runs)
            .ok_or_else(|| {
                CatalogError::new(format!("{field}.runs"), "must be between 1 and 1000")
            }),
        (None, Some(window)) => {
            window
                .parse()
                .map(TrialTerms::Window)
                .map_err(|err: crate::time::DurationError| {
                    CatalogError::new(format!("{field}.window"), err.to_string())
                })
        }
        _ => Err(CatalogError::new(
            field,
            "must hold exactly one of runs, window",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<Catalog, CatalogError> {
        let mut doc: serde_json::Value = serde_json::from_str(DEFAULT_CATALOG_JSON).unwrap();
        edit(&mut doc);
        Catalog::from_json(&doc.to_string())
    }

    #[test]
    fn shipped_catalog_has_the_seeds_plans_and_models() {
        let catalog = Catalog::shipped();
        assert_eq!(
            catalog.plan(Tier::Free).monthly_allowance,
            Some(Credits::new(500))
        );
        assert_eq!(
            catalog.plan(Tier::Pro).monthly_allowance,
            Some(Credits::new(5000))
        );
        assert_eq!(
            catalog.plan(Tier::Business).monthly_allowance,
            Some(Credits::new(15000))
        );
        assert!(catalog.plan(Tier::Business).requires_verification);
        assert_eq!(catalog.plan(Tier::Enterprise).monthly_allowance, None);
        for seedance in ["seedance-2.0-i2v", "seedance-2.0-t2v"] {
            assert_eq!(catalog.model(seedance).unwrap().min_tier, Tier::Business);
        }
        let units: Vec<_> = catalog.models().iter().map(|m| m.price.unit).collect();
        for unit in [
            PriceUnit::PerImage,
            PriceUnit::PerSecond,
            PriceUnit::PerCall,
        ] {
            assert!(units.contains(&unit));
        }
        assert!(matches!(
            catalog.model("flux-pro").unwrap().free_trial,
            Some(TrialTerms::Runs(3))
        ));
        assert!(matches!(
            catalog.model("kling-2").unwrap().free_trial,
            Some(TrialTerms::Window(_))
        ));
        assert_eq!(catalog.top_up_expiry.as_secs(), 90 * 86_400);
        assert_eq!(catalog.annual_bonus_percent, 20);
    }

    #[test]
    fn unknown_tier_names_the_field() {
        let err = with(|doc| doc["models"][0]["min_tier"] = "platinum".into()).unwrap_err();
        assert_eq!(err.field, "models[0].min_tier");
        assert!(err.message.contains("platinum"));
        let err = with(|doc| doc["plans"]["gold"] = doc["plans"]["pro"].clone()).unwrap_err();
        assert_eq!(err.field, "plans.gold");
    }

    #[test]
    fn negative_price_names_the_field() {
        let err = with(|doc| doc["models"][1]["price"] = serde_json::json!({"per_image": -3}))
            .unwrap_err();
        assert_eq!(err.field, "models[1].price.per_image");
    }

    #[test]
    fn bad_duration_names_the_field() {
        let err = with(|doc| doc["top_up_expiry"] = "7x".into()).unwrap_err();
        assert_eq!(err.field, "top_up_expiry");
        let err = with(|doc| doc["models"][2]["free_trial"] = serde_json::json!({"window": "7x"}))
            .unwrap_err();
        assert_eq!(err.field, "models[2].free_trial.window");
    }

    #[test]
    fn duplicate_model_id_names_the_field() {
        let err = with(|doc| doc["models"][1]["id"] = "flux-schnell".into()).unwrap_err();
        assert_eq!(err.field, "models[1].id");
        assert!(err.message.contains("duplicate"));
    }

    #[test]
    fn free_trial_only_on_pro_models() {
        let err = with(|doc| doc["models"][0]["free_trial"] = serde_json::json!({"runs": 3}))
            .unwrap_err();
        assert_eq!(err.field, "models[0].free_trial");
    }

    #[test]
    fn unknown_fields_and_bad_kinds_are_refused() {
        let err = with(|doc| doc["models"][0]["colour"] = "red".into()).unwrap_err();
        assert!(err.message.contains("colour"), "{err}");
        let err = with(|doc| doc["models"][0]["price"] = serde_json::json!({"per_token": 1}))
            .unwrap_err();
        assert_eq!(err.field, "models[0].price.per_token");
        let err = with(|doc| doc["plans"]["pro"]["monthly_allowance"] = serde_json::Value::Null)
            .unwrap_err();
        assert_eq!(err.field, "plans.pro.monthly_allowance");
        assert!(Catalog::from_json("not json").is_err());
    }
}
