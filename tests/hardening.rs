//! What a caller or an upstream controls cannot crash the layer, leak a key
//! to another provider, or pick what the operator did not allow (issue 13).
//! Each test here failed on the code before it.

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderName, StatusCode};
use llm_fallback::health::Drills;
use llm_fallback::native::{Endpoint, ProviderPrefs, CREDENTIAL_HEADERS};
use llm_fallback::{
    BoxError, Chain, ChainName, ChainSet, ExhaustionBody, FallbackBuilder, FallbackLayer, Outcome, ReplayBody,
    Resolution, Route,
};
use llm_fallback_mock::{MockBody, MockServer, MockUpstream, Reply};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

fn prefs(order: &str) -> ProviderPrefs {
    let mut prefs = ProviderPrefs::default();
    prefs.order = Some(vec![order.to_owned()]);
    prefs
}

/// An endpoint that is not OpenRouter: the OpenRouter-only keys go.
fn plain_endpoint() -> Endpoint {
    Endpoint::new("http://127.0.0.1:9/v1").unwrap().openrouter(false)
}

fn caller_request(body: impl Into<Bytes>) -> http::Request<http_body_util::Full<Bytes>> {
    post("http://127.0.0.1:1/api/v1/chat/completions", body)
}

async fn ask(
    layer: &FallbackLayer,
    upstream: &MockUpstream,
    req: http::Request<http_body_util::Full<Bytes>>,
) -> (http::response::Parts, Value) {
    let resp = layer.clone().layer(upstream.clone()).oneshot(req).await.unwrap();
    body_json(resp).await
}

// ----- 1. any number of edits -----

const FIVE_EDITS: &str =
    r#"{"provider":{},"a":1,"models":[],"b":2,"route":"x","c":3,"transforms":[],"model":"m","messages":[]}"#;

#[tokio::test]
async fn five_edits_through_a_non_openrouter_endpoint() {
    let upstream = MockUpstream::new().model("gpt-4o", Reply::ok());
    let layer = FallbackLayer::new(Chain::new([Route::new("gpt-4o").endpoint(plain_endpoint())]));
    let (parts, _) = ask(&layer, &upstream, caller_request(FIVE_EDITS)).await;
    assert_eq!(parts.status, StatusCode::OK);
    let sent = upstream.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].json(),
        json!({"a": 1, "b": 2, "c": 3, "model": "gpt-4o", "messages": []}),
        "four removals and the model, nothing else touched"
    );
    assert_eq!(
        sent[0].headers["content-length"],
        sent[0].body.len().to_string().as_str()
    );
}

#[tokio::test]
async fn replacements_insertions_and_removals_mixed() {
    // The route sets its own `provider` (replacing the caller's) and native
    // fallbacks (inserted), and `route`/`transforms` go: five edits again.
    let upstream = MockUpstream::new().model("gpt-4o", Reply::ok());
    let route = Route::new("gpt-4o")
        .endpoint(plain_endpoint())
        .provider(prefs("OpenAI"))
        .native_fallbacks(["gpt-4o-mini"]);
    let layer = FallbackLayer::new(Chain::new([route]));
    let body = r#"{"route":"x","a":1,"provider":{"sort":"price"},"b":2,"transforms":[],"model":"m"}"#;
    let (parts, _) = ask(&layer, &upstream, caller_request(body)).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(
        upstream.requests()[0].json(),
        json!({"models": ["gpt-4o-mini"], "a": 1, "provider": {"order": ["OpenAI"]}, "b": 2, "model": "gpt-4o"})
    );
}

/// The members a generated body is made of, in the order drawn.
fn members() -> impl Strategy<Value = Vec<(String, Value)>> {
    let openrouter = prop_oneof![
        Just(("provider".to_owned(), json!({"order": ["A"]}))),
        Just(("models".to_owned(), json!(["x/y"]))),
        Just(("route".to_owned(), json!("fallback"))),
        Just(("transforms".to_owned(), json!(["middle-out"]))),
    ];
    let other = ("[a-z]{1,6}", any::<i32>()).prop_map(|(k, v)| (format!("k_{k}"), json!(v)));
    let member = prop_oneof![openrouter, other];
    prop::collection::vec(member, 0..10).prop_map(|mut m| {
        // One of each key: duplicates are refused (tested below).
        let mut seen = std::collections::HashSet::new();
        m.retain(|(k, _)| seen.insert(k.clone()));
        m
    })
}

fn object_text(members: &[(String, Value)], model_at: usize, spaced: bool) -> String {
    let mut parts: Vec<String> = members.iter().map(|(k, v)| format!("{}:{}", json!(k), v)).collect();
    parts.insert(model_at.min(parts.len()), r#""model":"caller/model""#.to_owned());
    match spaced {
        true => format!("{{ {} }}", parts.join(" ,\n ")),
        false => format!("{{{}}}", parts.join(",")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever mix of OpenRouter keys a caller sends and whatever the route
    /// sets, the upstream gets the caller's object with exactly the route's
    /// edits (and no panic on the way).
    #[test]
    fn generated_mixes_get_exactly_the_routes_edits(
        members in members(),
        model_at in 0usize..12,
        spaced in any::<bool>(),
        with_provider in any::<bool>(),
        with_fallbacks in any::<bool>(),
        openrouter in any::<bool>(),
    ) {
        let text = object_text(&members, model_at, spaced);
        let mut route = Route::new("to/model")
            .endpoint(Endpoint::new("http://127.0.0.1:9/v1").unwrap().openrouter(openrouter));
        if with_provider {
            route = route.provider(prefs("Mine"));
        }
        if with_fallbacks {
            route = route.native_fallbacks(["fb/one"]);
        }
        let mut want: Map<String, Value> = serde_json::from_str(&text).unwrap();
        want.insert("model".into(), json!("to/model"));
        if with_provider {
            want.insert("provider".into(), json!({"order": ["Mine"]}));
        }
        if with_fallbacks {
            want.insert("models".into(), json!(["fb/one"]));
        }
        if !openrouter {
            for key in ["route", "transforms"] {
                want.remove(key);
            }
            if !with_provider {
                want.remove("provider");
            }
            if !with_fallbacks {
                want.remove("models");
            }
        }
        let upstream = MockUpstream::new().model("to/model", Reply::ok());
        let layer = FallbackLayer::new(Chain::new([route]));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (parts, _) = rt.block_on(ask(&layer, &upstream, caller_request(text.clone())));
        prop_assert_eq!(parts.status, StatusCode::OK);
        let sent = upstream.requests();
        prop_assert_eq!(sent.len(), 1);
        let got: Map<String, Value> = serde_json::from_slice(&sent[0].body).unwrap();
        prop_assert_eq!(got, want, "{}", text);
    }
}

// ----- 2. credential headers -----

const ENDPOINT_KEY_VAR: &str = "LLM_FALLBACK_HARDENING_ENDPOINT_KEY";

#[tokio::test]
async fn no_credential_header_reaches_another_endpoint() {
    std::env::set_var(ENDPOINT_KEY_VAR, "sk-endpoint-own");
    let upstream = MockUpstream::new()
        .model("caller/model", Reply::status(503))
        .model("keyed", Reply::status(503))
        .model("keyless", Reply::ok());
    let keyed = Endpoint::new("http://127.0.0.1:9/v1")
        .unwrap()
        .api_key_env(ENDPOINT_KEY_VAR)
        .unwrap();
    let layer = FallbackLayer::builder(Chain::new([
        Route::new("caller/model"),
        Route::new("keyed").endpoint(keyed),
        Route::new("keyless").endpoint(plain_endpoint()),
    ]))
    .credential_header(HeaderName::from_static("x-internal-token"))
    .layer();
    let mut req = caller_request(chat("caller/model"));
    let names = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "api-key",
        "openai-organization",
        "openai-project",
        "x-goog-api-key",
        "x-internal-token",
    ];
    for name in names {
        // Twice: a repeated header must go whole.
        req.headers_mut().append(name, "caller-secret".parse().unwrap());
        req.headers_mut().append(name, "caller-secret-2".parse().unwrap());
    }
    req.headers_mut().insert("x-title", "kept".parse().unwrap());
    let (parts, _) = ask(&layer, &upstream, req).await;
    assert_eq!(parts.status, StatusCode::OK);

    // The caller's own upstream (no endpoint) gets every header as sent.
    let own = &upstream.requests_for("caller/model")[0];
    for name in names {
        let markers = own.headers.get_all(name).iter();
        assert_eq!(
            markers.filter(|v| v.as_bytes().starts_with(b"caller-secret")).count(),
            2,
            "{name}"
        );
    }
    for sent in [&upstream.requests_for("keyed")[0], &upstream.requests_for("keyless")[0]] {
        for (name, value) in &sent.headers {
            let text = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !text.contains("caller-secret") && !text.contains("sk-test-secret"),
                "the caller's {name} reached another endpoint"
            );
        }
        assert_eq!(sent.headers["x-title"], "kept", "other headers are the caller's");
    }
    assert_eq!(
        upstream.requests_for("keyed")[0].headers["authorization"],
        "Bearer sk-endpoint-own"
    );
    assert!(upstream.requests_for("keyless")[0]
        .headers
        .get("authorization")
        .is_none());
    // The documented list is what the layer strips.
    for name in &CREDENTIAL_HEADERS {
        assert!(names.contains(&name.as_str()), "{name} is tested");
    }
}

// ----- 3. duplicate route / transforms -----

#[tokio::test]
async fn duplicate_route_and_transforms_are_refused() {
    let upstream = MockUpstream::new().model("gpt-4o", Reply::ok());
    let layer = FallbackLayer::new(Chain::new([Route::new("gpt-4o").endpoint(plain_endpoint())]));
    for (body, key) in [
        (r#"{"model":"m","route":"fallback","messages":[],"route":"x"}"#, "route"),
        (
            r#"{"transforms":[],"model":"m","transforms":["middle-out"]}"#,
            "transforms",
        ),
        (r#"{"model":"m","tr\u0061nsforms":[],"transforms":[]}"#, "transforms"),
    ] {
        let (parts, answer) = ask(&layer, &upstream, caller_request(body)).await;
        assert_eq!(parts.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"]["code"], "duplicate_key");
        assert_eq!(answer["error"]["param"], key);
        assert_eq!(answer["error"]["type"], "invalid_request_error");
    }
    assert!(upstream.requests().is_empty(), "a refused body reaches no upstream");
}

// ----- 5. the exhaustion body -----

/// An inner service whose first model fails in transport with an error that
/// names an internal address, the second with a provider's own text.
fn leaky_upstream() -> BoxCloneService<http::Request<ReplayBody>, http::Response<MockBody>, BoxError> {
    let mock = MockUpstream::new()
        .model(
            "b/provider-text",
            Reply::error(
                503,
                "provider_unavailable",
                "upstream 10.1.2.3:8443 refused: pool exhausted",
            )
            .raw_message("raw: connect ECONNREFUSED internal-db.corp:5432"),
        )
        .model(
            "c/rate",
            Reply::error(429, "rate_limit_exceeded", "slow down, key sk-or-123"),
        );
    BoxCloneService::new(tower::service_fn(move |req: http::Request<ReplayBody>| {
        let mock = mock.clone();
        async move {
            let model = req
                .extensions()
                .get::<llm_fallback::Attempt>()
                .map(|a| a.model().to_owned());
            if model.as_deref() == Some("a/transport") {
                return Err(
                    "error trying to connect: http://10.9.8.7:9000/v1/chat/completions: connection refused".into(),
                );
            }
            mock.oneshot(req).await.map_err(Into::into)
        }
    }))
}

/// `text` without its ` after 12ms` times, which depend on the machine.
fn without_times(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(" after ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + " after ".len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        match tail[digits..].strip_prefix("ms") {
            Some(after) if digits > 0 => rest = after,
            _ => {
                out.push_str(" after ");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

fn leaky_chain() -> Chain {
    Chain::new([
        Route::new("a/transport").label("primary"),
        Route::new("b/provider-text"),
        Route::new("c/rate"),
    ])
}

const INTERNALS: [&str; 6] = [
    "10.9.8.7",
    "10.1.2.3",
    "internal-db",
    "sk-or-123",
    "pool exhausted",
    "connection refused",
];

#[tokio::test]
async fn the_summary_exhaustion_body_holds_no_transport_or_provider_text() {
    let layer = FallbackLayer::builder(leaky_chain())
        .exhaustion_body(ExhaustionBody::Summary)
        .layer();
    let resp = layer
        .layer(leaky_upstream())
        .oneshot(caller_request(chat("a/transport")))
        .await
        .unwrap();
    let (parts, bytes) = body_bytes(resp).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    let text = String::from_utf8_lossy(&bytes);
    for secret in INTERNALS {
        assert!(!text.contains(secret), "{secret} in the summary: {text}");
    }
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    let message = answer["error"]["message"].as_str().unwrap();
    assert_eq!(
        without_times(message),
        "all 3 fallback route(s) failed: a/transport (primary): transport error; \
         b/provider-text: HTTP 503 provider_unavailable; c/rate: HTTP 429 rate_limit_exceeded",
        "models, outcomes, statuses and error types only"
    );
    let attempts = answer["error"]["metadata"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[0]["outcome"], "transport_error");
    assert_eq!(attempts[1]["status"], 503);
    assert_eq!(attempts[2]["error_type"], "rate_limit_exceeded");
    for a in attempts {
        assert!(a.get("message").is_none() && a.get("raw").is_none() && a.get("provider_name").is_none());
    }
    // The report keeps everything.
    let report = report(&parts);
    assert!(report.attempts()[0].transport_error().unwrap().contains("10.9.8.7"));
    assert!(report.attempts()[1]
        .upstream_error()
        .unwrap()
        .raw()
        .unwrap()
        .contains("internal-db"));
}

#[tokio::test]
async fn the_full_exhaustion_body_is_the_default_and_says_everything() {
    let resp = FallbackLayer::new(leaky_chain())
        .layer(leaky_upstream())
        .oneshot(caller_request(chat("a/transport")))
        .await
        .unwrap();
    let (parts, bytes) = body_bytes(resp).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    let text = String::from_utf8_lossy(&bytes);
    for detail in ["10.9.8.7", "internal-db", "pool exhausted"] {
        assert!(text.contains(detail), "{detail} missing from the full body: {text}");
    }
}

// ----- 6. the chain and drill headers -----

fn chain_set() -> ChainSet {
    ChainSet::new(Chain::new([Route::new("cheap/m")])).chain("premium", Chain::new([Route::new("pricey/m")]))
}

#[tokio::test]
async fn the_chain_header_is_ignored_unless_allowed_and_never_forwarded() {
    let upstream = MockUpstream::new()
        .model("cheap/m", Reply::ok())
        .model("pricey/m", Reply::ok());
    let with_header = || {
        let mut req = caller_request(chat("x"));
        req.headers_mut().insert("x-fallback-chain", "premium".parse().unwrap());
        req.headers_mut().insert("x-fallback-drill", "1".parse().unwrap());
        req
    };
    // Not allowed: ignored (no 400 for an unknown name either).
    let layer = FallbackLayer::with_chains(chain_set());
    let (parts, answer) = ask(&layer, &upstream, with_header()).await;
    assert_eq!(answer["model"], "cheap/m");
    assert_eq!(report(&parts).chain(), Some("default"));
    let mut unknown = caller_request(chat("x"));
    unknown
        .headers_mut()
        .insert("x-fallback-chain", "nope".parse().unwrap());
    let (parts, _) = ask(&layer, &upstream, unknown).await;
    assert_eq!(parts.status, StatusCode::OK);
    // Allowed: honoured.
    let allowed = FallbackBuilder::with_chains(chain_set())
        .allow_chain_header(true)
        .layer();
    let (_, answer) = ask(&allowed, &upstream, with_header()).await;
    assert_eq!(answer["model"], "pricey/m");
    // With drills on (header not allowed), too.
    let drilled = FallbackBuilder::with_chains(chain_set())
        .drills(Drills::fraction(0.0))
        .layer();
    let (parts, _) = ask(&drilled, &upstream, with_header()).await;
    assert!(!report(&parts).is_drill());
    // An extension is the operator's own code: always honoured.
    let mut ext = caller_request(chat("x"));
    ext.extensions_mut().insert(ChainName("premium".into()));
    let (_, answer) = ask(&layer, &upstream, ext).await;
    assert_eq!(answer["model"], "pricey/m");

    let sent = upstream.requests();
    assert_eq!(sent.len(), 5);
    for req in sent {
        assert!(
            req.headers.get("x-fallback-chain").is_none(),
            "x-fallback-chain forwarded"
        );
        assert!(
            req.headers.get("x-fallback-drill").is_none(),
            "x-fallback-drill forwarded"
        );
    }
}

// ----- 7. fell_back() and positions across a content-policy switch -----

/// An upstream whose `strict/m` refuses on content policy (403) and the
/// set that then switches to the `lenient` chain.
fn strict_then_lenient() -> (MockUpstream, ChainSet) {
    let upstream = MockUpstream::new()
        .model("strict/m", Reply::status(403))
        .model("lenient/m", Reply::ok());
    let chains = ChainSet::new(Chain::new([Route::new("strict/m"), Route::new("other/m")]))
        .chain("lenient", Chain::new([Route::new("lenient/m")]))
        .on_content_policy("lenient");
    (upstream, chains)
}

#[tokio::test]
async fn fell_back_is_true_after_a_content_policy_switch() {
    let (upstream, chains) = strict_then_lenient();
    let layer = FallbackLayer::with_chains(chains);
    let (parts, answer) = ask(&layer, &upstream, caller_request(chat("x"))).await;
    assert_eq!(answer["model"], "lenient/m");
    let served = report(&parts);
    assert_eq!(served.resolution(), Resolution::Served);
    let attempts = served.attempts();
    assert_eq!(attempts.len(), 2);
    // Both are index 0 — of different chains, which the records say.
    assert_eq!((attempts[0].index(), attempts[0].chain()), (0, "default"));
    assert_eq!((attempts[1].index(), attempts[1].chain()), (0, "lenient"));
    assert_eq!(attempts[0].outcome(), Outcome::HttpError);
    assert!(served.fell_back(), "the request's primary did not serve");

    // Served by the primary of the request's chain: no fallback.
    let upstream = MockUpstream::new().model("strict/m", Reply::ok());
    let (parts, _) = ask(&layer, &upstream, caller_request(chat("x"))).await;
    assert!(!report(&parts).fell_back());
    assert_eq!(report(&parts).attempts()[0].chain(), "default");
}

#[test]
fn the_metrics_position_counts_across_a_content_policy_switch() {
    let snapshot = recorded(false, || async {
        let (upstream, chains) = strict_then_lenient();
        ask(
            &FallbackLayer::with_chains(chains),
            &upstream,
            caller_request(chat("x")),
        )
        .await;
    });
    let positions: Vec<(String, u64)> = counters_by(&snapshot, "llm_fallback_requests_total", "position")
        .into_iter()
        .collect();
    // The default chain's two routes come first: the lenient chain's first
    // route is position 2, not 0 (which would read as "the primary served").
    assert_eq!(positions, vec![("2".to_owned(), 1)]);
}

// ----- found by review: numbers an upstream or a caller sends -----

#[tokio::test]
async fn a_retry_after_too_large_for_a_duration_is_ignored_not_a_panic() {
    let upstream = MockUpstream::new()
        .model("a/m", Reply::status(429).header("retry-after", "99999999999999999999"))
        .model("b/m", Reply::status(503).header("retry-after", "2e19"))
        .model("c/m", Reply::ok());
    let layer = FallbackLayer::builder(Chain::new([Route::new("a/m"), Route::new("b/m"), Route::new("c/m")]))
        .cooldowns(llm_fallback::health::Cooldowns::new())
        .layer();
    let (parts, answer) = ask(&layer, &upstream, caller_request(chat("a/m"))).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(answer["model"], "c/m");
    let attempts = report(&parts).attempts();
    assert_eq!(attempts[0].retry_after(), None, "1e20 seconds is not a duration");
    assert_eq!(attempts[1].retry_after(), None, "nor is 2e19");
}

#[tokio::test]
async fn a_huge_max_tokens_saturates_instead_of_overflowing() {
    let upstream = MockUpstream::new().model("big/m", Reply::ok());
    let layer = FallbackLayer::new(Chain::new([
        Route::new("small/m").context_window(8_000),
        Route::new("big/m"),
    ]));
    let body = json!({"model": "x", "messages": [], "max_tokens": 1e20}).to_string();
    let (parts, answer) = ask(&layer, &upstream, caller_request(body)).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(answer["model"], "big/m");
    let skipped = &report(&parts).attempts()[0];
    assert_eq!(skipped.outcome(), Outcome::Skipped, "no window holds u64::MAX tokens");
}

// ----- found by the engine fuzz target: a committed stream's error chunk stands alone -----

type Frames = http_body_util::StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, std::convert::Infallible>>>,
>;

/// An upstream whose answer is an event stream of exactly these frames.
fn sse_upstream(
    frames: Vec<&'static str>,
) -> impl tower::Service<
    http::Request<ReplayBody>,
    Response = http::Response<Frames>,
    Error = std::convert::Infallible,
    Future = std::future::Ready<Result<http::Response<Frames>, std::convert::Infallible>>,
> + Clone {
    tower::service_fn(move |_req: http::Request<ReplayBody>| {
        let frames: Vec<_> = frames
            .iter()
            .map(|f| Ok(http_body::Frame::data(Bytes::from_static(f.as_bytes()))))
            .collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let resp = http::Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap();
        std::future::ready(Ok(resp))
    })
}

const CONTENT: &str =
    "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n";

/// Streams `frames` through a one-route layer; the caller's bytes.
async fn stream_through(layer: FallbackLayer, frames: Vec<&'static str>) -> String {
    let body = json!({"model": "m", "stream": true, "messages": []}).to_string();
    let resp = layer
        .layer(sse_upstream(frames))
        .oneshot(caller_request(body))
        .await
        .unwrap();
    let (parts, bytes) = body_bytes(resp).await;
    assert_eq!(parts.status, StatusCode::OK);
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The caller's text after the upstream's `sent`, checked to be one error
/// chunk of `code` after `separator`.
fn assert_one_error_chunk(got: &str, sent: &str, separator: &str, code: &str) {
    let tail = got
        .strip_prefix(sent)
        .unwrap_or_else(|| panic!("the upstream's bytes come first, unchanged: {got:?}"));
    let chunk = tail
        .strip_prefix(separator)
        .and_then(|t| t.strip_prefix("data: "))
        .and_then(|t| t.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("one error chunk after {separator:?}: {tail:?}"));
    let chunk: Value = serde_json::from_str(chunk).unwrap();
    assert_eq!(chunk["error"]["code"], code);
    assert_eq!(chunk["choices"][0]["finish_reason"], "error");
}

fn one_route() -> FallbackBuilder {
    FallbackLayer::builder(Chain::new([Route::new("m")]))
}

#[tokio::test]
async fn a_stream_cut_mid_line_gets_its_line_and_event_ended_before_the_error_chunk() {
    let frames = vec![CONTENT, "data: {\"model\":\"m\",\"choi"];
    let got = stream_through(one_route().layer(), frames.clone()).await;
    assert_one_error_chunk(&got, &frames.concat(), "\n\n", "stream_truncated");
}

#[tokio::test]
async fn a_stream_cut_after_an_undispatched_event_gets_the_blank_line_before_the_error_chunk() {
    // Complete `data:` lines, no blank line yet: without one, the error
    // chunk's `data:` line would join that event.
    let frames = vec![CONTENT, "data: {\"model\":\"m\",\n", "data: \"choices\":[]}\n"];
    let got = stream_through(one_route().layer(), frames.clone()).await;
    assert_one_error_chunk(&got, &frames.concat(), "\n", "stream_truncated");
}

#[tokio::test]
async fn a_stream_committed_by_its_keep_alives_is_read_to_its_end() {
    // More keep-alives than the layer holds before content: it commits
    // without a content event, and must still read what follows as a
    // committed stream (here a whole answer: no error chunk at all).
    let layer = one_route().max_response_bytes(64).layer();
    let keep_alive = ": OPENROUTER PROCESSING\n\n";
    let frames = vec![
        keep_alive,
        keep_alive,
        keep_alive,
        keep_alive,
        "data: {\"oops\n\ndata: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
    ];
    let got = stream_through(layer, frames.clone()).await;
    assert_eq!(
        got,
        frames.concat(),
        "a complete stream passes unchanged, with no error chunk"
    );
}

#[tokio::test(start_paused = true)]
async fn the_served_attempt_is_found_after_a_hedge_it_beat() {
    // Found by the engine fuzz target: the cancelled hedge's record comes
    // after the served one, and `served_attempt()` read only the last.
    use std::time::Duration;
    let upstream = MockUpstream::new()
        .model("slow/a", Reply::ok().latency(Duration::from_secs(5)))
        .model("fast/b", Reply::ok().latency(Duration::from_millis(10)));
    let layer = FallbackLayer::builder(Chain::new([
        Route::new("slow/a")
            .label("primary")
            .hedge_after(Duration::from_millis(100)),
        Route::new("fast/b").label("hedge"),
    ]))
    .hedging(llm_fallback::health::HedgeBudget::new(1.0, Duration::from_secs(60)))
    .layer();
    let (parts, answer) = ask(&layer, &upstream, caller_request(chat("slow/a"))).await;
    assert_eq!(answer["model"], "fast/b");
    let served = report(&parts);
    let outcomes: Vec<_> = served.attempts().iter().map(|a| a.outcome()).collect();
    assert_eq!(outcomes, [Outcome::Served, Outcome::Cancelled]);
    assert_eq!(served.served_attempt().map(|a| a.model()), Some("fast/b"));
    assert_eq!(served.served_label(), Some("hedge"));
    assert_eq!(parts.headers["x-fallback-label"], "hedge");
}

// ----- endpoint URLs: a query kept, credentials refused -----

/// Azure OpenAI's `api-version`: the base's query follows each API path.
#[tokio::test]
async fn an_endpoint_bases_query_follows_each_api_path() {
    let server = MockServer::start(MockUpstream::new().model("gpt-4o", Reply::ok()))
        .await
        .unwrap();
    let endpoint = Endpoint::new(format!("{}/api/v1/?api-version=2024-10-21", server.url())).unwrap();
    assert_eq!(
        endpoint.base_url(),
        format!("{}/api/v1?api-version=2024-10-21", server.url())
    );
    let layer = FallbackLayer::new(Chain::new([Route::new("gpt-4o").endpoint(endpoint)]));
    let resp = layer
        .layer(http_client())
        .oneshot(caller_request(chat("x")))
        .await
        .unwrap();
    let (parts, v) = body_json(resp).await;
    assert_eq!(parts.status, StatusCode::OK, "{v}");
    let sent = server.upstream().requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].uri.path(), "/api/v1/chat/completions");
    assert_eq!(sent[0].uri.query(), Some("api-version=2024-10-21"));
}

#[test]
fn an_endpoint_with_credentials_in_its_url_is_refused_without_printing_them() {
    for base in [
        "https://user:sk-secret-1@proxy.internal/v1",
        "https://sk-secret-1@proxy.internal/v1?key=sk-secret-2",
        "https://proxy.internal/v1#sk-secret-1",
    ] {
        let err = Endpoint::new(base).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("proxy.internal/v1"), "{text}");
        assert!(!text.contains("sk-secret"), "{text}");
    }
    // Without a scheme, nothing before an `@` is printed either.
    let err = Endpoint::new("user:sk-secret-1@proxy.internal/v1").unwrap_err();
    assert!(!err.to_string().contains("sk-secret"), "{err}");
    // A query key is allowed, and not printed by the endpoint's Debug nor
    // its configuration's.
    let apim = Endpoint::new("https://apim.internal/v1?subscription-key=sk-secret-3").unwrap();
    assert!(!format!("{apim:?}").contains("sk-secret"));
    let config = llm_fallback::config::EndpointConfig::new("https://apim.internal/v1?subscription-key=sk-secret-3");
    assert!(!format!("{config:?}").contains("sk-secret"), "{config:?}");
    // An empty query is none.
    let bare = Endpoint::new("https://h/v1?").unwrap();
    assert_eq!(bare.base_url(), "https://h/v1");
}
