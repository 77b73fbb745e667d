use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::*;

const URL: &str = "http://openrouter.test/api/v1/chat/completions";

fn chat(model: &str) -> Request<String> {
    post(
        URL,
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
}

fn post(uri: &str, body: impl Into<String>) -> Request<String> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    bytes: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).expect("response body is JSON")
    }
}

async fn send(up: &MockUpstream, req: Request<String>) -> Answer {
    let resp = up.clone().oneshot(req).await.expect("no transport error");
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        bytes: body.collect().await.unwrap().to_bytes(),
    }
}

async fn one(reply: Reply) -> Answer {
    let up = MockUpstream::new().model("m/x", reply);
    send(&up, chat("m/x")).await
}

// ===== replies =====

#[tokio::test]
async fn ok_is_an_openrouter_completion() {
    let a = one(Reply::ok()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers[CONTENT_TYPE], "application/json");
    assert_eq!(a.headers["x-generation-id"], "gen-mock-1");
    assert_eq!(a.headers[CONTENT_LENGTH].to_str().unwrap(), a.bytes.len().to_string());
    let v = a.json();
    assert_eq!(v["id"], "gen-mock-1");
    assert_eq!(v["provider"], "MockProvider");
    assert_eq!(v["model"], "m/x");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["native_finish_reason"], "stop");
    assert_eq!(
        choice["message"],
        json!({"role": "assistant", "content": "Hello from m/x", "refusal": null})
    );
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert!(v.get("error").is_none());
}

#[tokio::test]
async fn ok_setters_change_content_model_and_provider() {
    let reply = Reply::ok()
        .content("pong")
        .served_model("m/backup")
        .provider("Anthropic")
        .header("x-extra", "1")
        .header("x-extra", "2");
    let a = one(reply).await;
    let v = a.json();
    assert_eq!(v["choices"][0]["message"]["content"], "pong");
    assert_eq!(v["model"], "m/backup");
    assert_eq!(v["provider"], "Anthropic");
    let extra: Vec<_> = a.headers.get_all("x-extra").iter().collect();
    assert_eq!(extra, ["1", "2"]);

    let v = one(Reply::ok().served_model("m/backup")).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from m/backup");
}

#[tokio::test]
async fn generation_ids_count_up() {
    let up = MockUpstream::new().model("m/x", Reply::ok());
    for n in 1..=3 {
        let a = send(&up, chat("m/x")).await;
        assert_eq!(a.json()["id"], format!("gen-mock-{n}"));
    }
}

#[tokio::test]
async fn status_uses_openrouter_defaults() {
    let table: &[(u16, &str, Option<&str>)] = &[
        (400, "Invalid request", None),
        (401, "No auth credentials found", None),
        (402, "Insufficient credits", None),
        (404, "No endpoints found for m/x.", None),
        (408, "Request timed out", Some("timeout")),
        (413, "Request payload too large", None),
        (429, "Rate limit exceeded", Some("rate_limit_exceeded")),
        (500, "Internal Server Error", Some("server")),
        (502, "Provider returned error", Some("provider_unavailable")),
        (503, "Service unavailable", Some("provider_unavailable")),
        (504, "Provider timed out", Some("timeout")),
        (524, "Provider timed out", Some("timeout")),
        (529, "Provider is overloaded", Some("provider_overloaded")),
        (418, "I'm a teapot", None),
        (599, "Mock upstream error", Some("server")),
    ];
    for &(code, message, error_type) in table {
        let a = one(Reply::status(code)).await;
        assert_eq!(a.status.as_u16(), code);
        assert_eq!(a.headers[CONTENT_TYPE], "application/json");
        assert!(a.headers.get("x-generation-id").is_none());
        assert!(a.headers.get("retry-after").is_none());
        let v = a.json();
        assert_eq!(v["error"]["code"], code, "{code}");
        assert_eq!(v["error"]["message"], message, "{code}");
        match error_type {
            Some(t) => {
                assert_eq!(v["error"]["metadata"]["error_type"], t, "{code}");
                assert_eq!(v["error"]["metadata"]["provider_name"], "MockProvider");
                assert_eq!(v["error"]["metadata"]["raw"], Value::Null);
            }
            None => assert!(v["error"].get("metadata").is_none(), "{code}: {v}"),
        }
        assert!(v.get("choices").is_none());
    }
}

#[tokio::test]
async fn status_403_is_a_moderation_block() {
    let v = one(Reply::status(403)).await.json();
    let meta = &v["error"]["metadata"];
    assert_eq!(v["error"]["code"], 403);
    assert!(v["error"]["message"].as_str().unwrap().contains("requires moderation"));
    assert_eq!(meta["error_type"], "content_policy_violation");
    assert_eq!(meta["reasons"], json!(["harassment"]));
    assert!(meta["flagged_input"].is_string());
    assert_eq!(meta["model_slug"], "m/x");
    assert_eq!(meta["provider_name"], "MockProvider");
}

#[tokio::test]
async fn error_setters_fill_metadata_and_headers() {
    let a = one(Reply::status(429)
        .retry_after(7)
        .provider("Anthropic")
        .raw_message("upstream says slow down"))
    .await;
    assert_eq!(a.headers["retry-after"], "7");
    let meta = &a.json()["error"]["metadata"];
    assert_eq!(meta["provider_name"], "Anthropic");
    assert_eq!(meta["raw"], "upstream says slow down");

    // A status without an error type gets metadata once it has something to say.
    let v = one(Reply::status(400).raw_message("bad temperature")).await.json();
    assert_eq!(
        v["error"]["metadata"],
        json!({"provider_name": "MockProvider", "raw": "bad temperature"})
    );
}

#[tokio::test]
async fn error_is_fully_custom() {
    let a =
        one(Reply::error(400, "context_length_exceeded", "maximum context length is 8192 tokens").provider("OpenAI"))
            .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.json(),
        json!({"error": {
            "code": 400,
            "message": "maximum context length is 8192 tokens",
            "metadata": {"error_type": "context_length_exceeded", "provider_name": "OpenAI", "raw": null},
        }})
    );
    // A custom 403 is not given moderation metadata it did not ask for.
    let v = one(Reply::error(403, "forbidden", "nope")).await.json();
    assert!(v["error"]["metadata"].get("reasons").is_none());
}

#[tokio::test]
async fn ok_with_error_is_200_without_choices() {
    let a = one(Reply::ok_with_error().provider("Together").raw_message("boom")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers[CONTENT_TYPE], "application/json");
    assert_eq!(
        a.json(),
        json!({"error": {
            "code": 502,
            "message": "Provider returned error",
            "metadata": {"error_type": "provider_unavailable", "provider_name": "Together", "raw": "boom"},
        }})
    );
}

#[tokio::test]
async fn no_choices_is_200_json_without_choices() {
    let a = one(Reply::no_choices()).await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["id"], "gen-mock-1");
    assert_eq!(v["model"], "m/x");
    assert!(v.get("choices").is_none());
    assert!(v.get("error").is_none());
}

#[tokio::test]
async fn finish_reason_error_carries_choice_error() {
    let a = one(Reply::finish_reason_error().content("Hel")).await;
    assert_eq!(a.status, StatusCode::OK);
    let choice = &a.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "error");
    assert_eq!(choice["message"]["content"], "Hel");
    assert_eq!(choice["error"]["code"], 502);
    assert!(choice["error"]["message"].is_string());
}

#[tokio::test]
async fn raw_is_sent_verbatim() {
    let a = one(Reply::raw(502, "text/html", "<html>Bad Gateway</html>").header("server", "nginx")).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.headers[CONTENT_TYPE], "text/html");
    assert_eq!(a.headers["server"], "nginx");
    assert_eq!(&a.bytes[..], b"<html>Bad Gateway</html>");
}

#[tokio::test]
async fn transport_error_is_a_service_error() {
    let up = MockUpstream::new().model("m/x", Reply::transport_error());
    let err = up.clone().oneshot(chat("m/x")).await.unwrap_err();
    assert_eq!(err.to_string(), "connection reset by mock upstream");
    assert_eq!(up.request_count("m/x"), 1, "recorded before failing");
}

#[test]
#[should_panic(expected = "at least one reply")]
fn empty_script_panics() {
    let _ = Script::sequence([]);
}

#[test]
#[should_panic(expected = "invalid header name")]
fn bad_header_panics() {
    let _ = Reply::ok().header("bad header", "x");
}

// ===== scripts and recording =====

#[tokio::test]
async fn script_advances_and_last_reply_repeats() {
    let up = MockUpstream::new().model(
        "m/x",
        Script::sequence([Reply::status(429), Reply::status(503), Reply::ok()]),
    );
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(send(&up, chat("m/x")).await.status.as_u16());
    }
    assert_eq!(seen, [429, 503, 200, 200, 200]);
}

#[tokio::test]
async fn scripts_count_per_model_and_set_script_resets() {
    let up = MockUpstream::new()
        .model("m/a", Script::sequence([Reply::status(500), Reply::ok()]))
        .model("m/b", Script::sequence([Reply::status(502), Reply::ok()]));
    assert_eq!(send(&up, chat("m/a")).await.status, 500);
    assert_eq!(send(&up, chat("m/b")).await.status, 502);
    assert_eq!(send(&up, chat("m/a")).await.status, 200);

    // Chaos drill on a clone: the change is shared, and the script restarts.
    let drill = up.clone();
    drill.set_script("m/a", Script::sequence([Reply::status(503), Reply::ok()]));
    assert_eq!(send(&up, chat("m/a")).await.status, 503);
    assert_eq!(send(&up, chat("m/a")).await.status, 200);
    assert_eq!(send(&up, chat("m/b")).await.status, 200);
    assert_eq!(up.request_count("m/a"), 4, "recordings survive set_script");
}

#[tokio::test]
async fn requests_are_recorded_in_order() {
    let up = MockUpstream::new()
        .model("m/a", Reply::ok())
        .model("m/b", Reply::status(429));
    let req = Request::post("/api/v1/chat/completions")
        .header("authorization", "Bearer sk-test")
        .body(r#"{"model":"m/b","provider":{"order":["X"]}}"#.to_string())
        .unwrap();
    send(&up, chat("m/a")).await;
    send(&up, req).await;
    send(&up, chat("m/unknown")).await;

    let all = up.requests();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].model.as_deref(), Some("m/a"));
    assert_eq!(all[0].method, Method::POST);
    assert_eq!(all[0].uri, URL);
    assert_eq!(all[0].json()["messages"][0]["content"], "hi");
    assert_eq!(all[1].uri.path(), "/api/v1/chat/completions");
    assert_eq!(all[1].headers["authorization"], "Bearer sk-test");
    assert_eq!(&all[1].body[..], br#"{"model":"m/b","provider":{"order":["X"]}}"#);
    assert_eq!(all[2].model.as_deref(), Some("m/unknown"));

    assert_eq!(up.requests_for("m/b").len(), 1);
    assert_eq!(up.request_count("m/a"), 1);
    assert_eq!(up.request_count("m/unknown"), 1);
    assert_eq!(up.request_count("m/none"), 0);

    up.clear_requests();
    assert!(up.requests().is_empty());
    assert_eq!(up.request_count("m/a"), 0);
    assert!(format!("{up:?}").contains("m/a"));
}

#[test]
#[should_panic(expected = "not JSON")]
fn recorded_json_panics_on_non_json() {
    let r = RecordedRequest {
        method: Method::POST,
        uri: Uri::from_static("/"),
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"nope"),
        model: None,
        dialect: None,
    };
    let _ = r.json();
}

// ===== routing and bad input =====

#[tokio::test]
async fn unknown_model_is_400_not_a_valid_model_id() {
    let up = MockUpstream::new().model("m/x", Reply::ok());
    let a = send(&up, chat("m/nope")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.json(),
        json!({"error": {"code": 400, "message": "m/nope is not a valid model ID"}})
    );
}

#[tokio::test]
async fn bad_bodies_are_400() {
    let up = MockUpstream::new().model("m/x", Reply::ok());
    for (body, needle) in [
        ("{not json", "Invalid JSON body: "),
        ("[1,2]", "Invalid JSON body: "),
        (r#"{"messages":[]}"#, "No model specified"),
        (r#"{"model":7}"#, "No model specified"),
    ] {
        let a = send(&up, post(URL, body)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}");
        let v = a.json();
        assert_eq!(v["error"]["code"], 400);
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(needle), "{body}: {message}");
    }
    assert_eq!(up.requests().len(), 4, "bad requests are recorded too");
}

#[tokio::test]
async fn routes_on_path_and_method() {
    let up = MockUpstream::new().model("m/x", Reply::ok());
    let body = json!({"model": "m/x"}).to_string();
    for uri in [
        "/api/v1/chat/completions",
        "/v1/chat/completions",
        "http://localhost:1234/v1/chat/completions?x=1",
    ] {
        assert_eq!(send(&up, post(uri, body.clone())).await.status, 200, "{uri}");
    }

    let a = send(&up, post("http://h/api/v1/models", body.clone())).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["error"]["code"], 404);

    let get = Request::get(URL).body(String::new()).unwrap();
    let a = send(&up, get).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers[ALLOW], "POST");
    assert_eq!(a.json()["error"]["code"], 405);
}

// ===== time =====

#[tokio::test(start_paused = true)]
async fn latency_delays_the_answer() {
    let up = MockUpstream::new().model("m/x", Reply::ok().latency(Duration::from_secs(10)));
    let early = tokio::time::timeout(Duration::from_millis(9_999), up.clone().oneshot(chat("m/x")));
    assert!(early.await.is_err(), "answered before its latency");
    assert_eq!(up.request_count("m/x"), 1, "recorded before the wait");

    let start = tokio::time::Instant::now();
    let resp = up.clone().oneshot(chat("m/x")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn latency_applies_to_errors() {
    let up = MockUpstream::new().model("m/x", Reply::transport_error().latency(Duration::from_secs(3)));
    let start = tokio::time::Instant::now();
    assert!(up.clone().oneshot(chat("m/x")).await.is_err());
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn hang_never_answers() {
    let up = MockUpstream::new().model("m/x", Script::sequence([Reply::hang(), Reply::ok()]));
    let hung = tokio::time::timeout(Duration::from_secs(3600), up.clone().oneshot(chat("m/x")));
    assert!(hung.await.is_err(), "a hang answered");
    assert_eq!(up.request_count("m/x"), 1, "recorded before hanging");
    assert_eq!(send(&up, chat("m/x")).await.status, 200, "script moved on");
}

// ===== loopback server =====

/// Sends one HTTP/1.1 request with `Connection: close` and reads until EOF.
async fn raw_http(server: &MockServer, method: &str, path: &str, body: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(server.addr()).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    Ok(String::from_utf8(out).expect("utf-8 response"))
}

fn chat_body(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

#[tokio::test]
async fn server_serves_scripted_replies() {
    let up = MockUpstream::new().model(
        "m/x",
        Script::sequence([Reply::status(429).retry_after(3), Reply::ok().content("pong")]),
    );
    let server = MockServer::start(up.clone()).await.unwrap();
    assert_eq!(server.url(), format!("http://127.0.0.1:{}", server.addr().port()));
    assert_eq!(server.chat_url(), format!("{}/api/v1/chat/completions", server.url()));

    let first = raw_http(&server, "POST", "/api/v1/chat/completions", &chat_body("m/x"))
        .await
        .unwrap();
    assert!(first.starts_with("HTTP/1.1 429 "), "{first}");
    assert!(first.to_ascii_lowercase().contains("retry-after: 3\r\n"), "{first}");
    assert!(first.contains(r#""error_type":"rate_limit_exceeded""#), "{first}");

    let second = raw_http(&server, "POST", "/api/v1/chat/completions", &chat_body("m/x"))
        .await
        .unwrap();
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second}");
    assert!(
        second.to_ascii_lowercase().contains("x-generation-id: gen-mock-"),
        "{second}"
    );
    let (_, body) = second.split_once("\r\n\r\n").unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "pong");

    assert_eq!(server.upstream().request_count("m/x"), 2);
    let recorded = &up.requests()[1];
    assert_eq!(recorded.uri, "/api/v1/chat/completions");
    assert_eq!(recorded.headers["content-type"], "application/json");
    assert_eq!(recorded.body, chat_body("m/x"));
    assert!(format!("{server:?}").contains("127.0.0.1"));
}

#[tokio::test]
async fn server_transport_error_drops_the_connection() {
    let up = MockUpstream::new().model("m/x", Reply::transport_error());
    let server = MockServer::start(up.clone()).await.unwrap();
    match raw_http(&server, "POST", "/v1/chat/completions", &chat_body("m/x")).await {
        Ok(text) => assert!(text.is_empty(), "got a response: {text}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert_eq!(up.request_count("m/x"), 1);
}

#[tokio::test]
async fn server_transport_error_is_a_hyper_client_error() {
    let up = MockUpstream::new()
        .model("m/x", Reply::transport_error())
        .model("m/ok", Reply::ok());
    let server = MockServer::start(up).await.unwrap();

    let client = || async {
        let stream = TcpStream::connect(server.addr()).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake::<_, String>(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    };
    let req = |model: &str| {
        Request::post(server.chat_url())
            .header("host", server.addr().to_string())
            .body(chat_body(model))
            .unwrap()
    };

    let mut sender = client().await;
    let resp = sender.send_request(req("m/ok")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    // Keep-alive: the same connection carries the next request, which the
    // server reads and then answers by closing the connection.
    sender.ready().await.unwrap();
    let err = sender.send_request(req("m/x")).await.unwrap_err();
    assert!(err.is_incomplete_message(), "{err:?}");
    assert_eq!(server.upstream().request_count("m/x"), 1);
    assert!(sender.ready().await.is_err(), "the connection is closed");
}

#[tokio::test]
async fn server_drop_closes_hung_connections() {
    let up = MockUpstream::new().model("m/x", Reply::hang());
    let server = MockServer::start(up.clone()).await.unwrap();
    let addr = server.addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = chat_body("m/x");
    let head = format!(
        "POST /api/v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();

    // Wait (bounded) until the request has been recorded, i.e. is hanging.
    for _ in 0..100_000 {
        if up.request_count("m/x") == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(up.request_count("m/x"), 1);

    drop(server);
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("connection closed after drop");
    match read {
        Ok(_) => assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    // The listener is gone too.
    assert!(TcpStream::connect(addr).await.is_err());
}
