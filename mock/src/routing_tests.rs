use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::*;

const URL: &str = "http://openrouter.test/api/v1/chat/completions";

/// A chat request with `extra` merged into the body.
fn chat(model: &str, extra: Value) -> Request<String> {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().expect("extra is an object").clone());
    Request::post(URL)
        .header("content-type", "application/json")
        .body(body.to_string())
        .unwrap()
}

/// The same, asking for `openrouter_metadata`.
fn chat_meta(model: &str, extra: Value) -> Request<String> {
    let mut req = chat(model, extra);
    req.headers_mut()
        .insert("x-openrouter-metadata", HeaderValue::from_static("enabled"));
    req
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn send(up: &MockUpstream, req: Request<String>) -> Answer {
    let resp = up.clone().oneshot(req).await.expect("no transport error");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        json: serde_json::from_slice(&bytes).expect("response body is JSON"),
    }
}

fn error(code: u16, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

/// `(model, provider, status)` of each entry of `openrouter_metadata.attempts`.
fn attempts(body: &Value) -> Vec<(String, Option<String>, u64)> {
    body["openrouter_metadata"]["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempts in {body}"))
        .iter()
        .map(|a| {
            (
                a["model"].as_str().unwrap().to_owned(),
                a["provider"].as_str().map(str::to_owned),
                a["status"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn tried(model: &str, provider: Option<&str>, status: u64) -> (String, Option<String>, u64) {
    (model.to_owned(), provider.map(str::to_owned), status)
}

/// Azure, OpenAI and Together serve `m/p`, registered in that order.
fn three_providers(azure: Reply, openai: Reply, together: Reply) -> MockUpstream {
    MockUpstream::new()
        .provider("m/p", "Azure", azure)
        .provider("m/p", "OpenAI", openai)
        .provider("m/p", "Together", together)
}

// ===== models =====

#[tokio::test]
async fn models_are_tried_in_order_and_the_first_success_serves() {
    let up = MockUpstream::new()
        .model("m/a", Reply::status(503))
        .model("m/b", Reply::status(429))
        .model("m/c", Reply::ok())
        .model("m/d", Reply::ok());
    let a = send(&up, chat("m/a", json!({"models": ["m/b", "m/c", "m/d"]}))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["model"], "m/c");
    assert_eq!(a.json["provider"], "MockProvider");
    assert_eq!(a.json["choices"][0]["message"]["content"], "Hello from m/c");
    assert_eq!(a.headers["x-generation-id"], "gen-mock-1", "one generation per request");
    assert!(a.json.get("openrouter_metadata").is_none(), "not asked for");

    assert_eq!(up.requests().len(), 1);
    assert_eq!(up.request_count("m/a"), 1);
    assert_eq!(up.request_count("m/c"), 0, "a server-side try is not a request");
    assert_eq!(
        [up.tries("m/a"), up.tries("m/b"), up.tries("m/c"), up.tries("m/d")],
        [1, 1, 1, 0]
    );
}

#[tokio::test]
async fn models_advance_each_script_as_a_request_would() {
    let up = MockUpstream::new()
        .model("m/a", Script::sequence([Reply::status(503), Reply::ok()]))
        .model(
            "m/b",
            Script::sequence([Reply::ok().content("first"), Reply::ok().content("second")]),
        );
    let a = send(&up, chat("m/a", json!({"models": ["m/b"]}))).await;
    assert_eq!(a.json["choices"][0]["message"]["content"], "first");
    let a = send(&up, chat("m/a", json!({"models": ["m/b"]}))).await;
    assert_eq!(a.json["model"], "m/a", "m/a recovered");
    assert_eq!(
        send(&up, chat("m/b", json!({}))).await.json["choices"][0]["message"]["content"],
        "second"
    );
    assert_eq!((up.tries("m/a"), up.tries("m/b")), (2, 2));
}

#[tokio::test]
async fn more_than_three_models_is_400() {
    let up = MockUpstream::new().model("m/a", Reply::ok());
    let a = send(&up, chat("m/a", json!({"models": ["m/b", "m/c", "m/d", "m/e"]}))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json, error(400, "'models' array must have 3 items or fewer"));
    assert_eq!(up.tries("m/a"), 0, "refused before any try");
    assert_eq!(up.request_count("m/a"), 1, "recorded all the same");

    for bad in [json!("m/b"), json!(["m/b", 7])] {
        let a = send(&up, chat("m/a", json!({ "models": bad }))).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
        let message = a.json["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("'models' must be an array of model IDs"),
            "{message}"
        );
    }
    for fine in [json!([]), json!(null), json!(["m/b", "m/c", "m/d"])] {
        assert_eq!(
            send(&up, chat("m/a", json!({ "models": fine }))).await.status,
            200,
            "{fine}"
        );
    }
}

#[tokio::test]
async fn when_every_model_fails_the_last_error_is_served() {
    let up = MockUpstream::new()
        .model("m/a", Reply::status(503).retry_after(1))
        .model("m/b", Reply::status(429).retry_after(9).raw_message("slow down"));
    let a = send(&up, chat("m/a", json!({"models": ["m/b"]}))).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.headers["retry-after"], "9");
    assert_eq!(a.json["error"]["message"], "Rate limit exceeded");
    assert_eq!(a.json["error"]["metadata"]["raw"], "slow down");
    assert!(a.json.get("openrouter_metadata").is_none());
    assert_eq!((up.tries("m/a"), up.tries("m/b")), (1, 1));

    // The last one's own default message names it.
    let up = MockUpstream::new()
        .model("m/a", Reply::status(503))
        .model("m/b", Reply::status(404));
    let a = send(&up, chat_meta("m/a", json!({"models": ["m/b"]}))).await;
    assert_eq!(a.json, error(404, "No endpoints found for m/b."));
}

#[tokio::test]
async fn unscripted_models_are_failed_tries() {
    let up = MockUpstream::new().model("m/b", Reply::ok());
    let a = send(&up, chat_meta("m/nope", json!({"models": ["m/gone", "m/b"]}))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["model"], "m/b");
    assert_eq!(
        a.json["openrouter_metadata"],
        json!({"attempts": [
            {"model": "m/nope", "provider": null, "status": 400, "error": {"message": "m/nope is not a valid model ID"}},
            {"model": "m/gone", "provider": null, "status": 400, "error": {"message": "m/gone is not a valid model ID"}},
            {"model": "m/b", "provider": "MockProvider", "status": 200},
        ]})
    );
    assert_eq!(up.tries("m/nope"), 0, "nothing to draw from");

    let up = MockUpstream::new().model("m/a", Reply::status(502));
    let a = send(&up, chat("m/a", json!({"models": ["m/gone"]}))).await;
    assert_eq!(a.json, error(400, "m/gone is not a valid model ID"), "the last failure");
}

#[tokio::test]
async fn errors_in_a_200_are_tried_over() {
    for bad in [
        Reply::ok_with_error(),
        Reply::no_choices(),
        Reply::finish_reason_error(),
    ] {
        let up = MockUpstream::new().model("m/a", bad.clone()).model("m/b", Reply::ok());
        let a = send(&up, chat_meta("m/a", json!({"models": ["m/b"]}))).await;
        assert_eq!(a.json["model"], "m/b", "{bad:?}");
        assert_eq!(
            attempts(&a.json),
            [
                tried("m/a", Some("MockProvider"), 502),
                tried("m/b", Some("MockProvider"), 200)
            ]
        );
        assert!(a.json["openrouter_metadata"]["attempts"][0]["error"]["message"].is_string());
    }
    // A raw non-2xx is an error too, and its JSON message is kept; a raw 2xx serves.
    let up = MockUpstream::new()
        .model("m/a", Reply::raw(502, "text/html", "<html>Bad Gateway</html>"))
        .model(
            "m/b",
            Reply::raw(503, "application/json", r#"{"error":{"message":"gone"}}"#),
        )
        .model("m/c", Reply::raw(200, "text/plain", "fine"));
    let resp = up
        .clone()
        .oneshot(chat("m/a", json!({"models": ["m/b", "m/c"]})))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(&resp.into_body().collect().await.unwrap().to_bytes()[..], b"fine");
    let a = send(&up, chat_meta("m/a", json!({"models": ["m/b"]}))).await;
    assert_eq!(a.json, json!({"error": {"message": "gone"}}));
}

#[tokio::test]
async fn account_errors_are_not_tried_over() {
    for code in [401, 402] {
        let up = MockUpstream::new()
            .model("m/a", Reply::status(code))
            .model("m/b", Reply::ok());
        let a = send(&up, chat("m/a", json!({"models": ["m/b"]}))).await;
        assert_eq!(a.status.as_u16(), code);
        assert_eq!(up.tries("m/b"), 0, "{code}");
    }
}

#[tokio::test]
async fn a_transport_error_drops_the_request() {
    let up = MockUpstream::new()
        .model("m/a", Reply::status(503))
        .model("m/b", Reply::transport_error())
        .model("m/c", Reply::ok());
    let err = up
        .clone()
        .oneshot(chat("m/a", json!({"models": ["m/b", "m/c"]})))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "connection reset by mock upstream");
    assert_eq!(up.tries("m/c"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hang_hangs_and_latencies_add_up() {
    let up = MockUpstream::new()
        .model("m/a", Reply::status(503).latency(Duration::from_secs(2)))
        .model("m/b", Reply::hang())
        .model("m/c", Reply::ok());
    let req = chat("m/a", json!({"models": ["m/b", "m/c"]}));
    let hung = tokio::time::timeout(Duration::from_secs(3600), up.clone().oneshot(req));
    assert!(hung.await.is_err(), "a hang answered");
    assert_eq!(up.tries("m/c"), 0);

    let up = MockUpstream::new()
        .model("m/a", Reply::status(503).latency(Duration::from_secs(2)))
        .model("m/b", Reply::status(429).latency(Duration::from_secs(3)))
        .model("m/c", Reply::ok().latency(Duration::from_secs(5)));
    let start = tokio::time::Instant::now();
    let a = send(&up, chat("m/a", json!({"models": ["m/b", "m/c"]}))).await;
    assert_eq!(a.json["model"], "m/c");
    assert_eq!(start.elapsed(), Duration::from_secs(10), "each try takes its latency");
}

#[tokio::test]
async fn a_stream_is_a_success_even_if_it_fails_later() {
    let up = MockUpstream::new()
        .model("m/a", Reply::status(503))
        .model("m/b", Reply::stream().error_before_first_token())
        .model("m/c", Reply::ok());
    let req = chat_meta("m/a", json!({"models": ["m/b", "m/c"], "stream": true}));
    let resp = up.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "text/event-stream");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let events = parse_sse(&bytes);
    let first = events[0].json().unwrap();
    assert_eq!(first["model"], "m/b");
    assert_eq!(first["choices"][0]["finish_reason"], "error");
    assert!(first.get("openrouter_metadata").is_none(), "no metadata in a stream");
    assert_eq!(up.tries("m/c"), 0);
}

// ===== provider =====

#[tokio::test]
async fn providers_are_tried_in_registration_order_by_default() {
    let up = three_providers(Reply::status(503), Reply::status(429), Reply::ok());
    let a = send(&up, chat_meta("m/p", json!({}))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["provider"], "Together");
    assert_eq!(a.json["model"], "m/p");
    assert_eq!(
        attempts(&a.json),
        [
            tried("m/p", Some("Azure"), 503),
            tried("m/p", Some("OpenAI"), 429),
            tried("m/p", Some("Together"), 200)
        ]
    );
    assert_eq!(up.tries("m/p"), 3);
    for name in ["Azure", "OpenAI", "Together"] {
        assert_eq!(up.tries_for_provider("m/p", name), 1, "{name}");
    }
    assert_eq!(up.tries_for_provider("m/p", "Nobody"), 0);
}

#[tokio::test]
async fn provider_order_comes_first() {
    let up = three_providers(Reply::status(503), Reply::ok(), Reply::status(502));
    let a = send(
        &up,
        chat_meta("m/p", json!({"provider": {"order": ["together", "Nobody", "Azure"]}})),
    )
    .await;
    assert_eq!(a.json["provider"], "OpenAI", "the rest follow the ordered ones");
    assert_eq!(
        attempts(&a.json),
        [
            tried("m/p", Some("Together"), 502),
            tried("m/p", Some("Azure"), 503),
            tried("m/p", Some("OpenAI"), 200)
        ],
        "order matches names ignoring case and skips providers the model lacks"
    );
}

#[tokio::test]
async fn allow_fallbacks_false_stops_at_the_ordered_providers() {
    let up = three_providers(Reply::status(503), Reply::status(429).retry_after(4), Reply::ok());
    let prefs = json!({"provider": {"order": ["Azure", "OpenAI"], "allow_fallbacks": false}});
    let a = send(&up, chat("m/p", prefs)).await;
    assert_eq!(
        a.status,
        StatusCode::TOO_MANY_REQUESTS,
        "OpenAI's failure, the last allowed"
    );
    assert_eq!(a.headers["retry-after"], "4");
    assert_eq!(a.json["error"]["metadata"]["provider_name"], "OpenAI");
    assert_eq!(up.tries_for_provider("m/p", "Together"), 0);

    let prefs = json!({"provider": {"order": ["Nobody"], "allow_fallbacks": false}});
    let a = send(&up, chat("m/p", prefs)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.json,
        error(404, "No allowed providers are available for the selected model.")
    );
    assert_eq!(up.tries("m/p"), 2, "nothing drawn for the 404");
}

#[tokio::test]
async fn only_and_ignore_filter_the_providers() {
    let up = three_providers(Reply::status(503), Reply::ok(), Reply::ok());
    let a = send(
        &up,
        chat_meta("m/p", json!({"provider": {"only": ["Azure", "Together"]}})),
    )
    .await;
    assert_eq!(
        attempts(&a.json),
        [tried("m/p", Some("Azure"), 503), tried("m/p", Some("Together"), 200)]
    );
    let a = send(
        &up,
        chat_meta("m/p", json!({"provider": {"ignore": ["azure", "OpenAI"]}})),
    )
    .await;
    assert_eq!(attempts(&a.json), [tried("m/p", Some("Together"), 200)]);
    let prefs = json!({"provider": {"order": ["OpenAI"], "only": ["Azure"]}});
    let before = up.tries_for_provider("m/p", "OpenAI");
    let a = send(&up, chat("m/p", prefs)).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "`only` wins over `order`");
    assert_eq!(a.json["error"]["metadata"]["provider_name"], "Azure");
    assert_eq!(up.tries_for_provider("m/p", "OpenAI"), before);
    let a = send(
        &up,
        chat("m/p", json!({"provider": {"only": ["Azure"], "ignore": ["Azure"]}})),
    )
    .await;
    assert_eq!(
        a.json,
        error(404, "No allowed providers are available for the selected model.")
    );
}

#[tokio::test]
async fn provider_fallback_comes_before_model_fallback() {
    let up = MockUpstream::new()
        .provider("m/p", "Azure", Reply::status(503))
        .provider("m/p", "OpenAI", Reply::status(500))
        .provider("m/q", "Groq", Reply::ok())
        .model("m/x", Reply::status(529));
    let prefs = json!({"models": ["m/x", "m/q"], "provider": {"order": ["OpenAI"]}, "route": "fallback"});
    let a = send(&up, chat_meta("m/p", prefs)).await;
    assert_eq!(
        (a.json["model"].as_str(), a.json["provider"].as_str()),
        (Some("m/q"), Some("Groq"))
    );
    assert_eq!(
        attempts(&a.json),
        [
            tried("m/p", Some("OpenAI"), 500),
            tried("m/p", Some("Azure"), 503),
            tried("m/x", Some("MockProvider"), 529),
            tried("m/q", Some("Groq"), 200)
        ]
    );
    assert_eq!(
        a.json["openrouter_metadata"]["attempts"][0]["error"],
        json!({"message": "Internal Server Error"})
    );

    // A model with no allowed provider is a failed try like any other.
    let prefs = json!({"models": ["m/q"], "provider": {"only": ["Groq"]}});
    let a = send(&up, chat_meta("m/p", prefs)).await;
    assert_eq!(a.json["model"], "m/q");
    assert_eq!(
        a.json["openrouter_metadata"]["attempts"][0],
        json!({"model": "m/p", "provider": null, "status": 404,
               "error": {"message": "No allowed providers are available for the selected model."}})
    );
}

#[tokio::test]
async fn plain_scripts_ignore_provider_preferences() {
    let up = MockUpstream::new().model("m/a", Reply::ok());
    let prefs = json!({"provider": {"order": ["Azure"], "allow_fallbacks": false, "only": ["Azure"]}});
    let a = send(&up, chat("m/a", prefs)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["provider"], "MockProvider");
    assert_eq!(
        up.tries_for_provider("m/a", "MockProvider"),
        0,
        "plain scripts count in tries only"
    );
    assert_eq!(up.tries("m/a"), 1);
}

#[tokio::test]
async fn provider_scripts_name_their_provider() {
    let up = MockUpstream::new()
        .provider("m/p", "Azure", Reply::status(400))
        .provider("m/p", "OpenAI", Reply::ok().provider("OpenAI (display)"));
    let a = send(&up, chat_meta("m/p", json!({"provider": {"only": ["Azure"]}}))).await;
    assert_eq!(
        a.json,
        json!({"error": {"code": 400, "message": "Invalid request",
                         "metadata": {"provider_name": "Azure", "raw": null}}})
    );
    let a = send(&up, chat_meta("m/p", json!({"provider": {"only": ["OpenAI"]}}))).await;
    assert_eq!(a.json["provider"], "OpenAI (display)", "the reply's own provider wins");
    assert_eq!(attempts(&a.json), [tried("m/p", Some("OpenAI (display)"), 200)]);
    assert_eq!(
        up.tries_for_provider("m/p", "OpenAI"),
        1,
        "counted under the registered name"
    );
}

#[tokio::test]
async fn provider_scripts_can_be_replaced_and_dropped() {
    let up = MockUpstream::new()
        .model("m/p", Reply::ok().content("plain"))
        .provider("m/p", "Azure", Script::sequence([Reply::status(503), Reply::ok()]))
        .provider("m/p", "OpenAI", Reply::ok());
    let a = send(&up, chat("m/p", json!({}))).await;
    assert_eq!(a.json["provider"], "OpenAI", "provider scripts replaced the plain one");

    // Replacing Azure restarts its script and keeps its place in line.
    up.set_provider_script("m/p", "Azure", Script::sequence([Reply::status(502), Reply::ok()]));
    let a = send(&up, chat_meta("m/p", json!({}))).await;
    assert_eq!(
        attempts(&a.json),
        [tried("m/p", Some("Azure"), 502), tried("m/p", Some("OpenAI"), 200)]
    );
    assert_eq!(send(&up, chat("m/p", json!({}))).await.json["provider"], "Azure");

    // `set_script` drops them again.
    up.set_script("m/p", Reply::ok().content("plain"));
    let a = send(&up, chat("m/p", json!({}))).await;
    assert_eq!(a.json["provider"], "MockProvider");
    assert_eq!(a.json["choices"][0]["message"]["content"], "plain");
}

#[tokio::test]
async fn unknown_or_malformed_provider_keys_are_400() {
    let up = three_providers(Reply::ok(), Reply::ok(), Reply::ok());
    let a = send(&up, chat("m/p", json!({"provider": {"orderr": ["Azure"]}}))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let message = a.json["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Invalid provider preferences: unknown field `orderr`"),
        "{message}"
    );
    for bad in [
        json!({"order": "Azure"}),
        json!({"allow_fallbacks": "no"}),
        json!({"sort": "cheapest"}),
        json!({"max_price": {"tokens": 1}}),
        json!(["Azure"]),
    ] {
        let a = send(&up, chat("m/p", json!({ "provider": bad }))).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(a.json["error"]["code"], 400);
    }
    let full = json!({"order": ["Azure"], "allow_fallbacks": true, "require_parameters": false,
        "data_collection": "deny", "zdr": false, "quantizations": ["fp8"],
        "sort": {"by": "price", "partition": "model"}, "max_price": {"prompt": 1.0},
        "preferred_min_throughput": 10.0, "preferred_max_latency": 2.0});
    assert_eq!(send(&up, chat("m/p", json!({ "provider": full }))).await.status, 200);
    assert_eq!(send(&up, chat("m/p", json!({ "provider": null }))).await.status, 200);
    assert_eq!(up.tries("m/p"), 2, "refused requests try nothing");
}

#[tokio::test]
async fn route_accepts_fallback_and_sort_only() {
    let up = MockUpstream::new().model("m/a", Reply::ok());
    for fine in [json!("fallback"), json!("sort"), json!(null)] {
        assert_eq!(
            send(&up, chat("m/a", json!({ "route": fine }))).await.status,
            200,
            "{fine}"
        );
    }
    let a = send(&up, chat("m/a", json!({"route": "cheapest"}))).await;
    assert_eq!(
        a.json,
        error(400, r#"Invalid route "cheapest": expected "fallback" or "sort""#)
    );
    let a = send(&up, chat("m/a", json!({"route": 1}))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

// ===== metadata and counting =====

#[tokio::test]
async fn metadata_lists_every_try_of_a_success_only() {
    let up = MockUpstream::new()
        .model("m/a", Reply::error(503, "provider_unavailable", "Azure is down"))
        .model("m/b", Reply::ok().provider("OpenAI"));
    let a = send(&up, chat_meta("m/a", json!({"models": ["m/b"]}))).await;
    assert_eq!(
        a.json["openrouter_metadata"],
        json!({"attempts": [
            {"model": "m/a", "provider": "MockProvider", "status": 503, "error": {"message": "Azure is down"}},
            {"model": "m/b", "provider": "OpenAI", "status": 200},
        ]})
    );
    // A single model gets its one attempt; the header value is not case sensitive.
    let mut req = chat("m/b", json!({}));
    req.headers_mut()
        .insert("X-OpenRouter-Metadata", HeaderValue::from_static("Enabled"));
    assert_eq!(
        attempts(&send(&up, req).await.json),
        [tried("m/b", Some("OpenAI"), 200)]
    );
    // Any other value, or a failure, gets none.
    let mut req = chat("m/b", json!({}));
    req.headers_mut()
        .insert("x-openrouter-metadata", HeaderValue::from_static("disabled"));
    assert!(send(&up, req).await.json.get("openrouter_metadata").is_none());
    let a = send(&up, chat_meta("m/a", json!({}))).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.json.get("openrouter_metadata").is_none());
    // Recorded as received.
    let sent = &up.requests()[0];
    assert_eq!(sent.headers["x-openrouter-metadata"], "enabled");
    assert_eq!(sent.json()["models"], json!(["m/b"]));
}

#[tokio::test]
async fn tries_count_draws_and_clear_with_the_requests() {
    let up = MockUpstream::new()
        .model("m/a", Reply::status(503))
        .provider("m/p", "Azure", Reply::status(503))
        .provider("m/p", "OpenAI", Reply::ok());
    send(&up, chat("m/a", json!({"models": ["m/p"]}))).await;
    send(&up, chat("m/a", json!({}))).await;
    send(&up, chat("m/p", json!({"provider": {"ignore": ["Azure"]}}))).await;
    assert_eq!(up.request_count("m/a"), 2);
    assert_eq!(up.request_count("m/p"), 1);
    assert_eq!(up.tries("m/a"), 2);
    assert_eq!(up.tries("m/p"), 3);
    assert_eq!(up.tries_for_provider("m/p", "Azure"), 1);
    assert_eq!(up.tries_for_provider("m/p", "OpenAI"), 2);
    assert_eq!(up.tries("m/none"), 0);

    up.set_script("m/a", Reply::ok());
    assert_eq!(up.tries("m/a"), 2, "tries survive set_script");
    up.clear_requests();
    assert_eq!((up.tries("m/a"), up.tries("m/p")), (0, 0));
    assert_eq!(up.tries_for_provider("m/p", "OpenAI"), 0);
}

// ===== over HTTP =====

#[tokio::test]
async fn server_routes_server_side() {
    let up = MockUpstream::new()
        .provider("m/p", "Azure", Reply::status(503))
        .model("m/b", Reply::ok().content("pong"));
    let server = MockServer::start(up.clone()).await.unwrap();
    let body = json!({"model": "m/p", "models": ["m/b"], "messages": []}).to_string();
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST /api/v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         X-OpenRouter-Metadata: enabled\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["model"], "m/b");
    assert_eq!(v["choices"][0]["message"]["content"], "pong");
    assert_eq!(
        attempts(&v),
        [
            tried("m/p", Some("Azure"), 503),
            tried("m/b", Some("MockProvider"), 200)
        ]
    );
    assert_eq!(server.upstream().requests().len(), 1);
    assert_eq!(server.upstream().tries_for_provider("m/p", "Azure"), 1);
}
