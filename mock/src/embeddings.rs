//! What an embeddings request asks for, and the small deterministic vectors
//! the mock answers with.

use serde_json::{Map, Value};

/// Dimensions of a vector when the request does not set `dimensions`.
pub(super) const DEFAULT_DIMENSIONS: usize = 8;
/// The most `dimensions` the mock accepts (text-embedding-3-large's).
const MAX_DIMENSIONS: usize = 3072;

/// The `input`, `dimensions` and `encoding_format` of a valid embeddings
/// request.
#[derive(Debug, Clone)]
pub(super) struct EmbeddingRequest {
    /// One entry per vector to make: the input's JSON text (a string, a
    /// token array, an object), which the vector is derived from.
    pub(super) inputs: Vec<String>,
    pub(super) dimensions: usize,
    pub(super) base64: bool,
}

/// Reads an embeddings body the way the OpenAI API checks it; `Err` holds
/// the 400's message and the offending parameter.
///
/// `input` is a string or token array (one vector), or an array of strings,
/// token arrays or objects (one vector each; OpenRouter also takes objects
/// with `content` for multimodal models).
pub(super) fn read(body: &Map<String, Value>) -> Result<EmbeddingRequest, (String, &'static str)> {
    let invalid = |what: &str| {
        (
            format!("Invalid 'input': {what}; expected a string, an array of strings, an array of token ids or an array of token id arrays"),
            "input",
        )
    };
    let input = body.get("input").unwrap_or(&Value::Null);
    let inputs = match input {
        Value::Null => return Err(("'input' is a required property".to_owned(), "input")),
        Value::String(_) => vec![text(input)],
        Value::Array(items) if items.is_empty() => return Err(invalid("empty array")),
        Value::Array(items) if items.iter().all(Value::is_number) => vec![text(input)],
        Value::Array(items) => {
            let mut inputs = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(_) | Value::Object(_) => inputs.push(text(item)),
                    Value::Array(tokens) if !tokens.is_empty() && tokens.iter().all(Value::is_number) => {
                        inputs.push(text(item));
                    }
                    other => return Err(invalid(&format!("found {other}"))),
                }
            }
            inputs
        }
        other => return Err(invalid(&format!("found {other}"))),
    };
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(v) => match v.as_u64() {
            Some(n @ 1..) if n as usize <= MAX_DIMENSIONS => n as usize,
            _ => {
                let message = format!("Invalid 'dimensions': {v}; expected an integer from 1 to {MAX_DIMENSIONS}");
                return Err((message, "dimensions"));
            }
        },
    };
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            let message = format!("Invalid 'encoding_format': {other}; expected \"float\" or \"base64\"");
            return Err((message, "encoding_format"));
        }
    };
    Ok(EmbeddingRequest {
        inputs,
        dimensions,
        base64,
    })
}

fn text(value: &Value) -> String {
    value.to_string()
}

/// A unit vector of `dimensions` floats (rounded to 6 decimals), the same
/// for the same model and input, different for another model: the vectors
/// of two models are not comparable, as with real embedding models.
pub(super) fn vector(model: &str, input: &str, dimensions: usize) -> Vec<f64> {
    // FNV-1a over the model and the input, then xorshift64* per dimension.
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in model.bytes().chain([0]).chain(input.bytes()) {
        seed ^= u64::from(byte);
        seed = seed.wrapping_mul(0x0100_0000_01b3);
    }
    let mut state = seed | 1;
    let raw: Vec<f64> = (0..dimensions)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
            // 53 random bits mapped onto [-1, 1).
            (bits as f64 / (1u64 << 52) as f64) - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    raw.iter().map(|x| ((x / norm) * 1e6).round() / 1e6).collect()
}

/// The `embedding` field of one vector: an array of floats, or (for
/// `encoding_format: "base64"`) the base64 of its little-endian `f32`s, as
/// the OpenAI API sends it.
pub(super) fn encode(vector: &[f64], base64: bool) -> Value {
    if !base64 {
        return Value::from(vector.to_vec());
    }
    let bytes: Vec<u8> = vector.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
    Value::from(base64_encode(&bytes))
}

/// Standard base64 with padding (RFC 4648).
pub(super) fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
