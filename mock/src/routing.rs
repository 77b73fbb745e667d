//! OpenRouter's server-side routing as the mock plays it: the candidates one
//! request may try (`model`, then `models`; for each, its providers under the
//! `provider` preferences) and the `openrouter_metadata` attempt log.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::dialect::Dialect;

/// The `X-OpenRouter-Metadata: enabled` request header.
pub(super) const METADATA_HEADER: &str = "x-openrouter-metadata";

/// Most entries OpenRouter accepts in `models` (observed: more is a 400).
/// The same cap as `llm_fallback::native::MAX_NATIVE_FALLBACKS`, kept here so
/// the mock does not depend on llm-fallback.
pub(super) const MAX_MODELS: usize = 3;

/// The `provider` object, as OpenRouter checks it and the mock reads it.
///
/// `order`, `allow_fallbacks`, `only` and `ignore` steer the mock's routing;
/// the other keys OpenRouter documents are checked for their shape and
/// otherwise ignored. Unknown keys are refused, as OpenRouter refuses them
/// (serde's message names the key).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProviderPrefs {
    pub(super) order: Option<Vec<String>>,
    pub(super) allow_fallbacks: Option<bool>,
    pub(super) only: Option<Vec<String>>,
    pub(super) ignore: Option<Vec<String>>,
    // Checked, not read.
    #[serde(rename = "require_parameters")]
    _require_parameters: Option<bool>,
    #[serde(rename = "data_collection")]
    _data_collection: Option<DataCollection>,
    #[serde(rename = "zdr")]
    _zdr: Option<bool>,
    #[serde(rename = "quantizations")]
    _quantizations: Option<Vec<String>>,
    #[serde(rename = "sort")]
    _sort: Option<Sort>,
    #[serde(rename = "max_price")]
    _max_price: Option<MaxPrice>,
    #[serde(rename = "preferred_min_throughput")]
    _preferred_min_throughput: Option<f64>,
    #[serde(rename = "preferred_max_latency")]
    _preferred_max_latency: Option<f64>,
}

/// `provider.data_collection`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DataCollection {
    Allow,
    Deny,
}

/// `provider.sort`: `"price"`, `"throughput"` or `"latency"`, or `{by, partition}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Sort {
    By(#[allow(dead_code)] SortBy),
    Detailed {
        #[serde(rename = "by")]
        _by: SortBy,
        #[serde(rename = "partition")]
        _partition: Option<Partition>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SortBy {
    Price,
    Throughput,
    Latency,
}

/// `provider.sort.partition`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Partition {
    Model,
    None,
}

/// `provider.max_price`, USD per million tokens (or per request / image / audio unit).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaxPrice {
    #[serde(rename = "prompt")]
    _prompt: Option<f64>,
    #[serde(rename = "completion")]
    _completion: Option<f64>,
    #[serde(rename = "request")]
    _request: Option<f64>,
    #[serde(rename = "image")]
    _image: Option<f64>,
    #[serde(rename = "audio")]
    _audio: Option<f64>,
}

/// What a valid request asks the router for.
#[derive(Debug)]
pub(super) struct Plan {
    /// `model`, then the entries of `models`, in order.
    pub(super) models: Vec<String>,
    /// The `provider` object (defaults when absent).
    pub(super) prefs: ProviderPrefs,
}

/// Reads `models`, `provider` and `route` of a request body the way
/// OpenRouter checks them; `Err` holds the 400's message. An embeddings
/// request (`dialect`) may not carry `models`.
pub(super) fn plan(body: &Map<String, Value>, model: String, dialect: Dialect) -> Result<Plan, String> {
    let mut models = vec![model];
    match body.get("models") {
        None | Some(Value::Null) => {}
        Some(_) if !dialect.accepts_models() => {
            return Err(format!(
                "'models' is not supported on {}: one model serves an embeddings request",
                dialect.endpoint()
            ))
        }
        Some(Value::Array(list)) => {
            if list.len() > MAX_MODELS {
                return Err(format!("'models' array must have {MAX_MODELS} items or fewer"));
            }
            for entry in list {
                let Value::String(id) = entry else {
                    return Err(format!("'models' must be an array of model IDs, found {entry}"));
                };
                models.push(id.clone());
            }
        }
        Some(other) => return Err(format!("'models' must be an array of model IDs, found {other}")),
    }
    let prefs = match body.get("provider") {
        None | Some(Value::Null) => ProviderPrefs::default(),
        Some(value) => ProviderPrefs::deserialize(value).map_err(|e| format!("Invalid provider preferences: {e}"))?,
    };
    match body.get("route") {
        None | Some(Value::Null) => {}
        Some(Value::String(route)) if route == "fallback" || route == "sort" => {}
        Some(other) => return Err(format!("Invalid route {other}: expected \"fallback\" or \"sort\"")),
    }
    Ok(Plan { models, prefs })
}

/// The providers to try for a model with provider scripts (`registered`, in
/// registration order), in the order OpenRouter would try them: the entries
/// of `order` that serve the model, then (unless `allow_fallbacks` is false)
/// the others; then `only` and `ignore` filter. Names match ignoring ASCII
/// case, as OpenRouter matches slugs and display names loosely.
pub(super) fn providers<'a>(registered: &[&'a str], prefs: &ProviderPrefs) -> Vec<&'a str> {
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let named = |list: &Option<Vec<String>>, name: &str| list.iter().flatten().any(|n| same(n, name));
    let mut picked: Vec<&'a str> = Vec::new();
    for wanted in prefs.order.iter().flatten() {
        if let Some(&name) = registered.iter().find(|r| same(r, wanted)) {
            if !picked.contains(&name) {
                picked.push(name);
            }
        }
    }
    if prefs.allow_fallbacks != Some(false) {
        for &name in registered {
            if !picked.contains(&name) {
                picked.push(name);
            }
        }
    }
    picked.retain(|name| prefs.only.is_none() || named(&prefs.only, name));
    picked.retain(|name| !named(&prefs.ignore, name));
    picked
}

/// One server-side try, as listed in `openrouter_metadata.attempts`.
#[derive(Debug)]
pub(super) struct Attempt {
    pub(super) model: String,
    /// `None` when no provider was reached (unknown model, none allowed).
    pub(super) provider: Option<String>,
    pub(super) status: u16,
    /// The error message of a failed try.
    pub(super) error: Option<String>,
}

/// `{"attempts":[{"model":..,"provider":..,"status":..,"error":{"message":..}}, ...]}`.
pub(super) fn metadata(attempts: &[Attempt]) -> Value {
    let attempts: Vec<Value> = attempts
        .iter()
        .map(|a| {
            let mut entry = Map::new();
            entry.insert("model".into(), Value::from(a.model.as_str()));
            entry.insert("provider".into(), json!(a.provider));
            entry.insert("status".into(), Value::from(a.status));
            if let Some(message) = &a.error {
                entry.insert("error".into(), json!({ "message": message }));
            }
            Value::Object(entry)
        })
        .collect();
    json!({ "attempts": attempts })
}
