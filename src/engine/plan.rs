//! Which route a request tries next: a cursor over its chain that knows
//! every reason to pass a route by.
//!
//! The plan does no I/O and owns no clock: the engine hands it the time and
//! a way to ask the health store whether a route is admitted, and tells it
//! what each attempt's verdict was. So every skip rule can be tested with
//! plain values (see the tests below).

use super::verdict::{Reroute, Verdict};
use crate::affinity::Affinity;
use crate::capability::{Needs, Price, PriceGuard, SkipReason};
use crate::deployment::Group;
use crate::health::Admission;
use crate::hop::Hop;
use crate::{Chain, ChainSet};
use std::sync::Arc;
use tokio::time::Instant;

/// The cursor of one request over its chain (and the content-policy chain
/// it may move to).
pub(super) struct Plan<'c> {
    chains: &'c ChainSet,
    chain_name: &'c Arc<str>,
    chain: &'c Chain,
    first_chain: &'c Arc<str>,
    /// Routes of the chains the request left, so positions count from the
    /// first chain.
    chain_offset: usize,
    next: usize,
    drill: bool,
    needs: Option<Needs>,
    guard: Option<PriceGuard>,
    cap: Option<Price>,
    /// After a `context_length_exceeded`: only larger windows are worth a try.
    overflowed_window: Option<u64>,
    /// Routes skipped because they cool down, with when they recover: the
    /// soonest is tried anyway if nothing else could be sent.
    cooling: Vec<(Instant, usize)>,
    forced: Option<usize>,
    sent: usize,
    /// The share of a chain's routes that may be skipped as cooling (the
    /// health store's), and how many of this chain's were.
    open_share: f64,
    cooled: usize,
    /// The route's deployments the cursor is in, once one was chosen first.
    group: Option<GroupCursor>,
    /// A key of this deployment (hop index of its group's start, member)
    /// failed other than by a rate limit: its other keys are passed by.
    failed_endpoint: Option<(usize, usize)>,
    /// The request's sticky session, when it has one.
    pins: Option<Pins<'c>>,
}

/// A request's sticky session: where its pins are and its hash.
#[derive(Clone, Copy)]
pub(super) struct Pins<'c> {
    affinity: &'c Affinity,
    session: u64,
}

impl std::fmt::Debug for Pins<'_> {
    // The session's hash is not shown: it names a caller.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins").finish_non_exhaustive()
    }
}

/// The order of one route's deployments for this request: the chosen one's
/// hops first, then the others' in declared order. Positions are the
/// cursor's; what they map to are hop indexes.
#[derive(Clone, Copy, Debug)]
struct GroupCursor {
    start: usize,
    len: usize,
    /// The chosen deployment's hops, as offset and count within the group.
    first: usize,
    first_len: usize,
}

impl GroupCursor {
    /// The hop index at cursor position `pos`, if it is in the group.
    fn map(&self, pos: usize) -> Option<usize> {
        let k = pos.checked_sub(self.start).filter(|k| *k < self.len)?;
        Some(
            self.start
                + if k < self.first_len {
                    self.first + k
                } else if k - self.first_len < self.first {
                    k - self.first_len
                } else {
                    k
                },
        )
    }
}

/// What the plan says to do next.
#[derive(Debug)]
pub(super) enum Step<'c> {
    /// Send this hop.
    Launch(Launch<'c>),
    /// Pass this route by (the engine records why) and ask again.
    Skip {
        index: usize,
        hop: &'c Hop,
        reason: SkipReason,
    },
    /// Nothing more to launch now.
    Done,
}

/// A route the plan chose to send.
#[derive(Debug)]
pub(super) struct Launch<'c> {
    pub(super) index: usize,
    pub(super) hop: &'c Hop,
    pub(super) chain: &'c Arc<str>,
    /// Among every route the request could go through (counting the
    /// chains it left).
    pub(super) position: usize,
    /// The health store let this request through as the route's probe.
    pub(super) probe: bool,
    /// Tried although it cools down, because nothing else could be sent:
    /// its skip record is replaced by this attempt's.
    pub(super) forced: bool,
}

impl<'c> Plan<'c> {
    /// A plan over `chain` (called `name` in `chains`).
    pub(super) fn new(
        chains: &'c ChainSet,
        name: &'c Arc<str>,
        chain: &'c Chain,
        drill: bool,
        needs: Option<Needs>,
        guard: Option<PriceGuard>,
    ) -> Self {
        Plan {
            chains,
            chain_name: name,
            chain,
            first_chain: name,
            chain_offset: 0,
            next: 0,
            drill,
            needs,
            guard,
            cap: guard.and_then(|g| chain.price_cap(g)),
            overflowed_window: None,
            cooling: Vec::new(),
            forced: None,
            sent: 0,
            open_share: 1.0,
            cooled: 0,
            group: None,
            failed_endpoint: None,
            pins: None,
        }
    }

    /// Sends `session`'s requests to the deployments it is pinned to first,
    /// and pins it to the deployments that serve it.
    pub(super) fn sticky(mut self, affinity: Option<&'c Affinity>, session: Option<u64>) -> Self {
        self.pins = affinity
            .zip(session)
            .map(|(affinity, session)| Pins { affinity, session });
        self
    }

    /// The deployment of `group` the session is pinned to, if any.
    fn pinned(&self, group: &Group, now: Instant) -> Option<usize> {
        let pins = self.pins.filter(|_| group.members() > 1)?;
        let member = pins.affinity.store_ref().get(group.session_key(pins.session), now)? as usize;
        (member < group.members()).then_some(member)
    }

    /// `hop` served the request at `now`: its deployment is the session's
    /// pin on its route (a new pin, or the old one for another TTL).
    pub(super) fn served(&self, hop: &Hop, now: Instant) {
        let (Some(pins), Some(u)) = (self.pins, hop.route.unit.as_ref()) else {
            return;
        };
        if u.group.members() > 1 {
            let key = u.group.session_key(pins.session);
            let member = u32::try_from(u.member).unwrap_or(u32::MAX);
            pins.affinity
                .store_ref()
                .pin(key, member, now, pins.affinity.time_to_live());
        }
    }

    /// The hop index at cursor position `pos`: itself, unless `pos` is in a
    /// route's deployments, whose order is chosen when the cursor enters them.
    fn hop_at(&mut self, pos: usize, now: Instant) -> usize {
        if let Some(i) = self.group.and_then(|g| g.map(pos)) {
            return i;
        }
        let unit = self.chain.hops().get(pos).and_then(|h| h.route.unit.as_ref());
        match unit {
            Some(u) if u.offset == 0 && u.group.units() > 1 => {
                let first = self.pinned(&u.group, now).unwrap_or_else(|| u.group.choose(now));
                let (first, first_len) = u.group.span(first);
                let g = GroupCursor {
                    start: pos,
                    len: u.group.units(),
                    first,
                    first_len,
                };
                self.group = Some(g);
                g.map(pos).unwrap_or(pos)
            }
            _ => pos,
        }
    }

    /// The hop at `index` is (a deployment of) the chain's first route.
    fn is_primary(index: usize, hop: &Hop) -> bool {
        index == 0 || hop.route.unit.as_ref().is_some_and(|u| u.offset == index)
    }

    /// Skips at most `share` of the chain's routes as cooling (at least
    /// one): the health store's [`max_open_share`](crate::health::HealthStore::max_open_share).
    pub(super) fn max_open_share(mut self, share: f64) -> Self {
        self.open_share = share;
        self
    }

    /// Another cooling route of this chain may be skipped.
    fn may_skip_cooling(&self) -> bool {
        let routes = self.chain.hops().len();
        // Floor of the share, but at least one route (Envoy's rule).
        let budget = ((self.open_share * routes as f64).floor() as usize).max(1);
        self.open_share >= 1.0 || self.cooled < budget
    }

    /// The chain the request is on now.
    pub(super) fn chain(&self) -> &'c Chain {
        self.chain
    }

    pub(super) fn chain_name(&self) -> &'c Arc<str> {
        self.chain_name
    }

    /// A price guard is set but the primary's price is unknown, so it
    /// cannot cap anything.
    pub(super) fn guard_inactive(&self) -> bool {
        self.guard.is_some() && self.cap.is_none()
    }

    /// Some route of this chain is still ahead of the cursor.
    pub(super) fn has_more(&self) -> bool {
        self.next < self.chain.hops().len()
    }

    /// The request may still move to another chain (a content-policy one).
    pub(super) fn may_switch(&self) -> bool {
        self.chains
            .content_policy_chain()
            .is_some_and(|(n, _)| !Arc::ptr_eq(n, self.chain_name))
    }

    /// The next step. `in_air` says whether an attempt is in flight;
    /// `admit` asks the health store about a route (not called when the
    /// layer keeps no health).
    pub(super) fn next(
        &mut self,
        now: Instant,
        in_air: bool,
        admit: Option<&mut dyn FnMut(&Hop) -> Admission>,
    ) -> Step<'c> {
        let hops = self.chain.hops();
        let at = if self.next < hops.len() {
            self.hop_at(self.next, now)
        } else {
            self.next
        };
        let (index, hop, forced) = match hops.get(at) {
            Some(hop) => {
                self.next += 1;
                (at, hop, false)
            }
            // Nothing was sent and every skip was a cooldown: try the route
            // that recovers first rather than fail untried.
            None => match (self.sent, self.forced, self.cooling.iter().min()) {
                (0, None, Some(&(_, i))) if !in_air => match hops.get(i) {
                    Some(hop) => {
                        self.forced = Some(i);
                        (i, hop, true)
                    }
                    None => return Step::Done,
                },
                _ => return Step::Done,
            },
        };
        let is_forced = self.forced == Some(index) && self.sent == 0;
        if !is_forced {
            if let Some(reason) = self.skip_reason(index, hop) {
                return Step::Skip { index, hop, reason };
            }
        }
        // Health: a cooling route is skipped; one that just recovered lets
        // this request through as its probe.
        let mut probe = false;
        if let Some(admit) = admit {
            match admit(hop) {
                Admission::Open => {}
                Admission::Probe => probe = true,
                Admission::Cooling { until } if !is_forced && self.may_skip_cooling() => {
                    self.cooled += 1;
                    self.cooling.push((until, index));
                    let remaining = until.saturating_duration_since(now);
                    return Step::Skip {
                        index,
                        hop,
                        reason: SkipReason::Cooling { remaining },
                    };
                }
                Admission::Cooling { .. } => {}
            }
        }
        Step::Launch(Launch {
            index,
            hop,
            chain: self.chain_name,
            position: self.chain_offset + index,
            probe,
            forced,
        })
    }

    /// An attempt on `hop` (at `index`) failed; `rate_limited` when by a
    /// `429` or with a `Retry-After`. A key's other failures (a 5xx, a
    /// timeout, a dead connection) are its endpoint's: the deployment's
    /// other keys would meet the same, so they are passed by.
    pub(super) fn failed(&mut self, index: usize, hop: &Hop, rate_limited: bool) {
        if let (Some(u), false) = (hop.route.unit.as_ref().filter(|u| u.key.is_some()), rate_limited) {
            self.failed_endpoint = index.checked_sub(u.offset).map(|start| (start, u.member));
        }
    }

    /// Why `route` (at `index`) is not worth sending, for reasons known
    /// without asking anyone.
    fn skip_reason(&self, index: usize, hop: &Hop) -> Option<SkipReason> {
        if let (Some(u), Some(failed)) = (hop.route.unit.as_ref(), self.failed_endpoint) {
            if u.key.is_some() && index.checked_sub(u.offset) == Some(failed.0) && u.member == failed.1 {
                return Some(SkipReason::EndpointFailed);
            }
        }
        let drilled = self.drill && Self::is_primary(index, hop) && Arc::ptr_eq(self.chain_name, self.first_chain);
        drilled
            .then_some(SkipReason::Drill)
            .or_else(|| self.needs.as_ref().and_then(|n| hop.unfit(n)))
            .or_else(|| {
                let failed_window = self.overflowed_window?;
                (hop.route.context_window? <= failed_window).then_some(SkipReason::NotLargerWindow { failed_window })
            })
            .or_else(|| {
                let cap = self.cap?;
                let primary_exempt = Self::is_primary(index, hop) && self.guard == Some(PriceGuard::NotAbovePrimary);
                match hop.price {
                    _ if primary_exempt => None,
                    Some(p) if p.within(cap) => None,
                    price => Some(SkipReason::PriceCap { price }),
                }
            })
    }

    /// A hop was sent.
    pub(super) fn sent(&mut self) {
        self.sent += 1;
    }

    /// Learns what an attempt on `route` meant for the rest of the request.
    /// Returns the chain moved to, when the verdict moved the request.
    pub(super) fn learn(&mut self, hop: &Hop, verdict: &Verdict) -> Option<&'c Arc<str>> {
        match verdict.reroute {
            Reroute::Stay => None,
            Reroute::LargerWindow => {
                self.overflowed_window = self.overflowed_window.max(hop.route.context_window);
                None
            }
            Reroute::ContentPolicy => {
                let (name, chain) = self
                    .chains
                    .content_policy_chain()
                    .filter(|(n, _)| !Arc::ptr_eq(n, self.chain_name))?;
                self.chain_offset += self.chain.hops().len();
                self.cooled = 0;
                (self.chain_name, self.chain) = (name, chain);
                self.next = 0;
                self.group = None;
                self.failed_endpoint = None;
                Some(name)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::verdict::Learned;
    use crate::policy::Action;
    use crate::{Capabilities, Route};
    use std::time::Duration;

    /// Every step until `Done`, as (index, "launch"/skip reason).
    fn walk(plan: &mut Plan<'_>, now: Instant, mut admit: impl FnMut(&Hop) -> Admission) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for _ in 0..32 {
            match plan.next(now, false, Some(&mut admit)) {
                Step::Launch(hop) => {
                    plan.sent();
                    out.push((hop.index, if hop.forced { "forced" } else { "launch" }.to_owned()));
                }
                Step::Skip { index, reason, .. } => out.push((index, reason.as_str().to_owned())),
                Step::Done => return out,
            }
        }
        panic!("the plan did not end: {out:?}")
    }

    fn open(_: &Hop) -> Admission {
        Admission::Open
    }

    fn verdict(reroute: Reroute) -> Verdict {
        Verdict {
            action: Action::Fallback,
            health: Learned::Nothing,
            reroute,
        }
    }

    #[test]
    fn every_route_in_order() {
        let chains = ChainSet::new(Chain::new([Route::new("a"), Route::new("b"), Route::new("c")]));
        let (name, chain) = chains.select(None, None).unwrap();
        let mut plan = Plan::new(&chains, name, chain, false, None, None);
        let steps = walk(&mut plan, Instant::now(), open);
        assert_eq!(
            steps,
            [(0, "launch".into()), (1, "launch".into()), (2, "launch".into())]
        );
        assert!(!plan.has_more());
    }

    #[test]
    fn drill_needs_and_price_skip_routes() {
        let priced = |m: &str, p: f64| Route::new(m).price(Price::per_million(p, p));
        let chains = ChainSet::new(Chain::new([
            priced("primary", 1.0),
            priced("no-tools", 1.0).capabilities(Capabilities::VISION),
            priced("pricey", 5.0).capabilities(Capabilities::TOOLS),
            Route::new("unpriced").capabilities(Capabilities::TOOLS),
            priced("cheap", 0.5).capabilities(Capabilities::TOOLS),
        ]));
        let (name, chain) = chains.select(None, None).unwrap();
        let needs = Needs {
            capabilities: Capabilities::TOOLS,
            ..Needs::default()
        };
        // The primary is exempt from the price cap; the drill skips it.
        let mut plan = Plan::new(
            &chains,
            name,
            chain,
            true,
            Some(needs),
            Some(PriceGuard::NotAbovePrimary),
        );
        let steps = walk(&mut plan, Instant::now(), open);
        assert_eq!(
            steps,
            [
                (0, "drill".into()),
                (1, "capability".into()),
                (2, "price_cap".into()),
                (3, "price_cap".into()),
                (4, "launch".into()),
            ]
        );
    }

    #[test]
    fn a_context_overflow_leaves_only_larger_windows() {
        let chains = ChainSet::new(Chain::new([
            Route::new("8k").context_window(8_000),
            Route::new("also-8k").context_window(8_000),
            Route::new("unknown"),
            Route::new("128k").context_window(128_000),
        ]));
        let (name, chain) = chains.select(None, None).unwrap();
        let mut plan = Plan::new(&chains, name, chain, false, None, None);
        let Step::Launch(first) = plan.next(Instant::now(), false, None) else {
            panic!("the first route launches")
        };
        plan.sent();
        assert_eq!(plan.learn(first.hop, &verdict(Reroute::LargerWindow)), None);
        let steps = walk(&mut plan, Instant::now(), open);
        // A route of unknown window is tried: it may be large.
        assert_eq!(
            steps,
            [
                (1, "not_larger_window".into()),
                (2, "launch".into()),
                (3, "launch".into())
            ]
        );
    }

    #[test]
    fn cooling_routes_are_skipped_and_the_soonest_forced_when_nothing_was_sent() {
        let chains = ChainSet::new(Chain::new([Route::new("a"), Route::new("b"), Route::new("c")]));
        let (name, chain) = chains.select(None, None).unwrap();
        let now = Instant::now();
        let until = |secs| now + Duration::from_secs(secs);
        let mut plan = Plan::new(&chains, name, chain, false, None, None);
        let recovers = |r: &Hop| match &*r.model {
            "a" => Admission::Cooling { until: until(30) },
            "b" => Admission::Cooling { until: until(5) },
            _ => Admission::Cooling { until: until(60) },
        };
        let steps = walk(&mut plan, now, recovers);
        assert_eq!(
            steps,
            [
                (0, "cooling".into()),
                (1, "cooling".into()),
                (2, "cooling".into()),
                (1, "forced".into())
            ]
        );

        // With one route open, nothing is forced.
        let mut plan = Plan::new(&chains, name, chain, false, None, None);
        let one_open = |r: &Hop| match &*r.model {
            "c" => Admission::Open,
            _ => Admission::Cooling { until: until(5) },
        };
        let steps = walk(&mut plan, now, one_open);
        assert_eq!(
            steps,
            [(0, "cooling".into()), (1, "cooling".into()), (2, "launch".into())]
        );
    }

    #[test]
    fn cooling_routes_past_the_open_share_are_tried() {
        let chains = ChainSet::new(Chain::new([
            Route::new("a"),
            Route::new("b"),
            Route::new("c"),
            Route::new("d"),
        ]));
        let (name, chain) = chains.select(None, None).unwrap();
        let now = Instant::now();
        let all_cool = |_: &Hop| Admission::Cooling {
            until: now + Duration::from_secs(5),
        };
        // Half of four routes may be skipped as cooling; the rest are tried.
        let mut plan = Plan::new(&chains, name, chain, false, None, None).max_open_share(0.5);
        let steps = walk(&mut plan, now, all_cool);
        assert_eq!(
            steps,
            [
                (0, "cooling".into()),
                (1, "cooling".into()),
                (2, "launch".into()),
                (3, "launch".into())
            ]
        );
        // At least one route may always cool, whatever the share.
        let mut plan = Plan::new(&chains, name, chain, false, None, None).max_open_share(0.0);
        let steps = walk(&mut plan, now, all_cool);
        assert_eq!(steps[..2], [(0, "cooling".into()), (1, "launch".into())]);
        // Routes skipped for other reasons do not spend the share.
        let mut plan = Plan::new(&chains, name, chain, true, None, None).max_open_share(0.25);
        let steps = walk(&mut plan, now, all_cool);
        assert_eq!(
            steps[..3],
            [(0, "drill".into()), (1, "cooling".into()), (2, "launch".into())]
        );
    }

    #[test]
    fn a_probe_is_reported_on_the_hop() {
        let chains = ChainSet::new(Chain::new([Route::new("a")]));
        let (name, chain) = chains.select(None, None).unwrap();
        let mut plan = Plan::new(&chains, name, chain, false, None, None);
        let mut probe = |_: &Hop| Admission::Probe;
        let Step::Launch(hop) = plan.next(Instant::now(), false, Some(&mut probe)) else {
            panic!("a probe launches")
        };
        assert!(hop.probe && !hop.forced);
    }

    #[test]
    fn a_content_policy_block_moves_to_that_chain_once() {
        let chains = ChainSet::new(Chain::new([Route::new("strict"), Route::new("other")]))
            .chain("lenient", Chain::new([Route::new("lenient"), Route::new("lenient-2")]))
            .on_content_policy("lenient");
        let (name, chain) = chains.select(None, None).unwrap();
        let mut plan = Plan::new(&chains, name, chain, true, None, None);
        // The drill skips the first chain's primary only.
        assert!(matches!(
            plan.next(Instant::now(), false, None),
            Step::Skip {
                reason: SkipReason::Drill,
                ..
            }
        ));
        let Step::Launch(hop) = plan.next(Instant::now(), false, None) else {
            panic!()
        };
        assert_eq!((hop.index, hop.position), (1, 1));
        assert!(plan.may_switch());
        let moved = plan.learn(hop.hop, &verdict(Reroute::ContentPolicy));
        assert_eq!(moved.map(|n| &**n), Some("lenient"));
        assert!(!plan.may_switch(), "the content-policy chain does not move again");
        let Step::Launch(hop) = plan.next(Instant::now(), false, None) else {
            panic!("the lenient chain's primary is not drilled")
        };
        assert_eq!((hop.index, hop.position, &**hop.chain), (0, 2, "lenient"));
        assert_eq!(plan.learn(hop.hop, &verdict(Reroute::ContentPolicy)), None);
        assert!(matches!(plan.next(Instant::now(), false, None), Step::Launch(_)));
        assert!(matches!(plan.next(Instant::now(), false, None), Step::Done));
    }

    #[test]
    fn a_routes_deployments_go_chosen_first_then_in_order_then_the_next_route() {
        use crate::Deployment;
        let chains = ChainSet::new(Chain::new([
            Route::new("m")
                .deployments([
                    Deployment::new("a").weight(0),
                    Deployment::new("b").weight(0),
                    Deployment::new("c").weight(1),
                ])
                .balance_seed(1),
            Route::new("z"),
        ]));
        let (name, chain) = chains.select(None, None).unwrap();
        let mut plan = Plan::new(&chains, name, chain, false, None, None);
        let steps = walk(&mut plan, Instant::now(), open);
        // Only `c` has weight: it goes first, then `a`, `b`, then the next route.
        let order: Vec<usize> = steps.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, [2, 0, 1, 3]);
        // The drill passes the whole primary route by.
        let mut plan = Plan::new(&chains, name, chain, true, None, None);
        let steps = walk(&mut plan, Instant::now(), open);
        assert_eq!(
            steps,
            [
                (2, "drill".into()),
                (0, "drill".into()),
                (1, "drill".into()),
                (3, "launch".into())
            ]
        );
    }

    #[test]
    fn a_sticky_session_starts_at_its_pin_and_is_pinned_where_it_is_served() {
        use crate::affinity::Affinity;
        use crate::Deployment;
        let chains = ChainSet::new(Chain::new([
            Route::new("m")
                .deployments([
                    Deployment::new("a"),
                    Deployment::new("b").weight(0),
                    Deployment::new("c").weight(0),
                ])
                .balance_seed(1),
            Route::new("z"),
        ]));
        let (name, chain) = chains.select(None, None).unwrap();
        let affinity = Affinity::user();
        let order = |session: Option<u64>| {
            let mut plan = Plan::new(&chains, name, chain, false, None, None).sticky(Some(&affinity), session);
            walk(&mut plan, Instant::now(), open)
                .iter()
                .map(|(i, _)| *i)
                .collect::<Vec<_>>()
        };
        // Unpinned: the only weighted deployment first.
        assert_eq!(order(Some(7)), [0, 1, 2, 3]);
        // Served by `c`: the session starts there, then the others in order.
        let plan = Plan::new(&chains, name, chain, false, None, None).sticky(Some(&affinity), Some(7));
        plan.served(&chain.hops()[2], Instant::now());
        assert_eq!(order(Some(7)), [2, 0, 1, 3]);
        assert_eq!(order(Some(8)), [0, 1, 2, 3], "another session is not pinned");
        assert_eq!(order(None), [0, 1, 2, 3], "a request without a session is not pinned");
        // A route without deployments pins nothing.
        plan.served(&chain.hops()[3], Instant::now());
        assert_eq!(order(Some(7)), [2, 0, 1, 3]);
        // Its pin lasts its TTL.
        let later = Instant::now() + affinity.time_to_live();
        let mut plan = Plan::new(&chains, name, chain, false, None, None).sticky(Some(&affinity), Some(7));
        let steps: Vec<usize> = walk(&mut plan, later, open).iter().map(|(i, _)| *i).collect();
        assert_eq!(steps, [0, 1, 2, 3]);
    }

    #[test]
    fn group_cursor_maps_every_position_once() {
        for len in 1..6 {
            for first in 0..len {
                for first_len in 1..=(len - first) {
                    let g = GroupCursor {
                        start: 3,
                        len,
                        first,
                        first_len,
                    };
                    let mut seen: Vec<usize> = (3..3 + len).map(|p| g.map(p).unwrap()).collect();
                    assert_eq!(
                        seen[..first_len],
                        (3 + first..3 + first + first_len).collect::<Vec<_>>()[..]
                    );
                    seen.sort_unstable();
                    assert_eq!(seen, (3..3 + len).collect::<Vec<_>>());
                    assert_eq!(g.map(2), None);
                    assert_eq!(g.map(3 + len), None);
                }
            }
        }
    }
}
