//! Spans carry the GenAI attributes and never a header, key or body.

mod common;

use common::*;
use llm_fallback::{Chain, FallbackLayer, Route};
use llm_fallback_mock::{MockUpstream, Reply};
use tower::{Layer, ServiceExt};

#[tokio::test]
async fn spans_name_the_models_and_nothing_secret() {
    let (out, _guard) = Captured::install(tracing::Level::TRACE);

    let upstream = MockUpstream::new()
        .model("a/primary", Reply::status(503))
        .model("b/secondary", Reply::ok().served_model("b/secondary-2024"));
    let chain = Chain::new([
        Route::new("a/primary").label("primary"),
        Route::new("b/secondary").label("secondary"),
    ]);
    let body = r#"{"model":"caller/model","messages":[{"role":"user","content":"my secret prompt 4242"}]}"#;
    let resp = FallbackLayer::new(chain)
        .layer(upstream)
        .oneshot(post("http://mock/api/v1/chat/completions", body))
        .await
        .unwrap();
    let (parts, _) = body_bytes(resp).await;
    assert_eq!(report(&parts).served_model(), "b/secondary-2024");
    drop(_guard);

    let text = out.text();
    let closes: Vec<&str> = text.lines().filter(|l| l.contains("close")).collect();
    let attempts: Vec<&&str> = closes.iter().filter(|l| l.contains("llm_fallback.attempt")).collect();
    // An attempt span closes inside the request span, so its line names both.
    let requests: Vec<&&str> = closes
        .iter()
        .filter(|l| l.contains("llm_fallback.request") && !l.contains("llm_fallback.attempt"))
        .collect();
    assert_eq!(attempts.len(), 2, "one span per attempt:\n{text}");
    assert_eq!(requests.len(), 1, "one span per request:\n{text}");
    assert!(attempts[0].contains("gen_ai.request.model=\"a/primary\""), "{text}");
    assert!(attempts[0].contains("fallback.outcome=\"http_error\""), "{text}");
    assert!(attempts[0].contains("http.response.status_code=503"), "{text}");
    assert!(attempts[0].contains("error.type=\"provider_unavailable\""), "{text}");
    assert!(
        attempts[1].contains("gen_ai.response.model=\"b/secondary-2024\""),
        "{text}"
    );
    assert!(attempts[1].contains("fallback.outcome=\"served\""), "{text}");
    assert!(attempts[1].contains("fallback.latency_ms="), "{text}");
    assert!(requests[0].contains("gen_ai.request.model=\"caller/model\""), "{text}");
    assert!(
        requests[0].contains("gen_ai.response.model=\"b/secondary-2024\""),
        "{text}"
    );
    assert!(requests[0].contains("fallback.attempts=2"), "{text}");
    assert!(
        text.contains("llm fallback attempt failed"),
        "a failed attempt logs an event:\n{text}"
    );

    for secret in ["sk-test-secret", "Bearer", "secret prompt", "4242", "authorization"] {
        assert!(
            !text.to_ascii_lowercase().contains(&secret.to_ascii_lowercase()),
            "{secret:?} leaked:\n{text}"
        );
    }
}
