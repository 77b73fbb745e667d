//! What one attempt sends: the caller's body with the route's edits (zero
//! copy), and the caller's request head for the route's endpoint.

use crate::dialect::Dialect;
use crate::hop::{Hop, HopOverride};
use crate::json::scan;
use crate::json::scan::skip_ws;
use crate::json::{BadEdits, Edit, ReplayBody};
use crate::request::{removals_merged, MemberSpan, Recorded, RequestIndex};
use crate::Attempt;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Request};
use std::borrow::Cow;

/// Anthropic's key header and API version header.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// Asks OpenRouter to report its own attempts in the body.
const X_OPENROUTER_METADATA: HeaderName = HeaderName::from_static("x-openrouter-metadata");

/// The caller's body for `route`: its model, its `provider` and `models`
/// when it sets them (replacing the caller's or inserted first), its
/// overrides ([`Route::set`](crate::Route::set)), and without the
/// OpenRouter-only keys when its endpoint is not OpenRouter. Everything
/// else is the caller's bytes, shared, not copied.
///
/// The overrides are edited from the members the index recorded for the
/// set's override keys ([`Recorded`]): each recorded member of a key the
/// route overrides is replaced or cut out (every copy of a repeated key),
/// and a key it sets that the body lacks goes in after the `{`, each its
/// own part. A run of adjacent removed members (cut keys and stripped
/// OpenRouter members together) goes with one comma, as [`removals`] cuts
/// them. An index that recorded nothing, or not every key of this route
/// (a route the set did not know of), leaves the overrides to
/// [`walk_overrides`], which sends the same bytes.
pub(crate) fn attempt_body(body: &Bytes, index: &RequestIndex, hop: &Hop) -> Result<ReplayBody, BadEdits> {
    let recorded = match (hop.overrides.is_empty(), &index.recorded) {
        (true, _) => None,
        (false, Some(recorded)) => Some(recorded),
        (false, None) => return walk_overrides(body, index, hop),
    };
    let mut edits = Edits::default();
    let mut insert = BytesMut::new();
    // OpenRouter takes `models` on every dialect but embeddings (where two
    // models' vectors would be mixed): the route's native fallbacks are not
    // sent there.
    let fallbacks = hop
        .fallbacks_json
        .as_ref()
        .filter(|_| index.dialect != Dialect::Embeddings);
    for (key, ours, theirs) in [
        ("provider", hop.provider_json.as_ref(), index.provider),
        ("models", fallbacks, index.models),
    ] {
        match (ours, theirs) {
            (Some(json), Some(span)) => edits.push(Edit {
                range: span.value_start..span.value_end,
                replacement: json.clone(),
            }),
            (Some(json), None) => {
                insert.extend_from_slice(b"\"");
                insert.extend_from_slice(key.as_bytes());
                insert.extend_from_slice(b"\":");
                insert.extend_from_slice(json);
                insert.extend_from_slice(b",");
            }
            (None, _) => {}
        }
    }
    let at = index.object_start + 1;
    if !insert.is_empty() {
        edits.push(Edit {
            range: at..at,
            replacement: insert.freeze(),
        });
    }
    if body.get(index.model.clone()) != Some(&hop.model_json[..]) {
        edits.push(Edit {
            range: index.model.clone(),
            replacement: hop.model_json.clone(),
        });
    }
    // Some override removes a key the body has.
    let mut removed = false;
    if let Some(recorded) = recorded {
        // Which overrides (bit i: `hop.overrides[i]`) the body has; at
        // most `Overrides::MAX` = 64 of them.
        let mut found = 0u64;
        for (slot, value) in recorded.values() {
            if let Some((i, o)) = overridden(recorded, hop, slot) {
                found |= 1u64.checked_shl(i as u32).unwrap_or(0);
                match &o.value {
                    Some(json) => edits.push(Edit {
                        range: value,
                        replacement: json.clone(),
                    }),
                    None => removed = true,
                }
            }
        }
        for (i, o) in hop.overrides.iter().enumerate() {
            if found & 1u64.checked_shl(i as u32).unwrap_or(0) == 0 {
                if recorded.keys.slot(&o.key).is_none() {
                    // Not looked for: whether the body has it is unknown.
                    return walk_overrides(body, index, hop);
                }
                // What the body lacks goes in after its `{`.
                if let Some(member) = &o.member {
                    edits.push(Edit {
                        range: at..at,
                        replacement: member.clone(),
                    });
                }
            }
        }
    }
    let foreign = hop.route.endpoint.as_ref().is_some_and(|e| !e.openrouter);
    if removed || foreign || (hop.drop_models && index.models.is_some()) {
        // Other APIs refuse OpenRouter's extensions; the route's own
        // `provider`/`models` are kept (setting them says the endpoint wants them).
        // A caller's own chain never sends its `models`: the layer runs it.
        let mut gone = [MemberSpan::default(); 4];
        let mut n = 0;
        for member in [
            index
                .provider
                .filter(|_| foreign && hop.provider_json.as_ref().is_none()),
            index
                .models
                .filter(|_| fallbacks.is_none() && (foreign || hop.drop_models)),
            index.route.filter(|_| foreign),
            index.transforms.filter(|_| foreign),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(slot) = gone.get_mut(n) {
                *slot = member;
                n += 1;
            }
        }
        let gone = gone.get_mut(..n).unwrap_or_default();
        gone.sort_unstable_by_key(|m| m.value_start);
        let cut = recorded
            .into_iter()
            .flat_map(|r| r.members(body))
            .filter(|(slot, _)| {
                recorded
                    .is_some_and(|r| matches!(overridden(r, hop, *slot), Some((_, HopOverride { value: None, .. }))))
            })
            .map(|(_, span)| span);
        for range in removals_merged(gone, cut) {
            edits.push(Edit {
                range,
                replacement: Bytes::new(),
            });
        }
    }
    edits.apply(body)
}

/// The override of `hop` (its position and itself) that a member
/// `recorded` under `slot` names, if any.
fn overridden<'h>(recorded: &Recorded, hop: &'h Hop, slot: usize) -> Option<(usize, &'h HopOverride)> {
    let key = recorded.keys.key(slot)?;
    hop.overrides.iter().enumerate().find(|(_, o)| *o.key == *key)
}

/// [`with_overrides`] by one walk over the body's top-level members (which
/// the index has validated), finding the keys to replace or remove. The members the index knows (`messages`, `input`,
/// `tools`, ... : the prompt) are jumped over by their recorded spans, so
/// the walk reads only the small members' bytes, never the prompt's.
///
/// Every member named by an override is edited (a duplicated key in every
/// copy); a removed run of adjacent members goes with one comma, as
/// [`removals`] cuts them. The edits are the caller's bytes' spans and the
/// values encoded when the route was compiled: nothing is copied.
fn walk_overrides(body: &Bytes, index: &RequestIndex, hop: &Hop) -> Result<ReplayBody, BadEdits> {
    let fallbacks = hop
        .fallbacks_json
        .as_ref()
        .filter(|_| index.dialect != Dialect::Embeddings);
    let foreign = hop.route.endpoint.as_ref().is_some_and(|e| !e.openrouter);
    let strip_models = fallbacks.is_none() && (foreign || hop.drop_models);
    let n = &index.needs;
    let span = |m: Option<MemberSpan>| m.map(|m| m.value_start..m.value_end);
    let known = [
        n.messages.clone(),
        n.input.clone(),
        n.system.clone(),
        n.tools.as_ref().map(|t| t.0.clone()),
        n.functions.as_ref().map(|t| t.0.clone()),
        n.text.clone(),
        n.response_format.clone(),
        n.tool_choice.clone(),
        n.thinking.as_ref().map(|t| t.0.clone()),
        Some(index.model.clone()),
        span(index.provider),
        span(index.models),
    ];
    let bad = |at: usize| BadEdits {
        range: at..at,
        after: at,
        len: body.len(),
    };
    let mut edits = WalkEdits::default();
    // Which overrides (bit i: `hop.overrides[i]`) the body has; at most
    // `Overrides::MAX` = 64 of them.
    let mut found = 0u64;
    let (mut has_provider, mut has_models) = (false, false);
    // A run of removed members: the first one's key start and the end of
    // the value before it (if any), and the last one's value end.
    let mut run: Option<(usize, Option<usize>)> = None;
    let mut run_end = 0;
    let mut prev_value_end = None;
    let mut pos = skip_ws(body, index.object_start + 1);
    if body.get(pos) != Some(&b'}') {
        loop {
            let key_start = pos;
            if body.get(key_start) != Some(&b'"') {
                return Err(bad(key_start));
            }
            let (key_end, escaped) = skim_string(body, key_start).ok_or_else(|| bad(key_start))?;
            // The index checked every key; only an escaped one needs decoding.
            let key: Cow<'_, [u8]> = match escaped {
                false => Cow::Borrowed(body.get(key_start + 1..key_end - 1).ok_or_else(|| bad(key_start))?),
                true => body
                    .get(key_start..key_end)
                    .and_then(|literal| scan::decode_string(literal).ok())
                    .map(|k| Cow::Owned(k.into_owned().into_bytes()))
                    .ok_or_else(|| bad(key_start))?,
            };
            pos = skip_ws(body, key_end);
            if body.get(pos) != Some(&b':') {
                return Err(bad(pos));
            }
            let value_start = skip_ws(body, pos + 1);
            let value_end = match known.iter().flatten().find(|r| r.start == value_start) {
                Some(r) => r.end,
                None if body.get(value_start) == Some(&b'"') => {
                    skim_string(body, value_start).ok_or_else(|| bad(value_start))?.0
                }
                None => scan::scan_value(body, value_start).map_err(|_| bad(value_start))?.0,
            };
            let value = value_start..value_end;
            let remove = match &*key {
                b"model" => {
                    if body.get(value.clone()) != Some(&hop.model_json[..]) {
                        edits.push(Edit {
                            range: value,
                            replacement: hop.model_json.clone(),
                        });
                    }
                    false
                }
                b"provider" => {
                    has_provider = true;
                    match &hop.provider_json {
                        Some(json) => {
                            edits.push(Edit {
                                range: value,
                                replacement: json.clone(),
                            });
                            false
                        }
                        None => foreign,
                    }
                }
                b"models" => {
                    has_models = true;
                    match fallbacks {
                        Some(json) => {
                            edits.push(Edit {
                                range: value,
                                replacement: json.clone(),
                            });
                            false
                        }
                        None => strip_models,
                    }
                }
                b"route" | b"transforms" => foreign,
                key => match hop.overrides.iter().position(|o| *o.key == *key) {
                    Some(i) => {
                        found |= 1u64.checked_shl(i as u32).unwrap_or(0);
                        match hop.overrides.get(i).and_then(|o| o.value.as_ref()) {
                            Some(json) => {
                                edits.push(Edit {
                                    range: value,
                                    replacement: json.clone(),
                                });
                                false
                            }
                            None => true,
                        }
                    }
                    None => false,
                },
            };
            if remove {
                if run.is_none() {
                    run = Some((key_start, prev_value_end));
                }
                run_end = value_end;
            } else if let Some((first_key, before)) = run.take() {
                // After the value before the run, or up to this key.
                edits.push(Edit {
                    range: before.map_or(first_key..key_start, |end| end..run_end),
                    replacement: Bytes::new(),
                });
            }
            prev_value_end = Some(value_end);
            pos = skip_ws(body, value_end);
            match body.get(pos) {
                Some(b',') => pos = skip_ws(body, pos + 1),
                Some(b'}') => break,
                _ => return Err(bad(pos)),
            }
        }
    }
    if let Some((first_key, before)) = run.take() {
        edits.push(Edit {
            range: before.unwrap_or(first_key)..run_end,
            replacement: Bytes::new(),
        });
    }
    // What the body lacks goes in after its `{`, each member its own part.
    let at = index.object_start + 1;
    let mut insert = |member: &Bytes| {
        edits.push(Edit {
            range: at..at,
            replacement: member.clone(),
        })
    };
    for (i, o) in hop.overrides.iter().enumerate() {
        if found & 1u64.checked_shl(i as u32).unwrap_or(0) == 0 {
            if let Some(member) = &o.member {
                insert(member);
            }
        }
    }
    if let (Some(json), false) = (&hop.provider_json, has_provider) {
        insert(&member_bytes("provider", json));
    }
    if let (Some(json), false) = (fallbacks, has_models) {
        insert(&member_bytes("models", json));
    }
    let edits = edits.take_all();
    // Stable: insertions at `{` keep their order, before a removal there.
    edits.sort_by_key(|e| (e.range.start, e.range.end));
    ReplayBody::rewrite(body, edits)
}

/// Edits kept on the stack up to `N` (the model, a few overrides and
/// strips), on the heap past it (a caller's key repeated many times: each
/// copy is edited).
///
/// The slots past the last edit hold empty static `Bytes` (nothing to
/// free), so only the edits pushed are dropped: a drop of every slot
/// would cost an indirect call each.
// Large on purpose: it lives on the stack of one attempt's rewrite.
#[allow(clippy::large_enum_variant)]
enum EditList<const N: usize> {
    Inline(std::mem::ManuallyDrop<[Edit; N]>, usize),
    Heap(Vec<Edit>),
}

impl<const N: usize> Drop for EditList<N> {
    fn drop(&mut self) {
        if let EditList::Inline(list, len) = self {
            for edit in list.get_mut(..*len).unwrap_or_default() {
                drop(std::mem::take(edit));
            }
        }
    }
}

/// The walk's list: the model, strips and up to ~10 overrides in place.
type WalkEdits = EditList<12>;
/// [`attempt_body`]'s list: the model, `provider`, `models`, OpenRouter's
/// strips and a few overrides in place.
type Edits = EditList<8>;

impl<const N: usize> EditList<N> {
    #[inline]
    fn push(&mut self, edit: Edit) {
        match self {
            EditList::Inline(list, len) => match list.get_mut(*len) {
                Some(slot) => {
                    *slot = edit;
                    *len += 1;
                }
                None => self.spill(edit),
            },
            EditList::Heap(list) => list.push(edit),
        }
    }

    /// The list moves to the heap, with `edit`.
    #[cold]
    fn spill(&mut self, edit: Edit) {
        if let EditList::Inline(list, len) = self {
            let mut heap: Vec<Edit> = list
                .get_mut(..*len)
                .unwrap_or_default()
                .iter_mut()
                .map(std::mem::take)
                .collect();
            heap.push(edit);
            *self = EditList::Heap(heap);
        }
    }

    /// The body with the edits (which never overlap), or the body itself.
    fn apply(mut self, body: &Bytes) -> Result<ReplayBody, BadEdits> {
        let edits = self.take_all();
        if edits.is_empty() {
            return Ok(ReplayBody::new(body.clone()));
        }
        // Insertions at `{` (any order) go before a removal there. Most
        // lists come sorted (the model, then what follows it).
        if !edits.is_sorted_by_key(|e| (e.range.start, e.range.end)) {
            edits.sort_unstable_by_key(|e| (e.range.start, e.range.end));
        }
        ReplayBody::rewrite(body, edits)
    }

    /// The edits, for [`ReplayBody::rewrite`], which moves every
    /// replacement out: the inline slots are no longer counted, so the
    /// list's drop has nothing left to do (what is left there are empty
    /// static `Bytes`).
    fn take_all(&mut self) -> &mut [Edit] {
        match self {
            EditList::Inline(list, len) => list.get_mut(..std::mem::take(len)).unwrap_or_default(),
            EditList::Heap(list) => list,
        }
    }
}

impl<const N: usize> Default for EditList<N> {
    fn default() -> Self {
        EditList::Inline(std::mem::ManuallyDrop::new(std::array::from_fn(|_| Edit::default())), 0)
    }
}

/// `"key":json,`
fn member_bytes(key: &str, json: &Bytes) -> Bytes {
    let mut m = BytesMut::with_capacity(key.len() + json.len() + 4);
    m.extend_from_slice(b"\"");
    m.extend_from_slice(key.as_bytes());
    m.extend_from_slice(b"\":");
    m.extend_from_slice(json);
    m.extend_from_slice(b",");
    m.freeze()
}

/// One past the closing quote of the string whose `"` is at `start`, and
/// whether it has escapes. For a body the index has validated.
fn skim_string(body: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut pos = start + 1;
    let mut escaped = false;
    loop {
        pos += memchr::memchr2(b'"', b'\\', body.get(pos..)?)?;
        match body.get(pos) {
            Some(b'"') => return Some((pos + 1, escaped)),
            _ => {
                escaped = true;
                pos += 2;
            }
        }
    }
}

pub(super) fn attempt_request(
    parts: http::request::Parts,
    body: ReplayBody,
    attempt: Attempt,
    hop: &Hop,
    credential_headers: &[HeaderName],
    dialect: Dialect,
    extension: bool,
) -> Request<ReplayBody> {
    let len = body.len();
    let mut req = Request::from_parts(parts, body);
    if let Some(endpoint) = hop.route.endpoint.as_ref() {
        *req.uri_mut() = dialect.endpoint_uri(endpoint).clone();
        let headers = req.headers_mut();
        // A key or host meant for the caller's upstream never goes elsewhere.
        headers.remove(header::HOST);
        for name in credential_headers {
            // `remove` drops only the first value of a repeated header.
            while headers.remove(name).is_some() {}
        }
        if dialect == Dialect::Messages && endpoint.anthropic {
            // Anthropic's own API: its key header and version.
            if let Some(key) = &endpoint.api_key {
                headers.insert(X_API_KEY, key.clone());
            }
            if !headers.contains_key(ANTHROPIC_VERSION) {
                headers.insert(
                    ANTHROPIC_VERSION,
                    HeaderValue::from_static(crate::dialect::ANTHROPIC_VERSION),
                );
            }
        } else if let Some(auth) = &endpoint.authorization {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
    }
    if hop.route.openrouter_metadata {
        req.headers_mut()
            .insert(X_OPENROUTER_METADATA, HeaderValue::from_static("enabled"));
    }
    req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if extension {
        req.extensions_mut().insert(attempt);
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{index_recording, index_request, RecordKeys};
    use crate::Route;
    use std::sync::Arc;

    fn collect(mut body: ReplayBody) -> Vec<u8> {
        use http_body::Body;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        while let std::task::Poll::Ready(Some(frame)) = std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
            out.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        out
    }

    fn sent(body: &str, keys: &[&str], route: Route) -> serde_json::Value {
        let body = Bytes::from(body.to_owned());
        let keys = Arc::new(RecordKeys::new(keys.iter().map(|k| k.as_bytes())));
        let index = index_recording(Dialect::Chat, &body, false, &keys).unwrap();
        let hop = Hop::new(route);
        let out = collect(attempt_body(&body, &index, &hop).unwrap());
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn a_route_whose_keys_were_not_all_recorded_is_walked() {
        let body = r#"{"model":"a","seed":1,"n":2,"top_p":0.5}"#;
        let route = || Route::new("b").set("seed", 9).remove("n").set("top_p", 1);
        let want = serde_json::json!({"model": "b", "seed": 9, "top_p": 1});
        // Every key recorded, some, none, or an index that recorded nothing.
        for keys in [&["seed", "n", "top_p"][..], &["seed", "n", "x"], &["seed"], &["x"]] {
            assert_eq!(sent(body, keys, route()), want, "{keys:?}");
        }
        let bytes = Bytes::from(body);
        let index = index_request(&bytes).unwrap();
        assert!(index.recorded.is_none());
        let out = collect(attempt_body(&bytes, &index, &Hop::new(route())).unwrap());
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&out).unwrap(), want);
    }

    #[test]
    fn recorded_overrides_and_openrouter_members_share_the_edits() {
        let endpoint = crate::native::Endpoint::new("https://api.openai.com/v1").unwrap();
        // Removed keys beside stripped ones, at the start, the end and in runs.
        let body = r#"{"logprobs":true,"provider":{"order":["x"]},"model":"m","seed":1,"route":"fallback","user":"u","messages":[],"transforms":[]}"#;
        let route = Route::new("b")
            .endpoint(endpoint)
            .remove("logprobs")
            .remove("seed")
            .remove("user")
            .set("store", false);
        let keys = ["logprobs", "seed", "user", "store"];
        assert_eq!(
            sent(body, &keys, route),
            serde_json::json!({"model": "b", "messages": [], "store": false})
        );
        // On OpenRouter the route's own provider and models go in beside.
        let route = Route::new("b")
            .provider(serde_json::from_value(serde_json::json!({"order": ["A"]})).unwrap())
            .native_fallbacks(["c"])
            .set("n", 1)
            .set("top_p", 0.9);
        assert_eq!(
            sent(r#"{"model":"m","n":2,"messages":[]}"#, &["n", "top_p"], route),
            serde_json::json!({"model": "b", "n": 1, "top_p": 0.9, "messages": [], "provider": {"order": ["A"]}, "models": ["c"]})
        );
    }
}
