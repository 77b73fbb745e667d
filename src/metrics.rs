//! Metrics through the `metrics` facade (feature `metrics`); without the
//! feature these functions compile to nothing.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `llm_fallback_attempts_total` | counter | `model`, `outcome` |
//! | `llm_fallback_attempt_duration_seconds` | histogram | `model`, `outcome` |
//! | `llm_fallback_requests_total` | counter | `resolution`, `position` (route index that answered, or `none`), `drill` |
//! | `llm_fallback_skips_total` | counter | `model`, `reason` |
//! | `llm_fallback_hedges_started_total` | counter | `model` |
//! | `llm_fallback_hedges_won_total` | counter | `model` |
//! | `llm_fallback_time_to_commit_seconds` | histogram | `model` |

#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

use crate::report::{Outcome, Resolution};
use std::sync::Arc;
use std::time::Duration;

// Labels borrow `&'static str`s and share the route's `Arc<str>` model id,
// so recording allocates nothing on the request path.

#[inline]
pub(crate) fn attempt(model: &Arc<str>, outcome: Outcome, elapsed: Duration) {
    #[cfg(feature = "metrics")]
    {
        let model = metrics::SharedString::from(model.clone());
        metrics::counter!("llm_fallback_attempts_total", "model" => model.clone(), "outcome" => outcome.as_str())
            .increment(1);
        metrics::histogram!("llm_fallback_attempt_duration_seconds", "model" => model, "outcome" => outcome.as_str())
            .record(elapsed.as_secs_f64());
    }
}

#[inline]
pub(crate) fn request(resolution: Resolution, position: Option<usize>, drill: bool) {
    #[cfg(feature = "metrics")]
    {
        const POSITIONS: [&str; 8] = ["0", "1", "2", "3", "4", "5", "6", "7"];
        let position: metrics::SharedString = match position {
            None => "none".into(),
            Some(p) if p < POSITIONS.len() => POSITIONS[p].into(),
            Some(p) => p.to_string().into(),
        };
        metrics::counter!(
            "llm_fallback_requests_total",
            "resolution" => resolution.as_str(),
            "position" => position,
            "drill" => if drill { "true" } else { "false" },
        )
        .increment(1);
    }
}

#[inline]
pub(crate) fn skip(model: &Arc<str>, reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("llm_fallback_skips_total", "model" => metrics::SharedString::from(model.clone()), "reason" => reason).increment(1);
}

#[inline]
pub(crate) fn hedge_started(model: &Arc<str>) {
    #[cfg(feature = "metrics")]
    metrics::counter!("llm_fallback_hedges_started_total", "model" => metrics::SharedString::from(model.clone()))
        .increment(1);
}

#[inline]
pub(crate) fn hedge_won(model: &Arc<str>) {
    #[cfg(feature = "metrics")]
    metrics::counter!("llm_fallback_hedges_won_total", "model" => metrics::SharedString::from(model.clone()))
        .increment(1);
}

#[inline]
pub(crate) fn committed(model: &Arc<str>, elapsed: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("llm_fallback_time_to_commit_seconds", "model" => metrics::SharedString::from(model.clone()))
        .record(elapsed.as_secs_f64());
}
