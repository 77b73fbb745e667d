//! The request span names each dialect's operation (`gen_ai.operation.name`).
//!
//! Alone in its binary, as `tests/tracing.rs` is: a callsite first hit by
//! another test's thread, which has no subscriber, can cache "never" for
//! it while this test's subscriber is in place, and the capture stays
//! empty (seen about once in twelve runs inside `tests/dialects.rs`).

mod common;

use common::*;
use llm_fallback::{Chain, FallbackLayer, Route};
use llm_fallback_mock::{Dialect, MockUpstream, Reply};
use tower::{Layer, ServiceExt};

#[tokio::test]
async fn spans_name_the_dialects_operation() {
    let (out, guard) = Captured::install(tracing::Level::TRACE);
    let mut seen = 0;
    for (d, body, operation) in [
        (Dialect::Embeddings, r#"{"model":"m","input":["a cat"]}"#, "embeddings"),
        (
            Dialect::Completions,
            r#"{"model":"m","prompt":"Say hi","max_tokens":16}"#,
            "text_completion",
        ),
        (Dialect::Responses, r#"{"model":"m","input":"hi"}"#, "chat"),
    ] {
        let upstream = MockUpstream::new().model("primary/model", Reply::ok());
        let resp = FallbackLayer::new(Chain::new([Route::new("primary/model")]))
            .layer(upstream)
            .oneshot(post(&format!("http://openrouter.test{}", d.path()), body))
            .await
            .unwrap();
        let (parts, _) = body_bytes(resp).await;
        assert_eq!(parts.status, 200, "{d:?}");
        // Only what this request wrote.
        let all = out.text();
        let text = all.get(seen..).unwrap_or_default().to_owned();
        seen = all.len();
        let named = [
            format!("gen_ai.operation.name=\"{operation}\""),
            format!("gen_ai.operation.name={operation}"),
        ];
        assert!(named.iter().any(|n| text.contains(n.as_str())), "{d:?}: {text}");
    }
    drop(guard);
}
