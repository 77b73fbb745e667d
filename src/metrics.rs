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
use std::time::Duration;

#[inline]
pub(crate) fn attempt(model: &str, outcome: Outcome, elapsed: Duration) {
    #[cfg(feature = "metrics")]
    {
        let labels = [("model", model.to_owned()), ("outcome", outcome.as_str().to_owned())];
        metrics::counter!("llm_fallback_attempts_total", &labels).increment(1);
        metrics::histogram!("llm_fallback_attempt_duration_seconds", &labels).record(elapsed.as_secs_f64());
    }
}

#[inline]
pub(crate) fn request(resolution: Resolution, position: Option<usize>, drill: bool) {
    #[cfg(feature = "metrics")]
    {
        let position = position.map_or_else(|| "none".to_owned(), |p| p.to_string());
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
pub(crate) fn skip(model: &str, reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("llm_fallback_skips_total", "model" => model.to_owned(), "reason" => reason).increment(1);
}

#[inline]
pub(crate) fn hedge_started(model: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("llm_fallback_hedges_started_total", "model" => model.to_owned()).increment(1);
}

#[inline]
pub(crate) fn hedge_won(model: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("llm_fallback_hedges_won_total", "model" => model.to_owned()).increment(1);
}

#[inline]
pub(crate) fn committed(model: &str, elapsed: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("llm_fallback_time_to_commit_seconds", "model" => model.to_owned())
        .record(elapsed.as_secs_f64());
}
