//! Metrics through the `metrics` facade (feature `metrics`); without the
//! feature these functions compile to nothing.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `llm_fallback_attempts_total` | counter | `model`, `outcome` |
//! | `llm_fallback_attempt_duration_seconds` | histogram | `model`, `outcome` |
//! | `llm_fallback_requests_total` | counter | `resolution`, `position` (route index that answered, or `none`), `drill`, `dialect` (`chat`, `responses`, `messages`, `embeddings`, `completions`) |
//! | `llm_fallback_skips_total` | counter | `model`, `reason` |
//! | `llm_fallback_hedges_started_total` | counter | `model` |
//! | `llm_fallback_hedges_won_total` | counter | `model` |
//! | `llm_fallback_time_to_commit_seconds` | histogram | `model` |
//!
//! A `model` label is the route's model id. For the models a caller
//! names itself (a model passed through, the entries of a caller's own
//! `models` list), only the first 64 distinct ids a layer sees
//! ([`CALLER_MODEL_LABELS`]) are labelled by name; later ones are labelled
//! `other`. A recorder keeps every label value it was given for as long as
//! it lives, so without that bound a caller sending a new model id with
//! each request would grow the recorder's memory without end.

#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

use crate::report::{Outcome, Resolution};
#[cfg(feature = "metrics")]
use std::sync::Arc;
use std::time::Duration;

// Labels borrow `&'static str`s and share the route's `Arc<str>` model id,
// so recording allocates nothing on the request path. The handles of the
// hot path (attempts, time to commit, requests) are registered once per
// recorder and kept by the layer (per route, per layer), not looked up again
// in the recorder's registry for every record: a recorder installed (or a
// local one set) later is noticed, by its address, and gets its own
// handles. A layer used under a local recorder that is dropped and replaced
// by another at the same address keeps recording into the first one's
// storage; tests that swap local recorders build a layer per recorder.

/// The most model ids a layer labels by name for the routes its callers
/// name (a model passed through, a caller's own chain); later ones are
/// labelled [`OTHER_MODEL`].
#[cfg(feature = "metrics")]
pub(crate) const CALLER_MODEL_LABELS: usize = 64;

/// The `model` label of a caller-named model past [`CALLER_MODEL_LABELS`].
#[cfg(feature = "metrics")]
pub(crate) const OTHER_MODEL: &str = "other";

/// The `model` label values a layer has given to caller-named models,
/// bounded by [`CALLER_MODEL_LABELS`] (shared by the layer's clones).
#[cfg(feature = "metrics")]
#[derive(Default)]
pub(crate) struct CallerModels {
    seen: std::sync::Mutex<std::collections::HashSet<Arc<str>>>,
    other: std::sync::OnceLock<Arc<str>>,
}

#[cfg(feature = "metrics")]
impl CallerModels {
    /// The label for a caller-named `model`: itself (an id of more than
    /// 256 bytes shortened, [`crate::hop::kept_model`]) while the set has
    /// room (or holds it already), else [`OTHER_MODEL`].
    pub(crate) fn label(&self, model: &Arc<str>) -> Arc<str> {
        // At most a few hundred bytes, whatever the caller sent.
        let label = crate::hop::kept_model_arc(model);
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(known) = seen.get(&label) {
            return known.clone();
        }
        if seen.len() < CALLER_MODEL_LABELS {
            seen.insert(label.clone());
            return label;
        }
        drop(seen);
        self.other.get_or_init(|| Arc::from(OTHER_MODEL)).clone()
    }
}

#[cfg(feature = "metrics")]
impl std::fmt::Debug for CallerModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerModels").finish_non_exhaustive()
    }
}

/// A route's metric handles, registered on first use with the recorder in
/// effect.
#[cfg(feature = "metrics")]
#[derive(Default)]
pub(crate) struct RouteMetrics {
    attempts: cache::Cache<(metrics::Counter, metrics::Histogram), OUTCOMES>,
    commit: cache::Cache<metrics::Histogram, 1>,
}

/// Outcomes, handles indexed by `outcome as usize`. The match stops the
/// build when a variant is added, so the count is looked at again.
#[cfg(feature = "metrics")]
const OUTCOMES: usize = match Outcome::Served {
    Outcome::Served
    | Outcome::Stopped
    | Outcome::HttpError
    | Outcome::ErrorInBody
    | Outcome::Transport
    | Outcome::Timeout
    | Outcome::DeadlineExceeded
    | Outcome::StreamBroken
    | Outcome::Abandoned
    | Outcome::Skipped
    | Outcome::Cancelled => Outcome::Cancelled as usize + 1,
};

#[cfg(feature = "metrics")]
mod cache {
    use std::sync::{OnceLock, PoisonError, RwLock};

    /// Handles registered with one recorder (by address), each built on
    /// first use.
    struct Slots<T, const N: usize> {
        recorder: usize,
        slots: [OnceLock<T>; N],
    }

    /// `N` handles, kept while the recorder in effect stays the same.
    pub(super) struct Cache<T, const N: usize>(RwLock<Option<Slots<T, N>>>);

    impl<T, const N: usize> Default for Cache<T, N> {
        fn default() -> Self {
            Cache(RwLock::new(None))
        }
    }

    /// The recorder in effect (a thread's local one, the global one, or
    /// the no-op one), by address.
    fn recorder() -> usize {
        metrics::with_recorder(|r| std::ptr::from_ref(r).cast::<()>() as usize)
    }

    impl<T, const N: usize> Cache<T, N> {
        /// Calls `f` with handle `i`, registering it with `register` if
        /// this recorder has not seen it yet.
        pub(super) fn with(&self, i: usize, register: impl FnOnce() -> T, f: impl FnOnce(&T)) {
            let id = recorder();
            {
                let slots = self.0.read().unwrap_or_else(PoisonError::into_inner);
                if let Some(s) = slots.as_ref().filter(|s| s.recorder == id) {
                    if let Some(slot) = s.slots.get(i) {
                        f(slot.get_or_init(register));
                    }
                    return;
                }
            }
            let mut slots = self.0.write().unwrap_or_else(PoisonError::into_inner);
            let s = match &mut *slots {
                Some(s) if s.recorder == id => s,
                other => other.insert(Slots {
                    recorder: id,
                    slots: std::array::from_fn(|_| OnceLock::new()),
                }),
            };
            if let Some(slot) = s.slots.get(i) {
                f(slot.get_or_init(register));
            }
        }
    }
}

#[inline]
pub(crate) fn attempt(route: &crate::hop::Hop, outcome: Outcome, elapsed: Duration) {
    #[cfg(feature = "metrics")]
    route.metrics.attempts.with(
        outcome as usize,
        || {
            let model = metrics::SharedString::from(route.metric_model.clone());
            let labels = [
                metrics::Label::new("model", model),
                metrics::Label::new("outcome", outcome.as_str()),
            ];
            (
                metrics::counter!("llm_fallback_attempts_total", labels.iter()),
                metrics::histogram!("llm_fallback_attempt_duration_seconds", labels.iter()),
            )
        },
        |(count, duration)| {
            count.increment(1);
            duration.record(elapsed.as_secs_f64());
        },
    );
}

/// Resolutions (as for [`OUTCOMES`]), route positions with kept handles
/// (0..8, then "none"), and drill or not.
#[cfg(feature = "metrics")]
const RESOLUTIONS: usize = match Resolution::Served {
    Resolution::Served
    | Resolution::Stopped
    | Resolution::Exhausted
    | Resolution::DeadlineExceeded
    | Resolution::Rejected
    | Resolution::StreamBroken => Resolution::StreamBroken as usize + 1,
};
#[cfg(feature = "metrics")]
const POSITIONS: usize = 8;

#[cfg(feature = "metrics")]
const DIALECTS: usize = crate::Dialect::ALL.len();

/// A layer's request counters, by resolution, position, drill and dialect;
/// shared by the layer's clones, not by other layers.
#[derive(Default)]
pub(crate) struct RequestMetrics {
    #[cfg(feature = "metrics")]
    counters: cache::Cache<metrics::Counter, { RESOLUTIONS * (POSITIONS + 1) * 2 * DIALECTS }>,
}

#[inline]
pub(crate) fn request(
    requests: &RequestMetrics,
    resolution: Resolution,
    position: Option<usize>,
    drill: bool,
    dialect: crate::Dialect,
) {
    #[cfg(feature = "metrics")]
    {
        let register = |position: metrics::SharedString| {
            metrics::counter!(
                "llm_fallback_requests_total",
                "resolution" => resolution.as_str(),
                "position" => position,
                "drill" => if drill { "true" } else { "false" },
                "dialect" => dialect.as_str(),
            )
        };
        let (slot, label) = match position {
            None => (POSITIONS, "none"),
            Some(p) => match crate::report::digit(p).filter(|_| p < POSITIONS) {
                Some(label) => (p, label),
                // A rare deep position: registered each time.
                None => return register(p.to_string().into()).increment(1),
            },
        };
        let i =
            ((resolution as usize * (POSITIONS + 1) + slot) * 2 + usize::from(drill)) * DIALECTS + dialect.index_of();
        requests.counters.with(i, || register(label.into()), |c| c.increment(1));
    }
}

#[inline]
pub(crate) fn skip(route: &crate::hop::Hop, reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("llm_fallback_skips_total", "model" => metrics::SharedString::from(route.metric_model.clone()), "reason" => reason).increment(1);
}

#[inline]
pub(crate) fn hedge_started(route: &crate::hop::Hop) {
    #[cfg(feature = "metrics")]
    metrics::counter!("llm_fallback_hedges_started_total", "model" => metrics::SharedString::from(route.metric_model.clone()))
        .increment(1);
}

#[inline]
pub(crate) fn hedge_won(route: &crate::hop::Hop) {
    #[cfg(feature = "metrics")]
    metrics::counter!("llm_fallback_hedges_won_total", "model" => metrics::SharedString::from(route.metric_model.clone()))
        .increment(1);
}

#[inline]
pub(crate) fn committed(route: &crate::hop::Hop, elapsed: Duration) {
    #[cfg(feature = "metrics")]
    route.metrics.commit.with(
        0,
        || {
            let model = metrics::SharedString::from(route.metric_model.clone());
            metrics::histogram!("llm_fallback_time_to_commit_seconds", "model" => model)
        },
        |h| h.record(elapsed.as_secs_f64()),
    );
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::{CompositeKey, MetricKind};

    type Snapshot = Vec<(
        CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )>;

    /// A counter's value in a snapshot (taking one drains the counters).
    fn counter(snapshot: &Snapshot, name: &str, label: (&str, &str)) -> Option<u64> {
        snapshot.iter().find_map(|(key, _, _, value)| {
            let k = key.key();
            let labelled = k.labels().any(|l| l.key() == label.0 && l.value() == label.1);
            match value {
                DebugValue::Counter(n) if key.kind() == MetricKind::Counter && k.name() == name && labelled => Some(*n),
                _ => None,
            }
        })
    }

    #[test]
    fn cached_handles_follow_the_recorder_in_effect() {
        let route = crate::hop::Hop::new(crate::Route::new("m/one"));
        let requests = RequestMetrics::default();
        let first = DebuggingRecorder::new();
        let first_snap = first.snapshotter();
        metrics::with_local_recorder(&first, || {
            attempt(&route, Outcome::Served, Duration::from_millis(3));
            attempt(&route, Outcome::Served, Duration::from_millis(3));
            attempt(&route, Outcome::Timeout, Duration::from_millis(3));
            request(&requests, Resolution::Served, Some(0), false, crate::Dialect::Chat);
        });
        // The same route (its handles cached) under another recorder: the
        // records go to that one, not to the first one's handles.
        let second = DebuggingRecorder::new();
        let second_snap = second.snapshotter();
        metrics::with_local_recorder(&second, || {
            attempt(&route, Outcome::Served, Duration::from_millis(3));
            request(&requests, Resolution::Served, Some(0), false, crate::Dialect::Chat);
            request(&requests, Resolution::Exhausted, None, true, crate::Dialect::Messages);
        });
        let (first_snap, second_snap) = (first_snap.snapshot().into_vec(), second_snap.snapshot().into_vec());
        let served = ("outcome", "served");
        assert_eq!(counter(&first_snap, "llm_fallback_attempts_total", served), Some(2));
        assert_eq!(
            counter(&first_snap, "llm_fallback_attempts_total", ("outcome", "timeout")),
            Some(1)
        );
        assert_eq!(counter(&second_snap, "llm_fallback_attempts_total", served), Some(1));
        let requests = "llm_fallback_requests_total";
        assert_eq!(counter(&first_snap, requests, ("position", "0")), Some(1));
        assert_eq!(counter(&second_snap, requests, ("position", "0")), Some(1));
        assert_eq!(counter(&second_snap, requests, ("position", "none")), Some(1));
        assert_eq!(counter(&first_snap, requests, ("position", "none")), None);
        assert_eq!(counter(&second_snap, requests, ("dialect", "messages")), Some(1));
        assert_eq!(counter(&first_snap, requests, ("dialect", "messages")), None);
    }

    #[test]
    fn a_fresh_layer_under_a_fresh_recorder_counts_from_zero() {
        // Recorders made the same way in turn (often at the same address):
        // each layer has its own handles, so each recorder sees its counts.
        fn once() -> Option<u64> {
            let requests = RequestMetrics::default();
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            metrics::with_local_recorder(&recorder, || {
                request(&requests, Resolution::Served, Some(1), false, crate::Dialect::Chat)
            });
            counter(
                &snapshotter.snapshot().into_vec(),
                "llm_fallback_requests_total",
                ("position", "1"),
            )
        }
        assert_eq!(once(), Some(1));
        assert_eq!(once(), Some(1));
    }
}
