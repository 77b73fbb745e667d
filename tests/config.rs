//! Feature `config`: loading, errors that name the file, key and what is
//! expected, a full round trip, the policy knobs, and the documented example
//! file and README reference checked against the types.

mod common;

use common::{body_json, chat, post, report};
use llm_fallback::config::{Config, ConfigError};
use llm_fallback::{Capabilities, FallbackBuilder, Price, PriceGuard};
use llm_fallback_mock::{MockUpstream, Reply, Script};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tower::{Layer, ServiceExt};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fallback.toml");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

/// A minimal valid config plus `extra` lines in the first route.
fn route_with(extra: &str) -> String {
    format!("[[chains.default.routes]]\nmodel = \"a/b\"\n{extra}\n")
}

fn toml_err(text: &str) -> ConfigError {
    Config::from_toml_str(text)
        .map(|_| ())
        .unwrap_err()
        .in_file("fallback.toml")
}

/// A file of its own under the target's temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("llm-fallback-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ===== errors =====

#[test]
fn unknown_keys_name_the_key_and_the_expected_ones() {
    let err = toml_err(&route_with("timout = \"30s\""));
    assert_eq!(err.key(), "chains.default.routes[0].timout");
    assert_eq!(err.position(), Some((3, 1)));
    let text = err.to_string();
    assert!(
        text.starts_with("fallback.toml:3:1: chains.default.routes[0].timout: unknown field `timout`, expected one of `model`, `label`, `timeout`"),
        "{text}"
    );

    // At the top level, in a section, and inside OpenRouter's provider object.
    assert_eq!(toml_err(&format!("zzz = 1\n{}", route_with(""))).key(), "zzz");
    let err = toml_err(&format!("[policy]\nstop_on_statuss = [429]\n{}", route_with("")));
    assert_eq!(err.key(), "policy.stop_on_statuss");
    assert!(
        err.message()
            .contains("expected one of `fallback_on_status`, `stop_on_status`"),
        "{err}"
    );
    let err = toml_err(&route_with("provider = { orderr = [\"OpenAI\"] }"));
    assert_eq!(err.key(), "chains.default.routes[0].provider.orderr");
    assert!(err.message().contains("expected one of `order`"), "{err}");
}

#[test]
fn bad_durations_say_what_a_duration_looks_like() {
    for (value, says) in [
        ("\"30\"", "invalid duration \"30\""),
        ("\"30 sec\"", "invalid duration \"30 sec\""),
        ("\"-1s\"", "invalid duration \"-1s\""),
        ("30", "invalid type: integer `30`"),
    ] {
        let err = toml_err(&route_with(&format!("timeout = {value}")));
        assert_eq!(err.key(), "chains.default.routes[0].timeout", "{value}");
        assert_eq!(err.file(), Some(Path::new("fallback.toml")));
        assert_eq!(err.position(), Some((3, 11)), "{value}");
        assert!(err.message().starts_with(says), "{value}: {err}");
        assert!(
            err.message()
                .ends_with("expected a duration: a number and a unit (h, m, s, ms, us, ns), such as \"30s\", \"250ms\", \"1.5s\" or \"1m30s\""),
            "{value}: {err}"
        );
    }
    let err = toml_err(&format!("[chains.default]\ndeadline = \"0s\"\n{}", route_with("")));
    assert_eq!(err.key(), "chains.default.deadline");
    assert!(err.message().contains("expected a duration above zero"), "{err}");
}

#[test]
fn empty_and_missing_chains_are_refused() {
    let err = toml_err(&format!("[chains.budget]\nroutes = []\n{}", route_with("")));
    assert_eq!(
        err.to_string(),
        "fallback.toml: chains.budget.routes: the chain has no routes; expected at least one [[chains.NAME.routes]] with a model"
    );
    let err = toml_err("[[chains.budget.routes]]\nmodel = \"a/b\"\n");
    assert_eq!(err.key(), "chains");
    assert!(
        err.message().contains("no `default` chain") && err.message().contains("found: budget"),
        "{err}"
    );
    let err = toml_err("");
    assert_eq!(
        err.message(),
        "missing field `chains`; expected at least a default chain: [[chains.default.routes]] with a model"
    );
    let err = toml_err("[chains.default]\ndeadline = \"10s\"\n");
    assert_eq!(err.key(), "chains.default");
    assert!(err.message().contains("missing field `routes`"), "{err}");
    let err = toml_err("[[chains.default.routes]]\nlabel = \"primary\"\n");
    assert_eq!(err.key(), "chains.default.routes[0]");
    assert!(err.message().contains("missing field `model`"), "{err}");
    let err = toml_err(&route_with("").replace("\"a/b\"", "\" \""));
    assert_eq!(err.key(), "chains.default.routes[0].model");
}

#[test]
fn missing_key_variables_name_the_file_the_key_and_the_variable() {
    let file = TempFile::new(
        "missing-key.toml",
        &format!(
            "{}\n[[chains.default.routes]]\nmodel = \"gpt-4o-mini\"\nendpoint = {{ base_url = \"https://api.openai.com/v1\", api_key_env = \"LLM_FALLBACK_TEST_UNSET_KEY\" }}\n",
            route_with("")
        ),
    );
    let config = Config::from_path(&file.0).expect("the file itself is fine");
    let err = FallbackBuilder::from_config(&config).unwrap_err();
    assert_eq!(err.file(), Some(file.0.as_path()));
    assert_eq!(err.key(), "chains.default.routes[1].endpoint.api_key_env");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: chains.default.routes[1].endpoint.api_key_env: the environment variable LLM_FALLBACK_TEST_UNSET_KEY is not set; expected it to hold the API key",
            file.0.display()
        )
    );
    // The same rule for the gateway's own key variable: tests/gateway.rs
    // (`the_upstream_gets_the_gateways_key_and_a_missing_one_is_named`).
}

#[test]
fn other_mistakes_are_named_too() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "capabilities = [\"vison\"]",
            "chains.default.routes[0].capabilities[0]",
            "unknown variant `vison`, expected one of `tools`, `vision`, `audio`, `structured_output`",
        ),
        (
            "endpoint = { base_url = \"/v1\" }",
            "chains.default.routes[0].endpoint.base_url",
            "expected an API base such as",
        ),
        (
            "hedge_after = \"2s\"",
            "chains.default.routes[0].hedge_after",
            "expected a [hedging] section",
        ),
        (
            "price = { prompt = 1.0 }",
            "chains.default.routes[0].price",
            "missing field `completion`",
        ),
    ];
    for (line, key, says) in cases {
        let err = toml_err(&route_with(line));
        assert_eq!(err.key(), *key, "{line}: {err}");
        assert!(err.message().contains(says), "{line}: {err}");
    }
    let top: &[(&str, &str, &str)] = &[
        (
            "on_content_policy = \"lenient\"",
            "on_content_policy",
            "no chain is called \"lenient\"",
        ),
        (
            "[policy]\nstop_on_status = [200]",
            "policy.stop_on_status[0]",
            "expected 400-599",
        ),
        (
            "[policy]\nfallback_on_status = [503]\nstop_on_status = [429, 503]",
            "policy.stop_on_status[1]",
            "also in policy.fallback_on_status",
        ),
        (
            "[hedging]\nratio = 1.5",
            "hedging.ratio",
            "expected a share from 0.0 to 1.0",
        ),
        ("[drills]\nallow_header = true", "drills", "missing field `fraction`"),
        ("[health]\nfailures = 0", "health.failures", "expected at least 1"),
        ("gateway = 5", "gateway", "invalid type: integer `5`, expected a map"),
        (
            "max_body_bytes = \"3 parsecs\"",
            "max_body_bytes",
            "expected a size in bytes",
        ),
        ("max_body_bytes = 0", "max_body_bytes", "expected a size above zero"),
        (
            "[affinity]\nkey = \"cookie\"",
            "affinity.key",
            "expected \"header:NAME\", \"user\"",
        ),
        (
            "[affinity]\nkey = \"header:bad name\"",
            "affinity.key",
            "is not a header name",
        ),
        ("[affinity]\nkey = \"leading_messages:0\"", "affinity.key", "at least 1"),
        (
            "[affinity]\nkey = \"user:x\"",
            "affinity.key",
            "expected \"header:NAME\"",
        ),
        ("[affinity]\ncapacity = 0", "affinity.capacity", "at least 1 session"),
        ("[affinity]\nttl = \"0s\"", "affinity.ttl", "expected a duration"),
        (
            "[affinity]\nstore = \"http://x\"",
            "affinity.store",
            "expected \"memory\" or a redis:// URL",
        ),
        (
            "[affinity]\nkey_prefix = \"a b\"",
            "affinity.key_prefix",
            "expected a word",
        ),
    ];
    for (text, key, says) in top {
        let err = toml_err(&format!("{text}\n{}", route_with("")));
        assert_eq!(err.key(), *key, "{text}: {err}");
        assert!(err.message().contains(says), "{text}: {err}");
    }
    // A syntax error has a position but no key.
    let err = toml_err("[[chains.default.routes]\nmodel = \"a/b\"\n");
    assert_eq!(err.key(), "");
    assert_eq!(err.position(), Some((1, 25)));
    assert!(err.to_string().starts_with("fallback.toml:1:25: "), "{err}");
}

/// A server's own settings, read from `[gateway]` (the example gateway has
/// its own type; this one stands in for it).
#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSettings {
    listen: Option<std::net::SocketAddr>,
    #[serde(default)]
    limits: Vec<Limit>,
}

#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Limit {
    requests: u32,
}

#[test]
fn the_gateway_table_is_kept_for_the_server_that_reads_it() {
    let route = route_with("");
    // No table: nothing to read.
    let config = Config::from_toml_str(&route).unwrap();
    assert_eq!(config.gateway::<ServerSettings>().unwrap(), None);

    // Any keys are kept as read: the library does not know them...
    let text = format!("[gateway]\nlisten = \"127.0.0.1:9\"\n[[gateway.limits]]\nrequests = 5\n{route}");
    let config = Config::from_toml_str(&text).unwrap();
    let want = ServerSettings {
        listen: Some("127.0.0.1:9".parse().unwrap()),
        limits: vec![Limit { requests: 5 }],
    };
    assert_eq!(config.gateway::<ServerSettings>().unwrap(), Some(want));
    // ... and written back.
    let again = Config::from_toml_str(&config.to_toml_string()).unwrap();
    assert_eq!(again, config);
    let json = Config::from_json_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(json, config);

    // ... but the server's type refuses what it does not know, and the
    // error names the key path and the file like the config's own.
    let err = |text: &str| {
        Config::from_toml_str(&format!("[gateway]\n{text}\n{route}"))
            .unwrap()
            .with_source("fallback.toml")
            .gateway::<ServerSettings>()
            .unwrap_err()
    };
    let e = err("lisen = \"127.0.0.1:9\"");
    assert_eq!(e.key(), "gateway.lisen");
    assert_eq!(e.file(), Some(Path::new("fallback.toml")));
    assert!(
        e.to_string()
            .starts_with("fallback.toml: gateway.lisen: unknown field `lisen`, expected `listen` or `limits`"),
        "{e}"
    );
    let e = err("listen = \"localhost\"");
    assert_eq!(
        e.to_string(),
        "fallback.toml: gateway.listen: invalid socket address syntax"
    );
    let e = err("[[gateway.limits]]\nrequests = -1");
    assert_eq!(e.key(), "gateway.limits[0].requests", "{e}");
    let e = err("[[gateway.limits]]\nrate = 1");
    assert_eq!(e.key(), "gateway.limits[0].rate", "{e}");

    // The same from JSON; a `null` (which TOML cannot write back) is refused
    // when the file is read.
    let json = |gateway: &str| {
        Config::from_json_str(&format!(
            r#"{{"gateway": {gateway}, "chains": {{"default": {{"routes": [{{"model": "a/b"}}]}}}}}}"#
        ))
    };
    let e = json(r#"{"listen": "nowhere"}"#)
        .unwrap()
        .gateway::<ServerSettings>()
        .unwrap_err();
    assert_eq!(e.key(), "gateway.listen", "{e}");
    let e = json(r#"{"listen": null}"#).unwrap_err();
    assert_eq!(e.key(), "gateway.listen", "{e}");
    assert!(e.message().contains("null"), "{e}");
    let e = json(r#"{"limits": [{"requests": 1}, null]}"#).unwrap_err();
    assert_eq!(e.key(), "gateway.limits[1]", "{e}");
    let e = json("[1]").unwrap_err();
    assert_eq!(e.key(), "gateway", "{e}");
    // `"gateway": null` is no table, as before.
    assert_eq!(json("null").unwrap().gateway::<ServerSettings>().unwrap(), None);
}

#[test]
fn files_are_read_as_toml_or_json_and_named_in_errors() {
    let json = TempFile::new(
        "fallback.json",
        r#"{"chains": {"default": {"routes": [{"model": "a/b", "timeout": "3"}]}}}"#,
    );
    let err = Config::from_path(&json.0).unwrap_err();
    assert_eq!(err.key(), "chains.default.routes[0].timeout");
    assert_eq!(err.position().map(|p| p.0), Some(1));
    assert!(
        err.to_string().starts_with(&format!("{}:1:", json.0.display())),
        "{err}"
    );

    let ok = TempFile::new(
        "ok.json",
        r#"{"chains": {"default": {"routes": [{"model": "a/b", "timeout": "3s"}]}}}"#,
    );
    let config = Config::from_path(&ok.0).unwrap();
    assert_eq!(config.source(), Some(ok.0.as_path()));
    assert_eq!(config.chains["default"].routes[0].timeout, Some(Duration::from_secs(3)));

    let missing = std::env::temp_dir().join("llm-fallback-surely-missing.toml");
    let err = Config::from_path(&missing).unwrap_err();
    assert_eq!(err.file(), Some(missing.as_path()));
    assert!(err.message().starts_with("cannot read the config file"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

// ===== the example file, the round trip and the README =====

/// The example file with its key variable set, as a deployment would have it.
fn example() -> Config {
    if std::env::var("OPENAI_API_KEY").is_err() {
        std::env::set_var("OPENAI_API_KEY", "sk-test-not-a-real-key");
    }
    Config::from_path(EXAMPLE).expect("examples/fallback.toml parses")
}

#[test]
fn the_example_file_builds_a_layer_with_every_setting() {
    let config = example();
    let layer = FallbackBuilder::from_config(&config)
        .expect("examples/fallback.toml builds")
        .layer();
    let chains = layer.chains();
    assert_eq!(chains.names().collect::<Vec<_>>(), ["default", "budget", "lenient"]);

    let default = chains.default_chain();
    assert_eq!(default.deadline, Some(Duration::from_secs(60)));
    assert_eq!(default.price_guard, Some(PriceGuard::NotAbovePrimary));
    assert_eq!(default.hedge_after, Some(Duration::from_secs(20)));
    let [primary, secondary, direct] = default.routes() else {
        panic!("three routes: {:?}", default.routes())
    };
    assert_eq!(&primary.model, "anthropic/claude-3.5-sonnet");
    assert_eq!(primary.label.as_deref(), Some("primary"));
    assert_eq!(primary.timeout, Some(Duration::from_secs(30)));
    assert_eq!(primary.first_token_timeout, Some(Duration::from_secs(10)));
    assert_eq!(primary.idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(primary.hedge_after, Some(Duration::from_secs(8)));
    assert_eq!(
        primary.capabilities,
        Some(Capabilities::TOOLS | Capabilities::VISION | Capabilities::STRUCTURED_OUTPUT)
    );
    assert_eq!(primary.context_window, Some(200_000));
    assert_eq!(primary.effective_price(), Some(Price::per_million(3.0, 15.0)));
    let prefs = primary.provider.as_ref().expect("provider prefs");
    assert_eq!(
        prefs.order.as_deref(),
        Some(&["Anthropic".to_owned(), "Amazon Bedrock".to_owned()][..])
    );
    assert_eq!(prefs.allow_fallbacks, Some(false));
    assert_eq!(
        secondary.native_fallbacks,
        ["openai/gpt-4o-2024-11-20", "openai/gpt-4o-2024-08-06"]
    );
    let endpoint = direct.endpoint.as_ref().expect("endpoint");
    assert_eq!(endpoint.base_url(), "https://api.openai.com/v1");
    assert!(!format!("{endpoint:?}").contains("sk-"), "keys never show");

    let lenient = chains.get("lenient").unwrap();
    assert_eq!(
        lenient.price_guard,
        Some(PriceGuard::Max(Price::per_million(3.0, 15.0)))
    );
    assert_eq!(
        chains.get("budget").unwrap().routes()[0].effective_price(),
        Some(Price::FREE)
    );

    // `[gateway]` is kept as read, for the gateway (tests/gateway.rs reads it).
    let gateway: toml::Table = config.gateway().unwrap().expect("the example has [gateway]");
    assert_eq!(gateway["listen"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(gateway["metrics"].as_bool(), Some(true));
    assert_eq!(config.max_body_bytes, Some(32 << 20));
}

#[test]
fn a_full_config_round_trips_through_toml_and_json() {
    let config = example();
    let toml_text = config.to_toml_string();
    assert_eq!(Config::from_toml_str(&toml_text).unwrap(), config, "{toml_text}");
    let json_text = serde_json::to_string_pretty(&config).unwrap();
    assert_eq!(Config::from_json_str(&json_text).unwrap(), config, "{json_text}");
    // Durations and sizes are written the way people write them.
    assert!(toml_text.contains("max_body_bytes = \"32MiB\""), "{toml_text}");
    assert!(toml_text.contains("max_cooldown = \"5m\""), "{toml_text}");
    assert!(json_text.contains("\"first_token_timeout\": \"10s\""), "{json_text}");
}

/// The keys a config struct accepts, read from serde's own "unknown field"
/// error, so the list comes from the types.
fn accepted_keys(text_with_zzz: &str) -> Vec<String> {
    let err = Config::from_toml_str(text_with_zzz).unwrap_err();
    // serde says "expected `a`", "expected `a` or `b`" or "expected one of `a`, `b`, `c`".
    let list = err
        .message()
        .split_once("unknown field `zzz`, expected ")
        .unwrap_or_else(|| panic!("not an unknown-field error: {err}"))
        .1;
    let list = list.strip_prefix("one of ").unwrap_or(list);
    list.split(", ")
        .flat_map(|part| part.split(" or "))
        .map(|k| k.trim_matches('`').to_owned())
        .collect()
}

/// Every leaf key path the config types accept, in the README's notation.
fn keys_from_types() -> BTreeSet<String> {
    let route = "[[chains.default.routes]]\nmodel = \"a/b\"\n";
    let probes: [(&str, String); 14] = [
        ("", format!("zzz = 1\n{route}")),
        ("policy.", format!("[policy]\nzzz = 1\n{route}")),
        ("health.", format!("[health]\nzzz = 1\n{route}")),
        ("hedging.", format!("[hedging]\nzzz = 1\n{route}")),
        ("drills.", format!("[drills]\nzzz = 1\n{route}")),
        ("chains.<name>.", format!("[chains.default]\nzzz = 1\n{route}")),
        ("chains.<name>.routes[].", format!("{route}zzz = 1\n")),
        (
            "chains.<name>.routes[].endpoint.",
            format!("{route}endpoint = {{ base_url = \"http://x\", zzz = 1 }}\n"),
        ),
        (
            "chains.<name>.routes[].deployments[].",
            format!("{route}deployments = [{{ name = \"d\", zzz = 1 }}]\n"),
        ),
        (
            "chains.<name>.routes[].deployments[].endpoint.",
            format!("{route}deployments = [{{ name = \"d\", endpoint = {{ base_url = \"http://x\", zzz = 1 }} }}]\n"),
        ),
        ("models.<name>.", format!("[models.m]\nzzz = 1\n{route}")),
        ("caller_chains.", format!("[caller_chains]\nzzz = 1\n{route}")),
        ("affinity.", format!("[affinity]\nzzz = 1\n{route}")),
        (
            "chains.<name>.routes[].price.",
            format!("{route}price = {{ prompt = 1.0, completion = 1.0, zzz = 1 }}\n"),
        ),
    ];
    // `gateway` is a table the library keeps for the gateway (its keys are
    // the example's, checked by tests/gateway.rs).
    let containers: BTreeSet<String> = probes
        .iter()
        .map(|(prefix, _)| prefix.trim_end_matches('.').replace("[]", "").replace(".<name>", ""))
        .chain(["gateway".to_owned()])
        .collect();
    let mut keys = BTreeSet::new();
    for (prefix, text) in &probes {
        for key in accepted_keys(text) {
            let full = format!("{prefix}{key}");
            let as_container = full.replace("[]", "").replace(".<name>", "");
            if !containers.contains(&as_container) {
                keys.insert(full);
            }
        }
    }
    keys
}

/// The first column of the README's reference table.
fn keys_from_readme() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(README).unwrap();
    let table = readme
        .split("<!-- config-reference:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- config-reference:end -->").next())
        .expect("README has the config reference markers");
    table
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|line| line.split_once('`').map(|(key, _)| key.to_owned()))
        // The gateway's keys: checked against its type in tests/gateway.rs.
        .filter(|key| !key.starts_with("gateway."))
        .collect()
}

/// Every leaf key path the example file uses (`provider` and `price_guard`
/// values, and a model's own `routes`, are leaves, as in the README).
fn keys_from_example() -> BTreeSet<String> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
        // A model's own routes have the keys of a chain's (checked there).
        let leaf = prefix.ends_with(".provider")
            || prefix.ends_with(".price_guard")
            || prefix.ends_with(".set")
            || (prefix.starts_with("models.") && prefix.ends_with(".routes"));
        match value {
            toml::Value::Table(t) if !leaf => {
                for (k, v) in t {
                    let key = match prefix {
                        "" => k.clone(),
                        "chains" | "models" => format!("{prefix}.<name>"),
                        _ => format!("{prefix}.{k}"),
                    };
                    walk(&key, v, out);
                }
            }
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) && !items.is_empty() && !leaf => {
                for item in items {
                    walk(&format!("{prefix}[]"), item, out);
                }
            }
            // The gateway's keys: checked against its type in tests/gateway.rs.
            _ if prefix.starts_with("gateway.") => {}
            _ => {
                out.insert(prefix.to_owned());
            }
        }
    }
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    let mut out = BTreeSet::new();
    walk("", &value, &mut out);
    out
}

#[test]
fn the_readme_reference_lists_exactly_the_keys_of_the_types() {
    let types = keys_from_types();
    let readme = keys_from_readme();
    assert!(types.len() > 30, "the probes found the keys: {types:?}");
    let undocumented: Vec<_> = types.difference(&readme).collect();
    let unknown: Vec<_> = readme.difference(&types).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "README config reference is out of date.\n  accepted but not documented: {undocumented:?}\n  documented but not accepted: {unknown:?}"
    );
}

#[test]
fn the_example_file_uses_every_key() {
    let types = keys_from_types();
    let example = keys_from_example();
    let unused: Vec<_> = types.difference(&example).collect();
    assert!(
        unused.is_empty(),
        "examples/fallback.toml should show every key; missing: {unused:?}"
    );
    assert!(
        example.is_subset(&types),
        "{:?}",
        example.difference(&types).collect::<Vec<_>>()
    );
}

// ===== the layer built from a config =====

#[tokio::test]
async fn policy_knobs_change_what_falls_back() {
    let config = Config::from_toml_str(
        r#"
        [policy]
        fallback_on_status = [409]
        stop_on_status = [429]
        stop_on_error_type = ["context_length_exceeded"]

        [[chains.default.routes]]
        model = "a/primary"

        [[chains.default.routes]]
        model = "b/secondary"
        "#,
    )
    .unwrap();
    let upstream = MockUpstream::new()
        .model(
            "a/primary",
            Script::sequence([
                Reply::status(409),
                Reply::status(429),
                Reply::error(400, "context_length_exceeded", "maximum context length is 8192 tokens"),
                Reply::status(503),
            ]),
        )
        .model("b/secondary", Reply::ok());
    let svc = FallbackBuilder::from_config(&config)
        .unwrap()
        .layer()
        .layer(upstream.clone());
    let send = || {
        svc.clone()
            .oneshot(post("http://mock/api/v1/chat/completions", chat("a/primary")))
    };

    // 409 falls back (the default would stop).
    let (parts, _) = body_json(send().await.unwrap()).await;
    assert_eq!(report(&parts).served_model(), "b/secondary");
    // 429 stops (the default would fall back).
    let (parts, _) = body_json(send().await.unwrap()).await;
    assert_eq!(parts.status, 429);
    assert_eq!(report(&parts).attempts().len(), 1);
    // A listed error type stops, before its status is looked at.
    let (parts, _) = body_json(send().await.unwrap()).await;
    assert_eq!(parts.status, 400);
    // Anything unlisted keeps the default: 503 falls back.
    let (parts, _) = body_json(send().await.unwrap()).await;
    assert_eq!(report(&parts).served_model(), "b/secondary");
    assert_eq!(upstream.request_count("b/secondary"), 2);
}

#[tokio::test]
async fn health_settings_turn_cooldowns_on() {
    let config = Config::from_toml_str(
        r#"
        [health]
        failures = 1
        cooldown = "1m"

        [[chains.default.routes]]
        model = "a/primary"

        [[chains.default.routes]]
        model = "b/secondary"
        "#,
    )
    .unwrap();
    let upstream = MockUpstream::new()
        .model("a/primary", Reply::status(503))
        .model("b/secondary", Reply::ok());
    let svc = FallbackBuilder::from_config(&config)
        .unwrap()
        .layer()
        .layer(upstream.clone());
    for _ in 0..3 {
        let resp = svc
            .clone()
            .oneshot(post("http://mock/api/v1/chat/completions", chat("a/primary")))
            .await
            .unwrap();
        let (parts, _) = body_json(resp).await;
        assert_eq!(report(&parts).served_model(), "b/secondary");
    }
    assert_eq!(
        upstream.request_count("a/primary"),
        1,
        "after one failure the primary cools down for a minute"
    );
}
