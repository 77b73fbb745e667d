//! The whole setup from a file: chains, routes, policy knobs and limits
//! (feature `config`).
//!
//! A [`Config`] is plain data read from TOML ([`Config::from_path`],
//! [`Config::from_toml_str`]) or JSON ([`Config::from_json_str`]);
//! [`FallbackBuilder::from_config`](crate::FallbackBuilder::from_config)
//! turns it into the settings of a layer or a middleware. API keys are never
//! in the file: a route's endpoint names the environment variable that holds
//! its key (`api_key_env`), read when the layer is built.
//!
//! ```
//! use llm_fallback::config::Config;
//! use llm_fallback::FallbackBuilder;
//! use std::time::Duration;
//!
//! let config = Config::from_toml_str(r#"
//!     max_body_bytes = "8MiB"
//!
//!     [policy]
//!     stop_on_status = [429]            # rate limited: tell the caller, don't spend the fallbacks
//!
//!     [chains.default]
//!     deadline = "60s"
//!
//!     [[chains.default.routes]]
//!     model = "anthropic/claude-3.5-sonnet"
//!     label = "primary"
//!     timeout = "30s"
//!
//!     [[chains.default.routes]]
//!     model = "openai/gpt-4o"
//!     timeout = "25s"
//!     provider = { order = ["OpenAI", "Azure"], allow_fallbacks = false }
//! "#)?;
//!
//! let layer = FallbackBuilder::from_config(&config)?.layer();
//! assert_eq!(layer.chain().routes()[0].timeout, Some(Duration::from_secs(30)));
//! assert_eq!(layer.chain().deadline, Some(Duration::from_secs(60)));
//! # Ok::<(), llm_fallback::config::ConfigError>(())
//! ```
//!
//! # Errors name the file, the key and what is expected
//!
//! Unknown keys are refused (a typo must not silently drop a setting), and
//! every error says where and what:
//!
//! ```
//! use llm_fallback::config::Config;
//!
//! let err = Config::from_toml_str("[[chains.default.routes]]\nmodel = \"a/b\"\ntimeout = \"30\"\n")
//!     .unwrap_err()
//!     .in_file("fallback.toml");
//! assert_eq!(err.key(), "chains.default.routes[0].timeout");
//! assert_eq!(
//!     err.to_string(),
//!     "fallback.toml:3:11: chains.default.routes[0].timeout: invalid duration \"30\": expected a duration: \
//!      a number and a unit (h, m, s, ms, us, ns), such as \"30s\", \"250ms\", \"1.5s\" or \"1m30s\""
//! );
//! ```
//!
//! # The format
//!
//! `examples/fallback.toml` in the repository uses every key, with comments;
//! the README's "Configuration reference" lists them (a test checks both
//! against these types). In short:
//!
//! | key | meaning |
//! |---|---|
//! | `max_body_bytes`, `max_response_bytes` | [`FallbackBuilder::max_body_bytes`](crate::FallbackBuilder::max_body_bytes), [`max_response_bytes`](crate::FallbackBuilder::max_response_bytes): an integer or `"32MiB"` |
//! | `on_content_policy` | [`ChainSet::on_content_policy`](crate::ChainSet::on_content_policy) |
//! | `unknown_model` | [`ChainSet::unknown_model`](crate::ChainSet::unknown_model): `"pass_through"`, `"default_chain"` or `"reject"` |
//! | `[models.NAME]` | [`ModelConfig`]: the chain of a model name or alias, by name (`chain = "strong"`) or its own (`routes`, `deadline`, ...) |
//! | `[caller_chains]` | [`CallerChainsConfig`]: a request's `models` array is its chain; `max_models`, `allow` |
//! | `[policy]` | [`ConfigPolicy`]: statuses and error types that fall back or stop |
//! | `[health]` | [`Cooldowns`](crate::health::Cooldowns): `failures`, `cooldown`, `max_cooldown`, `max_retry_after`; the [`Breaker`](crate::health::Breaker): `breaker_window`, `breaker_min_requests`, `breaker_failure_ratio`; `max_open_share`; `store` (`"memory"` or a `redis://` URL for a fleet's [`RedisHealth`](crate::health), feature `redis`) and `key_prefix` |
//! | `[hedging]` | [`HedgeBudget`](crate::health::HedgeBudget): `ratio`, `window`; needed by `hedge_after` |
//! | `[drills]` | [`Drills`](crate::health::Drills): `fraction`, `allow_header` |
//! | `[chains.NAME]` | a [`Chain`](crate::Chain): `deadline`, `price_guard`, `hedge_after`, `routes`; `default` is required |
//! | `[[chains.NAME.routes]]` | a [`Route`](crate::Route): `model`, `label`, `timeout`, `first_token_timeout`, `idle_timeout`, `hedge_after`, `provider`, `native_fallbacks`, `openrouter_metadata`, `endpoint` (`base_url`, `api_key_env` or `api_key_envs`, `openrouter`), `capabilities`, `context_window`, `max_output_tokens`, `price`, `set`, `remove`, `deployments`, `balance`, `balance_seed` |
//! | `[[chains.NAME.routes.deployments]]` | a [`Deployment`](crate::Deployment) ([`DeploymentConfig`]): `name`, `endpoint`, `provider`, `weight` |
//! | `[gateway]` | settings of a server in front of the layer, read by that server with [`Config::gateway`] (the example gateway, `examples/gateway.rs`, documents its keys); the library does not read them |
//!
//! Durations are strings with a unit: `"30s"`, `"250ms"`, `"1.5s"`, `"2m"`,
//! `"1m30s"`.

mod build;
mod policy;
mod units;

pub use policy::ConfigPolicy;

use crate::native::ProviderPrefs;
use crate::Capabilities;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

// ===== the format =====

/// The whole setup: named chains of routes, policy knobs, limits, and (kept
/// for a server in front of the layer, read with [`Config::gateway`]) a
/// `[gateway]` table.
///
/// Build a layer with
/// [`FallbackBuilder::from_config`](crate::FallbackBuilder::from_config).
/// Fields left `None` (or empty) keep the layer's defaults. The types are
/// `#[non_exhaustive]`, so to build one in code start from
/// `Config::default()` (or parse a string) and set fields.
///
/// ```
/// use llm_fallback::config::{ChainConfig, Config, RouteConfig};
///
/// let mut config = Config::default();
/// config.chains.insert("default".into(), ChainConfig::new([RouteConfig::new("openai/gpt-4o")]));
/// let text = config.to_toml_string();
/// assert_eq!(Config::from_toml_str(&text)?, config);
/// # Ok::<(), llm_fallback::config::ConfigError>(())
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Largest request body buffered: an integer or a size such as `"32MiB"` (default 32 MiB).
    #[serde(default, with = "units::opt_size", skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Largest response body buffered for inspection (default 16 MiB).
    #[serde(default, with = "units::opt_size", skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
    /// The chain a request moves to after a moderation failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_content_policy: Option<String>,
    /// Honour the callers' `x-fallback-chain` header (default false; see
    /// [`FallbackBuilder::allow_chain_header`](crate::FallbackBuilder::allow_chain_header)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_chain_header: Option<bool>,
    /// What a request whose `model` names no `[models.*]` entry gets:
    /// `"pass_through"`, `"default_chain"` or `"reject"` (see
    /// [`UnknownModel`](crate::UnknownModel); the default depends on
    /// whether `[models]` has entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_model: Option<crate::UnknownModel>,
    /// What the exhaustion answer says: `"full"` (default) or `"summary"`
    /// (see [`ExhaustionBody`](crate::ExhaustionBody)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exhaustion_body: Option<crate::ExhaustionBody>,
    /// More header names removed for routes on another endpoint, besides
    /// [`CREDENTIAL_HEADERS`](crate::native::CREDENTIAL_HEADERS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_headers: Vec<String>,
    /// Which statuses and error types fall back or stop.
    #[serde(default, skip_serializing_if = "PolicyConfig::is_empty")]
    pub policy: PolicyConfig,
    /// Per-route cooldowns; present means on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthConfig>,
    /// The hedge budget; needed by any `hedge_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedging: Option<HedgingConfig>,
    /// Drills; present means on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drills: Option<DrillsConfig>,
    /// `[caller_chains]`: a request's `models` array is its chain; present
    /// means on (see [`CallerChains`](crate::CallerChains)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_chains: Option<CallerChainsConfig>,
    /// `[affinity]`: sticky sessions; present means on (see
    /// [`affinity`](crate::affinity)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityConfig>,
    /// `[models.NAME]`: model names and aliases callers ask for, each with
    /// its chain ([`ChainSet::model`](crate::ChainSet::model)).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelConfig>,
    /// `[gateway]`: a server's own settings, kept as read (a JSON object)
    /// for [`Config::gateway`]; the library does not read them.
    #[serde(default, deserialize_with = "table", skip_serializing_if = "Option::is_none")]
    gateway: Option<serde_json::Value>,
    /// The chains by name; `default` is required.
    pub chains: BTreeMap<String, ChainConfig>,
    #[serde(skip)]
    source: Option<PathBuf>,
}

impl PartialEq for Config {
    /// Compares the settings, not where they were read from.
    fn eq(&self, other: &Self) -> bool {
        self.max_body_bytes == other.max_body_bytes
            && self.max_response_bytes == other.max_response_bytes
            && self.on_content_policy == other.on_content_policy
            && self.allow_chain_header == other.allow_chain_header
            && self.unknown_model == other.unknown_model
            && self.caller_chains == other.caller_chains
            && self.affinity == other.affinity
            && self.models == other.models
            && self.exhaustion_body == other.exhaustion_body
            && self.credential_headers == other.credential_headers
            && self.policy == other.policy
            && self.health == other.health
            && self.hedging == other.hedging
            && self.drills == other.drills
            && self.gateway == other.gateway
            && self.chains == other.chains
    }
}

/// `[chains.NAME]`: one [`Chain`](crate::Chain).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ChainConfig {
    /// Bounds the whole chain ([`Chain::deadline`](crate::Chain::deadline)).
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
    /// Caps what fallbacks may cost ([`Chain::price_guard`](crate::Chain::price_guard)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_guard: Option<PriceGuardConfig>,
    /// Hedge delay for routes that set none ([`Chain::hedge_after`](crate::Chain::hedge_after)).
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub hedge_after: Option<Duration>,
    /// The routes, in the order they are tried; at least one.
    pub routes: Vec<RouteConfig>,
}

impl ChainConfig {
    /// A chain of `routes` with no deadline and no price guard.
    pub fn new(routes: impl IntoIterator<Item = RouteConfig>) -> Self {
        ChainConfig {
            routes: routes.into_iter().collect(),
            ..ChainConfig::default()
        }
    }
}

/// `[models.NAME]`: the chain serving requests whose `model` is `NAME`
/// (a model id or an alias): a chain by name (`chain = "strong"`,
/// `"default"` for the default chain), or a chain of its own with the keys
/// of a `[chains.NAME]` table (`routes`, `deadline`, `price_guard`,
/// `hedge_after`). One or the other.
///
/// ```
/// use llm_fallback::config::Config;
///
/// let config = Config::from_toml_str(r#"
///     [models.smart]
///     chain = "default"
///
///     [[models."openai/gpt-4o-mini".routes]]
///     model = "openai/gpt-4o-mini"
///
///     [[models."openai/gpt-4o-mini".routes]]
///     model = "google/gemini-flash-1.5"
///
///     [[chains.default.routes]]
///     model = "anthropic/claude-3.5-sonnet"
/// "#)?;
/// assert_eq!(config.models["smart"].chain.as_deref(), Some("default"));
/// assert_eq!(config.models["openai/gpt-4o-mini"].routes.len(), 2);
/// # Ok::<(), llm_fallback::config::ConfigError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ModelConfig {
    /// The chain by name (a key of `[chains]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Its own chain's deadline ([`Chain::deadline`](crate::Chain::deadline)).
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
    /// Its own chain's price guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_guard: Option<PriceGuardConfig>,
    /// Its own chain's hedge delay.
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub hedge_after: Option<Duration>,
    /// Its own chain's routes, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
}

impl ModelConfig {
    /// A model served by the chain called `name`.
    pub fn chain(name: impl Into<String>) -> Self {
        ModelConfig {
            chain: Some(name.into()),
            ..ModelConfig::default()
        }
    }

    /// A model served by a chain of its own.
    pub fn inline(chain: ChainConfig) -> Self {
        ModelConfig {
            chain: None,
            deadline: chain.deadline,
            price_guard: chain.price_guard,
            hedge_after: chain.hedge_after,
            routes: chain.routes,
        }
    }

    /// The chain of its own, when it has one.
    pub(crate) fn own_chain(&self) -> Option<ChainConfig> {
        (self.chain.is_none()).then(|| ChainConfig {
            deadline: self.deadline,
            price_guard: self.price_guard,
            hedge_after: self.hedge_after,
            routes: self.routes.clone(),
        })
    }
}

/// `[caller_chains]`: a request's OpenRouter-style `models` array is its
/// chain ([`CallerChains`](crate::CallerChains); the routes take the
/// settings of the default chain's first route). Present means on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CallerChainsConfig {
    /// The longest `models` array accepted (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_models: Option<usize>,
    /// When set, the model ids (or `prefix*` patterns) an entry must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
}

/// `price_guard`: `"not_above_primary"`, `"free_only"` or
/// `{ max = { prompt = 3.0, completion = 15.0 } }` (see [`PriceGuard`](crate::PriceGuard)).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PriceGuardConfig {
    /// No fallback costs more than the chain's first route.
    NotAbovePrimary,
    /// Only free routes.
    FreeOnly,
    /// No route above this price.
    Max(PriceConfig),
}

/// A price in USD per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Per million prompt tokens.
    pub prompt: f64,
    /// Per million completion tokens.
    pub completion: f64,
}

/// `[[chains.NAME.routes]]`: one [`Route`](crate::Route).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// The model id sent upstream.
    pub model: String,
    /// Names the hop in reports, headers and spans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// [`Route::timeout`](crate::Route::timeout).
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// [`Route::first_token_timeout`](crate::Route::first_token_timeout).
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub first_token_timeout: Option<Duration>,
    /// [`Route::idle_timeout`](crate::Route::idle_timeout).
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// [`Route::hedge_after`](crate::Route::hedge_after): start the next
    /// route beside this one when it has no answer by then.
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub hedge_after: Option<Duration>,
    /// OpenRouter's `provider` object ([`Route::provider`](crate::Route::provider)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderPrefs>,
    /// [`Route::native_fallbacks`](crate::Route::native_fallbacks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub native_fallbacks: Vec<String>,
    /// [`Route::openrouter_metadata`](crate::Route::openrouter_metadata).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub openrouter_metadata: bool,
    /// Another OpenAI-compatible API for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointConfig>,
    /// What the model can do: `["tools", "vision", "audio", "structured_output", "files", "thinking"]`.
    #[serde(default, with = "units::opt_capabilities", skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// The context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// Most tokens the model generates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// The model's price, for price guards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<PriceConfig>,
    /// Top-level keys set in the route's request bodies, replaced or
    /// inserted ([`Route::set`](crate::Route::set)): `set = { max_tokens = 512 }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, serde_json::Value>,
    /// Top-level keys removed from the route's request bodies
    /// ([`Route::remove`](crate::Route::remove)): `remove = ["logprobs"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// [`Route::deployments`](crate::Route::deployments): copies of the model tried before the next route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<DeploymentConfig>,
    /// [`Route::balance`](crate::Route::balance): `"weighted"` (the default) or `"least_latency"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<BalanceConfig>,
    /// [`Route::balance_seed`](crate::Route::balance_seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_seed: Option<u64>,
}

/// `[[chains.NAME.routes.deployments]]`: one [`Deployment`](crate::Deployment).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DeploymentConfig {
    /// Names the deployment in reports, headers, spans and health.
    pub name: String,
    /// Where its attempts go, else the route's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointConfig>,
    /// Its OpenRouter `provider` object, else the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderPrefs>,
    /// Its share under `balance = "weighted"` (default 1; 0 is a standby).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl DeploymentConfig {
    /// A deployment named `name` with nothing else set.
    pub fn new(name: impl Into<String>) -> Self {
        DeploymentConfig {
            name: name.into(),
            ..DeploymentConfig::default()
        }
    }
}

/// `balance`: how a route's deployments are chosen ([`Balance`](crate::Balance)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BalanceConfig {
    /// [`Balance::Weighted`](crate::Balance::Weighted).
    Weighted,
    /// [`Balance::LeastLatency`](crate::Balance::LeastLatency).
    LeastLatency,
}

impl RouteConfig {
    /// A route to `model` with nothing else set.
    pub fn new(model: impl Into<String>) -> Self {
        RouteConfig {
            model: model.into(),
            ..RouteConfig::default()
        }
    }
}

/// `endpoint`: another OpenAI-compatible API (see [`Endpoint`](crate::native::Endpoint)).
/// Its `Debug` shows the base without user info or query.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// The API base, like an OpenAI SDK's `base_url`: `https://api.openai.com/v1`.
    pub base_url: String,
    /// The environment variable holding the API key (never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Several keys' variables, used in order, the next after a `429`
    /// ([`Endpoint::api_key_envs`](crate::native::Endpoint::api_key_envs)); instead of `api_key_env`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_key_envs: Vec<String>,
    /// Whether the endpoint speaks OpenRouter's extensions (default: detected from the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openrouter: Option<bool>,
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("base_url", &crate::redact::urls(&self.base_url))
            .field("api_key_env", &self.api_key_env)
            .field("api_key_envs", &self.api_key_envs)
            .field("openrouter", &self.openrouter)
            .finish()
    }
}

impl EndpointConfig {
    /// An endpoint at `base_url` with no key.
    pub fn new(base_url: impl Into<String>) -> Self {
        EndpointConfig {
            base_url: base_url.into(),
            ..EndpointConfig::default()
        }
    }
}

/// `[policy]`: overrides of the [`DefaultPolicy`](crate::DefaultPolicy),
/// applied by [`ConfigPolicy`].
///
/// Error types are matched against the upstream error's
/// [`error_type`](crate::UpstreamError::error_type) and
/// [`code`](crate::UpstreamError::code), before statuses; a listed
/// `stop_*` wins over a listed `fallback_*`. Anything not listed is
/// classified by the default policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicyConfig {
    /// HTTP error statuses (400–599) that fall back, e.g. `[409]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_on_status: Vec<u16>,
    /// HTTP error statuses (400–599) that stop the chain and go back as-is, e.g. `[429]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_on_status: Vec<u16>,
    /// Upstream error types or codes that fall back, e.g. `["invalid_prompt"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_on_error_type: Vec<String>,
    /// Upstream error types or codes that stop, e.g. `["context_length_exceeded"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_on_error_type: Vec<String>,
}

impl PolicyConfig {
    /// Nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == PolicyConfig::default()
    }
}

/// `[health]`: per-route cooldowns ([`Cooldowns`](crate::health::Cooldowns));
/// the section being present turns them on, keys left out keep the
/// defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// Consecutive failures that eject a route (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// First cooldown when no `Retry-After` was given (default 5s).
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Duration>,
    /// Longest cooldown from repeated ejections (default 5m).
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub max_cooldown: Option<Duration>,
    /// Longest `Retry-After` honoured (default 10m).
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub max_retry_after: Option<Duration>,
    /// The breaker's rolling window (default 60s); any `breaker_*` key
    /// turns the breaker by failure rate on.
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub breaker_window: Option<Duration>,
    /// Attempts in the window before the breaker may open (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_min_requests: Option<u32>,
    /// Share of failed attempts that opens the breaker (0.0–1.0, default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_failure_ratio: Option<f64>,
    /// Largest share of a chain's routes a request skips as cooling
    /// (0.0–1.0, default 1.0: no limit; at least one route may always cool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open_share: Option<f64>,
    /// Where health is kept: `"memory"` (the default) or a
    /// `redis://host:port/db` URL shared by a fleet (feature `redis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Prefix of the Redis keys (default `llm-fallback`): replicas that
    /// share health use the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}

impl HealthConfig {
    /// The `store` value that keeps health in memory.
    pub const MEMORY: &'static str = "memory";

    /// The Redis URL of `store`, if it names one.
    pub fn redis_url(&self) -> Option<&str> {
        self.store.as_deref().filter(|s| *s != Self::MEMORY)
    }
}

/// `[hedging]`: the budget for `hedge_after` ([`HedgeBudget`](crate::health::HedgeBudget)).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgingConfig {
    /// Most extra requests, as a share of requests (0.0–1.0, default 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The sliding window the share is counted over (default 10s).
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
}

impl HedgingConfig {
    /// Default of `ratio`.
    pub const DEFAULT_RATIO: f64 = 0.1;
    /// Default of `window`.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
}

/// `[affinity]`: sticky sessions ([`Affinity`](crate::affinity::Affinity)).
/// Present means on.
///
/// ```toml
/// [affinity]
/// key = "header:x-session-id" # or "user", "leading_messages:2"
/// ttl = "5m"                  # default 5 min
/// capacity = 100000           # sessions kept in memory (default 100,000)
/// store = "memory"            # or "redis://127.0.0.1:6379/0" (feature `redis`)
/// key_prefix = "llm-fallback" # the Redis keys' prefix
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AffinityConfig {
    /// What names a session: `"header:NAME"` (`"header"` alone:
    /// `x-session-id`, the default), `"user"` (the body's `user`), or
    /// `"leading_messages:N"` (`"leading_messages"` alone: 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How long a pin lasts after the session's last served request.
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// The most sessions kept (in this process; with a Redis store, in
    /// each replica's local table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<usize>,
    /// Where pins are kept: `"memory"` (the default) or a
    /// `redis://host:port/db` URL shared by a fleet
    /// ([`RedisAffinity`](crate::affinity), feature `redis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Prefix of the Redis keys and channel (default `llm-fallback`):
    /// replicas that share pins use the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}

impl AffinityConfig {
    /// The `store` value that keeps pins in memory.
    pub const MEMORY: &'static str = "memory";

    /// The Redis URL of `store`, if it names one.
    pub fn redis_url(&self) -> Option<&str> {
        self.store.as_deref().filter(|s| *s != Self::MEMORY)
    }

    /// The header `key = "header"` reads.
    pub const DEFAULT_HEADER: &'static str = "x-session-id";
    /// The leading messages `key = "leading_messages"` hashes.
    pub const DEFAULT_MESSAGES: usize = 2;
}

/// `[drills]`: skip the primary of some requests on purpose
/// ([`Drills`](crate::health::Drills)).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DrillsConfig {
    /// Share of requests drilled (0.0–1.0).
    pub fraction: f64,
    /// Also drill requests with an `x-fallback-drill` header (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_header: Option<bool>,
}

// ===== loading =====

impl Config {
    /// Reads a config file: JSON if its name ends in `.json`, TOML otherwise.
    /// The file is validated ([`Config::validate`]) and remembered for error
    /// messages.
    ///
    /// ```no_run
    /// use llm_fallback::config::Config;
    /// use llm_fallback::FallbackBuilder;
    ///
    /// let config = Config::from_path("fallback.toml")?;
    /// let layer = FallbackBuilder::from_config(&config)?.layer();
    /// # Ok::<(), llm_fallback::config::ConfigError>(())
    /// ```
    pub fn from_path(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError {
                message: format!("cannot read the config file: {e}"),
                io: Some(e),
                ..ConfigError::new("", "")
            })
            .map_err(|e| e.in_file(path))?;
        let json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let config = if json {
            Config::from_json_str(&text)
        } else {
            Config::from_toml_str(&text)
        };
        let mut config = config.map_err(|e| e.in_file(path))?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parses and validates TOML.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::from_toml(text, String::new(), e))?;
        let config: Config = serde_path_to_error::deserialize(de)
            .map_err(|e| ConfigError::from_toml(text, key_path(e.path()), e.into_inner()))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates JSON (the same keys as TOML).
    pub fn from_json_str(text: &str) -> Result<Config, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let key = key_path(e.path());
            let inner = e.into_inner();
            let mut err = ConfigError::new(key, hint(strip_json_position(&inner.to_string())));
            err.position = (inner.line() > 0).then(|| (inner.line(), inner.column()));
            err
        })?;
        de.end().map_err(|e| ConfigError::new("", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML that [`Config::from_toml_str`] reads back equal.
    #[allow(clippy::expect_used, reason = "plain data with string keys: serializing cannot fail")]
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("config types always serialize to TOML")
    }

    /// The file this config was read from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Names the file errors about this config should mention.
    pub fn with_source(mut self, path: impl Into<PathBuf>) -> Self {
        self.source = Some(path.into());
        self
    }

    /// Checks what the types alone cannot: a `default` chain exists, no
    /// chain is empty, model ids and durations are not empty or zero,
    /// `on_content_policy` names a chain, policy statuses are error statuses
    /// listed once, endpoint URLs parse, the `[gateway]` table holds no
    /// `null`. (Key variables are read by
    /// [`FallbackBuilder::from_config`](crate::FallbackBuilder::from_config);
    /// the `[gateway]` keys by whoever reads [`Config::gateway`].)
    pub fn validate(&self) -> Result<(), ConfigError> {
        build::validate(self).map_err(|e| self.locate(e))
    }

    /// The `[gateway]` table read as `T`: the settings of a server in front
    /// of the layer, such as the example gateway (`examples/gateway.rs`),
    /// which owns their type, defaults and checks. The library keeps the
    /// table as the file had it and reads nothing in it. `Ok(None)` when the
    /// file has no `[gateway]`.
    ///
    /// Errors name the file and the key path (`gateway.listen`) like the
    /// config's own; give `T` `#[serde(deny_unknown_fields)]` so a typo is
    /// refused too.
    ///
    /// ```
    /// use llm_fallback::config::Config;
    /// use std::net::SocketAddr;
    ///
    /// #[derive(serde::Deserialize)]
    /// #[serde(deny_unknown_fields)]
    /// struct Gateway {
    ///     listen: Option<SocketAddr>,
    /// }
    ///
    /// let route = "[[chains.default.routes]]\nmodel = \"a/b\"\n";
    /// let config = Config::from_toml_str(&format!("[gateway]\nlisten = \"127.0.0.1:9000\"\n{route}"))?;
    /// let gateway: Gateway = config.gateway()?.expect("the file has [gateway]");
    /// assert_eq!(gateway.listen, Some("127.0.0.1:9000".parse().unwrap()));
    ///
    /// let config = Config::from_toml_str(&format!("[gateway]\nlisten = \"localhost\"\n{route}"))?
    ///     .with_source("fallback.toml");
    /// let err = config.gateway::<Gateway>().map(|_| ()).unwrap_err();
    /// assert_eq!(err.to_string(), "fallback.toml: gateway.listen: invalid socket address syntax");
    /// # Ok::<(), llm_fallback::config::ConfigError>(())
    /// ```
    pub fn gateway<T: DeserializeOwned>(&self) -> Result<Option<T>, ConfigError> {
        let Some(table) = &self.gateway else {
            return Ok(None);
        };
        serde_path_to_error::deserialize(table).map(Some).map_err(|e| {
            let key = match key_path(e.path()) {
                p if p.is_empty() => "gateway".to_owned(),
                p => format!("gateway.{p}"),
            };
            self.locate(ConfigError::new(key, strip_json_position(&e.into_inner().to_string())))
        })
    }

    /// Checks that the environment variable `variable`, which the config
    /// names at `key`, holds something: an unset or empty one is an error
    /// naming the file, the key and the variable. The value is not kept.
    fn require_env_var(&self, key: &str, variable: &str) -> Result<(), ConfigError> {
        match std::env::var(variable) {
            Ok(v) if !v.trim().is_empty() => Ok(()),
            Ok(_) => Err(self.locate(ConfigError::new(
                key,
                format!("the environment variable {variable} is empty; expected it to hold the API key"),
            ))),
            Err(_) => Err(self.locate(ConfigError::new(
                key,
                format!("the environment variable {variable} is not set; expected it to hold the API key"),
            ))),
        }
    }

    /// Attaches this config's file to an error.
    fn locate(&self, err: ConfigError) -> ConfigError {
        match &self.source {
            Some(path) if err.file.is_none() => err.in_file(path),
            _ => err,
        }
    }
}

/// Keeps a `[gateway]` table as read (JSON `null`: none); anything but a
/// table is refused here.
fn table<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    Ok(Option::<serde_json::Map<String, serde_json::Value>>::deserialize(d)?.map(serde_json::Value::Object))
}

/// `chains.default.routes[1].timeout`; empty for the top level.
fn key_path(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p == "." {
        String::new()
    } else {
        p
    }
}

/// Says what a file without chains needs.
fn hint(message: String) -> String {
    if message == "missing field `chains`" {
        format!("{message}; expected at least a default chain: [[chains.default.routes]] with a model")
    } else {
        message
    }
}

/// serde_json appends " at line L column C"; the position is printed apart.
fn strip_json_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

// ===== errors =====

/// A config that cannot be read, parsed, validated or built.
///
/// Its `Display` is one line: the file (and line and column, when known),
/// the key path, and what is wrong and expected:
///
/// ```text
/// fallback.toml:12:11: chains.default.routes[1].timeout: invalid duration "30": expected a duration: ...
/// fallback.toml: chains.budget.routes: a chain needs at least one route
/// fallback.toml: chains.default.routes[2].endpoint.api_key_env: the environment variable OPENAI_API_KEY is not set; ...
/// ```
#[derive(Debug)]
pub struct ConfigError {
    file: Option<PathBuf>,
    position: Option<(usize, usize)>,
    key: String,
    message: String,
    io: Option<std::io::Error>,
}

impl ConfigError {
    /// An error about the setting at `key` (a key path such as
    /// `gateway.upstream`), for code that reads settings of its own from a
    /// [`Config`], like a gateway checking what [`Config::gateway`] read.
    /// Add the file with [`ConfigError::in_file`].
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            position: None,
            key: key.into(),
            message: message.into(),
            io: None,
        }
    }

    fn from_toml(text: &str, key: String, err: toml::de::Error) -> Self {
        let mut out = ConfigError::new(key, hint(err.message().trim().replace('\n', "; ")));
        out.position = err.span().map(|span| line_column(text, span.start));
        out
    }

    /// Names the file the error is about (for configs parsed from strings).
    pub fn in_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// The file, when known.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The key path (`chains.default.routes[1].timeout`); empty when the
    /// error is about the file as a whole (a syntax error, a read error).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Line and column (from 1) in the file, when known.
    pub fn position(&self) -> Option<(usize, usize)> {
        self.position
    }

    /// What is wrong and what is expected.
    pub fn message(&self) -> &str {
        &self.message
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.position) {
            (Some(file), Some((line, col))) => write!(f, "{}:{line}:{col}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some((line, col))) => write!(f, "line {line}, column {col}: ")?,
            (None, None) => {}
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.io.as_ref().map(|e| e as _)
    }
}
