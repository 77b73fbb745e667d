//! A property per dialect: a random body of that API's shape (its own
//! members, typical or random values, extra keys, any order, compact or
//! pretty, the model anywhere) reaches the upstream as the caller's bytes
//! with only `model` changed — whatever the layer read to judge what the
//! request needs.
//!
//! `PROPTEST_CASES` raises the number of cases (default 96 per dialect).

mod common;

use common::post;
use llm_fallback::{Capabilities, Chain, FallbackLayer, Route};
use llm_fallback_mock::{Dialect, MockUpstream, Reply};
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::{Layer, ServiceExt};

const ROUTED: &str = "routed/m\u{f6}del-\u{2713}";

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z \"\\\\/\n\t\u{e9}\u{1f680}{}\\[\\]:,]{0,16}",
        Just("model".to_owned()),
        Just("input_image".to_owned()),
        Just(r#"{"model":"inner"}"#.to_owned()),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::vec((text(), inner), 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Members typical of `d`, each typical or random.
fn members(d: Dialect) -> BoxedStrategy<Vec<(String, Value)>> {
    let typical: Vec<(&'static str, Vec<Value>)> = match d {
        Dialect::Responses => vec![
            (
                "input",
                vec![
                    json!("hi"),
                    json!([{"role": "user", "content": [{"type": "input_text", "text": "what is this?"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]),
                    json!([{"type": "function_call_output", "call_id": "c", "output": "{}"}]),
                ],
            ),
            ("instructions", vec![json!("be terse")]),
            (
                "tools",
                vec![
                    json!([{"type": "function", "name": "f", "parameters": {"type": "object"}}]),
                    json!([{"type": "web_search"}]),
                ],
            ),
            (
                "text",
                vec![json!({"format": {"type": "json_schema", "name": "x", "schema": {}}})],
            ),
            ("max_output_tokens", vec![json!(256)]),
            ("reasoning", vec![json!({"effort": "low"})]),
            ("previous_response_id", vec![json!("resp_1"), Value::Null]),
            ("store", vec![json!(false)]),
        ],
        Dialect::Messages => vec![
            (
                "messages",
                vec![
                    json!([{"role": "user", "content": "hi"}]),
                    json!([{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}, {"type": "text", "text": "?"}]}]),
                ],
            ),
            ("max_tokens", vec![json!(1024)]),
            (
                "system",
                vec![
                    json!("terse"),
                    json!([{"type": "text", "text": "terse", "cache_control": {"type": "ephemeral"}}]),
                ],
            ),
            (
                "tools",
                vec![json!([{"name": "f", "description": "d", "input_schema": {"type": "object"}}])],
            ),
            ("tool_choice", vec![json!({"type": "auto"}), json!({"type": "none"})]),
            ("thinking", vec![json!({"type": "enabled", "budget_tokens": 512})]),
            ("stop_sequences", vec![json!(["\n\nHuman:"])]),
            ("metadata", vec![json!({"user_id": "u"})]),
        ],
        Dialect::Embeddings => vec![
            (
                "input",
                vec![
                    json!("a cat"),
                    json!(["a", "b"]),
                    json!([1, 2, 3]),
                    json!([[1, 2], [3]]),
                ],
            ),
            ("encoding_format", vec![json!("float"), json!("base64")]),
            ("dimensions", vec![json!(256)]),
            ("user", vec![json!("u")]),
        ],
        _ => vec![
            ("prompt", vec![json!("Say hi"), json!(["a", "b"])]),
            ("max_tokens", vec![json!(16)]),
            ("temperature", vec![json!(0.5)]),
            ("suffix", vec![json!("!")]),
            ("logprobs", vec![json!(2)]),
        ],
    };
    let each: Vec<BoxedStrategy<Option<(String, Value)>>> = typical
        .into_iter()
        .map(|(key, values)| {
            let key = key.to_owned();
            prop::option::weighted(
                0.7,
                prop_oneof![4 => prop::sample::select(values), 1 => value()].prop_map(move |v| (key.clone(), v)),
            )
            .boxed()
        })
        .collect();
    let extra = prop::collection::vec(("[a-z_]{1,10}", value()), 0..3);
    (each, extra, any::<bool>())
        .prop_map(|(typical, extra, stream)| {
            let mut all: Vec<(String, Value)> = typical.into_iter().flatten().collect();
            let known: Vec<String> = all.iter().map(|(k, _)| k.clone()).collect();
            all.extend(extra.into_iter().filter(|(k, _)| {
                !known.contains(k)
                    && !["model", "models", "provider", "stream", "route", "transforms"].contains(&k.as_str())
            }));
            if stream {
                all.push(("stream".into(), Value::Bool(true)));
            }
            all
        })
        .boxed()
}

/// The body's text around the model's value (the `at`-th member): the
/// text before it and the text after it.
fn render(members: &[(String, Value)], at: usize, pretty: bool, spaces: &str) -> (String, String) {
    let json = |v: &Value| {
        if pretty {
            serde_json::to_string_pretty(v).unwrap()
        } else {
            serde_json::to_string(v).unwrap()
        }
    };
    let mut before = format!("{{{spaces}");
    let mut after = String::new();
    let mut placed = false;
    let n = members.len() + 1;
    let mut i = 0;
    let mut out = &mut before;
    for k in 0..n {
        if k == at.min(n - 1) && !placed {
            out.push_str(&format!("\"model\"{spaces}:{spaces}"));
            placed = true;
            out = &mut after;
        } else {
            let (key, v) = &members[i];
            i += 1;
            out.push_str(&format!(
                "{}{spaces}:{spaces}{}",
                json(&Value::from(key.as_str())),
                json(v)
            ));
        }
        if k + 1 < n {
            out.push_str(&format!("{spaces},{spaces}"));
        }
    }
    after.push_str(&format!("{spaces}}}"));
    (before, after)
}

fn check(
    d: Dialect,
    members: Vec<(String, Value)>,
    at: usize,
    caller_model: String,
    pretty: bool,
    spaces: &str,
) -> Result<(), TestCaseError> {
    let (before, after) = render(&members, at, pretty, spaces);
    let model_json = serde_json::to_string(&caller_model).unwrap();
    let sent_body = format!("{before}{model_json}{after}");
    let expected = format!("{before}{}{after}", serde_json::to_string(ROUTED).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let upstream = MockUpstream::new().model(ROUTED, Reply::ok());
    let recorded = rt.block_on(async {
        let svc = FallbackLayer::new(Chain::new([Route::new(ROUTED)])).layer(upstream.clone());
        let url = format!("http://openrouter.test{}", d.path());
        let resp = svc.oneshot(post(&url, sent_body.clone())).await.unwrap();
        drop(resp);
        upstream.requests()
    });
    prop_assert_eq!(recorded.len(), 1, "{}", sent_body);
    prop_assert_eq!(
        String::from_utf8_lossy(&recorded[0].body).into_owned(),
        expected,
        "sent {}",
        sent_body
    );
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(96);
    ProptestConfig::with_cases(cases)
}

fn spaces() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", " ", "\n  ", "\t"])
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn responses_bodies_rewrite_only_the_model(m in members(Dialect::Responses), at in 0usize..12, model in text(), pretty: bool, s in spaces()) {
        check(Dialect::Responses, m, at, model, pretty, s)?;
    }

    #[test]
    fn messages_bodies_rewrite_only_the_model(m in members(Dialect::Messages), at in 0usize..12, model in text(), pretty: bool, s in spaces()) {
        check(Dialect::Messages, m, at, model, pretty, s)?;
    }

    #[test]
    fn embeddings_bodies_rewrite_only_the_model(m in members(Dialect::Embeddings), at in 0usize..8, model in text(), pretty: bool, s in spaces()) {
        check(Dialect::Embeddings, m, at, model, pretty, s)?;
    }

    #[test]
    fn completions_bodies_rewrite_only_the_model(m in members(Dialect::Completions), at in 0usize..8, model in text(), pretty: bool, s in spaces()) {
        check(Dialect::Completions, m, at, model, pretty, s)?;
    }
}

/// The needs are read too (a route that declares limits makes the layer
/// read them), and the bytes are still the caller's.
#[test]
fn reading_needs_changes_no_byte() {
    let body = r#"{ "input" : [{"role":"user","content":[{"type":"input_image","image_url":"x"}]}], "model":"c", "tools":[{"type":"function","name":"f"}] }"#;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let upstream = MockUpstream::new().model(ROUTED, Reply::ok());
    rt.block_on(async {
        let route = Route::new(ROUTED).capabilities(Capabilities::TOOLS | Capabilities::VISION);
        let svc = FallbackLayer::new(Chain::new([route])).layer(upstream.clone());
        let resp = svc
            .oneshot(post("http://openrouter.test/api/v1/responses", body))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    });
    let sent = String::from_utf8(upstream.requests()[0].body.to_vec()).unwrap();
    assert_eq!(sent, body.replace(r#""c""#, &serde_json::to_string(ROUTED).unwrap()));
}
