//! What the upstream receives: the caller's bytes with only `model` changed,
//! and a correct `Content-Length`.

mod common;

use bytes::Bytes;
use common::*;
use llm_fallback::{Chain, FallbackLayer, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use proptest::prelude::*;
use serde_json::Value;
use tower::{Layer, ServiceExt};

/// Sends `body` through a two-route chain whose primary fails, and returns
/// what each route received.
async fn through_layer(body: Bytes) -> (Bytes, Bytes) {
    let upstream = MockUpstream::new()
        .model("primary/é\"quoted\"", Reply::status(503))
        .model("secondary/model", Reply::ok());
    let chain = Chain::new([Route::new("primary/é\"quoted\""), Route::new("secondary/model")]);
    let resp = FallbackLayer::new(chain)
        .layer(upstream.clone())
        .oneshot(post("http://mock/api/v1/chat/completions", body))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reqs = upstream.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        let declared: usize = r.headers["content-length"].to_str().unwrap().parse().unwrap();
        assert_eq!(declared, r.body.len(), "Content-Length must match what was sent");
        assert_eq!(
            r.headers["authorization"], "Bearer sk-test-secret",
            "headers are forwarded"
        );
    }
    (reqs[0].body.clone(), reqs[1].body.clone())
}

fn replace_once(haystack: &str, from: &str, to: &str) -> String {
    assert_eq!(haystack.matches(from).count(), 1, "test body must contain {from} once");
    haystack.replacen(from, to, 1)
}

#[tokio::test]
async fn only_the_model_value_changes() {
    let cases = [
        // model first, last, in the middle
        r#"{"model":"caller/m","messages":[{"role":"user","content":"hi"}]}"#.to_owned(),
        r#"{"messages":[{"role":"user","content":"hi"}],"model":"caller/m"}"#.to_owned(),
        r#"{"temperature":0.5,"model":"caller/m","messages":[]}"#.to_owned(),
        // whitespace variants
        "{\n  \"model\" :\t\"caller/m\" ,\r\n  \"messages\": [ ]\n}\n".to_owned(),
        // escapes and unicode around it; "model" inside messages and nested objects
        r#"{"a\"b":"x\\\"","model":"caller/m","messages":[{"content":"\"model\":\"evil\" ünï 🚀 \ud83d\ude80","model":"nested"}],"meta":{"model":{"model":"deep"}}}"#.to_owned(),
        // the caller's model itself has escapes
        r#"{"model":"caller\/m\u00e9","messages":[]}"#.to_owned(),
    ];
    for original in cases {
        let model_literal = if original.contains(r#""caller/m""#) {
            r#""caller/m""#
        } else {
            r#""caller\/m\u00e9""#
        };
        let (first, second) = through_layer(Bytes::from(original.clone())).await;
        assert_eq!(
            String::from_utf8(first.to_vec()).unwrap(),
            replace_once(&original, model_literal, r#""primary/é\"quoted\"""#)
        );
        assert_eq!(
            String::from_utf8(second.to_vec()).unwrap(),
            replace_once(&original, model_literal, r#""secondary/model""#)
        );
    }
}

#[tokio::test]
async fn an_8_mib_body_over_loopback_arrives_intact() {
    let filler: String = "The quick brown fox jumps over the \"lazy\" dog. ✓\n".repeat(8 * 1024 * 1024 / 52);
    let original = serde_json::json!({
        "messages": [{"role": "user", "content": filler}],
        "model": "caller/m",
        "tools": [{"type": "function", "function": {"name": "model", "parameters": {"model": "x"}}}]
    })
    .to_string();
    assert!(original.len() > 8 * 1024 * 1024);
    let upstream = MockUpstream::new()
        .model("a/a", Reply::status(502))
        .model("b/b", Reply::ok());
    let server = MockServer::start(upstream).await.unwrap();
    let chain = Chain::new([Route::new("a/a"), Route::new("b/b")]);
    let resp = FallbackLayer::new(chain)
        .layer(http_client())
        .oneshot(post(&server.chat_url(), original.clone()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reqs = server.upstream().requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].body,
        replace_once(&original, r#""caller/m""#, r#""b/b""#).as_bytes()
    );
    assert_eq!(
        reqs[1].headers["content-length"],
        reqs[1].body.len().to_string().as_str()
    );
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // Eighths are exact in binary, so parsing them back is exact too.
        (-1_000_000i64..1_000_000).prop_map(|n| Value::from(n as f64 / 8.0)),
        "(\\PC|[\"\\\\]|\\n|\\t|\\u{1})*".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("(\\PC|[\"\\\\])*", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// For random JSON objects, what each route receives parses to the
    /// original with only `model` changed.
    #[test]
    fn random_objects_survive_the_layer(
        entries in prop::collection::btree_map("[a-z\"\\\\ü]{0,8}", json_value(), 0..8),
        position in any::<prop::sample::Index>(),
        pretty in any::<bool>(),
    ) {
        let mut entries: Vec<(String, Value)> = entries.into_iter().filter(|(k, _)| k != "model").collect();
        let at = position.index(entries.len() + 1);
        entries.insert(at, ("model".to_owned(), Value::from("caller/m")));
        // Written by hand so `model` sits exactly at `at`.
        let (sep, colon) = if pretty { (",\n  ", " : ") } else { (",", ":") };
        let members: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{}{colon}{}", Value::from(k.as_str()), if pretty { serde_json::to_string_pretty(v).unwrap() } else { v.to_string() }))
            .collect();
        let text = format!("{{{}}}", members.join(sep));
        let original = Value::Object(entries.into_iter().collect());

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (first, second) = rt.block_on(through_layer(Bytes::from(text)));
        for (got, model) in [(first, "primary/é\"quoted\""), (second, "secondary/model")] {
            let mut expected = original.clone();
            expected["model"] = Value::from(model);
            let got: Value = serde_json::from_slice(&got).unwrap();
            prop_assert_eq!(got, expected);
        }
    }
}
