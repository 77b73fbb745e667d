//! The buffered answers of each dialect: a good answer, one without its
//! answer part, an error inside a 2xx, and a generation that failed after
//! it began.

use serde_json::{json, Map, Value};

use super::dialect::{openrouter_error, Dialect};
use super::embeddings::{self, EmbeddingRequest};

/// What every buffered answer of one reply is made from.
#[derive(Debug)]
pub(super) struct Answer<'a> {
    pub(super) dialect: Dialect,
    /// `n` of `gen-mock-<n>`, `resp_mock_<n>`, `msg_mock_<n>`.
    pub(super) generation: u64,
    pub(super) provider: &'a str,
    /// The model the answer names (the tried one, or the reply's
    /// [`served_model`](super::Reply::served_model)).
    pub(super) model: &'a str,
    pub(super) created: u64,
    pub(super) prompt_tokens: u64,
    /// The answer stops at the token limit ([`Reply::length_stop`](super::Reply::length_stop)).
    pub(super) length_stop: bool,
    pub(super) embedding: Option<&'a EmbeddingRequest>,
}

impl Answer<'_> {
    fn gen_id(&self) -> String {
        format!("gen-mock-{}", self.generation)
    }

    /// The fields OpenRouter's chat and completions bodies start with.
    fn envelope(&self) -> Map<String, Value> {
        let object = match self.dialect {
            Dialect::Completions => "text_completion",
            _ => "chat.completion",
        };
        let mut m = Map::new();
        m.insert("id".into(), Value::from(self.gen_id()));
        m.insert("provider".into(), Value::from(self.provider));
        m.insert("model".into(), Value::from(self.model));
        m.insert("object".into(), Value::from(object));
        m.insert("created".into(), Value::from(self.created));
        m
    }

    pub(super) fn completion_tokens(text: &str) -> u64 {
        text.split_whitespace().count() as u64
    }

    /// Chat and completions `usage`.
    fn openrouter_usage(&self, text: &str) -> Value {
        let completion = Self::completion_tokens(text);
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    fn finish_reason(&self) -> &'static str {
        if self.length_stop {
            "length"
        } else {
            "stop"
        }
    }

    /// The `choices[0]` of chat or completions.
    fn choice(&self, text: &str, finish_reason: &str, error: Option<Value>) -> Value {
        let mut choice = Map::new();
        choice.insert("index".into(), Value::from(0));
        if self.dialect == Dialect::Completions {
            choice.insert("text".into(), Value::from(text));
        }
        choice.insert("logprobs".into(), Value::Null);
        choice.insert("finish_reason".into(), Value::from(finish_reason));
        choice.insert("native_finish_reason".into(), Value::from(finish_reason));
        if self.dialect != Dialect::Completions {
            choice.insert(
                "message".into(),
                json!({"role": "assistant", "content": text, "refusal": null}),
            );
        }
        if let Some(error) = error {
            choice.insert("error".into(), error);
        }
        Value::Object(choice)
    }

    /// A good answer with `text`.
    pub(super) fn good(&self, text: &str, metadata: Option<&Value>) -> Value {
        let mut body = match self.dialect {
            Dialect::Chat | Dialect::Completions => {
                let mut body = self.envelope();
                body.insert("choices".into(), json!([self.choice(text, self.finish_reason(), None)]));
                body.insert("usage".into(), self.openrouter_usage(text));
                body
            }
            Dialect::Responses => {
                let (status, incomplete) = if self.length_stop {
                    ("incomplete", json!({"reason": "max_output_tokens"}))
                } else {
                    ("completed", Value::Null)
                };
                let output = json!([self.response_message(text, status)]);
                let usage = self.response_usage(Self::completion_tokens(text));
                self.response(status, output, usage, Value::Null, incomplete)
            }
            Dialect::Messages => {
                let stop_reason = if self.length_stop { "max_tokens" } else { "end_turn" };
                let mut body = self.message_head(json!([{"type": "text", "text": text}]), Value::from(stop_reason));
                body.insert("usage".into(), self.message_usage(Self::completion_tokens(text)));
                body
            }
            Dialect::Embeddings => {
                let mut body = self.embedding_head();
                body.insert("data".into(), self.embedding_data());
                body.insert("usage".into(), self.embedding_usage());
                body
            }
        };
        if let Some(metadata) = metadata {
            body.insert("openrouter_metadata".into(), metadata.clone());
        }
        Value::Object(body)
    }

    /// Valid JSON without the answer part: no `choices` (chat,
    /// completions), no `status` or `output` (Responses), no `content` or
    /// `stop_reason` (Messages), no `data` (embeddings).
    pub(super) fn without_answer(&self) -> Value {
        let body = match self.dialect {
            Dialect::Chat | Dialect::Completions => {
                let mut body = self.envelope();
                body.insert("usage".into(), self.openrouter_usage(""));
                body
            }
            Dialect::Responses => {
                let mut body = self.response("", Value::Null, self.response_usage(0), Value::Null, Value::Null);
                body.remove("status");
                body.remove("output");
                body
            }
            Dialect::Messages => {
                let mut body = self.message_head(Value::Null, Value::Null);
                body.remove("content");
                body.remove("stop_reason");
                body.insert("usage".into(), self.message_usage(0));
                body
            }
            Dialect::Embeddings => {
                let mut body = self.embedding_head();
                body.insert("usage".into(), self.embedding_usage());
                body
            }
        };
        Value::Object(body)
    }

    /// A 2xx whose body is an error, in the dialect's shape.
    /// `openrouter_metadata` is the `error.metadata` of chat and completions.
    pub(super) fn error_in_2xx(&self, openrouter_metadata: Value) -> Value {
        const MESSAGE: &str = "Provider returned error";
        match self.dialect {
            Dialect::Chat | Dialect::Completions => openrouter_error(502, MESSAGE, Some(openrouter_metadata)),
            Dialect::Responses => Value::Object(self.failed_response::<&str>(&[], MESSAGE)),
            Dialect::Messages => json!({
                "type": "error",
                "error": {"type": "api_error", "message": MESSAGE},
                "request_id": format!("req_mock_{}", self.generation),
            }),
            Dialect::Embeddings => json!({"error": {
                "message": MESSAGE,
                "type": "server_error",
                "param": null,
                "code": "server_error",
            }}),
        }
    }

    /// A generation that failed after it began, with the `partial` text:
    /// chat and completions `finish_reason: "error"` with `choices[0].error`;
    /// Responses `status: "failed"` with the partial output; Messages and
    /// embeddings have no such answer and get [`error_in_2xx`](Self::error_in_2xx).
    pub(super) fn failed_after_start(&self, partial: &str, openrouter_metadata: Value) -> Value {
        match self.dialect {
            Dialect::Chat | Dialect::Completions => {
                let mut body = self.envelope();
                let error = json!({"code": 502, "message": "Provider returned error"});
                body.insert("choices".into(), json!([self.choice(partial, "error", Some(error))]));
                body.insert("usage".into(), self.openrouter_usage(partial));
                Value::Object(body)
            }
            Dialect::Responses => Value::Object(self.failed_response(&[partial], "Provider returned error")),
            Dialect::Messages | Dialect::Embeddings => self.error_in_2xx(openrouter_metadata),
        }
    }

    // ----- Responses -----

    /// `resp_mock_<n>`.
    pub(super) fn response_id(&self) -> String {
        format!("resp_mock_{}", self.generation)
    }

    /// `msg_mock_<n>`: the output message of a response, or a Messages id.
    pub(super) fn message_id(&self) -> String {
        format!("msg_mock_{}", self.generation)
    }

    /// A Responses `response` object.
    pub(super) fn response(
        &self,
        status: &str,
        output: Value,
        usage: Value,
        error: Value,
        incomplete_details: Value,
    ) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), Value::from(self.response_id()));
        m.insert("object".into(), Value::from("response"));
        m.insert("created_at".into(), Value::from(self.created));
        m.insert("status".into(), Value::from(status));
        m.insert("error".into(), error);
        m.insert("incomplete_details".into(), incomplete_details);
        m.insert("model".into(), Value::from(self.model));
        m.insert("output".into(), output);
        m.insert("usage".into(), usage);
        m
    }

    /// The `response` of a failed generation: `status: "failed"`, an
    /// `error` `{code: "server_error", message}`, and the output so far
    /// (none when the parts of `partial` are all empty).
    pub(super) fn failed_response<S: AsRef<str>>(&self, partial: &[S], message: &str) -> Map<String, Value> {
        let text: String = partial.iter().map(AsRef::as_ref).collect();
        let output = if text.is_empty() {
            json!([])
        } else {
            json!([self.response_message(&text, "incomplete")])
        };
        let error = json!({"code": "server_error", "message": message});
        let usage = self.response_usage(Self::completion_tokens(&text));
        self.response("failed", output, usage, error, Value::Null)
    }

    /// An output `message` item with one `output_text` part.
    pub(super) fn response_message(&self, text: &str, status: &str) -> Value {
        json!({
            "type": "message",
            "id": self.message_id(),
            "status": status,
            "role": "assistant",
            "content": [self.output_text(text)],
        })
    }

    /// An `output_text` content part.
    pub(super) fn output_text(&self, text: &str) -> Value {
        json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    }

    /// Responses `usage`, its `*_details` included (the OpenAI SDKs require them).
    pub(super) fn response_usage(&self, output: u64) -> Value {
        json!({
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt_tokens + output,
        })
    }

    // ----- Messages -----

    /// A Messages `message` without `usage`.
    pub(super) fn message_head(&self, content: Value, stop_reason: Value) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), Value::from(self.message_id()));
        m.insert("type".into(), Value::from("message"));
        m.insert("role".into(), Value::from("assistant"));
        m.insert("model".into(), Value::from(self.model));
        m.insert("content".into(), content);
        m.insert("stop_reason".into(), stop_reason);
        m.insert("stop_sequence".into(), Value::Null);
        m
    }

    /// Messages `usage`.
    pub(super) fn message_usage(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        })
    }

    // ----- Embeddings -----

    fn embedding_head(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("object".into(), Value::from("list"));
        m.insert("model".into(), Value::from(self.model));
        m
    }

    fn embedding_data(&self) -> Value {
        let Some(request) = self.embedding else {
            return json!([]);
        };
        let data: Vec<Value> = request
            .inputs
            .iter()
            .enumerate()
            .map(|(index, input)| {
                let vector = embeddings::vector(self.model, input, request.dimensions);
                json!({
                    "object": "embedding",
                    "index": index,
                    "embedding": embeddings::encode(&vector, request.base64),
                })
            })
            .collect();
        Value::from(data)
    }

    fn embedding_usage(&self) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens})
    }
}
