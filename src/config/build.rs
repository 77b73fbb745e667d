//! Checking a [`Config`] and turning it into a [`FallbackBuilder`].

use super::{
    AffinityConfig, BalanceConfig, ChainConfig, Config, ConfigError, ConfigPolicy, EndpointConfig, HedgingConfig,
    PriceGuardConfig, RouteConfig,
};
use crate::health::{Breaker, Cooldowns, Drills, HedgeBudget};
use crate::native::{Endpoint, EndpointError};
use crate::CallerChains;
use crate::{Balance, Chain, ChainSet, Deployment, FallbackBuilder, Price, PriceGuard, Route};
use std::time::Duration;

impl FallbackBuilder<ConfigPolicy> {
    /// Settings with every chain, route, policy override and limit of
    /// `config` (feature `config`); more can be given before
    /// [`layer`](FallbackBuilder::layer) or `middleware`.
    ///
    /// Endpoint keys are read from the environment variables the config
    /// names, now; a missing one is an error naming the file, the key and
    /// the variable.
    ///
    /// ```
    /// use llm_fallback::config::Config;
    /// use llm_fallback::{ExhaustionBody, FallbackBuilder};
    ///
    /// let config = Config::from_toml_str("[[chains.default.routes]]\nmodel = \"openai/gpt-4o\"\n")?;
    /// let layer = FallbackBuilder::from_config(&config)?
    ///     .exhaustion_body(ExhaustionBody::Summary)
    ///     .layer();
    /// assert_eq!(layer.chain().routes()[0].model, "openai/gpt-4o");
    ///
    /// // A key variable the config names must be set.
    /// let config = Config::from_toml_str(r#"
    ///     [[chains.default.routes]]
    ///     model = "openai/gpt-4o"
    ///
    ///     [[chains.default.routes]]
    ///     model = "gpt-4o-mini"
    ///     endpoint = { base_url = "https://api.openai.com/v1", api_key_env = "SURELY_UNSET_OPENAI_KEY" }
    /// "#)?;
    /// let err = FallbackBuilder::from_config(&config.with_source("fallback.toml")).unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "fallback.toml: chains.default.routes[1].endpoint.api_key_env: the environment variable \
    ///      SURELY_UNSET_OPENAI_KEY is not set; expected it to hold the API key"
    /// );
    /// # Ok::<(), llm_fallback::config::ConfigError>(())
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "config")))]
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let build = |key: &str, chain: &ChainConfig| build_chain(config, key, chain).map_err(|e| config.locate(e));
        // `validate` refused a config without one (and said why).
        let default =
            (config.chains.get(ChainSet::DEFAULT)).ok_or_else(|| ConfigError::new("chains", "no `default` chain"))?;
        let mut set = ChainSet::new(build("chains.default", default)?);
        for (name, chain) in config.chains.iter().filter(|(n, _)| *n != ChainSet::DEFAULT) {
            set = set.chain(name.as_str(), build(&format!("chains.{name}"), chain)?);
        }
        if let Some(name) = &config.on_content_policy {
            set = set.on_content_policy(name.as_str());
        }
        for (model, entry) in &config.models {
            set = match (&entry.chain, entry.own_chain()) {
                (Some(name), _) => set.model(model.as_str(), name.as_str()),
                (None, Some(chain)) => set.model(model.as_str(), build(&format!("models.{model}"), &chain)?),
                (None, None) => set, // cannot happen: one or the other
            };
        }
        if let Some(choice) = config.unknown_model {
            set = set.unknown_model(choice);
        }
        let mut builder = FallbackBuilder::with_chains(set).with_policy(ConfigPolicy::new(&config.policy));
        if let Some(c) = &config.caller_chains {
            let mut caller = CallerChains::new();
            if let Some(n) = c.max_models {
                caller = caller.max_models(n);
            }
            if let Some(allow) = &c.allow {
                caller = caller.allow(allow.iter().map(|p| p.trim().to_owned()));
            }
            builder = builder.caller_chains(caller);
        }
        if let Some(n) = config.max_body_bytes {
            builder = builder.max_body_bytes(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if let Some(n) = config.max_response_bytes {
            builder = builder.max_response_bytes(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if let Some(h) = &config.health {
            builder = with_health(builder, h).map_err(|e| config.locate(e))?;
        }
        if let Some(h) = &config.hedging {
            builder = builder.hedging(HedgeBudget::new(
                h.ratio.unwrap_or(HedgingConfig::DEFAULT_RATIO),
                h.window.unwrap_or(HedgingConfig::DEFAULT_WINDOW),
            ));
        }
        if let Some(a) = &config.affinity {
            builder = builder.affinity(affinity(a, true).map_err(|e| config.locate(e))?);
        }
        if let Some(d) = &config.drills {
            builder = builder.drills(Drills::fraction(d.fraction).allow_header(d.allow_header.unwrap_or(false)));
        }
        if let Some(yes) = config.allow_chain_header {
            builder = builder.allow_chain_header(yes);
        }
        if let Some(body) = config.exhaustion_body {
            builder = builder.exhaustion_body(body);
        }
        for (i, name) in config.credential_headers.iter().enumerate() {
            let name = credential_header(i, name).map_err(|e| config.locate(e))?;
            builder = builder.credential_header(name);
        }
        Ok(builder)
    }
}

/// The chain at `key` (`chains.NAME` or `models.NAME`).
fn build_chain(config: &Config, key: &str, chain: &ChainConfig) -> Result<Chain, ConfigError> {
    let routes = chain
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| build_route(config, &format!("{key}.routes[{i}]"), r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Chain::new(routes);
    if let Some(d) = chain.deadline {
        out = out.deadline(d);
    }
    if let Some(d) = chain.hedge_after {
        out = out.hedge_after(d);
    }
    if let Some(guard) = chain.price_guard {
        out = out.price_guard(match guard {
            PriceGuardConfig::NotAbovePrimary => PriceGuard::NotAbovePrimary,
            PriceGuardConfig::FreeOnly => PriceGuard::FreeOnly,
            PriceGuardConfig::Max(p) => PriceGuard::Max(Price::per_million(p.prompt, p.completion)),
        });
    }
    Ok(out)
}

fn build_route(config: &Config, key: &str, r: &RouteConfig) -> Result<Route, ConfigError> {
    let mut route = Route::new(r.model.as_str());
    if let Some(label) = &r.label {
        route = route.label(label.as_str());
    }
    if let Some(t) = r.timeout {
        route = route.timeout(t);
    }
    if let Some(t) = r.first_token_timeout {
        route = route.first_token_timeout(t);
    }
    if let Some(t) = r.idle_timeout {
        route = route.idle_timeout(t);
    }
    if let Some(t) = r.hedge_after {
        route = route.hedge_after(t);
    }
    if let Some(prefs) = &r.provider {
        route = route.provider(prefs.clone());
    }
    if !r.native_fallbacks.is_empty() {
        route = route.native_fallbacks(r.native_fallbacks.iter().cloned());
    }
    if r.openrouter_metadata {
        route = route.openrouter_metadata(true);
    }
    if let Some(e) = &r.endpoint {
        route = route.endpoint(build_endpoint(config, &format!("{key}.endpoint"), e)?);
    }
    if !r.deployments.is_empty() {
        let mut deployments = Vec::with_capacity(r.deployments.len());
        for (j, d) in r.deployments.iter().enumerate() {
            let at = format!("{key}.deployments[{j}]");
            let mut out = Deployment::new(d.name.as_str());
            if let Some(e) = &d.endpoint {
                out = out.endpoint(build_endpoint(config, &format!("{at}.endpoint"), e)?);
            }
            if let Some(p) = &d.provider {
                out = out.provider(p.clone());
            }
            if let Some(w) = d.weight {
                out = out.weight(w);
            }
            deployments.push(out);
        }
        route = route.deployments(deployments);
    }
    if let Some(b) = r.balance {
        route = route.balance(match b {
            BalanceConfig::Weighted => Balance::Weighted,
            BalanceConfig::LeastLatency => Balance::LeastLatency,
        });
    }
    if let Some(seed) = r.balance_seed {
        route = route.balance_seed(seed);
    }
    if let Some(caps) = r.capabilities {
        route = route.capabilities(caps);
    }
    if let Some(n) = r.context_window {
        route = route.context_window(n);
    }
    if let Some(n) = r.max_output_tokens {
        route = route.max_output_tokens(n);
    }
    if let Some(p) = r.price {
        route = route.price(Price::per_million(p.prompt, p.completion));
    }
    // Checked by `validate_overrides` first; the errors name the key path.
    for (k, v) in &r.set {
        route = route
            .try_set(k.as_str(), v.clone())
            .map_err(|e| ConfigError::new(format!("{key}.set.{k}"), e.to_string()))?;
    }
    for (i, k) in r.remove.iter().enumerate() {
        route = route
            .try_remove(k.as_str())
            .map_err(|e| ConfigError::new(format!("{key}.remove[{i}]"), e.to_string()))?;
    }
    Ok(route)
}

/// The endpoint at key path `at` (`chains.default.routes[1].endpoint`),
/// its key variables read now.
fn build_endpoint(config: &Config, at: &str, e: &EndpointConfig) -> Result<Endpoint, ConfigError> {
    let mut endpoint = Endpoint::new(e.base_url.as_str()).map_err(|err| endpoint_error(at, err))?;
    if let Some(var) = &e.api_key_env {
        // Checked here first so the error names the file and the key.
        config.require_env_var(&format!("{at}.api_key_env"), var)?;
        endpoint = endpoint
            .api_key_env(var.as_str())
            .map_err(|err| endpoint_error(at, err))?;
    }
    if !e.api_key_envs.is_empty() {
        for (k, var) in e.api_key_envs.iter().enumerate() {
            config.require_env_var(&format!("{at}.api_key_envs[{k}]"), var)?;
        }
        endpoint = endpoint
            .api_key_envs(e.api_key_envs.iter().map(String::as_str))
            .map_err(|err| endpoint_error(at, err))?;
    }
    if let Some(yes) = e.openrouter {
        endpoint = endpoint.openrouter(yes);
    }
    Ok(endpoint)
}

/// An endpoint's error at key path `at`.
fn endpoint_error(at: &str, err: EndpointError) -> ConfigError {
    match err {
        EndpointError::InvalidUrl { url, reason } => ConfigError::new(
            format!("{at}.base_url"),
            format!("invalid URL {url:?} ({reason}); expected an API base such as \"https://api.openai.com/v1\""),
        ),
        EndpointError::InvalidKey { variable } => ConfigError::new(
            format!("{at}.api_key_env"),
            format!("the key in the environment variable {variable} has characters that cannot be sent in a header"),
        ),
        other => ConfigError::new(at, other.to_string()),
    }
}

/// The checks of [`Config::validate`]; errors carry no file yet.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    if !config.chains.contains_key(ChainSet::DEFAULT) {
        let found: Vec<&str> = config.chains.keys().map(String::as_str).collect();
        return Err(ConfigError::new(
            "chains",
            format!(
                "no `default` chain; expected [chains.default] with at least one route (found: {})",
                if found.is_empty() {
                    "no chains".into()
                } else {
                    found.join(", ")
                }
            ),
        ));
    }
    for (name, chain) in &config.chains {
        if name.trim().is_empty() {
            return Err(ConfigError::new(
                "chains",
                "a chain has an empty name; expected a name such as \"budget\"",
            ));
        }
        validate_chain(config, &format!("chains.{name}"), chain)?;
    }
    for (name, entry) in &config.models {
        if name.trim().is_empty() {
            return Err(ConfigError::new(
                "models",
                "a model has an empty name; expected a model id or an alias such as \"smart\"",
            ));
        }
        let key = format!("models.{name}");
        match (&entry.chain, entry.routes.is_empty()) {
            (None, true) => {
                return Err(ConfigError::new(
                    key,
                    "neither a chain nor routes; expected chain = \"NAME\" or [[models.NAME.routes]]",
                ))
            }
            (Some(_), false) => {
                return Err(ConfigError::new(
                    key,
                    "both a chain and routes; expected chain = \"NAME\" or [[models.NAME.routes]], not both",
                ))
            }
            (Some(chain), true) => {
                if !config.chains.contains_key(chain) {
                    return Err(ConfigError::new(
                        format!("{key}.chain"),
                        format!(
                            "no chain is called {chain:?}; expected one of: {}",
                            config.chains.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                for (set, what) in [
                    (entry.deadline.is_some(), "deadline"),
                    (entry.price_guard.is_some(), "price_guard"),
                    (entry.hedge_after.is_some(), "hedge_after"),
                ] {
                    if set {
                        return Err(ConfigError::new(
                            format!("{key}.{what}"),
                            format!("set on the named chain; expected it in [chains.{chain}]"),
                        ));
                    }
                }
            }
            (None, false) => {
                if let Some(chain) = entry.own_chain() {
                    validate_chain(config, &key, &chain)?;
                }
            }
        }
    }
    if let Some(a) = &config.affinity {
        // Checked without connecting to a store.
        affinity(a, false)?;
    }
    if let Some(c) = &config.caller_chains {
        if c.max_models == Some(0) {
            return Err(ConfigError::new("caller_chains.max_models", "0; expected at least 1"));
        }
        for (i, p) in c.allow.iter().flatten().enumerate() {
            if p.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("caller_chains.allow[{i}]"),
                    "empty; expected a model id or a prefix ending in *, such as \"openai/*\"",
                ));
            }
        }
    }
    validate_rest(config)
}

/// The checks of one chain at `key` (`chains.NAME` or `models.NAME`).
fn validate_chain(config: &Config, key: &str, chain: &ChainConfig) -> Result<(), ConfigError> {
    if chain.routes.is_empty() {
        return Err(ConfigError::new(
            format!("{key}.routes"),
            "the chain has no routes; expected at least one [[chains.NAME.routes]] with a model",
        ));
    }
    positive(&format!("{key}.deadline"), chain.deadline)?;
    positive(&format!("{key}.hedge_after"), chain.hedge_after)?;
    if chain.hedge_after.is_some() {
        needs_hedging(config, &format!("{key}.hedge_after"))?;
    }
    for (i, r) in chain.routes.iter().enumerate() {
        let key = format!("{key}.routes[{i}]");
        if r.model.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{key}.model"),
                "the model id is empty; expected one such as \"openai/gpt-4o\"",
            ));
        }
        positive(&format!("{key}.timeout"), r.timeout)?;
        positive(&format!("{key}.first_token_timeout"), r.first_token_timeout)?;
        positive(&format!("{key}.idle_timeout"), r.idle_timeout)?;
        positive(&format!("{key}.hedge_after"), r.hedge_after)?;
        if r.hedge_after.is_some() {
            needs_hedging(config, &format!("{key}.hedge_after"))?;
        }
        validate_overrides(&key, r)?;
        if let Some(e) = &r.endpoint {
            validate_endpoint(&format!("{key}.endpoint"), e)?;
        }
        validate_deployments(&key, r)?;
    }
    Ok(())
}

/// The checks of an endpoint at key path `at`.
fn validate_endpoint(at: &str, e: &EndpointConfig) -> Result<(), ConfigError> {
    Endpoint::new(e.base_url.as_str()).map_err(|err| endpoint_error(at, err))?;
    let empty = "empty; expected the name of an environment variable such as \"OPENAI_API_KEY\"";
    if e.api_key_env.as_deref().is_some_and(|v| v.trim().is_empty()) {
        return Err(ConfigError::new(format!("{at}.api_key_env"), empty));
    }
    if e.api_key_env.is_some() && !e.api_key_envs.is_empty() {
        return Err(ConfigError::new(
            format!("{at}.api_key_envs"),
            "set with api_key_env; expected one of them (api_key_envs = [\"KEY_A\", \"KEY_B\"] for several keys)",
        ));
    }
    for (k, var) in e.api_key_envs.iter().enumerate() {
        if var.trim().is_empty() {
            return Err(ConfigError::new(format!("{at}.api_key_envs[{k}]"), empty));
        }
        if e.api_key_envs.get(..k).is_some_and(|before| before.contains(var)) {
            return Err(ConfigError::new(
                format!("{at}.api_key_envs[{k}]"),
                format!("{var} is listed twice; expected each key's variable once"),
            ));
        }
    }
    Ok(())
}

/// The checks of a route's deployments (the route at key path `key`).
fn validate_deployments(key: &str, r: &RouteConfig) -> Result<(), ConfigError> {
    if r.deployments.is_empty() && (r.balance.is_some() || r.balance_seed.is_some()) {
        let what = if r.balance.is_some() { "balance" } else { "balance_seed" };
        return Err(ConfigError::new(
            format!("{key}.{what}"),
            "the route has no deployments to balance; expected [[...routes.deployments]] entries",
        ));
    }
    for (j, d) in r.deployments.iter().enumerate() {
        let at = format!("{key}.deployments[{j}]");
        if d.name.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{at}.name"),
                "the deployment's name is empty; expected one such as \"azure-eu\"",
            ));
        }
        if r.deployments
            .get(..j)
            .is_some_and(|before| before.iter().any(|o| o.name == d.name))
        {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!(
                    "another deployment of the route is called {:?}; expected each name once",
                    d.name
                ),
            ));
        }
        if let Some(e) = &d.endpoint {
            validate_endpoint(&format!("{at}.endpoint"), e)?;
        }
    }
    Ok(())
}

/// A route's `set` and `remove` at `key`: no key the layer owns, none both
/// set and removed, no `null` (TOML has none; `remove` the key instead), at
/// most [`Overrides::MAX`](crate::Overrides::MAX) keys.
fn validate_overrides(key: &str, r: &RouteConfig) -> Result<(), ConfigError> {
    for (k, v) in &r.set {
        let path = format!("{key}.set.{k}");
        crate::Overrides::check_key(k).map_err(|e| ConfigError::new(path.as_str(), e.to_string()))?;
        no_null(&path, v)?;
    }
    for (i, k) in r.remove.iter().enumerate() {
        let path = format!("{key}.remove[{i}]");
        crate::Overrides::check_key(k).map_err(|e| ConfigError::new(path.as_str(), e.to_string()))?;
        if r.set.contains_key(k) {
            return Err(ConfigError::new(
                path,
                format!("{k:?} is also in `set`; expected each key either set or removed"),
            ));
        }
    }
    if r.set.len() + r.remove.len() > crate::Overrides::MAX {
        return Err(ConfigError::new(
            format!("{key}.set"),
            format!(
                "{} keys set or removed; expected at most {}",
                r.set.len() + r.remove.len(),
                crate::Overrides::MAX
            ),
        ));
    }
    Ok(())
}

/// The checks of everything but the chains and models.
fn validate_rest(config: &Config) -> Result<(), ConfigError> {
    if let Some(name) = &config.on_content_policy {
        if !config.chains.contains_key(name) {
            return Err(ConfigError::new(
                "on_content_policy",
                format!(
                    "no chain is called {name:?}; expected one of: {}",
                    config.chains.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    let p = &config.policy;
    for (list, statuses, other) in [
        ("fallback_on_status", &p.fallback_on_status, &p.stop_on_status),
        ("stop_on_status", &p.stop_on_status, &p.fallback_on_status),
    ] {
        for (i, s) in statuses.iter().enumerate() {
            if !(400..=599).contains(s) {
                return Err(ConfigError::new(
                    format!("policy.{list}[{i}]"),
                    format!("{s} is not an HTTP error status; expected 400-599"),
                ));
            }
            if other.contains(s) && list == "stop_on_status" {
                return Err(ConfigError::new(
                    format!("policy.{list}[{i}]"),
                    format!("{s} is also in policy.fallback_on_status; expected each status in one list"),
                ));
            }
        }
    }
    for (i, t) in p.stop_on_error_type.iter().enumerate() {
        if p.fallback_on_error_type.contains(t) {
            return Err(ConfigError::new(
                format!("policy.stop_on_error_type[{i}]"),
                format!("{t:?} is also in policy.fallback_on_error_type; expected each error type in one list"),
            ));
        }
    }
    if let Some(h) = &config.health {
        if h.failures == Some(0) {
            return Err(ConfigError::new("health.failures", "0; expected at least 1 failure"));
        }
        positive("health.cooldown", h.cooldown)?;
        positive("health.max_cooldown", h.max_cooldown)?;
        positive("health.breaker_window", h.breaker_window)?;
        if h.breaker_min_requests == Some(0) {
            return Err(ConfigError::new(
                "health.breaker_min_requests",
                "0; expected at least 1 request",
            ));
        }
        share("health.breaker_failure_ratio", h.breaker_failure_ratio)?;
        share("health.max_open_share", h.max_open_share)?;
        redis_store("health", h.redis_url(), h.key_prefix.as_deref())?;
    }
    if let Some(h) = &config.hedging {
        share("hedging.ratio", h.ratio)?;
        positive("hedging.window", h.window)?;
    }
    if let Some(d) = &config.drills {
        share("drills.fraction", Some(d.fraction))?;
    }
    if let Some(table) = &config.gateway {
        no_null("gateway", table)?;
    }
    for (i, name) in config.credential_headers.iter().enumerate() {
        credential_header(i, name)?;
    }
    for (key, n) in [
        ("max_body_bytes", config.max_body_bytes),
        ("max_response_bytes", config.max_response_bytes),
    ] {
        if n == Some(0) {
            return Err(ConfigError::new(
                key,
                "0 bytes; expected a size above zero, such as \"32MiB\"",
            ));
        }
    }
    Ok(())
}

/// A `null` (JSON only) in the `[gateway]` table is refused: TOML has none,
/// so such a config could not be written back as TOML.
fn no_null(key: &str, value: &serde_json::Value) -> Result<(), ConfigError> {
    match value {
        serde_json::Value::Null => Err(ConfigError::new(
            key,
            "null; expected a value (leave the key out for its default)",
        )),
        serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| no_null(&format!("{key}.{k}"), v)),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| no_null(&format!("{key}[{i}]"), v)),
        _ => Ok(()),
    }
}

/// The [`Affinity`](crate::affinity::Affinity) of an `[affinity]` section;
/// with `connect`, its Redis store (if it names one) is built and started.
fn affinity(a: &AffinityConfig, connect: bool) -> Result<crate::affinity::Affinity, ConfigError> {
    use crate::affinity::{Affinity, MemoryAffinity};
    const EXPECTED: &str = "expected \"header:NAME\", \"user\" or \"leading_messages:N\"";
    let key = a.key.as_deref().unwrap_or("header").trim();
    let (kind, arg) = match key.split_once(':') {
        Some((kind, arg)) => (kind.trim(), Some(arg.trim())),
        None => (key, None),
    };
    let mut affinity = match (kind, arg) {
        ("header", name) => {
            let name = name.unwrap_or(AffinityConfig::DEFAULT_HEADER);
            let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ConfigError::new(
                    "affinity.key",
                    format!("{name:?} is not a header name; expected one such as \"header:x-session-id\""),
                )
            })?;
            Affinity::header(name)
        }
        ("user", None) => Affinity::user(),
        ("leading_messages", n) => match n.map(str::parse::<usize>) {
            None => Affinity::leading_messages(AffinityConfig::DEFAULT_MESSAGES),
            Some(Ok(n)) if n > 0 => Affinity::leading_messages(n),
            Some(_) => {
                return Err(ConfigError::new(
                    "affinity.key",
                    format!(
                    "{key:?}: the count is not a whole number of at least 1; expected such as \"leading_messages:2\""
                ),
                ))
            }
        },
        _ => return Err(ConfigError::new("affinity.key", format!("{key:?}; {EXPECTED}"))),
    };
    if let Some(ttl) = a.ttl {
        if ttl.is_zero() {
            return Err(ConfigError::new(
                "affinity.ttl",
                "0; expected a duration such as \"5m\"",
            ));
        }
        affinity = affinity.ttl(ttl);
    }
    if a.capacity == Some(0) {
        return Err(ConfigError::new("affinity.capacity", "0; expected at least 1 session"));
    }
    redis_store("affinity", a.redis_url(), a.key_prefix.as_deref())?;
    let Some(url) = a.redis_url() else {
        return Ok(match a.capacity {
            Some(n) => affinity.store(MemoryAffinity::with_capacity(n)),
            None => affinity,
        });
    };
    #[cfg(feature = "redis")]
    {
        if !connect {
            return Ok(affinity);
        }
        let mut store = crate::affinity::RedisAffinity::builder(url);
        if let Some(p) = &a.key_prefix {
            store = store.key_prefix(p.as_str());
        }
        if let Some(n) = a.capacity {
            store = store.capacity(n);
        }
        let store = store
            .build()
            .map_err(|e| ConfigError::new("affinity.store", e.to_string()))?;
        Ok(affinity.store(store))
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = (connect, affinity);
        Err(ConfigError::new(
            "affinity.store",
            "a redis:// store needs llm-fallback's `redis` feature; expected \"memory\" without it",
        ))
    }
}

/// The checks of a section's `store` (its Redis URL, if any) and
/// `key_prefix`, named under `section`.
fn redis_store(section: &str, url: Option<&str>, prefix: Option<&str>) -> Result<(), ConfigError> {
    if url.is_some_and(|u| !(u.starts_with("redis://") || u.starts_with("redis+unix://") || u.starts_with("unix://"))) {
        return Err(ConfigError::new(
            format!("{section}.store"),
            "expected \"memory\" or a redis:// URL, such as \"redis://127.0.0.1:6379/0\"",
        ));
    }
    if prefix.is_some_and(|p| p.is_empty() || p.contains(char::is_whitespace)) {
        return Err(ConfigError::new(
            format!("{section}.key_prefix"),
            "empty or with spaces; expected a word such as \"my-gateway\"",
        ));
    }
    Ok(())
}

fn credential_header(i: usize, name: &str) -> Result<http::HeaderName, ConfigError> {
    http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
        ConfigError::new(
            format!("credential_headers[{i}]"),
            format!("{name:?} is not a header name; expected one such as \"x-internal-token\""),
        )
    })
}

fn needs_hedging(config: &Config, key: &str) -> Result<(), ConfigError> {
    match config.hedging {
        Some(_) => Ok(()),
        None => Err(ConfigError::new(
            key,
            "hedging is not enabled; expected a [hedging] section (its budget caps the extra requests), \
             such as [hedging] ratio = 0.1, window = \"10s\"",
        )),
    }
}

/// Cooldowns (and the breaker) from `[health]`, kept in memory or, with
/// `store` a Redis URL, in a [`RedisHealth`](crate::health) the fleet shares.
fn with_health<P>(builder: FallbackBuilder<P>, h: &super::HealthConfig) -> Result<FallbackBuilder<P>, ConfigError> {
    let mut cooldowns = Cooldowns::new();
    if let Some(n) = h.failures {
        cooldowns = cooldowns.failures(n);
    }
    if let Some(d) = h.cooldown {
        cooldowns = cooldowns.base(d);
    }
    if let Some(d) = h.max_cooldown {
        cooldowns = cooldowns.max(d);
    }
    if let Some(d) = h.max_retry_after {
        cooldowns = cooldowns.max_retry_after(d);
    }
    if h.breaker_window.is_some() || h.breaker_min_requests.is_some() || h.breaker_failure_ratio.is_some() {
        let mut breaker = Breaker::new();
        if let Some(d) = h.breaker_window {
            breaker = breaker.window(d);
        }
        if let Some(n) = h.breaker_min_requests {
            breaker = breaker.min_requests(n);
        }
        if let Some(r) = h.breaker_failure_ratio {
            breaker = breaker.failure_ratio(r);
        }
        cooldowns = cooldowns.breaker(breaker);
    }
    if let Some(share) = h.max_open_share {
        cooldowns = cooldowns.max_open_share(share);
    }
    let Some(url) = h.redis_url() else {
        return Ok(builder.cooldowns(cooldowns));
    };
    #[cfg(feature = "redis")]
    {
        let mut store = crate::health::RedisHealth::builder(url).cooldowns(cooldowns);
        if let Some(p) = &h.key_prefix {
            store = store.key_prefix(p.as_str());
        }
        let store = store
            .build()
            .map_err(|e| ConfigError::new("health.store", e.to_string()))?;
        Ok(builder.health_store(std::sync::Arc::new(store)))
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = (url, builder);
        Err(ConfigError::new(
            "health.store",
            "a redis:// store needs llm-fallback's `redis` feature; expected \"memory\" without it",
        ))
    }
}

fn share(key: &str, value: Option<f64>) -> Result<(), ConfigError> {
    match value {
        Some(v) if !(0.0..=1.0).contains(&v) => Err(ConfigError::new(
            key,
            format!("{v} is out of range; expected a share from 0.0 to 1.0, such as 0.1"),
        )),
        _ => Ok(()),
    }
}

fn positive(key: &str, d: Option<Duration>) -> Result<(), ConfigError> {
    match d {
        Some(Duration::ZERO) => Err(ConfigError::new(
            key,
            "zero; expected a duration above zero, such as \"30s\" (leave the key out for no limit)",
        )),
        _ => Ok(()),
    }
}
