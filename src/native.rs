//! OpenRouter's own routing: provider preferences, native model groups, and
//! endpoints beyond OpenRouter.

use crate::Dialect;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// OpenRouter's `provider` object: which providers may serve a model, in
/// which order, under which constraints.
///
/// Set on a [`Route`](crate::Route) with
/// [`Route::provider`](crate::Route::provider); it is serialized once and
/// spliced into each attempt's body (the prompt is not copied). Fields left
/// `None` are not sent, so OpenRouter's defaults apply. Unknown keys are
/// refused when deserializing, as OpenRouter refuses them.
///
/// ```
/// use llm_fallback::native::{ProviderPrefs, ProviderSort, SortBy};
///
/// // `#[non_exhaustive]`, as OpenRouter adds fields: start from the default.
/// let mut prefs = ProviderPrefs::default();
/// prefs.order = Some(vec!["Anthropic".into(), "Amazon Bedrock".into()]);
/// prefs.allow_fallbacks = Some(false);
/// prefs.sort = Some(ProviderSort::By(SortBy::Latency));
/// assert_eq!(
///     serde_json::to_string(&prefs).unwrap(),
///     r#"{"order":["Anthropic","Amazon Bedrock"],"allow_fallbacks":false,"sort":"latency"}"#
/// );
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProviderPrefs {
    /// Providers to try first, in order (display names or slugs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Vec<String>>,
    /// Whether OpenRouter may use providers outside `order` (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_fallbacks: Option<bool>,
    /// Only use providers that support every parameter of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_parameters: Option<bool>,
    /// Whether providers that store or train on data are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_collection: Option<DataCollection>,
    /// Only zero-data-retention endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zdr: Option<bool>,
    /// Only these providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<Vec<String>>,
    /// Never these providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<Vec<String>>,
    /// Allowed quantizations (`"fp8"`, `"int4"`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantizations: Option<Vec<String>>,
    /// How to rank providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<ProviderSort>,
    /// Highest price accepted, in USD per million tokens (or per request/image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<MaxPrice>,
    /// Prefer providers with at least this throughput (tokens/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_min_throughput: Option<f64>,
    /// Prefer providers with at most this latency (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_max_latency: Option<f64>,
}

/// `provider.data_collection`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DataCollection {
    /// Providers that may store or train on data are allowed.
    Allow,
    /// Only providers that do not.
    Deny,
}

/// `provider.sort`: a bare ranking, or `{by, partition}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum ProviderSort {
    /// `"price"`, `"throughput"` or `"latency"`.
    By(SortBy),
    /// `{"by": ..., "partition": "model" | "none"}`.
    Detailed {
        /// What to rank by.
        by: SortBy,
        /// `model` ranks providers within each model (the deprecated
        /// `route: "fallback"` means this); `none` ranks across models.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partition: Option<Partition>,
    },
}

/// What providers are ranked by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SortBy {
    /// Cheapest first.
    Price,
    /// Fastest generation first.
    Throughput,
    /// Lowest latency first.
    Latency,
}

/// `provider.sort.partition`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Partition {
    /// Rank within each model of `model`/`models`.
    Model,
    /// Rank across all of them.
    None,
}

/// `provider.max_price`, USD per million tokens (or per request / image / audio unit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MaxPrice {
    /// Per million prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<f64>,
    /// Per million completion tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<f64>,
    /// Per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<f64>,
    /// Per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<f64>,
    /// Per audio unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<f64>,
}

/// How many fields [`ProviderPrefs`] has (the keys of OpenRouter's
/// `provider` object it knows); a test of the mock checks it knows as many.
#[doc(hidden)]
pub const PROVIDER_PREFS_FIELDS: usize = 12;

/// Most entries OpenRouter accepts in `models` (observed: more is a 400).
pub const MAX_NATIVE_FALLBACKS: usize = 3;

/// Another OpenAI-compatible API for a route: a base URL and, optionally,
/// the name of the environment variable holding its API key.
///
/// For an attempt on such a route the layer sends the request to the
/// request's [`Dialect`] path on the base (`{base}/chat/completions`,
/// `{base}/responses`, `{base}/messages`, `{base}/embeddings`,
/// `{base}/completions`), drops the caller's `Host` and its
/// [`CREDENTIAL_HEADERS`] (`Authorization`, `x-api-key`, `api-key`,
/// cookies, ...: a key meant for one provider never goes to another) and sets
/// `Authorization: Bearer <key>` from the variable — or, for a Messages
/// request to Anthropic's own API ([`Endpoint::anthropic`], detected from
/// `api.anthropic.com`), `x-api-key: <key>` and `anthropic-version`
/// (the caller's, else `2023-06-01`; a caller's `anthropic-beta` is kept).
/// The key is read once, when the endpoint is built; it never appears in
/// `Debug` output, reports, errors or spans.
///
/// An endpoint serves the dialects [`Endpoint::dialects`] says: by default
/// every one, except on hosts known to lack some (`api.openai.com` has no
/// Messages; `api.anthropic.com` serves Messages and chat completions only).
/// A request of another dialect skips the route, with
/// [`SkipReason::Dialect`](crate::SkipReason::Dialect) in the report.
///
/// A stateful Responses request (`previous_response_id`, `conversation`)
/// refers to state kept by the upstream that created it; another provider
/// has never seen it and would fail or, worse, answer without the context.
/// So it is not sent to a route with an endpoint
/// ([`SkipReason::Stateful`](crate::SkipReason::Stateful)) unless the
/// endpoint says it [shares the state](Endpoint::shares_state).
///
/// Unless [`Endpoint::openrouter`] says the endpoint is OpenRouter, the
/// OpenRouter-only top-level keys `provider`, `models`, `route` and
/// `transforms` are removed from the body for it, since other APIs refuse
/// unknown parameters.
///
/// ```
/// use llm_fallback::native::Endpoint;
///
/// # std::env::set_var("MY_OPENAI_KEY", "sk-example");
/// let openai = Endpoint::new("https://api.openai.com/v1")?.api_key_env("MY_OPENAI_KEY")?;
/// assert!(!format!("{openai:?}").contains("sk-example"));
/// # Ok::<(), llm_fallback::native::EndpointError>(())
/// ```
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) base: String,
    pub(crate) chat_uri: Uri,
    /// The other dialects' URIs, in [`Dialect::ALL`] order (chat's too).
    pub(crate) uris: [Uri; 5],
    pub(crate) key_var: Option<String>,
    pub(crate) authorization: Option<HeaderValue>,
    /// The key alone, for `x-api-key`.
    pub(crate) api_key: Option<HeaderValue>,
    /// Every key, when [`Endpoint::api_key_envs`] gave several; the fields
    /// above hold the one in use (the first, until a route compiles one hop
    /// per key).
    pub(crate) keys: Vec<ApiKey>,
    pub(crate) openrouter: bool,
    pub(crate) anthropic: bool,
    /// Served dialects, a bit per [`Dialect::index_of`].
    pub(crate) dialects: u8,
    pub(crate) shares_state: bool,
}

/// Every dialect's bit.
const ALL_DIALECTS: u8 = 0b1_1111;

fn dialect_bits(dialects: impl IntoIterator<Item = Dialect>) -> u8 {
    dialects.into_iter().fold(0, |bits, d| bits | 1 << d.index_of())
}

impl Endpoint {
    /// An endpoint whose API base is `base_url` (like an OpenAI SDK's
    /// `base_url`: `https://api.openai.com/v1`, `https://openrouter.ai/api/v1`).
    ///
    /// A query in the base stays after each API path, as Azure OpenAI wants
    /// its `api-version`. A base with user info (`https://user:key@host`) is
    /// refused: the crate prints endpoint URLs in logs and reports (without
    /// their query), and an HTTP client would follow a redirect with the
    /// URL's credentials; give the key with [`api_key_env`](Self::api_key_env).
    ///
    /// ```
    /// use llm_fallback::native::Endpoint;
    ///
    /// let azure = Endpoint::new("https://res.openai.azure.com/openai/deployments/gpt4o?api-version=2024-10-21")?;
    /// assert_eq!(azure.base_url(), "https://res.openai.azure.com/openai/deployments/gpt4o?api-version=2024-10-21");
    /// let refused = Endpoint::new("https://user:sk-secret@proxy.internal/v1").unwrap_err();
    /// assert!(!refused.to_string().contains("sk-secret"));
    /// # Ok::<(), llm_fallback::native::EndpointError>(())
    /// ```
    pub fn new(base_url: impl Into<String>) -> Result<Self, EndpointError> {
        let base: String = base_url.into();
        let invalid = |reason: &str| EndpointError::InvalidUrl {
            url: if base.contains("://") {
                crate::redact::urls(&base).into_owned()
            } else {
                // No scheme: whatever is before an `@` may be user info.
                base.rsplit('@').next().unwrap_or_default().to_owned()
            },
            reason: reason.to_owned(),
        };
        if base.contains('#') {
            return Err(invalid("a base URL has no fragment"));
        }
        // A query (Azure's `api-version`) stays after each API path.
        let (path, query) = match base.split_once('?') {
            Some((path, query)) => (path, Some(query).filter(|q| !q.is_empty())),
            None => (base.as_str(), None),
        };
        let trimmed = path.trim_end_matches('/');
        let with_path = |api: &str| match query {
            Some(q) => format!("{trimmed}{api}?{q}"),
            None => format!("{trimmed}{api}"),
        };
        let chat_uri: Uri = with_path("/chat/completions")
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        if chat_uri.scheme().is_none() || chat_uri.authority().is_none() {
            return Err(invalid("an absolute http(s) URL is needed"));
        }
        if chat_uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(invalid(
                "credentials in the URL are not supported (they would be logged, and followed by redirects); \
                 give the key with `api_key_env`",
            ));
        }
        let host = chat_uri.host().unwrap_or_default().to_ascii_lowercase();
        let openrouter = host == "openrouter.ai" || host.ends_with(".openrouter.ai");
        let anthropic = host == "api.anthropic.com";
        let dialects = match host.as_str() {
            "api.openai.com" => ALL_DIALECTS & !dialect_bits([Dialect::Messages]),
            "api.anthropic.com" => dialect_bits([Dialect::Messages, Dialect::Chat]),
            _ => ALL_DIALECTS,
        };
        let mut uris: [Uri; 5] = Default::default();
        for (slot, d) in uris.iter_mut().zip(Dialect::ALL) {
            // The same base with another path: it parses when chat's did.
            *slot = with_path(d.path()).parse().unwrap_or_else(|_| chat_uri.clone());
        }
        let base = match query {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        Ok(Endpoint {
            base,
            chat_uri,
            uris,
            key_var: None,
            authorization: None,
            api_key: None,
            keys: Vec::new(),
            openrouter,
            anthropic,
            dialects,
            shares_state: false,
        })
    }

    /// Says whether this is Anthropic's own API, whose Messages requests
    /// carry the key as `x-api-key` with an `anthropic-version` rather than
    /// as `Authorization: Bearer`. Detected from the host
    /// (`api.anthropic.com`); set it for a proxy of it on another host.
    pub fn anthropic(mut self, yes: bool) -> Self {
        self.anthropic = yes;
        self
    }

    /// Limits the endpoint to these dialects: a request of another one is
    /// not sent to its routes (they are skipped with
    /// [`SkipReason::Dialect`](crate::SkipReason::Dialect)).
    ///
    /// ```
    /// use llm_fallback::{native::Endpoint, Dialect};
    ///
    /// let openai = Endpoint::new("https://api.openai.com/v1")?;
    /// assert!(!openai.serves(Dialect::Messages), "known: OpenAI has no /messages");
    /// let embedder = Endpoint::new("https://embed.internal/v1")?.dialects([Dialect::Embeddings]);
    /// assert!(embedder.serves(Dialect::Embeddings) && !embedder.serves(Dialect::Chat));
    /// # Ok::<(), llm_fallback::native::EndpointError>(())
    /// ```
    pub fn dialects(mut self, dialects: impl IntoIterator<Item = Dialect>) -> Self {
        self.dialects = dialect_bits(dialects);
        self
    }

    /// Whether the endpoint serves `dialect`.
    pub fn serves(&self, dialect: Dialect) -> bool {
        self.dialects & (1 << dialect.index_of()) != 0
    }

    /// Says that this endpoint holds the state stateful Responses requests
    /// (`previous_response_id`, `conversation`) refer to — it is the
    /// caller's own upstream under another name — so they may be sent to
    /// it. Off by default.
    pub fn shares_state(mut self, yes: bool) -> Self {
        self.shares_state = yes;
        self
    }

    /// The URI of `dialect` on this endpoint's base.
    pub(crate) fn uri_for(&self, dialect: Dialect) -> &Uri {
        // `uris` has one entry per dialect.
        self.uris.get(dialect.index_of()).unwrap_or(&self.chat_uri)
    }

    /// Reads the API key from the environment variable `name` now.
    pub fn api_key_env(mut self, name: impl Into<String>) -> Result<Self, EndpointError> {
        let key = ApiKey::from_env(name.into())?;
        self.keys.clear();
        Ok(self.use_key(key))
    }

    /// Reads several API keys of the same account or project pool from these
    /// environment variables now. The route's attempts use the first; a key
    /// answered with `429` (or a `Retry-After`) cools down alone, and the
    /// next one is used, on the same route, before the chain moves on. Each
    /// key is named by its variable in reports, spans and health keys; its
    /// value appears nowhere.
    ///
    /// ```
    /// use llm_fallback::native::Endpoint;
    ///
    /// # std::env::set_var("POOL_KEY_A", "sk-a");
    /// # std::env::set_var("POOL_KEY_B", "sk-b");
    /// let pool = Endpoint::new("https://api.openai.com/v1")?.api_key_envs(["POOL_KEY_A", "POOL_KEY_B"])?;
    /// assert_eq!(pool.key_vars().collect::<Vec<_>>(), ["POOL_KEY_A", "POOL_KEY_B"]);
    /// assert!(!format!("{pool:?}").contains("sk-a"));
    /// # Ok::<(), llm_fallback::native::EndpointError>(())
    /// ```
    pub fn api_key_envs<I, S>(mut self, names: I) -> Result<Self, EndpointError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let keys = names
            .into_iter()
            .map(|n| ApiKey::from_env(n.into()))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = keys.first().cloned() else {
            return Ok(self);
        };
        self = self.use_key(first);
        if keys.len() > 1 {
            self.keys = keys;
        } else {
            self.keys.clear();
        }
        Ok(self)
    }

    /// The names of the variables the endpoint's keys came from, in order.
    pub fn key_vars(&self) -> impl Iterator<Item = &str> {
        let (many, one): (&[ApiKey], _) = if self.keys.len() > 1 {
            (&self.keys, None)
        } else {
            (&[], self.key_var.as_deref())
        };
        many.iter().map(|k| k.var.as_str()).chain(one)
    }

    /// Sets `key` as the one the attempts send.
    fn use_key(mut self, key: ApiKey) -> Self {
        self.authorization = Some(key.authorization);
        self.api_key = Some(key.bare);
        self.key_var = Some(key.var);
        self
    }

    /// One endpoint per key, each named by its variable, when there are
    /// several; else `None`.
    pub(crate) fn split_keys(&self) -> Option<Vec<(Arc<str>, Endpoint)>> {
        if self.keys.len() < 2 {
            return None;
        }
        let mut base = self.clone();
        base.keys = Vec::new();
        Some(
            self.keys
                .iter()
                .map(|k| (Arc::from(k.var.as_str()), base.clone().use_key(k.clone())))
                .collect(),
        )
    }

    /// Says whether this endpoint speaks OpenRouter's extensions (`provider`,
    /// `models`, ...). Detected from the host (`openrouter.ai`); set it for
    /// an OpenRouter-compatible proxy on another host.
    pub fn openrouter(mut self, yes: bool) -> Self {
        self.openrouter = yes;
        self
    }

    /// The API base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("base", &crate::redact::urls(&self.base))
            .field("key_var", &self.key_var)
            .field("keys", &self.keys.len().max(usize::from(self.key_var.is_some())))
            .field("openrouter", &self.openrouter)
            .field("anthropic", &self.anthropic)
            .finish_non_exhaustive()
    }
}

/// One API key, read from its variable: the header values are sensitive
/// and never printed.
#[derive(Clone)]
pub(crate) struct ApiKey {
    pub(crate) var: String,
    authorization: HeaderValue,
    bare: HeaderValue,
}

impl ApiKey {
    fn from_env(var: String) -> Result<Self, EndpointError> {
        let key = std::env::var(&var).map_err(|_| EndpointError::MissingKey { variable: var.clone() })?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
            .map_err(|_| EndpointError::InvalidKey { variable: var.clone() })?;
        authorization.set_sensitive(true);
        let mut bare =
            HeaderValue::from_str(key.trim()).map_err(|_| EndpointError::InvalidKey { variable: var.clone() })?;
        bare.set_sensitive(true);
        Ok(ApiKey {
            var,
            authorization,
            bare,
        })
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey").field("var", &self.var).finish_non_exhaustive()
    }
}

/// The caller's headers that carry credentials or identify its account,
/// removed from every attempt sent to a route with an [`Endpoint`]: a key
/// meant for one provider never reaches another. The endpoint's own key, if
/// it has one, is then set as `Authorization`.
///
/// Add names with
/// [`FallbackBuilder::credential_header`](crate::FallbackBuilder::credential_header)
/// (for a custom auth header of your upstream). Routes without an endpoint
/// go to the caller's own upstream and keep every header.
///
/// ```
/// use llm_fallback::native::CREDENTIAL_HEADERS;
///
/// assert!(CREDENTIAL_HEADERS.iter().any(|h| h == "x-api-key"));
/// ```
pub const CREDENTIAL_HEADERS: [HeaderName; 8] = [
    // Bearer keys: OpenAI, OpenRouter and most OpenAI-compatible APIs.
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::header::COOKIE,
    // Anthropic's key header.
    HeaderName::from_static("x-api-key"),
    // Azure OpenAI's key header.
    HeaderName::from_static("api-key"),
    // Google's (Gemini's OpenAI-compatible endpoint).
    HeaderName::from_static("x-goog-api-key"),
    // OpenAI account selection.
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
];

/// Why an [`Endpoint`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointError {
    /// The base URL does not parse as an absolute URL, or has user info or
    /// a fragment.
    InvalidUrl {
        /// The URL given, without user info, query or fragment.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key's environment variable is not set (or not Unicode).
    MissingKey {
        /// The variable's name.
        variable: String,
    },
    /// The key holds characters that cannot go in a header.
    InvalidKey {
        /// The variable's name.
        variable: String,
    },
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointError::InvalidUrl { url, reason } => write!(f, "invalid endpoint URL {url:?}: {reason}"),
            EndpointError::MissingKey { variable } => {
                write!(f, "the API key variable {variable} is not set in the environment")
            }
            EndpointError::InvalidKey { variable } => {
                write!(
                    f,
                    "the API key in {variable} has characters that cannot be sent in a header"
                )
            }
        }
    }
}

impl std::error::Error for EndpointError {}

/// JSON for `models` (made when a route is built).
#[allow(clippy::expect_used, reason = "a list of strings always serializes")]
pub(crate) fn models_json(models: &[String]) -> Bytes {
    Bytes::from(serde_json::to_vec(models).expect("strings serialize"))
}

/// JSON for `provider` (made when a route is built).
#[allow(clippy::expect_used, reason = "plain data with string keys always serializes")]
pub(crate) fn provider_json(prefs: &ProviderPrefs) -> Bytes {
    Bytes::from(serde_json::to_vec(prefs).expect("provider preferences serialize"))
}

/// The served model differs from the one asked for in a way that means the
/// upstream fell back on its own: it is one of the route's native fallbacks,
/// or (with none) a different model, not a dated variant of the same one
/// (`openai/gpt-4o` → `openai/gpt-4o-2024-08-06` is the same model).
pub(crate) fn upstream_fell_back(requested: &str, fallbacks: &[String], served: &str) -> bool {
    let same = |asked: &str| {
        served == asked
            || served
                .strip_prefix(asked)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    };
    if same(requested) {
        return false;
    }
    fallbacks.iter().any(|f| same(f)) || fallbacks.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_prefs_fields_are_counted() {
        // A struct literal: adding a field fails to compile here until the
        // count (and the mock's test that reads it) is updated.
        let all = ProviderPrefs {
            order: Some(vec!["a".into()]),
            allow_fallbacks: Some(true),
            require_parameters: Some(true),
            data_collection: Some(DataCollection::Deny),
            zdr: Some(true),
            only: Some(vec!["a".into()]),
            ignore: Some(vec!["b".into()]),
            quantizations: Some(vec!["fp8".into()]),
            sort: Some(ProviderSort::By(SortBy::Price)),
            max_price: Some(MaxPrice::default()),
            preferred_min_throughput: Some(1.0),
            preferred_max_latency: Some(1.0),
        };
        let json = serde_json::to_value(&all).unwrap();
        assert_eq!(json.as_object().unwrap().len(), PROVIDER_PREFS_FIELDS);
    }

    #[test]
    fn full_prefs_round_trip() {
        let json = r#"{"order":["OpenAI","Azure"],"allow_fallbacks":false,"require_parameters":true,"data_collection":"deny","zdr":true,"only":["OpenAI"],"ignore":["DeepInfra"],"quantizations":["fp8"],"sort":{"by":"throughput","partition":"model"},"max_price":{"prompt":1.0,"completion":2.0},"preferred_min_throughput":50.0,"preferred_max_latency":1.5}"#;
        let prefs: ProviderPrefs = serde_json::from_str(json).unwrap();
        assert_eq!(
            prefs.sort,
            Some(ProviderSort::Detailed {
                by: SortBy::Throughput,
                partition: Some(Partition::Model)
            })
        );
        assert_eq!(serde_json::to_string(&prefs).unwrap(), json);
    }

    #[test]
    fn unknown_provider_keys_are_refused() {
        let err = serde_json::from_str::<ProviderPrefs>(r#"{"orderr":["x"]}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `orderr`"), "{err}");
    }

    #[test]
    fn endpoints_need_absolute_urls_and_present_keys() {
        assert!(matches!(Endpoint::new("/v1"), Err(EndpointError::InvalidUrl { .. })));
        let e = Endpoint::new("https://api.openai.com/v1/").unwrap();
        assert_eq!(e.chat_uri, "https://api.openai.com/v1/chat/completions");
        assert!(!e.openrouter);
        assert!(Endpoint::new("https://openrouter.ai/api/v1").unwrap().openrouter);
        let err = e.api_key_env("LLM_FALLBACK_TEST_SURELY_UNSET").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the API key variable LLM_FALLBACK_TEST_SURELY_UNSET is not set in the environment"
        );
    }

    #[test]
    fn server_side_fallback_is_told_from_dated_variants() {
        assert!(!upstream_fell_back("openai/gpt-4o", &[], "openai/gpt-4o"));
        assert!(!upstream_fell_back("openai/gpt-4o", &[], "openai/gpt-4o-2024-08-06"));
        assert!(upstream_fell_back("openai/gpt-4o", &[], "openai/gpt-4o-mini"));
        let group = ["b/b".to_owned()];
        assert!(upstream_fell_back("a/a", &group, "b/b"));
        assert!(!upstream_fell_back("a/a", &group, "a/a"));
        assert!(
            !upstream_fell_back("a/a", &group, "c/c"),
            "with a group, only its models count"
        );
    }
}
