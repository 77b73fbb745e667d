//! What the engine uses of a route: the route compiled once, with
//! everything derived from it.

use crate::capability::{Needs, Price, SkipReason};
use crate::native::{self, MAX_NATIVE_FALLBACKS};
use crate::Route;
use bytes::Bytes;
use http::HeaderValue;
use std::sync::Arc;

/// A [`Route`] as the engine sends it: built by [`Chain::new`](crate::Chain::new)
/// from a route (after splitting long native groups), never changed after.
pub(crate) struct Hop {
    /// The configuration this hop was compiled from.
    pub(crate) route: Route,
    pub(crate) model: Arc<str>,
    /// The model id as a JSON string literal, quotes included.
    pub(crate) model_json: Bytes,
    pub(crate) label: Option<Arc<str>>,
    /// `x-fallback-model` / `x-fallback-label` values, built once (a clone
    /// shares the bytes) instead of per response.
    pub(crate) model_header: Option<HeaderValue>,
    pub(crate) label_header: Option<HeaderValue>,
    /// The `provider` object's JSON, when the route sets one.
    pub(crate) provider_json: Option<Bytes>,
    /// The `models` array's JSON, when the route has native fallbacks.
    pub(crate) fallbacks_json: Option<Bytes>,
    /// Declared, or free for `:free` model ids.
    pub(crate) price: Option<Price>,
    /// The key route health is kept under: the model, plus the endpoint.
    pub(crate) health_key: Arc<str>,
    /// The deployment this hop is, and its key's name, when the route has
    /// deployments or several keys (see [`crate::deployment`]).
    pub(crate) deployment: Option<Arc<str>>,
    pub(crate) deployment_header: Option<HeaderValue>,
    pub(crate) key: Option<Arc<str>>,
    /// The caller's `models` is never sent (a caller's own chain, which
    /// the layer runs itself).
    pub(crate) drop_models: bool,
    /// The route's overrides, encoded once ([`Route::set`]).
    pub(crate) overrides: Box<[HopOverride]>,
    /// Metric handles for this hop's model, registered once per recorder.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::metrics::RouteMetrics,
    /// The `model` label of its metrics: the model, or for a model a
    /// caller named, what [`crate::metrics::CallerModels`] allows.
    #[cfg(feature = "metrics")]
    pub(crate) metric_model: Arc<str>,
}

/// Longest model id kept whole where the crate remembers a model beyond
/// the request (a health key, a metric label). A caller can send any
/// `model` (passed through, or in its own chain) up to the body limit;
/// real ids are short.
const MAX_KEPT_MODEL: usize = 256;

/// `model` as the crate remembers it: itself, or when longer than
/// [`MAX_KEPT_MODEL`], its first 64 bytes (to a character boundary), `…#`
/// and a hash of the whole, so distinct ids stay distinct.
pub(crate) fn kept_model(model: &str) -> std::borrow::Cow<'_, str> {
    if model.len() <= MAX_KEPT_MODEL {
        return model.into();
    }
    let cut = (0..=64).rev().find(|&i| model.is_char_boundary(i)).unwrap_or(0);
    let head = model.get(..cut).unwrap_or_default();
    format!("{head}…#{:016x}", xxhash_rust::xxh3::xxh3_64(model.as_bytes())).into()
}

/// [`kept_model`] as a shared string: `model` itself when it is kept whole.
pub(crate) fn kept_model_arc(model: &Arc<str>) -> Arc<str> {
    match kept_model(model) {
        std::borrow::Cow::Borrowed(_) => model.clone(),
        std::borrow::Cow::Owned(kept) => kept.into(),
    }
}

impl Hop {
    /// Compiles `route`. Its native fallbacks must already fit OpenRouter's
    /// cap (see [`Hop::split`]).
    pub(crate) fn new(route: Route) -> Self {
        let model: Arc<str> = Arc::from(route.model.as_str());
        let unit = route.unit.as_ref();
        let deployment = unit.and_then(|u| u.deployment.clone());
        let key = unit.and_then(|u| u.key.clone());
        let health_key = match (&route.endpoint, &deployment, &key) {
            // The base as shown (no query): the key is stored and shown
            // as it is (Redis names routes by it), and two bases that differ
            // only in their query are one upstream.
            (Some(e), None, None) => format!("{}@{}", kept_model(&model), crate::redact::urls(e.base_url())).into(),
            (None, None, None) => kept_model_arc(&model),
            // Each deployment and key fails alone: `m@base (eu, key KEY_A)`
            // (after the URL, nothing `redact` would cut as a query or fragment).
            (e, d, k) => {
                let mut text = kept_model(&model).into_owned();
                if let Some(e) = e {
                    text.push('@');
                    text.push_str(&crate::redact::urls(e.base_url()));
                }
                let key = k.as_deref().map(|k| format!("key {k}"));
                let tags: Vec<&str> = d.as_deref().into_iter().chain(key.as_deref()).collect();
                text.push_str(" (");
                text.push_str(&tags.join(", "));
                text.push(')');
                text.into()
            }
        };
        Hop {
            deployment_header: deployment.as_deref().and_then(header_value),
            deployment,
            key,
            model_json: crate::json::scan::encode_string(&route.model),
            model_header: header_value(&route.model),
            label: route.label.as_deref().map(Arc::from),
            label_header: route.label.as_deref().and_then(header_value),
            provider_json: route.provider.as_ref().map(native::provider_json),
            fallbacks_json: (!route.native_fallbacks.is_empty()).then(|| native::models_json(&route.native_fallbacks)),
            price: route.effective_price(),
            health_key,
            drop_models: false,
            overrides: route.overrides.iter().map(|(k, v)| HopOverride::new(k, v)).collect(),
            #[cfg(feature = "metrics")]
            metric_model: model.clone(),
            model,
            #[cfg(feature = "metrics")]
            metrics: Default::default(),
            route,
        }
    }

    /// Compiles a route into the routes the chain tries: one per
    /// deployment and key (see [`crate::deployment`]), each with its native
    /// group split to fit OpenRouter's cap ([`Hop::split_native`]).
    pub(crate) fn split(mut route: Route) -> Vec<Route> {
        // A route compiled already (taken from `Chain::routes` into another
        // chain, or a caller chain's template) is a plain route there: its
        // place in the old chain's deployments means nothing in the new one.
        route.unit = None;
        let deployments = std::mem::take(&mut route.deployments);
        let has_keys = route.endpoint.as_ref().is_some_and(|e| e.keys.len() > 1)
            || deployments
                .iter()
                .any(|d| d.endpoint.as_ref().is_some_and(|e| e.keys.len() > 1));
        if deployments.is_empty() && !has_keys {
            // Today's path.
            return Hop::split_native(route);
        }
        let mut members: Vec<Member> = Vec::new();
        let mut add = |name: Option<Arc<str>>, weight: u32, r: Route| {
            let keyed = match r.endpoint.as_ref().and_then(|e| e.split_keys()) {
                Some(keys) => keys
                    .into_iter()
                    .flat_map(|(key, endpoint)| {
                        let mut one = r.clone();
                        one.endpoint = Some(endpoint);
                        Hop::split_native(one)
                            .into_iter()
                            .map(move |part| (Some(key.clone()), part))
                    })
                    .collect(),
                None => Hop::split_native(r).into_iter().map(|part| (None, part)).collect(),
            };
            members.push((name, weight, keyed));
        };
        if deployments.is_empty() {
            add(None, 1, route.clone());
        }
        for d in deployments {
            let mut r = route.clone();
            if let Some(e) = d.endpoint {
                r.endpoint = Some(e);
            }
            if let Some(p) = d.provider {
                r.provider = Some(p);
            }
            add(Some(Arc::from(d.name.as_str())), d.weight, r);
        }
        let shape: Vec<(usize, u32)> = members.iter().map(|(_, w, rs)| (rs.len(), *w)).collect();
        let identity = crate::affinity::route_identity(&route.model, members.iter().map(|(name, ..)| name.as_deref()));
        let group = Arc::new(crate::deployment::Group::with_identity(
            route.balance,
            route.balance_seed,
            &shape,
            identity,
        ));
        let mut offset = 0;
        let mut out = Vec::with_capacity(group.units());
        for (member, (name, _, routes)) in members.into_iter().enumerate() {
            for (key, mut r) in routes {
                r.unit = Some(crate::deployment::Unit {
                    group: group.clone(),
                    member,
                    offset,
                    deployment: name.clone(),
                    key,
                });
                offset += 1;
                out.push(r);
            }
        }
        out
    }

    /// Splits a native group longer than OpenRouter's cap into routes that
    /// each fit: `a` + `[b, c, d]`, then `e` + `[f]`, with `route`'s settings.
    fn split_native(route: Route) -> Vec<Route> {
        if route.native_fallbacks.len() <= MAX_NATIVE_FALLBACKS {
            return vec![route];
        }
        let all: Vec<&String> = std::iter::once(&route.model)
            .chain(route.native_fallbacks.iter())
            .collect();
        all.chunks(MAX_NATIVE_FALLBACKS + 1)
            .filter_map(|group| {
                let (first, rest) = group.split_first()?;
                let mut part = route.clone();
                part.model = (*first).clone();
                part.native_fallbacks = rest.iter().map(|m| (*m).clone()).collect();
                Some(part)
            })
            .collect()
    }

    /// Declares anything a request's needs are checked against.
    pub(crate) fn has_limits(&self) -> bool {
        let r = &self.route;
        r.capabilities.is_some()
            || r.context_window.is_some()
            || r.max_output_tokens.is_some()
            || r.endpoint.as_ref().is_some_and(|e| !e.serves(crate::Dialect::Chat))
    }

    /// The output limit this hop's attempts send for a request that asks
    /// for `requested`: the caller's, unless the route overrides the
    /// dialect's limit key (then the override's number; `None` when it
    /// removes the key or sets something else than a number).
    pub(crate) fn output_tokens(&self, dialect: crate::Dialect, requested: Option<u64>) -> Option<u64> {
        let keys: &[&[u8]] = match dialect {
            crate::Dialect::Chat => &[b"max_tokens", b"max_completion_tokens"],
            crate::Dialect::Responses => &[b"max_output_tokens"],
            crate::Dialect::Messages | crate::Dialect::Completions => &[b"max_tokens"],
            _ => &[],
        };
        match self.overrides.iter().find(|o| keys.contains(&&*o.key)) {
            Some(o) => o.tokens,
            None => requested,
        }
    }

    /// Why this hop cannot serve a request with `needs`, if it cannot.
    ///
    /// The output limit checked is the one sent ([`Hop::output_tokens`]).
    pub(crate) fn unfit(&self, needs: &Needs) -> Option<SkipReason> {
        let r = &self.route;
        let mut sent = *needs;
        if !self.overrides.is_empty() {
            sent.max_output_tokens = self.output_tokens(needs.dialect, needs.max_output_tokens);
        }
        let needs = &sent;
        if let Some(e) = &r.endpoint {
            if !e.serves(needs.dialect) {
                return Some(SkipReason::Dialect { dialect: needs.dialect });
            }
            if needs.stateful && !e.shares_state {
                return Some(SkipReason::Stateful);
            }
        }
        if let Some(caps) = r.capabilities {
            let missing = needs.capabilities.missing_from(caps);
            if !missing.is_empty() {
                return Some(SkipReason::Capability { missing });
            }
        }
        if let Some(window) = r.context_window {
            if needs.context_tokens() > window {
                return Some(SkipReason::ContextWindow {
                    needed: needs.context_tokens(),
                    window,
                });
            }
        }
        match (r.max_output_tokens, needs.max_output_tokens) {
            (Some(limit), Some(requested)) if requested > limit => Some(SkipReason::MaxOutput { requested, limit }),
            _ => None,
        }
    }
}

/// One override of a route, as attempts send it.
pub(crate) struct HopOverride {
    /// The key, as the request's decoded keys are compared with it.
    pub(crate) key: Box<[u8]>,
    /// The new value's JSON, replacing the caller's; `None`: the key is removed.
    pub(crate) value: Option<Bytes>,
    /// `"key":value,` inserted after the body's `{` when the caller has no such key.
    pub(crate) member: Option<Bytes>,
    /// The value as an output limit, when it is a non-negative number.
    pub(crate) tokens: Option<u64>,
}

impl HopOverride {
    fn new(key: &str, value: Option<&serde_json::Value>) -> Self {
        let value_json = value.map(|v| Bytes::from(v.to_string()));
        let member = value_json.as_ref().map(|json| {
            let key_json = crate::json::scan::encode_string(key);
            let mut m = Vec::with_capacity(key_json.len() + json.len() + 2);
            m.extend_from_slice(&key_json);
            m.push(b':');
            m.extend_from_slice(json);
            m.push(b',');
            Bytes::from(m)
        });
        HopOverride {
            key: key.as_bytes().into(),
            tokens: value
                .and_then(serde_json::Value::as_f64)
                .filter(|v| *v >= 0.0)
                .map(|v| v as u64),
            value: value_json,
            member,
        }
    }
}
/// A deployment being compiled: its name, weight, and its routes, one per
/// key (named) and native part.
type Member = (Option<Arc<str>>, u32, Vec<(Option<Arc<str>>, Route)>);

impl std::fmt::Debug for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Everything else is derived from the route.
        self.route.fmt(f)
    }
}

/// `text` as a response header value; `None` when empty (the header is
/// then left out) or not a valid header value.
pub(crate) fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok().filter(|_| !text.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Chain;

    #[test]
    fn a_long_model_is_remembered_short_and_distinct() {
        assert_eq!(kept_model("openai/gpt-4o"), "openai/gpt-4o");
        let exact = "m".repeat(MAX_KEPT_MODEL);
        assert_eq!(kept_model(&exact), exact.as_str());
        // 1 MiB of model id: 64 bytes of it, and a hash of the whole.
        let long = format!("{}a", "m".repeat(1 << 20));
        let other = format!("{}b", "m".repeat(1 << 20));
        let (a, b) = (kept_model(&long), kept_model(&other));
        assert!(a.len() <= 64 + "…#".len() + 16, "{a}");
        assert!(a.starts_with(&"m".repeat(64)), "{a}");
        assert_ne!(a, b);
        // Cut at a character boundary.
        let wide = "é".repeat(200);
        assert!(kept_model(&wide).starts_with(&"é".repeat(32)));
        // A route's health key is built from it.
        let hop = Hop::new(Route::new(long.as_str()));
        assert_eq!(&*hop.health_key, &*a);
        assert_eq!(&*hop.model, long.as_str(), "the model sent is the caller's, whole");
        let on = Route::new(long.as_str()).endpoint(crate::native::Endpoint::new("https://h/v1").unwrap());
        assert_eq!(&*Hop::new(on).health_key, format!("{a}@https://h/v1"));
    }

    #[test]
    fn a_health_key_is_as_shown_without_the_bases_query() {
        // Redis names a route by its key as shown: the two must agree.
        let azure = crate::native::Endpoint::new("https://res/openai/deployments/d?api-version=2024-10-21").unwrap();
        let hop = Hop::new(Route::new("gpt-4o").endpoint(azure));
        assert_eq!(&*hop.health_key, "gpt-4o@https://res/openai/deployments/d");
        assert_eq!(crate::redact::urls(&hop.health_key), &*hop.health_key);
    }

    #[test]
    fn empty_models_and_labels_make_no_header() {
        let hop = Hop::new(Route::new("").label(""));
        assert!(hop.model_header.is_none());
        assert!(hop.label_header.is_none());
        let hop = Hop::new(Route::new("m/x").label("primary"));
        assert_eq!(hop.model_header.unwrap(), "m/x");
        assert_eq!(hop.label_header.unwrap(), "primary");
    }

    #[test]
    fn health_is_kept_per_model_and_endpoint() {
        let endpoint = crate::native::Endpoint::new("https://api.example.com/v1").unwrap();
        assert_eq!(&*Hop::new(Route::new("m/x")).health_key, "m/x");
        assert_eq!(
            &*Hop::new(Route::new("m/x").endpoint(endpoint)).health_key,
            "m/x@https://api.example.com/v1"
        );
    }

    #[test]
    fn deployments_and_keys_compile_to_hops_with_their_own_health() {
        use crate::Deployment;
        std::env::set_var("LLM_FALLBACK_HOP_TEST_K1", "sk-1");
        std::env::set_var("LLM_FALLBACK_HOP_TEST_K2", "sk-2");
        let pool = crate::native::Endpoint::new("https://pool.example/v1")
            .unwrap()
            .api_key_envs(["LLM_FALLBACK_HOP_TEST_K1", "LLM_FALLBACK_HOP_TEST_K2"])
            .unwrap();
        let chain = Chain::new([
            Route::new("m")
                .native_fallbacks(["n"])
                .deployments([Deployment::new("eu"), Deployment::new("pool").endpoint(pool)]),
            Route::new("z"),
        ]);
        let keys: Vec<_> = chain
            .hops()
            .iter()
            .map(|h| {
                (
                    &*h.health_key,
                    h.deployment.as_deref(),
                    h.key.as_deref(),
                    h.route.unit.as_ref().map(|u| u.offset),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("m (eu)", Some("eu"), None, Some(0)),
                (
                    "m@https://pool.example/v1 (pool, key LLM_FALLBACK_HOP_TEST_K1)",
                    Some("pool"),
                    Some("LLM_FALLBACK_HOP_TEST_K1"),
                    Some(1)
                ),
                (
                    "m@https://pool.example/v1 (pool, key LLM_FALLBACK_HOP_TEST_K2)",
                    Some("pool"),
                    Some("LLM_FALLBACK_HOP_TEST_K2"),
                    Some(2)
                ),
                ("z", None, None, None),
            ]
        );
        // Each key's hop sends only its key; native groups stay with every hop.
        let auth = |i: usize| {
            chain.hops()[i]
                .route
                .endpoint
                .as_ref()
                .unwrap()
                .authorization
                .clone()
                .unwrap()
        };
        assert_eq!(auth(1), "Bearer sk-1");
        assert_eq!(auth(2), "Bearer sk-2");
        assert!(chain.hops()[..3].iter().all(|h| h.fallbacks_json.is_some()));
        assert_eq!(chain.hops()[0].deployment_header.as_ref().unwrap(), "eu");
    }

    #[test]
    fn long_native_groups_are_split_to_fit_openrouter() {
        let chain = Chain::new([
            Route::new("a")
                .label("group")
                .native_fallbacks(["b", "c", "d", "e", "f"]),
            Route::new("z"),
        ]);
        let shape: Vec<(&str, Vec<&str>, Option<&str>)> = chain
            .routes()
            .iter()
            .map(|r| {
                (
                    r.model.as_str(),
                    r.native_fallbacks.iter().map(String::as_str).collect(),
                    r.label.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("a", vec!["b", "c", "d"], Some("group")),
                ("e", vec!["f"], Some("group")),
                ("z", vec![], None),
            ]
        );
        let hops = chain.hops();
        assert_eq!(&hops[1].model_json[..], br#""e""#);
        // Everything derived from the model follows the split.
        assert_eq!(hops[1].model_header.as_ref().unwrap(), "e");
        assert_eq!(&*hops[1].health_key, "e");
        assert_eq!(&hops[0].fallbacks_json.as_ref().unwrap()[..], br#"["b","c","d"]"#);
        assert!(hops[2].fallbacks_json.is_none());
    }

    #[test]
    fn free_models_are_priced_free() {
        assert_eq!(Hop::new(Route::new("x/y:free")).price, Some(Price::FREE));
        assert_eq!(Hop::new(Route::new("x/y")).price, None);
    }
}
