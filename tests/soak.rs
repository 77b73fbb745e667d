//! Soak: 20,000 requests over loopback through the layer to the mock
//! upstream, from 64 concurrent tasks, with random faults per model
//! (error statuses, `Retry-After`, hangs cut by 250 ms route timeouts, HTTP
//! 200 bodies that are errors, dropped connections, a model the upstream
//! does not know). Every request must end served with the upstream's bytes
//! untouched, or with the exhaustion answer naming every attempt; nothing
//! may panic; and the heap and the runtime's tasks must come back to their
//! baseline once everything is dropped.
//!
//! The upstream's recordings and the reports must tell the same story,
//! attempt by attempt (each request names its task and number in its body):
//! every request the upstream saw is an attempt some report lists, at most
//! once and with the caller's body under the route's model; every attempt
//! that got an answer (a status) was seen. An attempt may be missing there
//! only if its report says it timed out or failed in transport: on a busy
//! machine a route timeout can expire before the request reaches the mock
//! (the clock is real here), so counting alone cannot be exact.
//!
//! Its own test binary (a counting global allocator measures the live heap).
//! `SOAK_REQUESTS` changes the number of requests.

mod common;

use bytes::Bytes;
use common::{body_bytes, http_client, post, report};
use http::StatusCode;
use llm_fallback::{Chain, FallbackLayer, Outcome, Resolution, Route};
use llm_fallback_mock::{MockServer, MockUpstream, RecordedRequest, Reply, Script};
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};

// ===== live heap =====

struct Live;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counter is an
// atomic and never allocates.
unsafe impl GlobalAlloc for Live {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Live = Live;

// ===== the faults =====

/// xorshift64*: deterministic faults and choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const MODELS: [&str; 3] = ["a/flaky", "b/flaky", "c/flaky"];
/// Not scripted: the upstream answers `400 ... is not a valid model ID`.
const UNKNOWN: &str = "x/unknown";
/// Cuts the hangs. Real time: with 64 requests in flight an attempt takes
/// about 20 ms on an idle 2-core machine and several times that on a busy
/// one, and every attempt it cuts that is not a hang shifts the fault mix
/// (50 ms cut a quarter of all attempts under a parallel build). The
/// accounting allows for the cuts either way.
const ROUTE_TIMEOUT: Duration = Duration::from_millis(250);

/// The completion a model serves, byte for byte.
fn completion(model: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"id":"gen-soak","provider":"Soak","model":"{model}","object":"chat.completion","created":1,"choices":[{{"index":0,"finish_reason":"stop","message":{{"role":"assistant","content":"served by {model} — ✓"}}}}],"usage":{{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}}}"#
    ))
}

/// A long random script: about half the requests served, the rest failing
/// in every way the layer falls back on.
fn script(model: &str, rng: &mut Rng, len: usize) -> Script {
    Script::sequence((0..len).map(|_| match rng.below(100) {
        0..=52 => Reply::raw(200, "application/json", completion(model)),
        53..=60 => Reply::status(429).retry_after(1 + rng.below(30)),
        61..=65 => Reply::status(500),
        66..=69 => Reply::error(502, "provider_unavailable", "Provider returned error").raw_message("upstream reset"),
        70..=74 => Reply::status(503),
        75..=77 => Reply::status(529),
        78..=82 => Reply::ok_with_error(),
        83..=85 => Reply::no_choices(),
        86..=88 => Reply::finish_reason_error(),
        89..=91 => Reply::status(504),
        92..=93 => Reply::hang(),
        94..=95 => Reply::transport_error(),
        96..=97 => Reply::raw(502, "text/html", "<html>Bad Gateway</html>"),
        _ => Reply::status(408),
    }))
}

fn chains() -> Vec<Chain> {
    let route = |m: &str| Route::new(m).timeout(ROUTE_TIMEOUT);
    vec![
        Chain::new([route(MODELS[0]), route(MODELS[1]), route(MODELS[2])]),
        Chain::new([route(UNKNOWN), route(MODELS[0]), route(MODELS[1])]),
        Chain::new([route(MODELS[2]), route(UNKNOWN), route(MODELS[1]), route(MODELS[0])]),
        Chain::new([route(MODELS[1]), route(MODELS[0])]),
    ]
}

/// The body of request `i` of task `t`: the upstream's recordings name
/// their request by it.
fn caller_body(t: usize, i: usize) -> String {
    serde_json::json!({
        "model": "caller/model",
        "messages": [
            {"role": "system", "content": "Soak test — ünïcødé ✓"},
            {"role": "user", "content": format!("request {t}/{i}: say \"hi\"\n")}
        ],
        "temperature": 0.2
    })
    .to_string()
}

/// The task and request number a recorded body names (see [`caller_body`]).
fn request_of(body: &Value) -> Option<(usize, usize)> {
    let text = body["messages"][1]["content"].as_str()?;
    let (t, i) = text.strip_prefix("request ")?.split_once(':')?.0.split_once('/')?;
    Some((t.parse().ok()?, i.parse().ok()?))
}

/// One attempt as its report lists it.
#[derive(Debug)]
struct Listed {
    model: String,
    outcome: Outcome,
    /// The upstream answered it (a status, perhaps a body).
    answered: bool,
}

/// What one task's requests ended as.
#[derive(Default)]
struct Totals {
    served: usize,
    exhausted: usize,
    attempts: usize,
    /// Every request's attempts, by (task, request number).
    ledger: HashMap<(usize, usize), Vec<Listed>>,
}

/// Checks one answer against the contract; returns whether it was served
/// and its attempts.
async fn check(
    resp: http::Response<llm_fallback::ResponseBody<hyper::body::Incoming>>,
    chain: &Chain,
) -> (bool, Vec<Listed>) {
    let (parts, body) = body_bytes(resp).await;
    let report = report(&parts).clone();
    let attempts = report.attempts();
    let ledger = attempts
        .iter()
        .map(|a| Listed {
            model: a.model().to_owned(),
            outcome: a.outcome(),
            answered: a.status().is_some(),
        })
        .collect();
    let routes: Vec<&str> = chain.routes().iter().map(|r| r.model.as_str()).collect();
    match parts.status {
        StatusCode::OK => {
            assert_eq!(report.resolution(), Resolution::Served);
            let served = report.served_model();
            assert_eq!(parts.headers["x-fallback-model"], served);
            assert_eq!(body, completion(served), "the served body is the upstream's, untouched");
            let (last, failed) = attempts.split_last().unwrap();
            assert_eq!(last.outcome(), Outcome::Served);
            assert_eq!(last.model(), served);
            assert!(failed.iter().all(|a| a.outcome().is_failure()), "{report:?}");
            for (a, model) in attempts.iter().zip(&routes) {
                assert_eq!(a.model(), *model, "attempts follow the chain");
            }
            (true, ledger)
        }
        StatusCode::BAD_GATEWAY => {
            assert_eq!(report.resolution(), Resolution::Exhausted);
            assert_eq!(attempts.len(), routes.len(), "every route was tried");
            assert!(attempts.iter().all(|a| a.outcome().is_failure()), "{report:?}");
            let json: Value = serde_json::from_slice(&body).unwrap();
            let error = &json["error"];
            assert_eq!(error["code"], "fallback_exhausted");
            let message = error["message"].as_str().unwrap();
            assert!(
                message.starts_with(&format!("all {} fallback route(s) failed", routes.len())),
                "{message}"
            );
            for model in &routes {
                assert!(message.contains(model), "{model} missing from {message}");
            }
            // The shortest upstream `Retry-After` is passed on.
            let shortest = attempts.iter().filter_map(|a| a.retry_after()).min();
            let header = parts
                .headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            assert_eq!(header, shortest.map(|d| d.as_secs().max(1)));
            let listed = error["metadata"]["attempts"].as_array().unwrap();
            assert_eq!(listed.len(), routes.len());
            for (entry, model) in listed.iter().zip(&routes) {
                assert_eq!(entry["model"], *model);
            }
            (false, ledger)
        }
        other => panic!("unexpected status {other}: {}", String::from_utf8_lossy(&body)),
    }
}

/// A request as the upstream recorded it, reduced to what [`reconcile`]
/// reads.
struct Received {
    path: String,
    /// The body's `model`.
    model: Option<String>,
    body: Value,
}

impl From<&RecordedRequest> for Received {
    fn from(r: &RecordedRequest) -> Self {
        Received {
            path: r.uri.path().to_owned(),
            model: r.model.clone(),
            body: serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        }
    }
}

/// What the upstream's recordings said about the reports' attempts.
#[derive(Debug, Default, PartialEq)]
struct Reconciled {
    /// Requests the upstream received.
    received: usize,
    /// Attempts that timed out, seen upstream or not.
    timeouts: usize,
    /// Attempts that timed out before the upstream saw them.
    unseen_timeouts: usize,
    /// Attempts that failed in transport before the upstream saw them.
    unseen_transport: usize,
}

/// Matches every request the upstream received to the attempt it was, and
/// every attempt the reports list to what the upstream saw. The first
/// mismatch is the error:
///
/// - a request no task sent, or one that names an attempt no report lists,
///   or one seen twice, or one whose body is not the caller's under the
///   route's model;
/// - a request seen for an attempt listed as not sent (skipped), or seen
///   but listed without an answer when the layer did not stop waiting
///   (anything but a timeout, a transport error or a cancelled hedge);
/// - an attempt that got an answer but that the upstream never saw, or that
///   it never saw and that did not time out or fail in transport.
fn reconcile(
    received: impl IntoIterator<Item = Received>,
    ledger: &HashMap<(usize, usize), Vec<Listed>>,
) -> Result<Reconciled, String> {
    let mut out = Reconciled::default();
    // What the upstream saw: (task, request, model).
    let mut seen: std::collections::HashSet<(usize, usize, &str)> = std::collections::HashSet::new();
    for r in received {
        out.received += 1;
        let Received { path, model, body } = r;
        if path != "/api/v1/chat/completions" {
            return Err(format!("the upstream saw a request for {path}"));
        }
        let Some(key) = request_of(&body) else {
            return Err(format!("the upstream saw a request no task sent: {body}"));
        };
        let Some(attempts) = ledger.get(&key) else {
            return Err(format!(
                "the upstream saw request {key:?}, which no report lists: {body}"
            ));
        };
        let model = model.unwrap_or_default();
        let Some(listed) = attempts.iter().find(|a| a.model == model) else {
            return Err(format!(
                "the upstream saw {model} for request {key:?}; its report lists {attempts:?}"
            ));
        };
        if !listed.outcome.was_sent() {
            return Err(format!(
                "request {key:?} reached {model}, listed as not sent: {listed:?}"
            ));
        }
        // Seen but not answered: the layer stopped waiting, or the mock
        // dropped the connection. No other ending leaves no status.
        let stopped_waiting = matches!(
            listed.outcome,
            Outcome::Timeout | Outcome::Transport | Outcome::Cancelled
        );
        if !listed.answered && !stopped_waiting {
            return Err(format!(
                "request {key:?} reached {model}, but its report has no answer: {listed:?}"
            ));
        }
        let mut expected: Value = serde_json::from_str(&caller_body(key.0, key.1)).unwrap_or(Value::Null);
        expected["model"] = Value::from(model.as_str());
        if body != expected {
            return Err(format!(
                "request {key:?} reached {model} as {body}, not the caller's body under that model"
            ));
        }
        if !seen.insert((key.0, key.1, listed.model.as_str())) {
            return Err(format!("the upstream saw {model} for request {key:?} more than once"));
        }
    }
    for (&(t, i), attempts) in ledger {
        for a in attempts {
            out.timeouts += usize::from(a.outcome == Outcome::Timeout);
            if seen.contains(&(t, i, a.model.as_str())) || !a.outcome.was_sent() {
                continue;
            }
            if a.answered {
                return Err(format!("{} answered request {t}/{i} but never saw it: {a:?}", a.model));
            }
            match a.outcome {
                Outcome::Timeout => out.unseen_timeouts += 1,
                Outcome::Transport => out.unseen_transport += 1,
                _ => {
                    return Err(format!(
                        "request {t}/{i} to {} never reached the upstream, yet did not time out or fail in transport: {a:?}",
                        a.model
                    ))
                }
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_requests_with_random_faults() {
    let requests: usize = std::env::var("SOAK_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    const TASKS: usize = 64;

    let panics = Arc::new(AtomicUsize::new(0));
    let hook_panics = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        hook_panics.fetch_add(1, Ordering::Relaxed);
        default_hook(info);
    }));

    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let heap_before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();

    for chain in chains() {
        let mut models: Vec<&str> = chain.routes().iter().map(|r| r.model.as_str()).collect();
        models.sort_unstable();
        models.dedup();
        assert_eq!(
            models.len(),
            chain.routes().len(),
            "reconcile names an attempt by its model"
        );
    }

    let mut rng = Rng(0x5EED_50A4);
    let mut upstream = MockUpstream::new();
    for model in MODELS {
        upstream = upstream.model(model, script(model, &mut rng, requests * 2));
    }
    let server = MockServer::start(upstream.clone()).await.unwrap();
    let url = server.chat_url();
    let client = http_client();
    let layers: Arc<Vec<_>> = Arc::new(
        chains()
            .into_iter()
            .map(|chain| (chain.clone(), FallbackLayer::new(chain).layer(client.clone())))
            .collect(),
    );

    let mut workers = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let layers = layers.clone();
        let url = url.clone();
        let n = requests / TASKS + usize::from(t < requests % TASKS);
        workers.spawn(async move {
            let mut rng = Rng(0x1234_5678 + t as u64);
            let mut totals = Totals::default();
            for i in 0..n {
                let (chain, svc) = &layers[rng.below(layers.len() as u64) as usize];
                let resp = svc.clone().oneshot(post(&url, caller_body(t, i))).await.unwrap();
                let (served, attempts) = check(resp, chain).await;
                if served {
                    totals.served += 1;
                } else {
                    totals.exhausted += 1;
                }
                totals.attempts += attempts.len();
                totals.ledger.insert((t, i), attempts);
            }
            totals
        });
    }
    let mut totals = Totals::default();
    while let Some(done) = workers.join_next().await {
        let t = done.expect("no worker panicked");
        totals.served += t.served;
        totals.exhausted += t.exhausted;
        totals.attempts += t.attempts;
        totals.ledger.extend(t.ledger);
    }
    let elapsed = started.elapsed();

    assert_eq!(totals.served + totals.exhausted, requests, "no request lost");
    assert_eq!(totals.ledger.len(), requests, "every request has its report");
    let seen = reconcile(upstream.requests().iter().map(Received::from), &totals.ledger)
        .unwrap_or_else(|mismatch| panic!("the upstream and the reports disagree: {mismatch}"));
    drop(std::mem::take(&mut totals.ledger));
    assert_eq!(
        seen.received + seen.unseen_timeouts + seen.unseen_transport,
        totals.attempts,
        "the upstream saw the attempts the reports list, but for some that timed out or failed in transport"
    );
    assert!(
        totals.served > requests / 2 && totals.exhausted > 0,
        "both endings were exercised"
    );
    let heap_peak_hint = LIVE.load(Ordering::Relaxed) - heap_before;

    // Tear down: the layers (and their client's pool), the server (its hung
    // connections included), the mock's recordings.
    drop(layers);
    drop(client);
    drop(server);
    upstream.clear_requests();
    drop(upstream);
    // A bound, not a margin: teardown takes milliseconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics.num_alive_tasks() > tasks_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tasks_after = metrics.num_alive_tasks();
    let heap_after = LIVE.load(Ordering::Relaxed) - heap_before;
    println!(
        "soak: {requests} requests in {elapsed:.1?} from {TASKS} tasks: {} served, {} exhausted, {} upstream requests \
         ({:.2} attempts per request; {} timed out, {} of them unseen upstream; {} unseen transport errors); live heap {:.1} MiB at the end of the run, {:+} bytes after teardown; \
         tasks {tasks_before} before, {tasks_after} after; {} panics",
        totals.served,
        totals.exhausted,
        seen.received,
        totals.attempts as f64 / requests as f64,
        seen.timeouts,
        seen.unseen_timeouts,
        seen.unseen_transport,
        heap_peak_hint as f64 / (1 << 20) as f64,
        heap_after,
        panics.load(Ordering::Relaxed)
    );
    assert_eq!(panics.load(Ordering::Relaxed), 0, "something panicked");
    assert_eq!(tasks_after, tasks_before, "tasks left running after the run");
    // The runtime keeps some grown tables (I/O driver slabs, timer wheel);
    // the run's own state (requests, bodies, reports, connections) is gone.
    assert!(
        heap_after < 1 << 20,
        "{heap_after} bytes still live after the run (it peaked at {heap_peak_hint})"
    );
}

/// The reconciliation above is what makes the soak's accounting bite: it
/// must refuse each way the upstream and the reports can disagree, and
/// accept only attempts that timed out or failed in transport as unseen.
#[test]
fn the_reconciliation_refuses_every_disagreement() {
    fn listed(model: &str, outcome: Outcome, answered: bool) -> Listed {
        Listed {
            model: model.to_owned(),
            outcome,
            answered,
        }
    }
    fn sent(t: usize, i: usize, model: &str) -> Received {
        let mut body: Value = serde_json::from_str(&caller_body(t, i)).unwrap();
        body["model"] = Value::from(model);
        Received {
            path: "/api/v1/chat/completions".to_owned(),
            model: Some(model.to_owned()),
            body,
        }
    }
    let [a, b, c] = MODELS;
    // Request 0/0: a failed with a status, b served. Request 0/1: a timed
    // out before reaching the upstream, b hung and timed out, c dropped the
    // connection after reading the request. Request 1/0: a's connection
    // failed before the request was sent, b served.
    let ledger = || {
        HashMap::from([
            (
                (0, 0),
                vec![listed(a, Outcome::HttpError, true), listed(b, Outcome::Served, true)],
            ),
            (
                (0, 1),
                vec![
                    listed(a, Outcome::Timeout, false),
                    listed(b, Outcome::Timeout, false),
                    listed(c, Outcome::Transport, false),
                ],
            ),
            (
                (1, 0),
                vec![listed(a, Outcome::Transport, false), listed(b, Outcome::Served, true)],
            ),
        ])
    };
    let all = || {
        vec![
            sent(0, 0, a),
            sent(0, 0, b),
            sent(0, 1, b),
            sent(0, 1, c),
            sent(1, 0, b),
        ]
    };
    assert_eq!(
        reconcile(all(), &ledger()),
        Ok(Reconciled {
            received: 5,
            timeouts: 2,
            unseen_timeouts: 1,
            unseen_transport: 1,
        })
    );

    let refused = |received: Vec<Received>, ledger: HashMap<(usize, usize), Vec<Listed>>, why: &str| match reconcile(
        received, &ledger,
    ) {
        Err(e) => assert!(e.contains(why), "{why:?} not in {e:?}"),
        Ok(r) => panic!("accepted ({r:?}); should refuse: {why}"),
    };
    let without = |k: usize| {
        let mut v = all();
        v.remove(k);
        v
    };
    let with = |extra: Received| {
        let mut v = all();
        v.push(extra);
        v
    };
    // An attempt listed as served (or failed with a status) that the
    // upstream never saw.
    refused(without(1), ledger(), "answered request 0/0 but never saw it");
    refused(without(0), ledger(), "answered request 0/0 but never saw it");
    // A request the upstream saw that no report mentions: another request,
    // another model, twice the same attempt, or not even a request of ours.
    refused(with(sent(7, 7, a)), ledger(), "which no report lists");
    refused(with(sent(0, 0, c)), ledger(), "its report lists");
    refused(with(sent(0, 0, b)), ledger(), "more than once");
    let mut stranger = sent(0, 0, a);
    stranger.body = serde_json::json!({"model": a, "messages": []});
    refused(with(stranger), ledger(), "no task sent");
    // Seen, but not the caller's body under the route's model.
    let mut altered = all();
    altered[1].body["temperature"] = Value::from(1.0);
    refused(altered, ledger(), "not the caller's body");
    let mut elsewhere = all();
    elsewhere[1].path = "/v1/models".to_owned();
    refused(elsewhere, ledger(), "a request for /v1/models");
    // Unseen, and neither a timeout nor a transport error.
    let mut l = ledger();
    l.get_mut(&(0, 1)).unwrap()[0] = listed(a, Outcome::ErrorInBody, false);
    refused(all(), l, "did not time out or fail in transport");
    // Seen, with no answer, although the layer did not stop waiting.
    let mut l = ledger();
    l.get_mut(&(0, 0)).unwrap()[0] = listed(a, Outcome::HttpError, false);
    refused(all(), l, "its report has no answer");
    // Seen, although listed as skipped.
    let mut l = ledger();
    l.get_mut(&(0, 0)).unwrap()[0] = listed(a, Outcome::Skipped, false);
    refused(all(), l, "listed as not sent");
}
