//! `ConfigPolicy`: the `[policy]` overrides on top of the default policy.

use super::PolicyConfig;
use crate::policy::{Action, DefaultPolicy, Observed, Policy};
use crate::Attempt;

/// The [`DefaultPolicy`] with the overrides of a config's `[policy]`
/// ([`PolicyConfig`]).
///
/// For a response, in this order: an upstream error whose
/// [`error_type`](crate::UpstreamError::error_type) or
/// [`code`](crate::UpstreamError::code) is in `stop_on_error_type` stops, in
/// `fallback_on_error_type` falls back; then a status in `stop_on_status`
/// stops, in `fallback_on_status` falls back. Everything else — transport
/// errors, timeouts, unlisted statuses — is classified by the
/// [`DefaultPolicy`].
///
/// ```
/// use llm_fallback::config::{ConfigPolicy, PolicyConfig};
/// use llm_fallback::{Chain, FallbackLayer, Route};
///
/// let mut knobs = PolicyConfig::default();
/// knobs.stop_on_status = vec![429];
/// knobs.fallback_on_status = vec![409];
/// let layer = FallbackLayer::builder(Chain::new([Route::new("a/b"), Route::new("c/d")]))
///     .with_policy(ConfigPolicy::new(&knobs))
///     .layer();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug, Default)]
pub struct ConfigPolicy {
    fallback_on_status: Box<[u16]>,
    stop_on_status: Box<[u16]>,
    fallback_on_error_type: Box<[String]>,
    stop_on_error_type: Box<[String]>,
}

impl ConfigPolicy {
    /// The default policy with `config`'s overrides.
    pub fn new(config: &PolicyConfig) -> Self {
        ConfigPolicy {
            fallback_on_status: config.fallback_on_status.clone().into(),
            stop_on_status: config.stop_on_status.clone().into(),
            fallback_on_error_type: config.fallback_on_error_type.clone().into(),
            stop_on_error_type: config.stop_on_error_type.clone().into(),
        }
    }

    fn overrides(&self, observed: &Observed<'_>) -> Option<Action> {
        let Observed::Response(r) = observed else {
            return None;
        };
        if let Some(e) = r.error() {
            let listed = |list: &[String]| {
                [e.error_type(), e.code()]
                    .into_iter()
                    .flatten()
                    .any(|kind| list.iter().any(|t| t == kind))
            };
            if listed(&self.stop_on_error_type) {
                return Some(Action::Stop);
            }
            if listed(&self.fallback_on_error_type) {
                return Some(Action::Fallback);
            }
        }
        let status = r.status().as_u16();
        if self.stop_on_status.contains(&status) {
            return Some(Action::Stop);
        }
        if self.fallback_on_status.contains(&status) {
            return Some(Action::Fallback);
        }
        None
    }
}

impl Policy for ConfigPolicy {
    fn classify(&self, attempt: &Attempt, observed: &Observed<'_>) -> Action {
        self.overrides(observed)
            .unwrap_or_else(|| DefaultPolicy.classify(attempt, observed))
    }
}
