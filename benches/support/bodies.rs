//! Realistic chat-completions request bodies for the benches and tests:
//! a system prompt, many turns, a tool list and unicode, in two flavours.
//!
//! - **prose**: natural-language turns with a newline every line or so
//!   (`\n` escapes every 60–100 bytes) and the odd quoted word;
//! - **escape-dense**: code blocks (string literals, regexes, Windows paths),
//!   tool calls whose `arguments` are JSON inside a JSON string, and
//!   `tool` results that embed JSON documents: a `\"` or `\\` every few bytes.
//!
//! Deterministic (a fixed-seed generator), valid JSON, built by serde_json
//! so the escaping is exactly what a real client sends.
#![allow(dead_code)]

use serde_json::{json, Value};

/// Which flavour of text fills the turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Prose,
    EscapeDense,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Prose => "prose",
            Flavour::EscapeDense => "escape_dense",
        }
    }
}

/// The model every generated body asks for.
pub const REQUESTED_MODEL: &str = "anthropic/claude-3.5-sonnet";
/// A model to rewrite to (different length, so the body changes size).
pub const NEW_MODEL: &str = "openai/gpt-4o-mini";

/// The sizes the issue asks about.
pub const SIZES: [(&str, usize); 4] = [
    ("1KiB", 1 << 10),
    ("64KiB", 64 << 10),
    ("1MiB", 1 << 20),
    ("8MiB", 8 << 20),
];

/// xorshift64*: tiny, fast, deterministic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const WORDS: &[&str] = &[
    "the",
    "model",
    "answer",
    "request",
    "latency",
    "provider",
    "token",
    "context",
    "window",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "that",
    "for",
    "with",
    "as",
    "on",
    "fallback",
    "router",
    "stream",
    "budget",
    "café",
    "naïve",
    "résumé",
    "über",
    "Straße",
    "東京",
    "日本語",
    "テキスト",
    "данные",
    "ελληνικά",
    "🚀",
    "✓",
    "—",
    "…",
    "€12.50",
    "function",
    "retry",
    "timeout",
    "deadline",
    "because",
    "however",
    "therefore",
    "quickly",
    "carefully",
    "system",
];

/// Natural-language text, about `len` bytes, a line break every 60–100 bytes.
pub fn prose(rng: &mut Rng, len: usize) -> String {
    let mut s = String::with_capacity(len + 128);
    let mut line = 0;
    while s.len() < len {
        let w = *rng.pick(WORDS);
        match rng.below(40) {
            0 => {
                s.push('"');
                s.push_str(w);
                s.push('"');
            }
            1 => {
                s.push_str(w);
                s.push(',');
            }
            _ => s.push_str(w),
        }
        line += w.len() + 1;
        if line > 60 + rng.below(40) {
            s.push_str(if rng.below(5) == 0 { ".\n\n" } else { ".\n" });
            line = 0;
        } else {
            s.push(' ');
        }
    }
    s
}

const CODE: &[&str] = &[
    "fn parse(input: &str) -> Result<Value, Error> {",
    "    let re = Regex::new(r\"^\\d{4}-\\d{2}-\\d{2}$\").unwrap();",
    "    println!(\"{}: \\\"{}\\\"\", name, value);",
    "    let path = \"C:\\\\Users\\\\dev\\\\config.json\";",
    "    return json.dumps({\"key\": \"value\", \"n\": 1})",
    "\tif s.starts_with('\"') && s.ends_with('\"') {",
    "    const msg = `Hello, ${user.name}! \\u{1F680}`;",
    "    assert_eq!(escape(\"a\\tb\"), \"a\\\\tb\");",
    "}",
    "    // naïve café: \"quoted\" and 'single' — ✓",
    "    cmd = [\"grep\", \"-E\", \"\\\\b(error|warn)\\\\b\", \"/var/log/app.log\"]",
];

/// Code with string literals, regexes and paths, about `len` bytes.
pub fn code(rng: &mut Rng, len: usize) -> String {
    let mut s = String::with_capacity(len + 128);
    s.push_str("```rust\n");
    while s.len() < len {
        let line = *rng.pick(CODE);
        s.push_str(line);
        s.push('\n');
    }
    s.push_str("```\n");
    s
}

/// A small JSON document (as a `Value`).
pub fn doc(rng: &mut Rng) -> Value {
    json!({
        "id": rng.next_u64() % 100_000,
        "name": *rng.pick(WORDS),
        "tags": [*rng.pick(WORDS), *rng.pick(WORDS), "a \"quoted\" tag"],
        "price": {"amount": (rng.below(100_000) as f64) / 100.0, "currency": "EUR"},
        "path": "C:\\temp\\data.csv",
        "nested": {"ok": rng.below(2) == 0, "note": *rng.pick(WORDS)},
    })
}

fn tool(name: &str, description: &str) -> Value {
    json!({
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to look for, e.g. \"weather in Zürich\""},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                    "units": {"type": "string", "enum": ["metric", "imperial"]},
                    "filters": {"type": "array", "items": {"type": "object", "properties": {
                        "field": {"type": "string"}, "op": {"type": "string", "enum": ["eq", "lt", "gt"]},
                        "value": {}
                    }}}
                },
                "required": ["query"],
                "additionalProperties": false
            }
        }
    })
}

/// One turn (a message object) of the given flavour, about `len` bytes of text.
fn turn(rng: &mut Rng, flavour: Flavour, i: usize, len: usize) -> Value {
    match (flavour, i % 4) {
        (Flavour::Prose, 1 | 3) => json!({"role": "assistant", "content": prose(rng, len)}),
        (Flavour::Prose, _) => json!({"role": "user", "content": prose(rng, len)}),
        (Flavour::EscapeDense, 0) => json!({"role": "user", "content": code(rng, len)}),
        (Flavour::EscapeDense, 1) => {
            let args = json!({"query": prose(rng, 40), "filters": [doc(rng)], "limit": 10}).to_string();
            json!({"role": "assistant", "content": code(rng, len / 2), "tool_calls": [{
                "id": format!("call_{i}"), "type": "function",
                "function": {"name": "search", "arguments": args},
            }]})
        }
        (Flavour::EscapeDense, 2) => {
            let mut docs = Vec::new();
            let mut text = 0;
            while text < len {
                let d = doc(rng);
                text += d.to_string().len();
                docs.push(d);
            }
            json!({"role": "tool", "tool_call_id": format!("call_{}", i - 1), "content": Value::Array(docs).to_string()})
        }
        (Flavour::EscapeDense, _) => json!({"role": "assistant", "content": code(rng, len)}),
    }
}

/// A chat-completions body of about `size` bytes (never less than a minimal
/// request), with `model` first.
pub fn chat_body(flavour: Flavour, size: usize) -> Vec<u8> {
    let mut rng = Rng::new(size as u64 ^ (flavour as u64) << 40);
    let system_len = (size / 16).clamp(200, 4096);
    let system = json!({"role": "system", "content": prose(&mut rng, system_len)});
    let tools = if size >= 16 << 10 {
        vec![
            tool(
                "search",
                "Search the product catalogue — returns at most `limit` items.",
            ),
            tool("weather", "Current weather for a city; “units” defaults to metric."),
            tool("calendar", "Reads the user's calendar (read-only)."),
            tool("run_code", "Runs a Python snippet in a sandbox and returns stdout."),
        ]
    } else {
        vec![
            json!({"type": "function", "function": {"name": "search", "description": "Search the catalogue.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}),
        ]
    };
    let head = format!(r#"{{"model":{},"messages":["#, Value::from(REQUESTED_MODEL));
    let tail = format!(
        r#"],"tools":{},"tool_choice":"auto","temperature":0.7,"max_tokens":1024,"stream":false,"provider":{{"order":["Anthropic","Amazon Bedrock"],"allow_fallbacks":true}},"user":"user-7f3a"}}"#,
        Value::Array(tools)
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(system.to_string().as_bytes());
    let turn_len = (size / 24).clamp(40, 6000);
    let mut i = 0;
    loop {
        let t = turn(&mut rng, flavour, i, turn_len).to_string();
        if i > 0 && out.len() + 1 + t.len() + tail.len() > size {
            break;
        }
        out.push(b',');
        out.extend_from_slice(t.as_bytes());
        i += 1;
    }
    out.extend_from_slice(tail.as_bytes());
    out
}

/// `body` (from [`chat_body`]) asking for `model` instead of
/// [`REQUESTED_MODEL`].
pub fn with_model(body: &[u8], model: &str) -> Vec<u8> {
    let from = format!(r#"{{"model":{}"#, Value::from(REQUESTED_MODEL));
    assert!(body.starts_with(from.as_bytes()), "not a chat_body");
    let mut out = format!(r#"{{"model":{}"#, Value::from(model)).into_bytes();
    out.extend_from_slice(&body[from.len()..]);
    out
}

/// How many bytes of `body` are escapes (`\` + what follows), per thousand.
pub fn escape_density(body: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' {
            n += 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    n * 1000 / body.len().max(1)
}

/// The naive rewrite the crate avoids: parse a DOM, set `model`, serialize.
pub fn naive_rewrite(body: &[u8], model: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).expect("valid JSON");
    v["model"] = Value::from(model);
    serde_json::to_vec(&v).expect("serializes")
}
