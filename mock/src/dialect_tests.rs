//! The buffered answers of every dialect: good answers, each fault, the
//! mock's own errors and server-side routing, each checked against the
//! API's shape (the OpenAI SDK's own types where there is one).

use std::time::Duration;

use async_openai::types::completions::CreateCompletionResponse;
use async_openai::types::embeddings::{CreateBase64EmbeddingResponse, CreateEmbeddingResponse};
use async_openai::types::responses::{Response as OpenAiResponse, Status};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;

// ===== helpers =====

/// A minimal valid body of `dialect` for `model`, plus `extra` keys.
fn body_of(dialect: Dialect, model: &str, extra: Value) -> String {
    let mut body = match dialect {
        Dialect::Chat => json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        Dialect::Responses => json!({"model": model, "input": "hi", "instructions": "be brief"}),
        Dialect::Messages => {
            json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
        }
        Dialect::Embeddings => json!({"model": model, "input": "hi"}),
        Dialect::Completions => json!({"model": model, "prompt": "hi", "max_tokens": 16}),
    };
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body.to_string()
}

fn request(dialect: Dialect, model: &str, extra: Value) -> Request<String> {
    Request::post(format!("http://openrouter.test{}", dialect.path()))
        .header("content-type", "application/json")
        .body(body_of(dialect, model, extra))
        .unwrap()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    bytes: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.bytes)))
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.bytes).unwrap()
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

/// `reply` for model `m/x`, asked in `dialect`.
async fn one(dialect: Dialect, reply: Reply) -> Answer {
    let up = MockUpstream::new().model("m/x", reply);
    send(&up, request(dialect, "m/x", json!({}))).await
}

const NEW: [Dialect; 4] = [
    Dialect::Responses,
    Dialect::Messages,
    Dialect::Embeddings,
    Dialect::Completions,
];

// ----- Anthropic's types, as its SDKs read them (every required field) -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnthropicMessage {
    pub(super) id: String,
    #[serde(rename = "type")]
    pub(super) kind: MessageType,
    pub(super) role: AssistantRole,
    pub(super) model: String,
    pub(super) content: Vec<ContentBlock>,
    pub(super) stop_reason: Option<StopReason>,
    pub(super) stop_sequence: Option<String>,
    pub(super) usage: AnthropicUsage,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(super) enum MessageType {
    Message,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(super) enum AssistantRole {
    Assistant,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum ContentBlock {
    Text { text: String },
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(super) enum StopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    PauseTurn,
    Refusal,
}

#[allow(dead_code)] // Read by serde for its shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnthropicUsage {
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    pub(super) cache_creation_input_tokens: Option<u64>,
    pub(super) cache_read_input_tokens: Option<u64>,
}

/// Anthropic's error body: `{"type":"error","error":{"type","message"},"request_id"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnthropicError {
    #[serde(rename = "type")]
    pub(super) kind: ErrorTag,
    pub(super) error: AnthropicErrorDetail,
    pub(super) request_id: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(super) enum ErrorTag {
    Error,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnthropicErrorDetail {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) message: String,
}

/// OpenAI's error body, as async-openai reads it (`code` a string or null).
fn openai_error(a: &Answer) -> async_openai::error::ApiError {
    serde_json::from_slice::<async_openai::error::WrappedError>(&a.bytes)
        .unwrap_or_else(|e| panic!("not an OpenAI error ({e}): {}", a.text()))
        .error
}

fn anthropic_error(a: &Answer) -> AnthropicError {
    serde_json::from_slice(&a.bytes).unwrap_or_else(|e| panic!("not an Anthropic error ({e}): {}", a.text()))
}

// ===== paths and recording =====

#[tokio::test]
async fn every_dialect_is_served_under_both_bases_and_recorded() {
    let up = MockUpstream::new().model("m/x", Reply::ok());
    for dialect in Dialect::ALL {
        for base in ["/api/v1", "/v1"] {
            let uri = format!("http://localhost:9{base}/{}?beta=true", dialect.endpoint());
            let req = Request::post(uri).body(body_of(dialect, "m/x", json!({}))).unwrap();
            let a = send(&up, req).await;
            assert_eq!(a.status, 200, "{dialect} under {base}: {}", a.text());
        }
    }
    let seen: Vec<Option<Dialect>> = up.requests().iter().map(|r| r.dialect).collect();
    let expected: Vec<Option<Dialect>> = Dialect::ALL.iter().flat_map(|&d| [Some(d), Some(d)]).collect();
    assert_eq!(seen, expected);
    assert_eq!(up.requests()[2].uri.path(), "/api/v1/responses");
    assert_eq!(up.requests()[5].uri.path(), "/v1/messages");

    send(&up, Request::post("/api/v1/models").body(String::new()).unwrap()).await;
    assert_eq!(
        up.requests().last().unwrap().dialect,
        None,
        "an unknown path has no dialect"
    );
}

#[test]
fn dialects_are_told_by_the_exact_path() {
    for d in Dialect::ALL {
        assert_eq!(Dialect::from_path(d.path()), Some(d));
        assert_eq!(Dialect::from_path(&format!("/v1/{}", d.endpoint())), Some(d));
        assert_eq!(d.to_string(), d.as_str());
    }
    assert_eq!(Dialect::from_path("/v1/completions"), Some(Dialect::Completions));
    assert_eq!(Dialect::from_path("/v1/chat/completions"), Some(Dialect::Chat));
    for path in [
        "/v2/messages",
        "/api/v1/messages/count_tokens",
        "/messages",
        "/api/v1/",
        "/api/v1responses",
        "/openai/v1/responses",
    ] {
        assert_eq!(Dialect::from_path(path), None, "{path}");
    }
}

#[tokio::test]
async fn the_mocks_own_errors_take_the_dialects_shape() {
    let up = MockUpstream::new().model("m/x", Reply::ok());
    for dialect in NEW {
        let uri = format!("http://h{}", dialect.path());
        for (body, status, needle) in [
            ("{not json".to_owned(), 400, "Invalid JSON body"),
            (r#"{"input":"hi"}"#.to_owned(), 400, "No model specified"),
            (
                body_of(dialect, "m/nope", json!({})),
                400,
                "m/nope is not a valid model ID",
            ),
        ] {
            let a = send(&up, Request::post(&uri).body(body).unwrap()).await;
            assert_eq!(a.status, status, "{dialect}");
            match dialect {
                Dialect::Responses | Dialect::Embeddings => {
                    let e = openai_error(&a);
                    assert!(e.message.starts_with(needle), "{dialect}: {}", e.message);
                    assert_eq!(e.r#type.as_deref(), Some("invalid_request_error"));
                    assert_eq!(e.code.as_deref(), Some("invalid_prompt"));
                }
                Dialect::Messages => {
                    let e = anthropic_error(&a);
                    assert_eq!(e.kind, ErrorTag::Error);
                    assert_eq!(e.error.kind, "invalid_request_error");
                    assert!(e.error.message.starts_with(needle), "{}", e.error.message);
                }
                _ => assert!(a.json()["error"]["message"].as_str().unwrap().starts_with(needle)),
            }
        }
        let get = send(&up, Request::get(&uri).body(String::new()).unwrap()).await;
        assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(get.headers[ALLOW], "POST");
        if dialect == Dialect::Messages {
            assert_eq!(anthropic_error(&get).error.kind, "invalid_request_error");
        }
    }
}

// ===== good answers =====

#[tokio::test]
async fn responses_ok_is_a_completed_response() {
    let a = one(Dialect::Responses, Reply::ok().content("pong now")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers[CONTENT_TYPE], "application/json");
    assert_eq!(a.headers["x-generation-id"], "gen-mock-1");
    let v = a.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["id"], "resp_mock_1");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["error"], Value::Null, "a good answer has error: null, present");
    assert!(v.as_object().unwrap().contains_key("error"));
    assert_eq!(v["incomplete_details"], Value::Null);
    assert_eq!(v["model"], "m/x");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["role"], "assistant");
    assert_eq!(
        v["output"][0]["content"][0],
        json!({"type": "output_text", "text": "pong now", "annotations": [], "logprobs": []})
    );
    assert_eq!(v["usage"]["output_tokens"], 2);
    assert!(v.get("choices").is_none());

    let parsed: OpenAiResponse = serde_json::from_slice(&a.bytes).expect("async-openai reads it");
    assert_eq!(parsed.status, Status::Completed);
    assert_eq!(parsed.output_text().as_deref(), Some("pong now"));
    let usage = parsed.usage.unwrap();
    assert_eq!(usage.total_tokens, usage.input_tokens + usage.output_tokens);
}

#[tokio::test]
async fn messages_ok_is_an_anthropic_message() {
    let a = one(Dialect::Messages, Reply::ok().served_model("m/backup")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-generation-id"], "gen-mock-1");
    let m: AnthropicMessage = serde_json::from_slice(&a.bytes).expect("an Anthropic message");
    assert_eq!(m.id, "msg_mock_1");
    assert_eq!(m.kind, MessageType::Message);
    assert_eq!(m.role, AssistantRole::Assistant);
    assert_eq!(m.model, "m/backup");
    assert_eq!(
        m.content,
        [ContentBlock::Text {
            text: "Hello from m/backup".into()
        }]
    );
    assert_eq!(m.stop_reason, Some(StopReason::EndTurn));
    assert_eq!(m.stop_sequence, None);
    assert_eq!(m.usage.output_tokens, 3);
    assert!(m.usage.input_tokens > 0);
    assert_eq!(m.usage.cache_read_input_tokens, Some(0));
}

#[tokio::test]
async fn completions_ok_is_a_text_completion() {
    let a = one(Dialect::Completions, Reply::ok().content("4").provider("OpenAI")).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["id"], "gen-mock-1");
    assert_eq!(v["provider"], "OpenAI");
    assert_eq!(v["choices"][0]["text"], "4");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0].get("message").is_none());
    let parsed: CreateCompletionResponse = serde_json::from_slice(&a.bytes).expect("async-openai reads it");
    assert_eq!(parsed.choices[0].text, "4");
    assert_eq!(parsed.model, "m/x");
}

#[tokio::test]
async fn length_stops_are_good_answers_in_each_shape() {
    let chat = one(Dialect::Chat, Reply::ok().length_stop()).await.json();
    assert_eq!(chat["choices"][0]["finish_reason"], "length");
    let completion = one(Dialect::Completions, Reply::ok().length_stop()).await.json();
    assert_eq!(completion["choices"][0]["finish_reason"], "length");
    let a = one(Dialect::Responses, Reply::ok().length_stop()).await;
    let v = a.json();
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"], json!({"reason": "max_output_tokens"}));
    assert_eq!(v["error"], Value::Null);
    let parsed: OpenAiResponse = serde_json::from_slice(&a.bytes).unwrap();
    assert_eq!(parsed.status, Status::Incomplete);
    let a = one(Dialect::Messages, Reply::ok().length_stop()).await;
    let m: AnthropicMessage = serde_json::from_slice(&a.bytes).unwrap();
    assert_eq!(m.stop_reason, Some(StopReason::MaxTokens));
}

// ===== embeddings =====

async fn embed(model: &str, extra: Value) -> Answer {
    let up = MockUpstream::new().model(model, Reply::ok());
    send(&up, request(Dialect::Embeddings, model, extra)).await
}

#[tokio::test]
async fn embeddings_give_one_small_unit_vector_per_input() {
    let a = embed("m/e", json!({"input": ["one", "two", "three"]})).await;
    assert_eq!(a.status, 200);
    let parsed: CreateEmbeddingResponse = serde_json::from_slice(&a.bytes).expect("async-openai reads it");
    assert_eq!(parsed.object, "list");
    assert_eq!(parsed.model, "m/e");
    assert_eq!(parsed.data.len(), 3);
    for (i, e) in parsed.data.iter().enumerate() {
        assert_eq!(e.index as usize, i);
        assert_eq!(e.object, "embedding");
        assert_eq!(e.embedding.len(), embeddings::DEFAULT_DIMENSIONS);
        let norm: f32 = e.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length: {norm}");
    }
    assert_ne!(parsed.data[0].embedding, parsed.data[1].embedding);
    assert_eq!(parsed.usage.total_tokens, parsed.usage.prompt_tokens);
    assert!(a.json().get("id").is_none() && a.json().get("error").is_none());

    // A string, or one token array, is one input; an array of token arrays is several.
    for (input, n) in [
        (json!("one"), 1),
        (json!([1, 2, 3]), 1),
        (json!([[1, 2], [3]]), 2),
        (json!([{"content": "an image"}]), 1),
    ] {
        let v = embed("m/e", json!({ "input": input })).await.json();
        assert_eq!(v["data"].as_array().unwrap().len(), n, "{input}");
    }
}

#[tokio::test]
async fn embedding_vectors_are_stable_per_model_and_differ_across_models() {
    let vector = |v: Value| v["data"][0]["embedding"].clone();
    let a1 = vector(embed("m/a", json!({"input": "same text"})).await.json());
    let a2 = vector(embed("m/a", json!({"input": ["same text"]})).await.json());
    let b = vector(embed("m/b", json!({"input": "same text"})).await.json());
    assert_eq!(a1, a2, "the same model embeds the same text the same way");
    assert_ne!(a1, b, "another model's vector space");

    let v = embed("m/a", json!({"input": "x", "dimensions": 3})).await.json();
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn base64_embeddings_decode_to_the_float_vector() {
    let floats = embed("m/e", json!({"input": "hi"})).await;
    let b64 = embed("m/e", json!({"input": "hi", "encoding_format": "base64"})).await;
    let parsed: CreateBase64EmbeddingResponse = serde_json::from_slice(&b64.bytes).unwrap();
    let encoded = &parsed.data[0].embedding.0;
    let expected: Vec<f32> = serde_json::from_value(floats.json()["data"][0]["embedding"].clone()).unwrap();
    let bytes: Vec<u8> = expected.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(*encoded, embeddings::base64_encode(&bytes));
    assert_eq!(embeddings::base64_encode(b"Man"), "TWFu");
    assert_eq!(embeddings::base64_encode(b"Ma"), "TWE=");
    assert_eq!(embeddings::base64_encode(b"M"), "TQ==");
    assert_eq!(embeddings::base64_encode(b""), "");
}

#[tokio::test]
async fn bad_embedding_requests_are_openai_400s_naming_the_param() {
    for (extra, param) in [
        (json!({"input": null}), "input"),
        (json!({"input": []}), "input"),
        (json!({"input": 7}), "input"),
        (json!({"input": [["a"]]}), "input"),
        (json!({"input": [true]}), "input"),
        (json!({"dimensions": 0}), "dimensions"),
        (json!({"dimensions": "8"}), "dimensions"),
        (json!({"encoding_format": "hex"}), "encoding_format"),
    ] {
        let a = embed("m/e", extra.clone()).await;
        assert_eq!(a.status, 400, "{extra}");
        let e = openai_error(&a);
        assert_eq!(e.param.as_deref(), Some(param), "{extra}");
        assert_eq!(e.r#type.as_deref(), Some("invalid_request_error"));
    }
}

// ===== faults =====

#[tokio::test]
async fn statuses_are_each_apis_own_error_with_retry_after() {
    let table: &[(u16, &str, Option<&str>, &str)] = &[
        // status, OpenAI type, OpenAI code, Anthropic type
        (
            400,
            "invalid_request_error",
            Some("invalid_prompt"),
            "invalid_request_error",
        ),
        (
            401,
            "authentication_error",
            Some("invalid_api_key"),
            "authentication_error",
        ),
        (402, "insufficient_quota", Some("insufficient_quota"), "billing_error"),
        (
            403,
            "permission_error",
            Some("content_policy_violation"),
            "permission_error",
        ),
        (404, "invalid_request_error", Some("model_not_found"), "not_found_error"),
        (408, "timeout", Some("timeout"), "timeout_error"),
        (
            413,
            "invalid_request_error",
            Some("request_too_large"),
            "request_too_large",
        ),
        (429, "rate_limit_error", Some("rate_limit_exceeded"), "rate_limit_error"),
        (500, "server_error", Some("server_error"), "api_error"),
        (502, "server_error", Some("server_error"), "api_error"),
        (503, "server_error", Some("server_error"), "api_error"),
        (504, "server_error", Some("server_error"), "timeout_error"),
        (529, "server_error", Some("server_error"), "overloaded_error"),
        (418, "invalid_request_error", None, "invalid_request_error"),
    ];
    for &(code, openai_type, openai_code, anthropic) in table {
        for dialect in NEW {
            let a = one(dialect, Reply::status(code).retry_after(3)).await;
            assert_eq!(a.status.as_u16(), code, "{dialect}");
            assert_eq!(a.headers["retry-after"], "3", "{dialect} {code}");
            assert_eq!(a.headers[CONTENT_TYPE], "application/json");
            assert!(a.headers.get("x-generation-id").is_none());
            match dialect {
                Dialect::Responses | Dialect::Embeddings => {
                    let e = openai_error(&a);
                    assert_eq!(e.r#type.as_deref(), Some(openai_type), "{dialect} {code}");
                    assert_eq!(e.code.as_deref(), openai_code, "{dialect} {code}");
                    assert_eq!(e.param, None);
                    assert!(!e.message.is_empty());
                    assert!(a.json()["error"].get("metadata").is_none());
                }
                Dialect::Messages => {
                    let e = anthropic_error(&a);
                    assert_eq!(e.error.kind, anthropic, "{code}");
                    assert_eq!(e.request_id.as_deref(), Some("req_mock_1"));
                }
                _ => {
                    assert_eq!(a.json()["error"]["code"], code, "completions errors are OpenRouter's");
                }
            }
        }
    }
}

#[tokio::test]
async fn custom_errors_set_the_type_in_each_shape() {
    let reply = || Reply::error(529, "overloaded_error", "Overloaded");
    let e = anthropic_error(&one(Dialect::Messages, reply()).await);
    assert_eq!(
        (e.error.kind.as_str(), e.error.message.as_str()),
        ("overloaded_error", "Overloaded")
    );
    let reply = || Reply::error(429, "insufficient_quota", "You exceeded your current quota");
    let e = openai_error(&one(Dialect::Responses, reply()).await);
    assert_eq!(e.r#type.as_deref(), Some("insufficient_quota"));
    assert_eq!(e.code.as_deref(), Some("insufficient_quota"));
    assert_eq!(e.message, "You exceeded your current quota");
    let v = one(Dialect::Completions, reply()).await.json();
    assert_eq!(v["error"]["metadata"]["error_type"], "insufficient_quota");
}

#[tokio::test]
async fn errors_inside_a_2xx_take_each_shape() {
    // Responses: status "failed" with a non-null error, no output.
    let a = one(Dialect::Responses, Reply::ok_with_error()).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["code"], "server_error");
    assert_eq!(v["output"], json!([]));
    let parsed: OpenAiResponse = serde_json::from_slice(&a.bytes).unwrap();
    assert_eq!(parsed.status, Status::Failed);
    assert!(parsed.error.is_some());

    // Messages: an error body, with 200.
    let a = one(Dialect::Messages, Reply::ok_with_error()).await;
    assert_eq!(a.status, 200);
    assert_eq!(anthropic_error(&a).error.kind, "api_error");

    // Embeddings: an error object, no data.
    let a = one(Dialect::Embeddings, Reply::ok_with_error()).await;
    assert_eq!(a.status, 200);
    assert_eq!(openai_error(&a).code.as_deref(), Some("server_error"));
    assert!(a.json().get("data").is_none());

    // Completions: as chat.
    let v = one(Dialect::Completions, Reply::ok_with_error().raw_message("boom"))
        .await
        .json();
    assert_eq!(v["error"]["code"], 502);
    assert_eq!(v["error"]["metadata"]["raw"], "boom");
    assert!(v.get("choices").is_none());
}

#[tokio::test]
async fn failures_after_generation_began_take_each_shape() {
    let v = one(Dialect::Responses, Reply::finish_reason_error().content("Hel"))
        .await
        .json();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["code"], "server_error");
    assert_eq!(v["output"][0]["status"], "incomplete");
    assert_eq!(v["output"][0]["content"][0]["text"], "Hel");

    let v = one(Dialect::Completions, Reply::finish_reason_error().content("Hel"))
        .await
        .json();
    assert_eq!(v["choices"][0]["finish_reason"], "error");
    assert_eq!(v["choices"][0]["text"], "Hel");
    assert_eq!(v["choices"][0]["error"]["code"], 502);

    let a = one(Dialect::Messages, Reply::finish_reason_error()).await;
    assert_eq!(
        (a.status.as_u16(), anthropic_error(&a).error.kind),
        (200, "api_error".into())
    );
    let a = one(Dialect::Embeddings, Reply::finish_reason_error()).await;
    assert!(a.json().get("data").is_none() && openai_error(&a).message.contains("Provider"));
}

#[tokio::test]
async fn answers_without_their_answer_part() {
    let v = one(Dialect::Responses, Reply::no_choices()).await.json();
    assert_eq!(v["object"], "response");
    assert!(v.get("status").is_none() && v.get("output").is_none(), "{v}");
    let v = one(Dialect::Messages, Reply::no_choices()).await.json();
    assert_eq!(v["type"], "message");
    assert!(v.get("content").is_none() && v.get("stop_reason").is_none(), "{v}");
    let v = one(Dialect::Embeddings, Reply::no_choices()).await.json();
    assert_eq!(v["object"], "list");
    assert!(v.get("data").is_none() && v.get("error").is_none(), "{v}");
    let v = one(Dialect::Completions, Reply::no_choices()).await.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v.get("choices").is_none());
}

#[tokio::test]
async fn raw_and_transport_errors_ignore_the_dialect() {
    for dialect in NEW {
        let a = one(dialect, Reply::raw(502, "text/html", "<html>Bad Gateway</html>")).await;
        assert_eq!((a.status.as_u16(), a.text()), (502, "<html>Bad Gateway</html>"));
        let up = MockUpstream::new().model("m/x", Reply::transport_error());
        assert!(up.clone().oneshot(request(dialect, "m/x", json!({}))).await.is_err());
        assert_eq!(up.requests()[0].dialect, Some(dialect));
    }
}

#[tokio::test(start_paused = true)]
async fn latency_and_hangs_work_in_every_dialect() {
    for dialect in NEW {
        let up = MockUpstream::new().model(
            "m/x",
            Script::sequence([Reply::hang(), Reply::status(529).latency(Duration::from_secs(7))]),
        );
        let hung = tokio::time::timeout(Duration::from_secs(3600), send(&up, request(dialect, "m/x", json!({}))));
        assert!(hung.await.is_err(), "{dialect}: a hang answered");
        let start = tokio::time::Instant::now();
        let a = send(&up, request(dialect, "m/x", json!({}))).await;
        assert_eq!(start.elapsed(), Duration::from_secs(7), "{dialect}");
        assert_eq!(a.status.as_u16(), 529);
        assert_eq!(up.request_count("m/x"), 2);
    }
}

// ===== server-side routing =====

#[tokio::test]
async fn models_fall_back_server_side_in_chat_responses_messages_and_completions() {
    for dialect in [Dialect::Responses, Dialect::Messages, Dialect::Completions] {
        let up = MockUpstream::new()
            .model("m/a", Reply::status(529))
            .model("m/b", Reply::ok_with_error())
            .model("m/c", Reply::ok());
        let req = Request::post(dialect.path())
            .header("x-openrouter-metadata", "enabled")
            .body(body_of(dialect, "m/a", json!({"models": ["m/b", "m/c"]})))
            .unwrap();
        let a = send(&up, req).await;
        assert_eq!(a.status, 200, "{dialect}: {}", a.text());
        let v = a.json();
        assert_eq!(v["model"], "m/c", "{dialect}");
        let attempts: Vec<(String, u64)> = v["openrouter_metadata"]["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["model"].as_str().unwrap().to_owned(), a["status"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            attempts,
            [("m/a".into(), 529), ("m/b".into(), 502), ("m/c".into(), 200)],
            "{dialect}"
        );
        // Once they all fail, the last error is served in the dialect's shape.
        up.set_script("m/c", Reply::status(503));
        let a = send(&up, request(dialect, "m/a", json!({"models": ["m/b", "m/c"]}))).await;
        assert_eq!(a.status, 503, "{dialect}");
        if dialect == Dialect::Messages {
            assert_eq!(anthropic_error(&a).error.kind, "api_error");
        } else if dialect == Dialect::Responses {
            assert_eq!(openai_error(&a).code.as_deref(), Some("server_error"));
        }
    }
}

#[tokio::test]
async fn embeddings_take_provider_preferences_but_refuse_models() {
    let up = MockUpstream::new()
        .provider("m/e", "Azure", Reply::status(503))
        .provider("m/e", "OpenAI", Reply::ok());
    let a = send(&up, request(Dialect::Embeddings, "m/e", json!({}))).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        up.tries_for_provider("m/e", "Azure"),
        1,
        "provider fallback server-side"
    );

    let a = send(
        &up,
        request(Dialect::Embeddings, "m/e", json!({"provider": {"only": ["Azure"]}})),
    )
    .await;
    assert_eq!(a.status, 503);
    assert_eq!(openai_error(&a).r#type.as_deref(), Some("server_error"));

    let a = send(&up, request(Dialect::Embeddings, "m/e", json!({"models": ["m/other"]}))).await;
    assert_eq!(a.status, 400);
    assert!(openai_error(&a).message.contains("'models' is not supported"));
    let a = send(
        &up,
        request(Dialect::Embeddings, "m/e", json!({"provider": {"bogus": 1}})),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(openai_error(&a).message.starts_with("Invalid provider preferences"));
}

#[tokio::test]
async fn routing_errors_take_the_dialects_shape() {
    let up = MockUpstream::new().model("m/a", Reply::ok());
    let a = send(
        &up,
        request(Dialect::Messages, "m/a", json!({"models": ["b", "c", "d", "e"]})),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(
        anthropic_error(&a).error.message,
        "'models' array must have 3 items or fewer"
    );
    let up = MockUpstream::new().provider("m/p", "A", Reply::ok());
    let a = send(
        &up,
        request(Dialect::Responses, "m/p", json!({"provider": {"only": ["Z"]}})),
    )
    .await;
    assert_eq!(a.status, 404);
    let e = openai_error(&a);
    assert_eq!(e.message, "No allowed providers are available for the selected model.");
    assert_eq!(e.code.as_deref(), Some("model_not_found"));
}
