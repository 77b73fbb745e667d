//! The engine fuzz target's properties in CI (`tests/support/engine_fuzz.rs`,
//! shared with `fuzz/fuzz_targets/engine.rs`): every seed and every input
//! the fuzzer ever failed on (`fuzz/seeds/**`, `fuzz/regressions/**`), a
//! few thousand generated cases, and checks that the oracle bites.
//!
//! `ENGINE_FUZZ_CASES` raises the number of generated cases (default 2000).

#[path = "support/engine_fuzz.rs"]
mod engine_fuzz;

use engine_fuzz::{check_error_chunk, expected_members, run, sse_events, Members};
use llm_fallback::native::{Endpoint, ProviderPrefs};
use llm_fallback::{Resolution, Route};
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every seed and regression, through the engine harness.
#[test]
fn fuzz_seeds_and_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut all = Vec::new();
    files(&root.join("seeds"), &mut all);
    files(&root.join("regressions"), &mut all);
    all.sort();
    let mut engine = 0;
    let mut failed = Vec::new();
    for path in &all {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        if let Err(e) = outcome {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let first = msg.lines().next().unwrap_or_default().to_owned();
            failed.push(format!("{}: {first}", path.display()));
        }
        engine += path.components().any(|c| c.as_os_str() == "engine") as usize;
    }
    assert!(
        failed.is_empty(),
        "{} inputs fail:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(all.len() >= 16, "only {} seed files found", all.len());
    assert!(engine >= 1, "no engine seed or regression found");
}

/// The issue's body (five edits through a non-OpenRouter endpoint route)
/// with the default case: one route on a local non-OpenRouter endpoint.
#[test]
fn issue_13_five_edit_body() {
    let body =
        br#"{"provider":{},"a":1,"models":[],"b":2,"route":"x","c":3,"transforms":[],"model":"m","messages":[]}"#;
    let summary = run(body);
    assert_eq!(summary.resolution, Some(Resolution::Served));
    assert_eq!(summary.received, 1);
    assert_eq!(summary.checked_bodies, 1);
    assert_eq!(summary.endpoint_requests, 1);
}

/// A deterministic stream of inputs (xorshift), so CI runs the harness over
/// many shapes; the counts say it reaches the interesting paths.
#[test]
fn generated_cases() {
    let cases: usize = std::env::var("ENGINE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut served, mut rejected, mut exhausted, mut committed, mut chunks, mut checked, mut endpoint) =
        (0, 0, 0, 0, 0, 0, 0);
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..cases {
        let len = 8 + (next() % 120) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| (next() % 255) as u8).collect();
        // Generated bodies (mode 1 or 2), then a 0xFF and a pool.
        data[0] = 1 + (next() % 2) as u8;
        data.push(0xFF);
        data.extend_from_slice(b"pool \"text\" \\ \xc3\xa9 data: [DONE]\n\n{}");
        let s = run(&data);
        match s.resolution {
            Some(Resolution::Served) | Some(Resolution::Stopped) => served += 1,
            Some(Resolution::Rejected) => rejected += 1,
            Some(Resolution::Exhausted) | Some(Resolution::DeadlineExceeded) => exhausted += 1,
            _ => {}
        }
        if let Some(code) = s.rejection {
            *reasons.entry(code).or_default() += 1;
        }
        committed += s.committed_stream as usize;
        chunks += s.error_chunk.is_some() as usize;
        checked += s.checked_bodies;
        endpoint += s.endpoint_requests;
    }
    println!(
        "{cases} cases: {served} served, {rejected} rejected, {exhausted} exhausted, {committed} committed streams, \
         {chunks} error chunks, {checked} bodies checked, {endpoint} requests to endpoints; refused: {reasons:?}"
    );
    if cases >= 2000 {
        for (what, n) in [
            ("served", served),
            ("rejected", rejected),
            ("exhausted", exhausted),
            ("committed streams", committed),
            ("error chunks", chunks),
            ("bodies checked", checked),
            ("endpoint requests", endpoint),
        ] {
            assert!(n >= 10, "only {n} cases with {what}");
        }
    }
}

fn members(json: &str) -> Vec<(String, serde_json::Value)> {
    serde_json::from_str::<Members>(json).unwrap().0
}

/// The expected body for the issue's example, written out by hand.
#[test]
fn the_oracle_removes_openrouter_keys_for_other_endpoints() {
    let caller = members(
        r#"{"provider":{},"a":1,"models":[],"b":2,"route":"x","c":3,"transforms":[],"model":"m","messages":[]}"#,
    );
    let local = Route::new("r/1").endpoint(Endpoint::new("http://127.0.0.1:9/v1").unwrap());
    assert_eq!(
        expected_members(&caller, &local, true),
        members(r#"{"a":1,"b":2,"c":3,"model":"r/1","messages":[]}"#)
    );
    // OpenRouter: only the model changes.
    assert_eq!(
        expected_members(&caller, &Route::new("r/1"), false),
        members(
            r#"{"provider":{},"a":1,"models":[],"b":2,"route":"x","c":3,"transforms":[],"model":"r/1","messages":[]}"#
        )
    );
    // The route's own provider/models stay (replaced in place) on another endpoint.
    let own = local
        .clone()
        .provider(ProviderPrefs::default())
        .native_fallbacks(["n/1"]);
    assert_eq!(
        expected_members(&caller, &own, true),
        members(r#"{"provider":{},"a":1,"models":["n/1"],"b":2,"c":3,"model":"r/1","messages":[]}"#)
    );
    // ... or are inserted first, provider before models.
    let bare = members(r#"{"model":"m","route":"x"}"#);
    assert_eq!(
        expected_members(&bare, &own, true),
        members(r#"{"provider":{},"models":["n/1"],"model":"r/1"}"#)
    );
}

#[test]
fn the_chunk_check_bites() {
    let chunk = br#"data: {"id":"llm-fallback-error","object":"chat.completion.chunk","created":1,"model":"m","error":{"code":"stream_broken","message":"x"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error","native_finish_reason":"error"}]}

"#;
    let up = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
    assert_eq!(check_error_chunk(up, chunk).unwrap(), "stream_broken");
    // Two chunks, or one glued to a half line, or to an undispatched event.
    let mut two = chunk.to_vec();
    two.extend_from_slice(chunk);
    assert!(check_error_chunk(up, &two).is_err());
    assert!(check_error_chunk(b"data: {\"cho", chunk).is_err());
    let mut prefixed = b"\n\n".to_vec();
    prefixed.extend_from_slice(chunk);
    assert!(check_error_chunk(b"data: {\"cho", &prefixed).is_ok());
    assert!(
        check_error_chunk(b"data: x\n", chunk).is_err(),
        "merged with a pending event"
    );
    assert!(check_error_chunk(up, b"data: {\"id\":\"other\"}\n\n").is_err());
    assert_eq!(
        sse_events(b"data: a\r\rdata: b\ndata: c\r\n\r\n: c\n\ndata"),
        [b"a".to_vec(), b"b\nc".to_vec()]
    );
}

/// `ENGINE_FUZZ_FILE=path cargo test --test fuzz_regressions replay_one -- --ignored --nocapture`:
/// decodes one input, writes its caller body to `path.body`, and runs it.
#[test]
#[ignore]
fn replay_one() {
    let path = std::env::var("ENGINE_FUZZ_FILE").expect("ENGINE_FUZZ_FILE");
    let data = std::fs::read(&path).unwrap();
    let case = engine_fuzz::decode(&data);
    std::fs::write(format!("{path}.body"), &case.body.0).unwrap();
    println!("{case:#?}");
    println!("{:?}", engine_fuzz::run_case(&case));
}

#[test]
fn the_dense_gear_risk_covers_the_scanner_reproducer() {
    use engine_fuzz::dense_gear_risk;
    let a = |n| "a".repeat(n);
    let repro = format!(r#"{{"model":"m","a":["{}\"{}\"{}\""]}}"#, a(30), a(16), a(63));
    assert!(dense_gear_risk(repro.as_bytes()));
    assert!(!dense_gear_risk(
        format!(r#"{{"model":"m","a":["{}\"{}\""]}}"#, a(30), a(200)).as_bytes()
    ));
    assert!(!dense_gear_risk(
        format!(r#"{{"model":"m","a":["\"\"{}"]}}"#, a(40)).as_bytes()
    ));
}

// Bugs the engine target found, each a hand-written case behind its gate
// in tests/support/engine_fuzz.rs: the case passes with every gate on
// (`strict`) exactly when its gate is on, so while a bug is open its test
// says when `main` fixed it (turn the gate on), and once it is fixed the
// case is a plain regression test. All but the hedge one are fixed on
// `main` now.

use engine_fuzz::{strict, AnswerKind, AnswerSpec, Blob, Case, Ending, Frames};

fn stream_case(stream: &[u8], frames: Vec<usize>, max_response_bytes: Option<usize>) -> Case {
    let mut case = engine_fuzz::decode(br#"{"model":"m","stream":true,"messages":[]}"#);
    case.max_response_bytes = max_response_bytes;
    case.answers = vec![AnswerSpec {
        latency: None,
        kind: AnswerKind::Http {
            status: 200,
            headers: vec![("content-type", "text/event-stream".into())],
            body: Blob(stream.to_vec()),
            frames: Frames {
                sizes: frames,
                ending: Ending::Clean,
            },
        },
    }];
    case
}

/// Runs `case` as is (it must pass) and strictly: whether that passed.
fn passes_strictly(case: &Case) -> bool {
    engine_fuzz::run_case(case);
    std::panic::catch_unwind(|| strict(|| engine_fuzz::run_case(case))).is_ok()
}

#[test]
fn found_error_chunk_glued_to_a_clean_partial_line() {
    let case = stream_case(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"",
        vec![],
        None,
    );
    assert_eq!(
        passes_strictly(&case),
        engine_fuzz::CHUNK_AFTER_PARTIAL_LINE,
        "flip CHUNK_AFTER_PARTIAL_LINE"
    );
}

#[test]
fn found_error_chunk_joins_an_undispatched_event() {
    let case = stream_case(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[]}\n",
        vec![],
        None,
    );
    assert_eq!(
        passes_strictly(&case),
        engine_fuzz::CHUNK_AFTER_PENDING_EVENT,
        "flip CHUNK_AFTER_PENDING_EVENT"
    );
}

#[test]
fn found_forced_commit_loses_done() {
    // 36 bytes of keep-alive commit the stream (more than 32 held); the
    // error chunk after it stops the tracker reading the frame, so the
    // [DONE] in it is not seen and the complete stream gets an error chunk.
    let keep_alive = b": keep-alive keep-alive keep-alive\n\n";
    let mut stream = keep_alive.to_vec();
    stream.extend_from_slice(b"data: {\"error\":{\"code\":\"x\",\"message\":\"y\"}}\n\ndata: [DONE]\n\n");
    let case = stream_case(&stream, vec![keep_alive.len(), stream.len()], Some(32));
    assert_eq!(
        passes_strictly(&case),
        engine_fuzz::FORCED_COMMIT_TRACKED,
        "flip FORCED_COMMIT_TRACKED"
    );
}

#[test]
fn found_scanner_dense_gear_drops_its_escape_carry() {
    let a = |n| "a".repeat(n);
    let body = format!(r#"{{"model":"m","a":["{}\"{}\"{}\""]}}"#, a(30), a(16), a(63));
    assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
    let case = engine_fuzz::decode(body.as_bytes());
    assert_eq!(
        passes_strictly(&case),
        engine_fuzz::SCANNER_KEEPS_ESCAPE_CARRY,
        "flip SCANNER_KEEPS_ESCAPE_CARRY"
    );
}

#[test]
fn found_served_attempt_lost_after_a_hedge() {
    use std::time::Duration;
    // The primary answers after 45 s; the hedge after 1 s starts the second
    // route, which answers at once and wins; the primary is cancelled.
    let mut case = engine_fuzz::decode(br#"{"model":"m","messages":[]}"#);
    case.routes.push(case.routes[0].clone());
    case.routes[1].model = "fuzz/second".into();
    case.hedge_after = Some(Duration::from_secs(1));
    let ok = |latency| AnswerSpec {
        latency,
        kind: AnswerKind::Http {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            body: Blob(
                br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#
                    .to_vec(),
            ),
            frames: Frames {
                sizes: vec![],
                ending: Ending::Clean,
            },
        },
    };
    case.answers = vec![ok(Some(Duration::from_secs(45))), ok(None)];
    let summary = engine_fuzz::run_case(&case);
    assert_eq!((summary.received, summary.resolution), (2, Some(Resolution::Served)));
    assert_eq!(
        passes_strictly(&case),
        engine_fuzz::SERVED_ATTEMPT_AFTER_HEDGE,
        "flip SERVED_ATTEMPT_AFTER_HEDGE"
    );
}
