//! The buffered-answer inspection of each dialect against serde_json
//! parsing the same body, in the same run.
//!
//! ```text
//! cargo bench --bench inspect
//! ```
//!
//! Each body is a good ~64 KiB answer of its API shape (chat completion,
//! Responses `response`, Anthropic `message`, embeddings `list`, legacy
//! `text_completion`), built by serde_json so its escaping is a real
//! server's. The layer reads it once, in `Dialect::inspect` (reached through
//! `__private::inspect_answer`, the engine's own function); the baseline is
//! `serde_json::from_slice::<Value>`, what a proxy that parses answers does.
//! The target is at least 5x faster than the parse. After criterion's
//! groups, a table gives the speed-up from alternating batches of the two
//! arms (robust to load on the other core).
//!
//! `INSPECT_PROFILE=N` instead reads the mock upstream's small chat answer
//! (~330 bytes, what `benches/e2e.rs` gets back) `N` times and exits, for
//! callgrind: per answer = (run at N2 − run at N1) / (N2 − N1).
//!
//! ```text
//! cargo bench --bench inspect --no-run
//! INSPECT_PROFILE=1000 valgrind --tool=callgrind target/release/deps/inspect-<hash>
//! ```

#[path = "support/summary.rs"]
mod summary;

use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use llm_fallback::Dialect;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SIZE: usize = 64 << 10;

const DIALECTS: [Dialect; 5] = [
    Dialect::Chat,
    Dialect::Responses,
    Dialect::Messages,
    Dialect::Embeddings,
    Dialect::Completions,
];

/// Prose with a newline escape every sentence or so and the odd quote.
fn text(len: usize) -> String {
    let words = [
        "the",
        "model",
        "answered",
        "with",
        "a",
        "long",
        "\"quoted\"",
        "explanation",
        "of",
        "fallbacks,",
        "timeouts",
        "and",
        "streams.\n",
    ];
    let mut out = String::with_capacity(len + 16);
    let mut i = 0usize;
    while out.len() < len {
        out.push_str(words[i % words.len()]);
        out.push(' ');
        i = i.wrapping_mul(31).wrapping_add(7) % 1009;
    }
    out
}

fn body(dialect: Dialect) -> Vec<u8> {
    let t = text(SIZE);
    let v: Value = match dialect {
        Dialect::Chat => json!({
            "id": "gen-1", "object": "chat.completion", "created": 1, "model": "m/1", "provider": "P",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2000, "total_tokens": 2010}
        }),
        Dialect::Responses => json!({
            "id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": "m/1",
            "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": t, "annotations": []}]}],
            "usage": {"input_tokens": 10, "output_tokens": 2000, "total_tokens": 2010}
        }),
        Dialect::Messages => json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m/1",
            "content": [{"type": "text", "text": t}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 2000}
        }),
        Dialect::Embeddings => {
            // Vectors as a server prints them: ~9 bytes per float.
            let floats: Vec<f64> = (0..SIZE / 9).map(|i| ((i as f64) * 0.618).sin() * 0.5).collect();
            json!({"object": "list", "model": "m/1",
                "data": [{"object": "embedding", "index": 0, "embedding": floats}],
                "usage": {"prompt_tokens": 10, "total_tokens": 10}})
        }
        Dialect::Completions => json!({
            "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m/1",
            "choices": [{"text": t, "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2000, "total_tokens": 2010}
        }),
        _ => unreachable!("a dialect this bench does not know"),
    };
    serde_json::to_vec(&v).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("inspect_64KiB");
    for dialect in DIALECTS {
        let body = body(dialect);
        assert!(
            llm_fallback::__private::inspect_answer(dialect, &body),
            "{dialect:?}: a good answer"
        );
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("layer", dialect.as_str()), &body, |b, body| {
            b.iter(|| llm_fallback::__private::inspect_answer(dialect, black_box(body)))
        });
        group.bench_with_input(BenchmarkId::new("serde_json", dialect.as_str()), &body, |b, body| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(body)).unwrap())
        });
    }
    group.finish();
}

/// The speed-up measured so that load from elsewhere falls on both arms
/// alike: batches of the layer and of serde_json alternate, and the fastest
/// batch of each counts (criterion's means above run one arm after the
/// other, so a busy second core skews their ratio).
fn interleaved() {
    const ROUNDS: usize = 40;
    println!("\ninspect summary (fastest of {ROUNDS} alternating batches)");
    println!("| dialect | layer | serde_json Value | speed-up |\n|---|---|---|---|");
    for dialect in DIALECTS {
        let body = body(dialect);
        let batch = |f: &mut dyn FnMut()| {
            let start = Instant::now();
            for _ in 0..10 {
                f();
            }
            start.elapsed() / 10
        };
        let (mut layer, mut serde) = (Duration::MAX, Duration::MAX);
        for _ in 0..ROUNDS {
            layer = layer.min(batch(&mut || {
                black_box(llm_fallback::__private::inspect_answer(dialect, black_box(&body)));
            }));
            serde = serde.min(batch(&mut || {
                black_box(serde_json::from_slice::<Value>(black_box(&body)).unwrap());
            }));
        }
        println!(
            "| {} | {:.2} µs | {:.2} µs | {:.1}× |",
            dialect.as_str(),
            layer.as_secs_f64() * 1e6,
            serde.as_secs_f64() * 1e6,
            serde.as_secs_f64() / layer.as_secs_f64()
        );
    }
}

/// The mock upstream's answer to the e2e bench's request, byte for byte
/// but for the id and the time.
const MOCK_CHAT: &[u8] = br#"{"id":"gen-mock-1","provider":"MockProvider","model":"openai/gpt-4o-mini","object":"chat.completion","created":1796150000,"choices":[{"index":0,"logprobs":null,"finish_reason":"stop","native_finish_reason":"stop","message":{"role":"assistant","content":"Hello from openai/gpt-4o-mini","refusal":null}}],"usage":{"prompt_tokens":262,"completion_tokens":3,"total_tokens":265}}"#;

/// `INSPECT_PROFILE=N`: the small answer `N` times, nothing else.
fn profile(count: usize) {
    let mut good = 0usize;
    for _ in 0..count {
        good += usize::from(llm_fallback::__private::inspect_answer(
            Dialect::Chat,
            black_box(MOCK_CHAT),
        ));
    }
    assert_eq!(good, count, "the mock's answer is a good one");
}

fn main() {
    if let Some(count) = std::env::var("INSPECT_PROFILE").ok().and_then(|n| n.parse().ok()) {
        return profile(count);
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    if summary::measuring() {
        interleaved();
    }
}
