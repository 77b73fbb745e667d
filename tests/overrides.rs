//! Per-route overrides: a route sets or removes top-level keys of its
//! attempts' bodies (`Route::set`, `Route::remove`, `set`/`remove` in a
//! config file), through the same zero-copy edits as the model. What the
//! upstream receives is checked byte for byte against serde_json's reading
//! of the caller's body with exactly those changes, for every dialect,
//! through the layer and the mock upstream.

mod common;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use llm_fallback::native::Endpoint;
use llm_fallback::{Chain, FallbackLayer, Overrides, Route, SkipReason};
use llm_fallback_mock::{Dialect as MockDialect, MockUpstream, Reply};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tower::{Layer, ServiceExt};

const A: &str = "primary/model";
const B: &str = "secondary/model";

/// The body the upstream received as JSON, refusing anything that is not.
fn received(upstream: &MockUpstream, model: &str) -> Vec<Map<String, Value>> {
    upstream
        .requests_for(model)
        .iter()
        .map(|r| {
            serde_json::from_slice(&r.body)
                .unwrap_or_else(|e| panic!("mangled body ({e}): {}", String::from_utf8_lossy(&r.body)))
        })
        .collect()
}

/// `body` with `model` and each `(key, Some(v))` set, each `(key, None)` removed.
fn expect(body: &Value, model: &str, changes: &[(&str, Option<Value>)]) -> Map<String, Value> {
    let mut m = body.as_object().unwrap().clone();
    m.insert("model".into(), model.into());
    for (k, v) in changes {
        match v {
            Some(v) => m.insert((*k).into(), v.clone()),
            None => m.remove(*k),
        };
    }
    m
}

async fn send(upstream: &MockUpstream, chain: Chain, path: &str, body: &Value) -> (StatusCode, Value) {
    let svc = FallbackLayer::new(chain).layer(upstream.clone());
    let resp = svc
        .oneshot(post(&format!("http://openrouter.test{path}"), body.to_string()))
        .await
        .unwrap();
    let (parts, json) = body_json(resp).await;
    (parts.status, json)
}

#[tokio::test]
async fn set_replaces_or_inserts_and_remove_cuts_or_does_nothing() {
    let upstream = MockUpstream::new().model(A, Reply::ok());
    let body = json!({
        "model": "caller/model",
        "max_tokens": 4000,
        "messages": [{"role": "user", "content": "hi \"there\" {\"max_tokens\": 1}"}],
        "logprobs": true,
        "top_logprobs": 3,
    });
    let route = Route::new(A)
        .set("max_tokens", 512) // replaced
        .set("service_tier", "flex") // inserted
        .set("reasoning", json!({"effort": "low", "summary": null})) // inserted, nested
        .remove("logprobs") // cut, in the middle
        .remove("top_logprobs") // cut, the last member
        .remove("seed"); // absent: nothing
    let (status, _) = send(&upstream, Chain::new([route]), "/api/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK);
    let got = received(&upstream, A);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0],
        expect(
            &body,
            A,
            &[
                ("max_tokens", Some(json!(512))),
                ("service_tier", Some(json!("flex"))),
                ("reasoning", Some(json!({"effort": "low", "summary": null}))),
                ("logprobs", None),
                ("top_logprobs", None),
            ]
        )
    );
    // The prompt's bytes went out as the caller sent them.
    let sent = &upstream.requests_for(A)[0].body;
    let prompt = serde_json::to_string(&body["messages"]).unwrap();
    assert!(sent.windows(prompt.len()).any(|w| w == prompt.as_bytes()));
}

#[tokio::test]
async fn each_route_sends_its_own_overrides_with_its_model() {
    let upstream = MockUpstream::new().model(A, Reply::status(503)).model(B, Reply::ok());
    let body = json!({"temperature": 1.0, "model": "caller/model", "messages": [], "user": "u-1"});
    let chain = Chain::new([
        Route::new(A).set("temperature", 0.2).remove("user"),
        Route::new(B).set("max_tokens", 256).set("temperature", 0),
    ]);
    let (status, _) = send(&upstream, chain, "/api/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        received(&upstream, A),
        [expect(&body, A, &[("temperature", Some(json!(0.2))), ("user", None)])]
    );
    assert_eq!(
        received(&upstream, B),
        [expect(
            &body,
            B,
            &[("max_tokens", Some(json!(256))), ("temperature", Some(json!(0)))]
        )]
    );
}

#[tokio::test]
async fn every_dialect_takes_overrides() {
    let cases: [(MockDialect, Value, &str, Value); 4] = [
        (
            MockDialect::Messages,
            json!({"model": "caller/model", "max_tokens": 4096, "system": "terse", "messages": [{"role": "user", "content": "hi"}]}),
            "max_tokens",
            json!(1024),
        ),
        (
            MockDialect::Responses,
            json!({"model": "caller/model", "input": "hi", "instructions": "be terse"}),
            "max_output_tokens",
            json!(300),
        ),
        (
            MockDialect::Embeddings,
            json!({"model": "caller/model", "input": ["a cat", "a kitten"]}),
            "dimensions",
            json!(256),
        ),
        (
            MockDialect::Completions,
            json!({"model": "caller/model", "prompt": "Say hi", "max_tokens": 16, "echo": true}),
            "max_tokens",
            json!(8),
        ),
    ];
    for (dialect, body, key, value) in cases {
        let upstream = MockUpstream::new().model(A, Reply::status(500)).model(B, Reply::ok());
        let chain = Chain::new([
            Route::new(A).set(key, value.clone()).remove("echo"),
            Route::new(B).set("metadata", json!({"team": "search"})),
        ]);
        let (status, answer) = send(&upstream, chain, dialect.path(), &body).await;
        assert_eq!(status, StatusCode::OK, "{dialect:?}: {answer}");
        assert_eq!(
            received(&upstream, A),
            [expect(&body, A, &[(key, Some(value.clone())), ("echo", None)])],
            "{dialect:?}"
        );
        assert_eq!(
            received(&upstream, B),
            [expect(&body, B, &[("metadata", Some(json!({"team": "search"})))])],
            "{dialect:?}"
        );
    }
}

#[tokio::test]
async fn escaped_and_repeated_keys_are_the_same_key() {
    let upstream = MockUpstream::new().model(A, Reply::ok());
    // serde_json reads both spellings as `max_tokens` (the last one wins);
    // every copy is edited, so no reader can see the caller's value.
    let text = r#"{ "max\u005ftokens" : 10 , "model":"caller/model", "messages":[], "max_tokens":20,
        "log\u0070robs": true, "logprobs": false }"#;
    let svc =
        FallbackLayer::new(Chain::new([Route::new(A).set("max_tokens", 5).remove("logprobs")])).layer(upstream.clone());
    let resp = svc
        .oneshot(post("http://openrouter.test/api/v1/chat/completions", text))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let sent = &upstream.requests_for(A)[0].body;
    let sent_text = std::str::from_utf8(sent).unwrap();
    assert!(!sent_text.contains(": 10") && !sent_text.contains(":20"), "{sent_text}");
    assert!(!sent_text.contains("robs"), "{sent_text}");
    assert_eq!(
        received(&upstream, A),
        [expect(&json!({"messages": []}), A, &[("max_tokens", Some(json!(5)))])]
    );
}

#[tokio::test]
async fn overrides_and_openrouter_stripping_share_one_walk() {
    // A route on another API strips OpenRouter's keys; removals of keys
    // beside them must not overlap theirs (one comma each).
    let upstream = MockUpstream::new().model(A, Reply::ok());
    let body = json!({
        "provider": {"order": ["x"]},
        "logprobs": true,
        "models": ["m/a", "m/b"],
        "model": "caller/model",
        "route": "fallback",
        "user": "u",
        "transforms": ["middle-out"],
        "messages": [],
        "seed": 1,
    });
    let endpoint = Endpoint::new("https://api.openai.com/v1").unwrap();
    let route = Route::new(A)
        .endpoint(endpoint)
        .remove("logprobs")
        .remove("user")
        .remove("seed")
        .set("store", false);
    let (status, _) = send(&upstream, Chain::new([route]), "/api/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        received(&upstream, A),
        [json!({"model": A, "messages": [], "store": false})
            .as_object()
            .unwrap()
            .clone()]
    );

    // On OpenRouter, the route's own `provider` and `models` go in beside the overrides.
    let upstream = MockUpstream::new().model(A, Reply::ok());
    let body = json!({"model": "caller/model", "messages": [], "n": 2});
    let route = Route::new(A)
        .provider(serde_json::from_value(json!({"order": ["Anthropic"]})).unwrap())
        .native_fallbacks(["m/b"])
        .set("n", 1)
        .set("top_p", 0.9);
    let (status, _) = send(&upstream, Chain::new([route]), "/api/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK);
    let got = &received(&upstream, A)[0];
    assert_eq!(got["n"], 1);
    assert_eq!(got["top_p"], 0.9);
    assert_eq!(got["models"], json!(["m/b"]));
    assert_eq!(got["provider"]["order"], json!(["Anthropic"]));
}

#[tokio::test]
async fn the_output_limit_checks_see_the_override() {
    // The caller asks for 4000 tokens; the route's model makes 1000 at
    // most, and its override sends 512: it serves instead of being skipped.
    let body = json!({"model": "caller/model", "messages": [], "max_tokens": 4000});
    let upstream = MockUpstream::new().model(A, Reply::ok()).model(B, Reply::ok());
    let chain = Chain::new([
        Route::new(A).max_output_tokens(1000).set("max_tokens", 512),
        Route::new(B),
    ]);
    let (status, _) = send(&upstream, chain, "/api/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.request_count(A), 1);
    assert_eq!(upstream.request_count(B), 0);

    // An override above the limit is skipped even for a modest caller, and
    // removing the limit key leaves nothing to check.
    let body = json!({"model": "caller/model", "messages": [], "max_tokens": 100});
    let upstream = MockUpstream::new().model(A, Reply::ok()).model(B, Reply::ok());
    let chain = Chain::new([
        Route::new(A).max_output_tokens(1000).set("max_tokens", 4096),
        Route::new(B).max_output_tokens(50).remove("max_tokens"),
    ]);
    let svc = FallbackLayer::new(chain).layer(upstream.clone());
    let resp = svc
        .oneshot(post("http://openrouter.test/api/v1/chat/completions", body.to_string()))
        .await
        .unwrap();
    let (parts, _) = body_json(resp).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(upstream.request_count(A), 0);
    assert_eq!(upstream.request_count(B), 1);
    let report = report(&parts);
    assert!(
        matches!(
            report.attempts()[0].skip_reason(),
            Some(&SkipReason::MaxOutput {
                requested: 4096,
                limit: 1000
            })
        ),
        "{report:?}"
    );
    assert!(!received(&upstream, B)[0].contains_key("max_tokens"));
}

#[test]
fn keys_the_layer_owns_are_refused() {
    for key in Overrides::OWNED_KEYS {
        let err = Route::new(A).try_set(key, 1).unwrap_err();
        assert_eq!(err.key(), key);
        assert!(
            err.to_string()
                .starts_with(&format!("the top-level key {key:?} cannot be overridden")),
            "{err}"
        );
        assert!(Route::new(A).try_remove(key).is_err(), "{key}");
    }
    // Anything else goes, the last word on a key wins.
    let route = Route::new(A)
        .set("max_tokens", 1)
        .remove("max_tokens")
        .set("n", 2)
        .set("n", 3);
    assert_eq!(route.overrides.get("max_tokens"), Some(None));
    assert_eq!(route.overrides.get("n"), Some(Some(&json!(3))));
    assert_eq!(route.overrides.len(), 2);
    // Too many.
    let mut route = Route::new(A);
    for i in 0..Overrides::MAX {
        route = route.try_set(format!("k{i}"), i).unwrap();
    }
    assert!(route
        .clone()
        .try_set("one_more", 0)
        .unwrap_err()
        .to_string()
        .contains("at most 64"));
    assert!(route.try_set("k0", "again").is_ok(), "replacing is not adding");
    // Debug names keys, never values.
    let shown = format!("{:?}", Route::new(A).set("metadata", "secret-value"));
    assert!(shown.contains("metadata") && !shown.contains("secret-value"), "{shown}");
}

#[test]
#[should_panic(expected = "the top-level key \"stream\" cannot be overridden")]
fn set_panics_on_an_owned_key() {
    let _ = Route::new(A).set("stream", true);
}

#[cfg(feature = "config")]
mod config {
    use super::*;
    use llm_fallback::config::Config;
    use llm_fallback::FallbackBuilder;

    fn route_with(extra: &str) -> String {
        format!("[[chains.default.routes]]\nmodel = \"a/b\"\n{extra}\n")
    }

    fn err(text: &str) -> String {
        Config::from_toml_str(text)
            .and_then(|c| FallbackBuilder::from_config(&c).map(|_| ()))
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn set_and_remove_build_the_route() {
        let config = Config::from_toml_str(&route_with(
            "set = { max_tokens = 512, reasoning = { effort = \"low\" }, stop = [\"\\n\"] }\nremove = [\"logprobs\", \"user\"]",
        ))
        .unwrap();
        let layer = FallbackBuilder::from_config(&config).unwrap().layer();
        let o = &layer.chain().routes()[0].overrides;
        assert_eq!(o.get("max_tokens"), Some(Some(&json!(512))));
        assert_eq!(o.get("reasoning"), Some(Some(&json!({"effort": "low"}))));
        assert_eq!(o.get("stop"), Some(Some(&json!(["\n"]))));
        assert_eq!(o.get("logprobs"), Some(None));
        assert_eq!(o.get("user"), Some(None));
        assert_eq!(o.len(), 5);
        // Round trip through TOML and JSON.
        assert_eq!(Config::from_toml_str(&config.to_toml_string()).unwrap(), config);
        let json_config = Config::from_json_str(
            r#"{"chains": {"default": {"routes": [{"model": "a/b", "set": {"max_tokens": 512}, "remove": ["n"]}]}}}"#,
        )
        .unwrap();
        let layer = FallbackBuilder::from_config(&json_config).unwrap().layer();
        assert_eq!(layer.chain().routes()[0].overrides.get("n"), Some(None));
    }

    #[test]
    fn mistakes_name_the_key_path() {
        let cases = [
            (
                route_with("set = { model = \"x\" }"),
                "chains.default.routes[0].set.model: the top-level key \"model\" cannot be overridden",
            ),
            (
                route_with("remove = [\"n\", \"stream\"]"),
                "chains.default.routes[0].remove[1]: the top-level key \"stream\" cannot be overridden",
            ),
            (
                route_with("set = { provider = { order = [\"x\"] } }"),
                "chains.default.routes[0].set.provider: the top-level key \"provider\"",
            ),
            (
                route_with("set = { n = 1 }\nremove = [\"n\"]"),
                "chains.default.routes[0].remove[0]: \"n\" is also in `set`",
            ),
            (
                route_with("remove = \"logprobs\""),
                "chains.default.routes[0].remove: invalid type: string \"logprobs\", expected a sequence",
            ),
            (
                "[models.smart]\nroutes = [{ model = \"a/b\", set = { transforms = [] } }]\n[[chains.default.routes]]\nmodel = \"a/b\"\n"
                    .to_owned(),
                "models.smart.routes[0].set.transforms: the top-level key \"transforms\"",
            ),
        ];
        for (text, want) in cases {
            let got = err(&text);
            assert!(got.contains(want), "{text}\n  got: {got}\n  want: {want}");
        }
        let json = Config::from_json_str(
            r#"{"chains": {"default": {"routes": [{"model": "a/b", "set": {"tool_choice": null}}]}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            json.contains("chains.default.routes[0].set.tool_choice: null"),
            "{json}"
        );
        let many: String = (0..=Overrides::MAX).map(|i| format!("k{i} = {i}, ")).collect();
        let got = err(&route_with(&format!("set = {{ {} }}", many.trim_end_matches(", "))));
        assert!(
            got.contains("chains.default.routes[0].set: 65 keys set or removed; expected at most 64"),
            "{got}"
        );
    }
}

// ===== property: exactly the changes, never a mangled body =====

/// Keys the bodies and the overrides draw from, so they meet often.
const POOL: [&str; 10] = [
    "messages",
    "max_tokens",
    "temperature",
    "logprobs",
    "user",
    "a",
    "b c",
    "é",
    "tools",
    "stream",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        // Eighths print and parse back exactly (serde_json's default float
        // parsing is not round-trip for every double).
        (-8_000_000i64..8_000_000).prop_map(|n| Value::from(n as f64 / 8.0)),
        "[a-z \"\\\\{}\\[\\],:\u{e9}\u{1f600}]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z\"]{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A key as the caller may spell it: plain, or with its first character
/// escaped as `\uXXXX`.
fn spell(key: &str, escaped: bool) -> String {
    let plain = serde_json::to_string(key).unwrap();
    match (escaped, key.chars().next()) {
        (true, Some(c)) if (c as u32) < 0x10000 => format!("\"\\u{:04x}{}", c as u32, &plain[1 + c.len_utf8()..]),
        _ => plain,
    }
}

#[derive(Debug, Clone)]
struct Case {
    /// The body's members (the model among them), unique keys, in order.
    members: Vec<(String, Value, bool)>,
    /// Whitespace around the punctuation.
    spaced: bool,
    /// `(key, Some(value))` set, `(key, None)` removed.
    overrides: Vec<(String, Option<Value>)>,
}

impl Case {
    fn text(&self) -> String {
        let ws = if self.spaced { " \n\t" } else { "" };
        let members: Vec<String> = self
            .members
            .iter()
            .map(|(k, v, esc)| format!("{ws}{}{ws}:{ws}{v}{ws}", spell(k, *esc)))
            .collect();
        format!("{ws}{{{}}}{ws}", members.join(","))
    }

    fn expected(&self, model: &str) -> Map<String, Value> {
        let mut m: Map<String, Value> = self.members.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect();
        m.insert("model".into(), model.into());
        for (k, v) in &self.overrides {
            match v {
                Some(v) => m.insert(k.clone(), v.clone()),
                None => m.remove(k),
            };
        }
        m
    }

    fn route(&self, model: &str) -> Route {
        self.overrides.iter().fold(Route::new(model), |r, (k, v)| match v {
            Some(v) => r.set(k.as_str(), v.clone()),
            None => r.remove(k.as_str()),
        })
    }
}

/// OpenRouter's keys, which a route on another API strips.
const OPENROUTER: [&str; 4] = ["provider", "models", "route", "transforms"];

fn case() -> impl Strategy<Value = Case> {
    case_from(POOL.to_vec())
}

fn case_from(pool: Vec<&'static str>) -> impl Strategy<Value = Case> {
    let members = prop::collection::vec((prop::sample::select(pool), json_value(), any::<bool>()), 0..8);
    let overrides = prop::collection::vec(
        (
            prop::sample::select(POOL.iter().copied().filter(|k| *k != "stream").collect::<Vec<_>>()),
            prop::option::of(json_value()),
        ),
        1..6,
    );
    (
        members,
        any::<prop::sample::Index>(),
        any::<bool>(),
        any::<bool>(),
        overrides,
    )
        .prop_map(|(members, at, model_escaped, spaced, overrides)| {
            // Unique keys (serde_json would keep the last of a repeated one).
            let mut seen = std::collections::BTreeSet::new();
            let mut members: Vec<(String, Value, bool)> = members
                .into_iter()
                .filter(|(k, _, _)| seen.insert(*k))
                .map(|(k, v, e)| (k.to_owned(), v, e))
                .collect();
            let at = at.index(members.len() + 1);
            members.insert(at, ("model".into(), "caller/model".into(), model_escaped));
            let mut seen = std::collections::BTreeSet::new();
            let overrides = overrides
                .into_iter()
                .rev()
                .filter(|(k, _)| seen.insert(*k))
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            Case {
                members,
                spaced,
                overrides,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The body sent parses to the caller's with exactly the route's
    /// changes and the model: nothing else moves.
    #[test]
    fn the_sent_body_is_the_original_with_exactly_those_changes(
        case in case_from(POOL.iter().chain(&OPENROUTER).copied().collect()),
        foreign in any::<bool>(),
    ) {
        let body = Bytes::from(case.text());
        let mut route = case.route(B);
        let mut want = case.expected(B);
        if foreign {
            // Another API: OpenRouter's keys are cut out too, in the same walk.
            route = route.endpoint(Endpoint::new("https://api.openai.com/v1").unwrap());
            want.retain(|k, _| !OPENROUTER.contains(&k.as_str()));
        }
        let route = llm_fallback::__private::Compiled::new(route);
        // From the members the index recorded (as the layer does), and by
        // the walk (a route the index was not told of).
        for rewrite in [llm_fallback::__private::rewrite_for, llm_fallback::__private::rewrite_walking] {
            let sent = collect(rewrite(&body, &route).unwrap());
            let got: Map<String, Value> = serde_json::from_slice(&sent)
                .unwrap_or_else(|e| panic!("mangled ({e}): {}", String::from_utf8_lossy(&sent)));
            prop_assert_eq!(&got, &want);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Through the layer: a failing route's overrides, then the next one's,
    /// each on the caller's body, and the mock upstream parses both.
    #[test]
    fn the_upstream_never_receives_a_mangled_body(first in case(), second in case()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let upstream = MockUpstream::new().model(A, Reply::status(502)).model(B, Reply::ok());
        let chain = Chain::new([first.route(A), second.route(B)]);
        let svc = FallbackLayer::new(chain).layer(upstream.clone());
        let text = first.text();
        let status = rt.block_on(async {
            svc.oneshot(post("http://openrouter.test/api/v1/chat/completions", text)).await.unwrap().status()
        });
        prop_assert_eq!(status, StatusCode::OK);
        prop_assert_eq!(received(&upstream, A), [first.expected(A)]);
        let with_second = Case { overrides: second.overrides.clone(), ..first.clone() };
        prop_assert_eq!(received(&upstream, B), [with_second.expected(B)]);
    }
}

/// The replay body as one buffer.
fn collect(mut body: llm_fallback::ReplayBody) -> Vec<u8> {
    use http_body::Body;
    struct NoWake;
    impl std::task::Wake for NoWake {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    let waker = std::sync::Arc::new(NoWake).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut out = Vec::new();
    while let std::task::Poll::Ready(Some(frame)) = std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
        out.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    out
}
