//! The layer polls the inner service ready before every replay.
//! `tower_test::mock` panics on a call without readiness, so a replay on an
//! unpolled clone would fail these tests.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use llm_fallback::{Attempt, Chain, FallbackLayer, FallbackReport, ReplayBody, Route};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

fn reply(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn model_of(req: &Request<ReplayBody>) -> String {
    let body = req.body().clone().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["model"].as_str().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn several_fallbacks_in_a_row_wait_for_readiness_each_time() {
    let (inner, mut handle) = mock::pair::<Request<ReplayBody>, Response<Full<Bytes>>>();
    handle.allow(0);
    let chain = Chain::new([
        Route::new("a/a"),
        Route::new("b/b"),
        Route::new("c/c"),
        Route::new("d/d"),
    ]);
    let mut svc = FallbackLayer::new(chain).layer(inner);

    // Not ready while the inner service is not.
    assert!(tokio::time::timeout(
        Duration::from_millis(10),
        ServiceExt::<Request<String>>::ready(&mut svc)
    )
    .await
    .is_err());
    handle.allow(1);
    ServiceExt::<Request<String>>::ready(&mut svc).await.unwrap();
    let body = r#"{"model":"caller","messages":[]}"#;
    let call = tokio::spawn(
        svc.call(
            Request::post("http://up/v1/chat/completions")
                .body(body.to_string())
                .unwrap(),
        ),
    );

    for (i, model) in ["a/a", "b/b", "c/c"].into_iter().enumerate() {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(model_of(&req).await, model);
        assert_eq!(req.extensions().get::<Attempt>().unwrap().index(), i);
        send.send_response(reply(503, r#"{"error":{"code":503,"message":"down"}}"#));
        // The replay waits until the inner service is ready again.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), handle.next_request())
                .await
                .is_err(),
            "attempt {} was sent without the inner service being ready",
            i + 1
        );
        handle.allow(1);
    }
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(model_of(&req).await, "d/d");
    send.send_response(reply(
        200,
        r#"{"model":"d/d","choices":[{"finish_reason":"stop","message":{"content":"ok"}}]}"#,
    ));

    let resp = call.await.expect("no readiness panic in the layer").unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let report = resp.extensions().get::<FallbackReport>().unwrap();
    assert_eq!(report.served_model(), "d/d");
    assert_eq!(report.attempts().len(), 4);
}

#[tokio::test]
async fn inner_errors_are_transport_failures_and_fall_back() {
    let (inner, mut handle) = mock::pair::<Request<ReplayBody>, Response<Full<Bytes>>>();
    handle.allow(2);
    let chain = Chain::new([Route::new("a/a"), Route::new("b/b")]);
    let svc = FallbackLayer::new(chain).layer(inner);
    let call = tokio::spawn(
        svc.oneshot(
            Request::post("http://up/")
                .body(r#"{"model":"x"}"#.to_string())
                .unwrap(),
        ),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by peer",
    ));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(model_of(&req).await, "b/b");
    send.send_response(reply(200, r#"{"model":"b/b","choices":[{"finish_reason":"stop"}]}"#));
    let resp = call.await.unwrap().unwrap();
    let report = resp.extensions().get::<FallbackReport>().unwrap();
    assert_eq!(report.attempts()[0].outcome(), llm_fallback::Outcome::Transport);
    assert!(report.attempts()[0]
        .transport_error()
        .unwrap()
        .contains("connection reset by peer"));
}

#[tokio::test]
async fn readiness_errors_surface_from_poll_ready() {
    let (inner, mut handle) = mock::pair::<Request<ReplayBody>, Response<Full<Bytes>>>();
    handle.send_error(std::io::Error::other("pool closed"));
    let mut svc = FallbackLayer::new(Chain::new([Route::new("a/a")])).layer(inner);
    let err = ServiceExt::<Request<String>>::ready(&mut svc).await.unwrap_err();
    assert!(err.to_string().contains("pool closed"));
}
