//! No allocation proportional to the body: a counting global allocator
//! (this test binary's own) measures what one rewrite, and one request
//! through the layer, allocate, for bodies from 1 KiB to 8 MiB.

#[path = "../benches/support/bodies.rs"]
mod bodies;
#[path = "../benches/support/instant.rs"]
mod instant;

use bodies::{chat_body, Flavour, NEW_MODEL, REQUESTED_MODEL, SIZES};
use bytes::Bytes;
use http_body::Body;
use llm_fallback::{Chain, FallbackLayer, Route};
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, ServiceExt};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

/// Bytes allocated by this thread while `f` runs.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = counting_alloc::allocated();
    let out = f();
    (counting_alloc::allocated() - before, out)
}

struct NoWake;
impl std::task::Wake for NoWake {
    fn wake(self: std::sync::Arc<Self>) {}
}

/// Polls every frame of a replay body (always ready) and returns its length.
fn send(mut body: llm_fallback::ReplayBody) -> usize {
    let waker = std::sync::Arc::new(NoWake).into();
    let mut cx = Context::from_waker(&waker);
    let mut len = 0;
    while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
        len += frame.unwrap().into_data().unwrap().len();
    }
    len
}

/// What one rewrite may allocate besides the new model's literal: the
/// decoded requested model and a few words of bookkeeping.
const SLACK: usize = 64;

#[test]
fn a_rewrite_allocates_the_new_model_and_nothing_proportional_to_the_body() {
    for flavour in [Flavour::Prose, Flavour::EscapeDense] {
        for (name, size) in SIZES {
            let body = Bytes::from(chat_body(flavour, size));
            // The first slice of a `Bytes` made from a `Vec` allocates its
            // shared header once; that is the caller's buffer, not a rewrite.
            drop(body.clone());
            for model in [NEW_MODEL, "m", &"vendor/".repeat(200)] {
                // The layer builds its routes once, not per request.
                let route = llm_fallback::__private::Compiled::new(llm_fallback::Route::new(model));
                let (bytes, sent) = allocated_by(|| {
                    let replay = llm_fallback::__private::rewrite_for(&body, &route).unwrap();
                    send(replay)
                });
                assert_eq!(sent, body.len() - REQUESTED_MODEL.len() + model.len());
                if model == NEW_MODEL {
                    println!("{} {name}: one rewrite allocated {bytes} bytes", flavour.name());
                }
                assert!(
                    bytes <= model.len() + 2 + REQUESTED_MODEL.len() + SLACK,
                    "{} {name}: rewriting to a {}-byte model allocated {bytes} bytes",
                    flavour.name(),
                    model.len()
                );
            }
        }
    }
}

/// A route with one override of each kind on `chat_body`: `max_tokens`
/// replaced, `service_tier` inserted, `user` removed.
fn with_overrides(model: &str) -> Route {
    Route::new(model)
        .set("max_tokens", 512)
        .set("service_tier", "flex")
        .remove("user")
}

#[test]
fn overrides_allocate_nothing_proportional_to_the_body() {
    for flavour in [Flavour::Prose, Flavour::EscapeDense] {
        let mut seen = None;
        for (name, size) in SIZES {
            let body = Bytes::from(chat_body(flavour, size));
            drop(body.clone());
            let route = llm_fallback::__private::Compiled::new(with_overrides(NEW_MODEL));
            let (bytes, sent) = allocated_by(|| {
                let replay = llm_fallback::__private::rewrite_for(&body, &route).unwrap();
                send(replay)
            });
            // `"max_tokens":1024` -> 512, `"service_tier":"flex",` in, `,"user":"user-7f3a"` out.
            let want = body.len() - REQUESTED_MODEL.len() + NEW_MODEL.len() - 1 + 22 - 19;
            assert_eq!(sent, want, "{} {name}", flavour.name());
            println!(
                "{} {name}: one rewrite with 3 overrides allocated {bytes} bytes",
                flavour.name()
            );
            // The index's decoded model and the edit list (a few words per
            // edit), the same for every size.
            assert!(
                bytes <= REQUESTED_MODEL.len() + 512 + SLACK,
                "{} {name}: {bytes} bytes",
                flavour.name()
            );
            assert_eq!(
                *seen.get_or_insert(bytes),
                bytes,
                "{} {name}: allocation grew with the body",
                flavour.name()
            );
        }
    }
}

/// Bytes one request through the layer allocates, inner service included.
fn per_request(rt: &tokio::runtime::Runtime, body: &Bytes, fail_first: usize) -> usize {
    per_request_on(rt, body, fail_first, |m| Route::new(m))
}

/// [`per_request`] with routes made by `route`.
fn per_request_on(rt: &tokio::runtime::Runtime, body: &Bytes, fail_first: usize, route: fn(&str) -> Route) -> usize {
    let chain = Chain::new([route("a/primary"), route("b/secondary"), route(NEW_MODEL)]);
    let svc = FallbackLayer::new(chain).layer(instant::Instant::new(fail_first));
    // Warm up (lazy statics, tracing callsites) before counting.
    rt.block_on(async { instant::drain(svc.clone().oneshot(instant::request(body)).await.unwrap()).await });
    let req = instant::request(body);
    let (bytes, ()) = allocated_by(|| rt.block_on(async { instant::drain(svc.oneshot(req).await.unwrap()).await }));
    bytes
}

#[test]
fn the_layer_allocates_the_same_for_1_kib_and_8_mib() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for fail_first in [0, 2] {
        let small = per_request(&rt, &Bytes::from(chat_body(Flavour::Prose, 1 << 10)), fail_first);
        for flavour in [Flavour::Prose, Flavour::EscapeDense] {
            let large = per_request(&rt, &Bytes::from(chat_body(flavour, 8 << 20)), fail_first);
            println!(
                "{} failures, {}: 1 KiB body {small} bytes allocated, 8 MiB body {large}",
                fail_first,
                flavour.name()
            );
            assert!(
                large <= small + 1024,
                "with {fail_first} failures an 8 MiB {} body allocated {large} bytes, a 1 KiB one {small}",
                flavour.name()
            );
            // The whole request (report, headers, spans, the inner service's
            // own work) stays small, far from a copy of any body.
            assert!(large < 64 << 10, "{large} bytes allocated for one request");
        }
    }
}

#[test]
fn the_layer_with_overrides_allocates_the_same_for_1_kib_and_8_mib() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for fail_first in [0, 2] {
        let small = per_request_on(
            &rt,
            &Bytes::from(chat_body(Flavour::Prose, 1 << 10)),
            fail_first,
            with_overrides,
        );
        let large = per_request_on(
            &rt,
            &Bytes::from(chat_body(Flavour::EscapeDense, 8 << 20)),
            fail_first,
            with_overrides,
        );
        println!("{fail_first} failures, with overrides: 1 KiB body {small} bytes allocated, 8 MiB body {large}");
        assert!(
            large <= small + 1024,
            "with {fail_first} failures: 8 MiB {large} bytes, 1 KiB {small}"
        );
        assert!(large < 64 << 10, "{large} bytes allocated for one request");
    }
}
