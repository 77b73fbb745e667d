//! Routing by what the caller asks (issue 17, points 1 and 2): chains keyed
//! by the requested model and its aliases, what a model that names no chain
//! gets, how explicit and capability picks combine with them, and the
//! caller's own `models` list (on and off, capped, allow-listed, never sent
//! upstream); `[models.*]`, `unknown_model` and `[caller_chains]` in config.

mod common;

use common::*;
use http::StatusCode;
use llm_fallback::native::Endpoint;
use llm_fallback::{CallerChains, Chain, ChainName, ChainSet, FallbackBuilder, Outcome, Route, UnknownModel};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use serde_json::{json, Value};
use tower::{Layer, ServiceExt};

fn upstream() -> MockUpstream {
    MockUpstream::new()
        .model("default/m", Reply::ok())
        .model("strong/a", Reply::status(503))
        .model("strong/b", Reply::ok())
        .model("mini/m", Reply::ok())
        .model("mini/backup", Reply::ok())
        .model("tools/m", Reply::ok())
        .model("vendor/other", Reply::ok())
        .model("caller/a", Reply::status(503))
        .model("caller/b", Reply::ok())
        .model("caller/c", Reply::ok())
}

/// A default chain, a named `strong` chain, the alias `smart` for it,
/// `cheap` for the default, a model id with a chain of its own, and a
/// capability chain.
fn keyed() -> ChainSet {
    ChainSet::new(Chain::new([Route::new("default/m")]))
        .chain("strong", Chain::new([Route::new("strong/a"), Route::new("strong/b")]))
        .chain(ChainSet::TOOL_CALLING, Chain::new([Route::new("tools/m")]))
        .model("smart", "strong")
        .model("cheap", ChainSet::DEFAULT)
        .model(
            "mini/m",
            Chain::new([Route::new("mini/m").label("mini"), Route::new("mini/backup")]),
        )
}

fn body(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

async fn send(
    builder: FallbackBuilder,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> (http::response::Parts, Value) {
    let resp = builder.layer().layer(http_client()).oneshot(req).await.unwrap();
    body_json(resp).await
}

fn sent_models(server: &MockServer) -> Vec<String> {
    server
        .upstream()
        .requests()
        .iter()
        .filter_map(|r| r.model.clone())
        .collect()
}

// ===== chains keyed by model =====

#[tokio::test]
async fn an_alias_picks_its_chain_and_each_attempt_sends_the_routes_model() {
    let server = MockServer::start(upstream()).await.unwrap();
    let (parts, v) = send(
        FallbackBuilder::with_chains(keyed()),
        post(&server.chat_url(), body("smart")),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK, "{v}");
    assert_eq!(v["model"], "strong/b");
    let report = report(&parts);
    assert_eq!(report.chain(), Some("strong"));
    assert_eq!(report.requested_model(), Some("smart"));
    assert_eq!(report.attempts().len(), 2);
    assert_eq!(parts.headers["x-fallback-model"], "strong/b");
    assert_eq!(sent_models(&server), ["strong/a", "strong/b"]);
}

#[tokio::test]
async fn an_alias_of_the_default_chain_is_reported_as_default() {
    let server = MockServer::start(upstream()).await.unwrap();
    let (parts, v) = send(
        FallbackBuilder::with_chains(keyed()),
        post(&server.chat_url(), body("cheap")),
    )
    .await;
    assert_eq!(v["model"], "default/m");
    assert_eq!(report(&parts).chain(), Some("default"));
}

#[tokio::test]
async fn a_known_model_with_its_own_chain_is_reported_under_its_name() {
    let server = MockServer::start(upstream()).await.unwrap();
    let (parts, v) = send(
        FallbackBuilder::with_chains(keyed()),
        post(&server.chat_url(), body("mini/m")),
    )
    .await;
    assert_eq!(v["model"], "mini/m");
    let report = report(&parts);
    assert_eq!(report.chain(), Some("mini/m"));
    assert_eq!(report.served_label(), Some("mini"));
}

#[tokio::test]
async fn an_unknown_model_passes_through_untouched_by_default_once_models_are_keyed() {
    let server = MockServer::start(upstream()).await.unwrap();
    // Escapes, an OpenRouter `models` and `provider`: all go as they are.
    let text = r#"{"model":"vendor\/other","models":["x/y"],"provider":{"order":["A"]},"messages":[{"role":"user","content":"hi"}]}"#;
    let (parts, v) = send(FallbackBuilder::with_chains(keyed()), post(&server.chat_url(), text)).await;
    assert_eq!(parts.status, StatusCode::OK, "{v}");
    let report = report(&parts);
    assert_eq!(report.chain(), Some(ChainSet::PASS_THROUGH));
    assert_eq!(report.attempts().len(), 1);
    assert_eq!(report.attempts()[0].model(), "vendor/other");
    assert_eq!(report.served_model(), "vendor/other");
    let sent = server.upstream().requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0].body[..], text.as_bytes(), "the caller's body, byte for byte");
}

#[tokio::test]
async fn a_passed_through_request_is_not_drilled() {
    // A drill skips a chain's primary; a request passed through has nothing
    // after it, so it is sent anyway.
    let server = MockServer::start(upstream()).await.unwrap();
    let builder = FallbackBuilder::with_chains(keyed()).drills(llm_fallback::health::Drills::fraction(1.0));
    let (parts, v) = send(builder.clone(), post(&server.chat_url(), body("vendor/other"))).await;
    assert_eq!(parts.status, StatusCode::OK, "{v}");
    assert!(!report(&parts).is_drill());
    let (parts, v) = send(builder, post(&server.chat_url(), body("smart"))).await;
    assert_eq!(v["model"], "strong/b");
    assert!(report(&parts).is_drill(), "a model's chain is drilled as any chain");
}

#[tokio::test]
async fn a_passed_through_model_is_judged_like_any_attempt() {
    // The mock refuses a model it has no script for: 400 naming the model,
    // which falls back; nothing is left, so the caller gets the exhaustion.
    let server = MockServer::start(upstream()).await.unwrap();
    let (parts, v) = send(
        FallbackBuilder::with_chains(keyed()),
        post(&server.chat_url(), body("nobody/knows")),
    )
    .await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY, "{v}");
    let report = report(&parts);
    assert_eq!(report.attempts().len(), 1);
    assert_eq!(report.attempts()[0].outcome(), Outcome::HttpError);
    assert_eq!(sent_models(&server), ["nobody/knows"]);
}

#[tokio::test]
async fn an_unknown_model_can_go_to_the_default_chain_where_needs_still_pick() {
    let server = MockServer::start(upstream()).await.unwrap();
    let chains = keyed().unknown_model(UnknownModel::DefaultChain);
    let (parts, v) = send(
        FallbackBuilder::with_chains(chains.clone()),
        post(&server.chat_url(), body("vendor/other")),
    )
    .await;
    assert_eq!(v["model"], "default/m");
    assert_eq!(report(&parts).chain(), Some("default"));

    let tools = json!({"model": "vendor/other", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]});
    let (parts, v) = send(
        FallbackBuilder::with_chains(chains),
        post(&server.chat_url(), tools.to_string()),
    )
    .await;
    assert_eq!(v["model"], "tools/m");
    assert_eq!(report(&parts).chain(), Some(ChainSet::TOOL_CALLING));
}

#[tokio::test]
async fn an_unknown_model_can_be_refused_in_the_dialects_error_json() {
    let server = MockServer::start(upstream()).await.unwrap();
    let chains = keyed().unknown_model(UnknownModel::Reject);
    let (parts, v) = send(
        FallbackBuilder::with_chains(chains.clone()),
        post(&server.chat_url(), body("vendor/other")),
    )
    .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "model_not_found", "{v}");
    assert_eq!(v["error"]["param"], "model", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"vendor/other\""), "{message}");
    assert!(message.ends_with("served models: cheap, mini/m, smart"), "{message}");

    // Anthropic's shape on the Messages API.
    let messages = json!({"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let (parts, v) = send(
        FallbackBuilder::with_chains(chains),
        post(
            &server.url_for(llm_fallback_mock::Dialect::Messages),
            messages.to_string(),
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(v["type"], "error", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("served models"), "{v}");
    assert!(
        server.upstream().requests().is_empty(),
        "a refused request is never sent"
    );
}

#[tokio::test]
async fn a_set_without_model_keys_sends_every_model_to_the_default_chain() {
    let server = MockServer::start(upstream()).await.unwrap();
    let chains =
        ChainSet::new(Chain::new([Route::new("default/m")])).chain("strong", Chain::new([Route::new("strong/b")]));
    assert_eq!(chains.unknown_model_choice(), UnknownModel::DefaultChain);
    for model in ["vendor/other", "strong", "smart"] {
        let (parts, v) = send(
            FallbackBuilder::with_chains(chains.clone()),
            post(&server.chat_url(), body(model)),
        )
        .await;
        assert_eq!(v["model"], "default/m", "{model}");
        assert_eq!(report(&parts).chain(), Some("default"));
    }
    assert_eq!(keyed().unknown_model_choice(), UnknownModel::PassThrough);
}

#[tokio::test]
async fn a_models_chain_is_not_swapped_for_a_capability_chain() {
    let server = MockServer::start(upstream()).await.unwrap();
    let tools = json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]});
    let (parts, v) = send(
        FallbackBuilder::with_chains(keyed()),
        post(&server.chat_url(), tools.to_string()),
    )
    .await;
    assert_eq!(v["model"], "default/m");
    assert_eq!(report(&parts).chain(), Some("default"));
}

#[tokio::test]
async fn explicit_picks_win_over_the_model() {
    let server = MockServer::start(upstream()).await.unwrap();
    // The allowed header.
    let mut req = post(&server.chat_url(), body("smart"));
    req.headers_mut().insert("x-fallback-chain", "default".parse().unwrap());
    let (parts, v) = send(FallbackBuilder::with_chains(keyed()).allow_chain_header(true), req).await;
    assert_eq!(v["model"], "default/m");
    assert_eq!(report(&parts).chain(), Some("default"));

    // A header the layer does not allow is ignored: the model picks.
    let mut req = post(&server.chat_url(), body("cheap"));
    req.headers_mut().insert("x-fallback-chain", "strong".parse().unwrap());
    let (parts, _) = send(FallbackBuilder::with_chains(keyed()), req).await;
    assert_eq!(report(&parts).chain(), Some("default"));

    // The extension, over an unknown model under Reject too.
    let mut req = post(&server.chat_url(), body("vendor/other"));
    req.extensions_mut().insert(ChainName("strong".into()));
    let chains = keyed().unknown_model(UnknownModel::Reject);
    let (parts, v) = send(FallbackBuilder::with_chains(chains), req).await;
    assert_eq!(v["model"], "strong/b");
    assert_eq!(report(&parts).chain(), Some("strong"));
}

#[test]
#[should_panic(expected = "no chain is called \"strnog\"")]
fn a_model_naming_no_chain_is_a_build_time_panic() {
    let _ = keyed().model("smart", "strnog");
}

#[test]
fn adding_a_model_again_replaces_its_chain() {
    let chains = keyed().model("smart", ChainSet::DEFAULT);
    assert_eq!(chains.models().collect::<Vec<_>>(), ["cheap", "mini/m", "smart"]);
}

// ===== the caller's own chain =====

fn caller_body(model: &str, models: Value) -> String {
    json!({"model": model, "models": models, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

fn on(caller: CallerChains) -> FallbackBuilder {
    FallbackBuilder::with_chains(keyed()).caller_chains(caller)
}

#[tokio::test]
async fn caller_chains_are_off_by_default() {
    let server = MockServer::start(upstream()).await.unwrap();
    let (parts, v) = send(
        FallbackBuilder::with_chains(keyed()),
        post(
            &server.chat_url(),
            caller_body("cheap", json!(["caller/a", "caller/b"])),
        ),
    )
    .await;
    assert_eq!(v["model"], "default/m");
    assert_eq!(report(&parts).chain(), Some("default"));
    // Off, `models` is the caller's OpenRouter key like any other.
    let sent: Value = serde_json::from_slice(&server.upstream().requests()[0].body).unwrap();
    assert_eq!(sent["models"], json!(["caller/a", "caller/b"]));
}

#[tokio::test]
async fn the_callers_models_are_the_chain_and_never_reach_the_upstream() {
    let server = MockServer::start(upstream()).await.unwrap();
    // `model` is in the list: the list's order.
    let (parts, v) = send(
        on(CallerChains::new()),
        post(
            &server.chat_url(),
            caller_body("caller/b", json!(["caller/a", "caller/b", "caller/c"])),
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK, "{v}");
    assert_eq!(v["model"], "caller/b");
    let report = report(&parts);
    assert_eq!(report.chain(), Some(ChainSet::CALLER));
    assert_eq!(
        report.attempts().iter().map(|a| a.model()).collect::<Vec<_>>(),
        ["caller/a", "caller/b"]
    );
    for sent in server.upstream().requests() {
        let sent: Value = serde_json::from_slice(&sent.body).unwrap();
        assert!(sent.get("models").is_none(), "{sent}");
        assert_eq!(sent["messages"][0]["content"], "hi");
    }
}

#[tokio::test]
async fn a_model_not_in_the_list_goes_first() {
    let server = MockServer::start(upstream()).await.unwrap();
    let (parts, _) = send(
        on(CallerChains::new()),
        post(
            &server.chat_url(),
            caller_body("caller/a", json!(["caller/c", "caller/c"])),
        ),
    )
    .await;
    let report = report(&parts);
    assert_eq!(
        report.attempts().iter().map(|a| a.model()).collect::<Vec<_>>(),
        ["caller/a", "caller/c"],
        "the model first, each entry once"
    );
    assert_eq!(report.served_model(), "caller/c");
}

#[tokio::test]
async fn a_list_over_the_cap_is_refused() {
    let server = MockServer::start(upstream()).await.unwrap();
    let four = json!(["caller/a", "caller/b", "caller/c", "default/m"]);
    let (parts, v) = send(
        on(CallerChains::new()),
        post(&server.chat_url(), caller_body("x", four.clone())),
    )
    .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "too_many_models", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("at most 3"), "{v}");
    // A larger cap takes it.
    let (parts, v) = send(
        on(CallerChains::new().max_models(4)),
        post(&server.chat_url(), caller_body("caller/b", four)),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK, "{v}");
    assert_eq!(sent_models(&server), ["caller/a", "caller/b"]);
}

#[tokio::test]
async fn an_entry_off_the_allow_list_is_refused_by_name() {
    let server = MockServer::start(upstream()).await.unwrap();
    let caller = CallerChains::new().allow(["caller/*", "default/m"]);
    let (parts, v) = send(
        on(caller.clone()),
        post(
            &server.chat_url(),
            caller_body("caller/a", json!(["default/m", "pricey/model"])),
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "model_not_allowed", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("\"pricey/model\""),
        "{v}"
    );
    // The primary is checked too.
    let (_, v) = send(
        on(caller.clone()),
        post(&server.chat_url(), caller_body("pricey/model", json!(["caller/b"]))),
    )
    .await;
    assert_eq!(v["error"]["code"], "model_not_allowed", "{v}");
    assert!(server.upstream().requests().is_empty(), "a refused list is never sent");
    // Entries matching the list (a prefix pattern, an exact id) go.
    let (parts, v) = send(
        on(caller),
        post(
            &server.chat_url(),
            caller_body("caller/a", json!(["caller/b", "default/m"])),
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK, "{v}");
    assert_eq!(v["model"], "caller/b");
}

#[tokio::test]
async fn a_malformed_models_is_refused_and_an_empty_one_ignored() {
    let server = MockServer::start(upstream()).await.unwrap();
    for bad in [json!([1, 2]), json!("caller/a"), json!([""])] {
        let (parts, v) = send(
            on(CallerChains::new()),
            post(&server.chat_url(), caller_body("caller/a", bad.clone())),
        )
        .await;
        assert_eq!(parts.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(v["error"]["code"], "invalid_models", "{v}");
    }
    let (parts, _) = send(
        on(CallerChains::new()),
        post(&server.chat_url(), caller_body("smart", json!([]))),
    )
    .await;
    assert_eq!(report(&parts).chain(), Some("strong"), "no list: the model picks");
}

#[tokio::test]
async fn an_explicit_pick_wins_over_the_callers_list() {
    let server = MockServer::start(upstream()).await.unwrap();
    let mut req = post(&server.chat_url(), caller_body("caller/a", json!(["caller/b"])));
    req.extensions_mut().insert(ChainName("strong".into()));
    let (parts, _) = send(on(CallerChains::new()), req).await;
    assert_eq!(report(&parts).chain(), Some("strong"));
}

#[tokio::test]
async fn caller_routes_take_the_default_first_routes_endpoint_but_not_its_model_settings() {
    let gateway = MockServer::start(MockUpstream::new()).await.unwrap();
    let direct = MockServer::start(upstream()).await.unwrap();
    let endpoint = Endpoint::new(format!("{}/v1", direct.url())).unwrap();
    let chains = ChainSet::new(Chain::new([Route::new("default/m")
        .label("primary")
        .endpoint(endpoint)
        .context_window(10)]));
    let builder = FallbackBuilder::with_chains(chains).caller_chains(CallerChains::new());
    let (parts, v) = send(
        builder,
        post(&gateway.chat_url(), caller_body("caller/a", json!(["caller/b"]))),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK, "{v}");
    let report = report(&parts);
    assert!(report.attempts().iter().all(|a| a.label().is_none()), "{report:?}");
    assert!(gateway.upstream().requests().is_empty());
    assert_eq!(sent_models(&direct), ["caller/a", "caller/b"]);
    for sent in direct.upstream().requests() {
        let sent: Value = serde_json::from_slice(&sent.body).unwrap();
        assert!(sent.get("models").is_none(), "{sent}");
    }
}

#[tokio::test]
async fn a_template_gives_the_caller_routes_their_settings() {
    let server = MockServer::start(upstream()).await.unwrap();
    let caller = CallerChains::new().template(Route::new("ignored").label("caller-route").native_fallbacks(["z/z"]));
    let (parts, _) = send(
        on(caller),
        post(&server.chat_url(), caller_body("caller/a", json!(["caller/b"]))),
    )
    .await;
    let report = report(&parts);
    assert_eq!(report.served_label(), Some("caller-route"));
    assert_eq!(sent_models(&server), ["caller/a", "caller/b"]);
    for sent in server.upstream().requests() {
        let sent: Value = serde_json::from_slice(&sent.body).unwrap();
        assert!(sent.get("models").is_none(), "no native fallbacks either: {sent}");
    }
}

// ===== config =====

#[cfg(feature = "config")]
mod config {
    use super::*;
    use llm_fallback::config::Config;

    const CHAINS: &str = r#"
        [[chains.default.routes]]
        model = "default/m"

        [[chains.strong.routes]]
        model = "strong/a"

        [[chains.strong.routes]]
        model = "strong/b"
    "#;

    #[tokio::test]
    async fn models_by_name_and_inline_with_the_unknown_choice() {
        let text = format!(
            r#"
            unknown_model = "reject"

            [models.smart]
            chain = "strong"

            [models.cheap]
            chain = "default"

            [models."mini/m"]
            deadline = "30s"

            [[models."mini/m".routes]]
            model = "mini/m"
            label = "mini"

            [[models."mini/m".routes]]
            model = "mini/backup"

            [caller_chains]
            max_models = 2
            allow = ["caller/*"]
            {CHAINS}"#
        );
        let config = Config::from_toml_str(&text).unwrap();
        // It writes back as it read.
        assert_eq!(Config::from_toml_str(&config.to_toml_string()).unwrap(), config);
        let server = MockServer::start(upstream()).await.unwrap();
        for (model, chain, served) in [
            ("smart", "strong", "strong/b"),
            ("cheap", "default", "default/m"),
            ("mini/m", "mini/m", "mini/m"),
        ] {
            let builder = FallbackBuilder::from_config(&config).unwrap();
            let resp = builder
                .layer()
                .layer(http_client())
                .oneshot(post(&server.chat_url(), body(model)))
                .await
                .unwrap();
            let (parts, v) = body_json(resp).await;
            assert_eq!(v["model"], served, "{model}");
            assert_eq!(report(&parts).chain(), Some(chain));
        }
        let builder = FallbackBuilder::from_config(&config).unwrap();
        let resp = builder
            .layer()
            .layer(http_client())
            .oneshot(post(&server.chat_url(), body("other")))
            .await
            .unwrap();
        let (parts, v) = body_json(resp).await;
        assert_eq!(parts.status, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["code"], "model_not_found");
        // `[caller_chains]` is on, with its cap and list.
        let builder = FallbackBuilder::from_config(&config).unwrap();
        let resp = builder
            .layer()
            .layer(http_client())
            .oneshot(post(
                &server.chat_url(),
                caller_body("caller/a", json!(["caller/b", "caller/c", "caller/d"])),
            ))
            .await
            .unwrap();
        let (_, v) = body_json(resp).await;
        assert_eq!(v["error"]["code"], "too_many_models", "{v}");
        let builder = FallbackBuilder::from_config(&config).unwrap();
        let resp = builder
            .layer()
            .layer(http_client())
            .oneshot(post(
                &server.chat_url(),
                caller_body("caller/a", json!(["vendor/other"])),
            ))
            .await
            .unwrap();
        let (_, v) = body_json(resp).await;
        assert_eq!(v["error"]["code"], "model_not_allowed", "{v}");
    }

    #[test]
    fn model_entries_with_mistakes_name_their_key() {
        let cases = [
            (
                "[models.smart]\nchain = \"strnog\"\n",
                "fallback.toml: models.smart.chain: no chain is called \"strnog\"; expected one of: default, strong",
            ),
            (
                "[models.smart]\n",
                "fallback.toml: models.smart: neither a chain nor routes; expected chain = \"NAME\" or [[models.NAME.routes]]",
            ),
            (
                "[models.smart]\nchain = \"strong\"\n[[models.smart.routes]]\nmodel = \"a/b\"\n",
                "fallback.toml: models.smart: both a chain and routes; expected chain = \"NAME\" or [[models.NAME.routes]], not both",
            ),
            (
                "[models.smart]\nchain = \"strong\"\ndeadline = \"10s\"\n",
                "fallback.toml: models.smart.deadline: set on the named chain; expected it in [chains.strong]",
            ),
            (
                "[[models.smart.routes]]\nmodel = \"\"\n",
                "fallback.toml: models.smart.routes[0].model: the model id is empty; expected one such as \"openai/gpt-4o\"",
            ),
            (
                "[caller_chains]\nmax_models = 0\n",
                "fallback.toml: caller_chains.max_models: 0; expected at least 1",
            ),
            (
                "[caller_chains]\nallow = [\" \"]\n",
                "fallback.toml: caller_chains.allow[0]: empty; expected a model id or a prefix ending in *, such as \"openai/*\"",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::from_toml_str(&format!("{text}{CHAINS}"))
                .unwrap_err()
                .in_file("fallback.toml");
            assert_eq!(err.to_string(), expected, "{text}");
        }
        // Unknown keys and values carry their key path and position.
        let err = Config::from_toml_str(&format!("[models.smart]\nchian = \"strong\"\n{CHAINS}"))
            .unwrap_err()
            .in_file("fallback.toml");
        assert_eq!(err.key(), "models.smart.chian");
        assert!(
            err.to_string()
                .starts_with("fallback.toml:2:1: models.smart.chian: unknown field `chian`"),
            "{err}"
        );
        let err = Config::from_toml_str(&format!("unknown_model = \"drop\"\n{CHAINS}")).unwrap_err();
        assert_eq!(err.key(), "unknown_model");
        assert!(err.message().contains("pass_through"), "{err}");
        let err = Config::from_toml_str(&format!(
            "[[models.x.routes]]\nmodel = \"a/b\"\ntimeout = \"3\"\n{CHAINS}"
        ))
        .unwrap_err();
        assert_eq!(err.key(), "models.x.routes[0].timeout");
    }
}

// ===== metric labels of models the callers name =====

/// A caller choosing a new model id with every request (passed through, or
/// in its own chain) must not grow the metrics recorder without end: the
/// first 64 distinct ids are labelled by name, later ones `other`, and the
/// configured chains' models always by name.
#[test]
fn models_a_caller_names_label_metrics_by_name_only_up_to_a_bound() {
    let snapshot = recorded(false, || async {
        let upstream = upstream();
        for i in 0..100 {
            upstream.set_script(format!("pass/{i}"), Reply::ok());
        }
        upstream.set_script("late/a", Reply::status(503));
        upstream.set_script("late/b", Reply::ok());
        let layer = on(CallerChains::new()).layer();
        let ask = |body: String| {
            let service = layer.clone().layer(upstream.clone());
            async move {
                let resp = service
                    .oneshot(post("http://127.0.0.1:1/v1/chat/completions", body))
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                report(&resp.into_parts().0).chain().map(str::to_owned)
            }
        };
        for i in 0..100 {
            assert_eq!(
                ask(body(&format!("pass/{i}"))).await.as_deref(),
                Some(ChainSet::PASS_THROUGH)
            );
        }
        // Seen before the bound: still by name.
        ask(body("pass/0")).await;
        // A caller's chain of new ids past the bound.
        let caller = ask(caller_body("late/a", json!(["late/a", "late/b"]))).await;
        assert_eq!(caller.as_deref(), Some(ChainSet::CALLER));
        // A configured chain's model.
        ask(body("mini/m")).await;
    });
    let attempts = counters_by(&snapshot, "llm_fallback_attempts_total", "model");
    let by_name = |prefix: &str| attempts.keys().filter(|m| m.starts_with(prefix)).count();
    assert_eq!(by_name("pass/"), 64, "{attempts:?}");
    assert_eq!(attempts.get("pass/0"), Some(&2));
    assert_eq!(attempts.get("pass/63"), Some(&1));
    assert_eq!(attempts.get("pass/64"), None);
    assert_eq!(by_name("late/"), 0, "{attempts:?}");
    // pass/64..=99 and the caller chain's two attempts.
    assert_eq!(attempts.get("other"), Some(&(36 + 2)));
    assert_eq!(attempts.get("mini/m"), Some(&1));
}
