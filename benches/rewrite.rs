//! Rewriting the `model` of realistic chat bodies, against the naive way
//! (`serde_json::from_slice::<Value>` → set `model` → `to_vec`), for prose
//! and escape-dense bodies from 1 KiB to 8 MiB.
//!
//! ```text
//! cargo bench --bench rewrite
//! ```
//!
//! `llm_fallback` is the whole rewrite as the layer does it: validate the
//! top level, find the one `model`, skip everything nested, and build the
//! `ReplayBody` that is sent (which shares the caller's buffer). After the
//! groups, a table gives the speed-up and the scan rate in GB/s.
//!
//! `unchanged`, `model` (= `llm_fallback`) and `model_override` price the
//! edits themselves, in the same run: a route whose model is the caller's
//! (no edit), a model rewrite, and a model rewrite plus one override
//! (`max_tokens` replaced, [`Route::set`](llm_fallback::Route::set)). The
//! second table gives the model edit (`model - unchanged`) and the override
//! edit (`model_override - model`).
//!
//! For an instruction counter (a loaded machine disturbs wall time, not
//! instructions), `REWRITE_PROFILE=<arm>:<flavour>:<size>` runs only
//! `REWRITE_COUNT` (default 1000) rewrites of one arm (`unchanged`,
//! `model`, `model_override`) on one body (`prose` / `escape_dense`,
//! `1KiB` ...). Per rewrite = the difference of two counts over the
//! difference of their `REWRITE_COUNT`s:
//!
//! ```text
//! B=$(ls -t target/release/deps/rewrite-* | grep -v '\.d$' | head -1)
//! for n in 1000 2000; do
//!   REWRITE_PROFILE=model_override:prose:1KiB REWRITE_COUNT=$n \
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null $B 2>&1 | grep refs
//! done
//! ```

#[path = "support/bodies.rs"]
mod bodies;
#[path = "support/summary.rs"]
mod summary;

use bodies::{chat_body, escape_density, naive_rewrite, Flavour, NEW_MODEL, REQUESTED_MODEL, SIZES};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, SystemTime};

const FLAVOURS: [Flavour; 2] = [Flavour::Prose, Flavour::EscapeDense];

fn group_name(flavour: Flavour) -> String {
    format!("rewrite_{}", flavour.name())
}

fn bench(c: &mut Criterion) {
    for flavour in FLAVOURS {
        let mut group = c.benchmark_group(group_name(flavour));
        for (name, size) in SIZES {
            let body = Bytes::from(chat_body(flavour, size));
            // Sanity: both ways agree before either is timed.
            let ours = futures_collect(&body);
            let naive: serde_json::Value = serde_json::from_slice(&naive_rewrite(&body, NEW_MODEL)).unwrap();
            assert_eq!(serde_json::from_slice::<serde_json::Value>(&ours).unwrap(), naive);

            group.throughput(Throughput::BytesDecimal(body.len() as u64));
            if size >= 1 << 20 {
                group.sample_size(20).measurement_time(Duration::from_secs(4));
            } else {
                group.sample_size(100).measurement_time(Duration::from_secs(3));
            }
            // The route is built once, as the layer builds its chain once.
            let route = llm_fallback::__private::Compiled::new(llm_fallback::Route::new(NEW_MODEL));
            group.bench_with_input(BenchmarkId::new("llm_fallback", name), &body, |b, body| {
                b.iter(|| llm_fallback::__private::rewrite_for(black_box(body), black_box(&route)).unwrap())
            });
            let unchanged = llm_fallback::__private::Compiled::new(llm_fallback::Route::new(REQUESTED_MODEL));
            group.bench_with_input(BenchmarkId::new("unchanged", name), &body, |b, body| {
                b.iter(|| llm_fallback::__private::rewrite_for(black_box(body), black_box(&unchanged)).unwrap())
            });
            let with_override =
                llm_fallback::__private::Compiled::new(llm_fallback::Route::new(NEW_MODEL).set("max_tokens", 512));
            group.bench_with_input(BenchmarkId::new("model_override", name), &body, |b, body| {
                b.iter(|| llm_fallback::__private::rewrite_for(black_box(body), black_box(&with_override)).unwrap())
            });
            group.bench_with_input(BenchmarkId::new("serde_json_value", name), &body, |b, body| {
                b.iter(|| naive_rewrite(black_box(body), black_box(NEW_MODEL)))
            });
        }
        group.finish();
    }
}

/// The rewritten body as one buffer (for the sanity check only).
fn futures_collect(body: &Bytes) -> Vec<u8> {
    use http_body::Body;
    let mut replay = llm_fallback::__private::rewrite_model(body, NEW_MODEL).unwrap();
    struct NoWake;
    impl std::task::Wake for NoWake {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    let waker = std::sync::Arc::new(NoWake).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut out = Vec::with_capacity(replay.len() as usize);
    while let std::task::Poll::Ready(Some(frame)) = std::pin::Pin::new(&mut replay).poll_frame(&mut cx) {
        out.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    out
}

fn summary(since: SystemTime) {
    println!("\nrewrite summary (mean times of this run)");
    println!(
        "| body | size | escapes ‰ | llm_fallback | GB/s | serde_json Value | GB/s | speed-up |\n|---|---|---|---|---|---|---|---|"
    );
    for flavour in FLAVOURS {
        for (name, size) in SIZES {
            let group = group_name(flavour);
            let (Some(ours), Some(naive)) = (
                summary::mean_ns(since, &group, "llm_fallback", name),
                summary::mean_ns(since, &group, "serde_json_value", name),
            ) else {
                continue;
            };
            let body = chat_body(flavour, size);
            let len = body.len() as f64;
            println!(
                "| {} | {name} | {} | {} | {:.2} | {} | {:.3} | {:.1}× |",
                flavour.name(),
                escape_density(&body),
                summary::time(ours),
                len / ours,
                summary::time(naive),
                len / naive,
                naive / ours
            );
        }
    }
}

/// What the model edit and one override edit add to a rewrite.
fn edit_summary(since: SystemTime) {
    println!("\nedit costs (mean times of this run)");
    println!("| body | size | unchanged | model | model + override | model edit | override edit |\n|---|---|---|---|---|---|---|");
    for flavour in FLAVOURS {
        for (name, _) in SIZES {
            let group = group_name(flavour);
            let mean = |id| summary::mean_ns(since, &group, id, name);
            let (Some(none), Some(model), Some(over)) =
                (mean("unchanged"), mean("llm_fallback"), mean("model_override"))
            else {
                continue;
            };
            println!(
                "| {} | {name} | {} | {} | {} | {:+.0} ns | {:+.0} ns |",
                flavour.name(),
                summary::time(none),
                summary::time(model),
                summary::time(over),
                model - none,
                over - model
            );
        }
    }
}

/// The route of each arm (see the module docs).
fn arm_route(arm: &str) -> Option<llm_fallback::Route> {
    Some(match arm {
        "unchanged" => llm_fallback::Route::new(REQUESTED_MODEL),
        "model" => llm_fallback::Route::new(NEW_MODEL),
        "model_override" => llm_fallback::Route::new(NEW_MODEL).set("max_tokens", 512),
        _ => return None,
    })
}

/// `REWRITE_PROFILE=<arm>:<flavour>:<size>`: `REWRITE_COUNT` rewrites of
/// one arm and nothing else, for `valgrind --tool=callgrind`.
fn profile(spec: &str) {
    let mut parts = spec.split(':');
    let (Some(arm), Some(flavour), Some(size)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("REWRITE_PROFILE={spec}: expected <arm>:<flavour>:<size>");
    };
    let route =
        arm_route(arm).unwrap_or_else(|| panic!("REWRITE_PROFILE: arm {arm:?}: unchanged, model or model_override"));
    let flavour = FLAVOURS
        .into_iter()
        .find(|f| f.name() == flavour)
        .unwrap_or_else(|| panic!("REWRITE_PROFILE: flavour {flavour:?}: prose or escape_dense"));
    let (_, size) = SIZES
        .into_iter()
        .find(|(name, _)| *name == size)
        .unwrap_or_else(|| panic!("REWRITE_PROFILE: size {size:?}: 1KiB, 64KiB, 1MiB or 8MiB"));
    let n: usize = std::env::var("REWRITE_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let body = Bytes::from(chat_body(flavour, size));
    let route = llm_fallback::__private::Compiled::new(route);
    for _ in 0..n {
        drop(black_box(
            llm_fallback::__private::rewrite_for(black_box(&body), black_box(&route)).unwrap(),
        ));
    }
}

fn main() {
    if let Ok(spec) = std::env::var("REWRITE_PROFILE") {
        return profile(&spec);
    }
    let since = SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    if summary::measuring() {
        summary(since);
        edit_summary(since);
    }
}
