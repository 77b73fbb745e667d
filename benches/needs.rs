//! What reading a request's needs adds to the rewrite: a 1 MiB chat body
//! with images, tools and a long history, scanned + rewritten (the
//! baseline) against scanned + rewritten + needs detected, in the same run.
//!
//! ```text
//! cargo bench --bench needs
//! ```
//!
//! Target: detection adds at most 20 % to the rewrite's time.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use llm_fallback::__private::{detect_needs, rewrite_for, rewrite_with_needs};
use serde_json::json;

fn body() -> Bytes {
    let mut messages =
        vec![json!({"role": "system", "content": "You are a careful assistant. Use the tools when they help."})];
    let image = format!("data:image/jpeg;base64,{}", "/9j/4AAQSkZJRgABAQAAAQABAAD".repeat(4_000)); // ~108 KB
    let mut turn = 0;
    while serde_json::to_vec(&messages).unwrap().len() < 1024 * 1024 - 120_000 {
        turn += 1;
        messages.push(json!({"role": "user", "content": [
            {"type": "text", "text": format!("Turn {turn}: here is a photo of the \"whiteboard\" — what changed since the last one?\nList the differences.")},
            {"type": "image_url", "image_url": {"url": image, "detail": "low"}}
        ]}));
        messages.push(json!({"role": "assistant", "content": format!("In turn {turn} the diagram gained a box labelled “cache” and an arrow to the database.\nNothing else moved.")}));
    }
    let tools: Vec<_> = (0..20)
        .map(|i| {
            json!({"type": "function", "function": {"name": format!("tool_{i}"), "description": "Looks things up.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}})
        })
        .collect();
    let body =
        json!({"model": "openai/gpt-4o", "messages": messages, "tools": tools, "max_tokens": 1000, "temperature": 0.2});
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

fn bench(c: &mut Criterion) {
    let body = body();
    let needs = detect_needs(&body).unwrap();
    assert!(needs
        .capabilities
        .contains(llm_fallback::Capabilities::VISION | llm_fallback::Capabilities::TOOLS));
    let route = llm_fallback::__private::Compiled::new(llm_fallback::Route::new("anthropic/claude-3.5-sonnet"));
    let mut group = c.benchmark_group("needs_1MiB_images_tools");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("rewrite (baseline)", |b| {
        b.iter(|| black_box(rewrite_for(black_box(&body), &route).unwrap()))
    });
    group.bench_function("rewrite + needs", |b| {
        b.iter(|| black_box(rewrite_with_needs(black_box(&body), &route).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
