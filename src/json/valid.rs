//! Whether bytes are JSON as serde_json reads it, without building
//! anything: [`Reader`] reads a stream event's members and checks the event
//! in the same one pass.
//!
//! It accepts exactly what `serde_json::from_str::<IgnoredAny>` accepts
//! after `std::str::from_utf8` (RFC 8259's grammar; whitespace is space,
//! tab, CR and LF; no control byte below 0x20 inside a string; escapes
//! `\" \\ \/ \b \f \n \r \t` and `\u` with four hex digits, surrogates
//! unpaired or not; any depth), tested against serde_json itself below. It
//! reads strings sixteen bytes at a time (SSE2, `json::simd`), checks UTF-8 only when a string
//! has a byte past ASCII, and allocates only past 128 levels of nesting.

use super::scan::{self, skip_ws, ValueKind};
use super::simd;
use std::borrow::Cow;
use std::ops::Range;

/// `input` is UTF-8 and one JSON value, with whitespace around it only: the
/// check on its own, compared with serde_json below (the [`Reader`] is
/// built from the same parts).
#[cfg(test)]
pub(crate) fn valid(input: &[u8]) -> bool {
    // Bytes past ASCII can only be inside strings (anywhere else the
    // grammar refuses them): UTF-8 is checked only when a string had one.
    let mut high = false;
    value_end(input, skip_ws(input, 0), &mut high, 0, usize::MAX).is_some_and(|end| skip_ws(input, end) == input.len())
        && (!high || std::str::from_utf8(input).is_ok())
}

/// Deepest nesting a [`Reader`] accepts, its top-level object included:
/// the scanner's limit (`json::scan`), and serde_json's for a struct of
/// `Value`s (the readers the stream trackers had before).
const MAX_DEPTH: usize = 128;

/// A value a [`Reader`] read: its span (quotes included for a string,
/// brackets for an object or array) and its type.
#[derive(Debug, Clone)]
pub(crate) struct ValueAt {
    pub(crate) span: Range<usize>,
    pub(crate) kind: ValueKind,
    /// A string with a `\` escape (the read saw it, so its text is not
    /// looked over again); `false` for any other type.
    pub(crate) escaped: bool,
}

/// Reads a JSON object member by member and, in the same pass, checks it as
/// serde_json takes it (this module's grammar): a stream event's one read, its validity and the members
/// its tracker needs at once (the tracker read it twice: the scanner for
/// the members, then this check).
///
/// Each member goes to the caller's callback with its decoded key and the
/// offset of its value, and the callback reads the value (and returns one
/// past its end): with [`Reader::value`] for any value, or
/// [`Reader::object`] and [`Reader::array`] to read a nested one member by
/// member or element by element. Besides what serde_json refuses, a key
/// that does not decode (a lone surrogate escape, as the scanner's keys)
/// and nesting deeper than [`MAX_DEPTH`] are refused.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    /// A string (or the bytes read with it) had a byte past ASCII.
    high: bool,
    /// The objects and arrays open around what is being read.
    depth: usize,
    /// [`Reader::value`] skims objects and arrays as the scanner skips
    /// nested values (brackets matched, strings jumped over), unchecked.
    skim: bool,
}

impl<'a> Reader<'a> {
    /// `input` is UTF-8 and one JSON object (whitespace around it only),
    /// whose members `on_member` read without refusing one (`None`):
    /// [`Reader::read`] unskimmed.
    #[cfg(test)]
    pub(crate) fn read_object(
        input: &'a [u8],
        on_member: impl FnMut(&mut Reader<'a>, &[u8], usize) -> Option<usize>,
    ) -> bool {
        Self::read(input, false, on_member)
    }

    /// [`Reader::read_object`], or with `skim` one that checks only what it
    /// reads member by member (the objects and arrays the callbacks leave
    /// to [`Reader::value`] are skimmed as the scanner skips nested values:
    /// brackets matched, strings jumped over): for an event whose validity
    /// decides nothing (after commit), read at the scanner's speed.
    pub(crate) fn read(
        input: &'a [u8],
        skim: bool,
        on_member: impl FnMut(&mut Reader<'a>, &[u8], usize) -> Option<usize>,
    ) -> bool {
        let mut r = Reader {
            b: input,
            high: false,
            depth: 0,
            skim,
        };
        let start = skip_ws(input, 0);
        if input.get(start) != Some(&b'{') {
            return false;
        }
        r.object(start, on_member)
            .is_some_and(|end| skip_ws(input, end) == input.len())
            && (!r.high || std::str::from_utf8(input).is_ok())
    }

    /// The bytes being read.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.b
    }

    /// The byte at `at`.
    pub(crate) fn byte(&self, at: usize) -> Option<u8> {
        self.b.get(at).copied()
    }

    /// The object opening at `at`: each member's decoded key and the offset
    /// of its value go to `on_member`, which reads the value and returns one
    /// past its end (`None`: refused). One past the object's `}`.
    pub(crate) fn object(
        &mut self,
        at: usize,
        mut on_member: impl FnMut(&mut Reader<'a>, &[u8], usize) -> Option<usize>,
    ) -> Option<usize> {
        let b = self.b;
        if b.get(at) != Some(&b'{') || self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let mut i = skip_ws(b, at + 1);
        if b.get(i) == Some(&b'}') {
            self.depth -= 1;
            return Some(i + 1);
        }
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let (end, key) = self.key(i)?;
            let value = skip_ws(b, past(b, end, b':')?);
            i = ws_before(b, on_member(self, &key, value)?, b'}');
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    self.depth -= 1;
                    return Some(i + 1);
                }
                _ => return None,
            }
        }
    }

    /// The array opening at `at`: each element's offset goes to
    /// `on_element`, which reads it and returns one past its end (`None`:
    /// refused). One past the array's `]`.
    pub(crate) fn array(
        &mut self,
        at: usize,
        mut on_element: impl FnMut(&mut Reader<'a>, usize) -> Option<usize>,
    ) -> Option<usize> {
        let b = self.b;
        if b.get(at) != Some(&b'[') || self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let mut i = skip_ws(b, at + 1);
        if b.get(i) == Some(&b']') {
            self.depth -= 1;
            return Some(i + 1);
        }
        loop {
            i = ws_before(b, on_element(self, i)?, b']');
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b']') => {
                    self.depth -= 1;
                    return Some(i + 1);
                }
                _ => return None,
            }
        }
    }

    /// Checks the value at `at`, whatever it holds; its span and type.
    #[inline(always)]
    pub(crate) fn value(&mut self, at: usize) -> Option<ValueAt> {
        let b = self.b;
        let kind = match *b.get(at)? {
            b'"' => ValueKind::String,
            b'{' => ValueKind::Object,
            b'[' => ValueKind::Array,
            b't' => ValueKind::True,
            b'f' => ValueKind::False,
            b'n' => ValueKind::Null,
            _ => ValueKind::Number,
        };
        let mut escaped = false;
        let end = match kind {
            ValueKind::String => {
                let (end, e) = string(b, at, &mut self.high)?;
                escaped = e;
                end
            }
            ValueKind::Object | ValueKind::Array if self.skim => scan::scan_value(b, at).ok()?.0,
            ValueKind::Object | ValueKind::Array => {
                // `{}` and `[]` (an event's empty `output`, `content`,
                // `logprobs`) without the walk, the depth checked as it
                // checks it (`}` and `]` are two past their openers).
                let inner = skip_ws(b, at + 1);
                match b.get(inner) {
                    Some(&close) if close == b.get(at)? + 2 && self.depth < MAX_DEPTH => inner + 1,
                    _ => value_end(b, at, &mut self.high, self.depth, MAX_DEPTH)?,
                }
            }
            ValueKind::True => literal(b, at, b"true")?,
            ValueKind::False => literal(b, at, b"false")?,
            ValueKind::Null => literal(b, at, b"null")?,
            // One digit and no more to the number (an index, a sequence
            // number): it ends there, as `number` would say.
            ValueKind::Number
                if b.get(at).is_some_and(u8::is_ascii_digit)
                    && !matches!(b.get(at + 1), Some(b'0'..=b'9' | b'.' | b'e' | b'E')) =>
            {
                at + 1
            }
            ValueKind::Number => number(b, at)?,
        };
        Some(ValueAt {
            span: at..end,
            kind,
            escaped,
        })
    }

    /// The key opening at `at`: one past its closing quote, and its text
    /// (borrowed unless it has escapes; a key that does not decode is
    /// refused).
    #[inline(always)]
    fn key(&mut self, at: usize) -> Option<(usize, Cow<'a, [u8]>)> {
        let b = self.b;
        // Short plain ASCII, as almost every key is: in one pass, sixteen
        // bytes at a time (eight near the end of the event).
        let mut from = at + 1;
        for _ in 0..2 {
            let Some(block) = b.get(from..from + 16) else { break };
            let (stops, past_ascii) = simd::string_masks(<&[u8; 16]>::try_from(block).ok()?);
            let hits = stops | past_ascii;
            if hits != 0 {
                let stop = from + hits.trailing_zeros() as usize;
                if b.get(stop) == Some(&b'"') {
                    return Some((stop + 1, Cow::Borrowed(b.get(at + 1..stop)?)));
                }
                return self.escaped_key(at);
            }
            from += 16;
        }
        for _ in 0..3 {
            let Some(word) = b.get(from..from + 8) else { break };
            let w = u64::from_le_bytes(<[u8; 8]>::try_from(word).ok()?);
            let hits = stops(w) | (w & HIGH);
            if hits != 0 {
                let stop = from + hits.trailing_zeros() as usize / 8;
                if b.get(stop) == Some(&b'"') {
                    return Some((stop + 1, Cow::Borrowed(b.get(at + 1..stop)?)));
                }
                break;
            }
            from += 8;
        }
        self.escaped_key(at)
    }

    /// [`Reader::key`] for a key with an escape, a byte past ASCII or a
    /// long one: read as any string, then decoded.
    #[inline(never)]
    fn escaped_key(&mut self, at: usize) -> Option<(usize, Cow<'a, [u8]>)> {
        let b = self.b;
        let (end, _) = string(b, at, &mut self.high)?;
        let key = match scan::decode_string(b.get(at..end)?).ok()? {
            Cow::Borrowed(k) => Cow::Borrowed(k.as_bytes()),
            Cow::Owned(k) => Cow::Owned(k.into_bytes()),
        };
        Some((end, key))
    }
}

/// One past `want` at `at` or after whitespace there; `None` when another
/// byte comes first. Compact JSON (what upstreams send) has no whitespace:
/// the byte is looked at once.
#[inline(always)]
fn past(b: &[u8], at: usize, want: u8) -> Option<usize> {
    if b.get(at) == Some(&want) {
        return Some(at + 1);
    }
    let at = skip_ws(b, at);
    (b.get(at) == Some(&want)).then_some(at + 1)
}

/// `at`, when it holds `,` or `close` (compact JSON), else past the
/// whitespace there.
#[inline(always)]
fn ws_before(b: &[u8], at: usize, close: u8) -> usize {
    match b.get(at) {
        Some(&c) if c == b',' || c == close => at,
        _ => skip_ws(b, at),
    }
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// The open arrays and objects, innermost last (1 = object): 128 levels in
/// a word, more on the heap.
struct Stack {
    bits: u128,
    depth: usize,
    spilled: Vec<u128>,
}

impl Stack {
    fn push(&mut self, object: bool) {
        if self.depth > 0 && self.depth % 128 == 0 {
            self.spilled.push(self.bits);
            self.bits = 0;
        }
        self.bits = (self.bits << 1) | u128::from(object);
        self.depth += 1;
    }

    /// The innermost open value is an object (`None`: none is open).
    fn top(&self) -> Option<bool> {
        (self.depth > 0).then_some(self.bits & 1 == 1)
    }

    fn pop(&mut self) {
        self.bits >>= 1;
        self.depth -= 1;
        if self.depth > 0 && self.depth % 128 == 0 {
            self.bits = self.spilled.pop().unwrap_or_default();
        }
    }
}

/// The value at `i` (its first byte): one past its end; `None` when it is
/// not one. `high`: a string (or the bytes read with it) had a byte past
/// ASCII. `depth` levels are open around it, and no more than `limit` may
/// be open at once.
#[inline(never)]
fn value_end(b: &[u8], mut i: usize, high: &mut bool, depth: usize, limit: usize) -> Option<usize> {
    let mut stack = Stack {
        bits: 0,
        depth: 0,
        spilled: Vec::new(),
    };
    'value: loop {
        // A value starts at `i` (whitespace skipped).
        match *b.get(i)? {
            open @ (b'{' | b'[') => {
                if depth.saturating_add(stack.depth) >= limit {
                    return None;
                }
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&(open + 2)) {
                    // `{}` or `[]` (`}` and `]` are two past their openers).
                    i += 1;
                } else if open == b'{' {
                    stack.push(true);
                    i = key(b, i, high)?;
                    continue 'value;
                } else {
                    stack.push(false);
                    continue 'value;
                }
            }
            b'"' => i = string(b, i, high)?.0,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number(b, i)?,
            _ => return None,
        }
        // After a value: the end of the outermost, a comma, or the end of
        // what holds it.
        loop {
            let Some(object) = stack.top() else {
                return Some(i);
            };
            i = skip_ws(b, i);
            match (object, b.get(i)) {
                (true, Some(b',')) => {
                    i = key(b, skip_ws(b, i + 1), high)?;
                    continue 'value;
                }
                (false, Some(b',')) => {
                    i = skip_ws(b, i + 1);
                    continue 'value;
                }
                (true, Some(b'}')) | (false, Some(b']')) => {
                    stack.pop();
                    i += 1;
                }
                _ => return None,
            }
        }
    }
}

/// A key at `i`, its `:` and the whitespace after: where its value starts.
fn key(b: &[u8], i: usize, high: &mut bool) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    past(b, string(b, i, high)?.0, b':').map(|value| skip_ws(b, value))
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b.get(i..)?.starts_with(word).then_some(i + word.len())
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` at `i`; one past it.
/// What follows is the caller's to judge.
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

/// The high bit of each byte of `w` that is `"`, `\\` or below 0x20: exact
/// for the lowest one (a borrow only runs upward, past a true hit), which
/// is the one looked at.
#[inline(always)]
fn stops(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    (zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | (w.wrapping_sub(ONES * 0x20) & !w))
        & HIGH
}

/// The string opening at `open`: one past its closing quote, and whether
/// it has an escape; `None` for a control byte, a bad escape or no end.
/// Sets `high` when a byte past ASCII was read (its words may run past the
/// string: that only costs a UTF-8 check).
#[inline(always)]
fn string(b: &[u8], open: usize, high: &mut bool) -> Option<(usize, bool)> {
    let mut i = open + 1;
    let mut escaped = false;
    // Every word read, or-ed: its high bits say whether one was past ASCII.
    let mut seen = 0;
    // Every block's bytes past ASCII, or-ed.
    let mut past_ascii = 0;
    let end = loop {
        // Sixteen bytes at a time to the first `"`, `\` or control byte,
        // then eight at a time near the end of the event.
        'scan: {
            while let Some(block) = b.get(i..i + 16) {
                let (stops, high) = simd::string_masks(<&[u8; 16]>::try_from(block).ok()?);
                past_ascii |= high;
                if stops != 0 {
                    i += stops.trailing_zeros() as usize;
                    break 'scan;
                }
                i += 16;
            }
            while let Some(word) = b.get(i..i + 8) {
                let w = u64::from_le_bytes(<[u8; 8]>::try_from(word).ok()?);
                let hits = stops(w);
                seen |= w;
                if hits != 0 {
                    i += hits.trailing_zeros() as usize / 8;
                    break 'scan;
                }
                i += 8;
            }
        }
        match *b.get(i)? {
            b'"' => break i + 1,
            b'\\' => {
                escaped = true;
                i += match *b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                    b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
                    _ => return None,
                };
            }
            0..=0x1f => return None,
            byte => {
                seen |= u64::from(byte);
                i += 1;
            }
        }
    };
    *high |= seen & HIGH != 0 || past_ascii != 0;
    Some((end, escaped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    fn serde(b: &[u8]) -> bool {
        std::str::from_utf8(b).is_ok_and(|s| serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok())
    }

    #[test]
    fn cases_agree_with_serde_json() {
        let deep_ok = format!("{}{}", "[".repeat(300), "]".repeat(300));
        let deep_mixed = format!("{}1{}", "[{\"a\":".repeat(150), "}]".repeat(150));
        let deep_bad = format!("{}{}", "[".repeat(300), "]".repeat(299));
        let cases: &[&[u8]] = &[
            b"",
            b" ",
            b"{}",
            b" { } ",
            b"[]",
            b"[ ]",
            b"1",
            b"-",
            b"-0",
            b"01",
            b"1.",
            b"1.5",
            b".5",
            b"1e",
            b"1e+",
            b"1E-7",
            b"1e5x",
            b"-1.5e+10",
            // Past `f64`: JSON serde_json skips, though it cannot build it.
            b"1e00588988904003294",
            b"{\"a\":1e00588988904003294}",
            b"null",
            b"nul",
            b"nullx",
            b"true false",
            b"\"\"",
            b"\"\\ud800\"",
            b"\"\\u12\"",
            b"\"\\u12g4\"",
            b"\"\\x\"",
            b"\"a\x01b\"",
            b"\"a\x1fb\"",
            b"\"a\x7fb\"",
            b"\"tab\there\"",
            b"\"\\/\\b\\f\\n\\r\\t\\\\\\\"\"",
            b"\"unterminated",
            b"\"ends in escape\\",
            b"{\"a\":1,}",
            b"[1,]",
            b"[,1]",
            b"{,}",
            b"{\"a\" 1}",
            b"{\"a\":}",
            b"{1:2}",
            b"{\"a\":1 \"b\":2}",
            b"[1 2]",
            b"[1}",
            b"{\"a\":[}]",
            b"\x0c{}",
            b"{}\x0c",
            b"{} {}",
            b"\xef\xbb\xbf{}",
            b"\"\xe9\"",
            b"\"\xc3\xa9\"",
            b"\"0123456789\xff\"",
            b"\"0123456789\xc3\xa9 and more text\"",
            b"[\"a\", \xc3\xa9]",
            b"{\"\xf0\x9f\x9a\x80\":\"\xc3\"}",
            b"{\"a\":\"0123456789abcdef0123456789\\\"x\"}",
            b"{\"k\":\"0123456789abc\x01ef0123456789\"}",
            deep_ok.as_bytes(),
            deep_mixed.as_bytes(),
            deep_bad.as_bytes(),
        ];
        for case in cases {
            assert_eq!(valid(case), serde(case), "{:?}", String::from_utf8_lossy(case));
        }
    }

    /// JSON text, then perhaps cut, a byte changed, put in or taken out.
    fn text() -> impl Strategy<Value = Vec<u8>> {
        mutated(crate::json::scan::tests::value())
    }

    /// [`text`] of an object: what a [`Reader`] reads.
    fn object_text() -> impl Strategy<Value = Vec<u8>> {
        mutated(
            prop::collection::btree_map("[a-z\"\\\\\u{e9}]{0,4}", crate::json::scan::tests::value(), 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        )
    }

    fn mutated(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
        let bytes = prop::sample::select(vec![
            b'"', b'\\', b',', b':', b'[', b']', b'{', b'}', b' ', b'\n', b'\x0c', b'\x01', b'\x1f', b'0', b'1', b'-',
            b'+', b'.', b'e', b'E', b'u', b'a', b'n', b't', b'f', 0xc3, 0xe9, 0xff,
        ]);
        (value, any::<bool>(), 0u8..5, any::<prop::sample::Index>(), bytes).prop_map(|(v, pretty, edit, at, byte)| {
            let mut t = if pretty {
                serde_json::to_vec_pretty(&v).unwrap_or_default()
            } else {
                serde_json::to_vec(&v).unwrap_or_default()
            };
            let at = at.index(t.len() + 1);
            match edit {
                0 => {}
                1 => t.truncate(at),
                2 if at < t.len() => t[at] = byte,
                3 => t.insert(at, byte),
                _ if at < t.len() => {
                    t.remove(at);
                }
                _ => {}
            }
            t
        })
    }

    /// serde_json reads `b` as an object (keys decoded, values skipped).
    fn serde_object(b: &[u8]) -> bool {
        std::str::from_utf8(b)
            .is_ok_and(|s| serde_json::from_str::<std::collections::BTreeMap<String, serde::de::IgnoredAny>>(s).is_ok())
    }

    /// Reads every object and array member by member, every scalar with
    /// [`Reader::value`].
    fn deep(r: &mut Reader<'_>, at: usize) -> Option<usize> {
        match r.byte(at)? {
            b'{' => r.object(at, |r, _, at| deep(r, at)),
            b'[' => r.array(at, deep),
            _ => r.value(at).map(|v| v.span.end),
        }
    }

    /// The members a flat read reports: key, span, type.
    fn members(b: &[u8]) -> Option<Vec<(String, Range<usize>, ValueKind)>> {
        let mut out = Vec::new();
        let read = Reader::read_object(b, |r, key, at| {
            let v = r.value(at)?;
            out.push((String::from_utf8(key.to_vec()).ok()?, v.span.clone(), v.kind));
            Some(v.span.end)
        });
        read.then_some(out)
    }

    fn kind_of(value: &Value) -> ValueKind {
        match value {
            Value::Null => ValueKind::Null,
            Value::Bool(true) => ValueKind::True,
            Value::Bool(false) => ValueKind::False,
            Value::Number(_) => ValueKind::Number,
            Value::String(_) => ValueKind::String,
            Value::Array(_) => ValueKind::Array,
            Value::Object(_) => ValueKind::Object,
        }
    }

    #[test]
    fn the_reader_decodes_keys_and_refuses_what_the_scanner_refuses() {
        let mut keys = Vec::new();
        let b = [
            br#"{"t\u0079pe":1,"\u00e9t\u00e9":2,"plain":{"inner":[3]},"#.as_slice(),
            b"\"\xc3\xa9\":4}",
        ]
        .concat();
        assert!(Reader::read_object(&b, |r, key, at| {
            keys.push(String::from_utf8(key.to_vec()).unwrap());
            r.value(at).map(|v| v.span.end)
        }));
        assert_eq!(keys, ["type", "\u{e9}t\u{e9}", "plain", "\u{e9}"]);
        // serde_json accepts a lone surrogate; a key that cannot be decoded
        // is refused (as the scanner refuses it), a value is not.
        assert!(!Reader::read_object(br#"{"\ud800":1}"#, |r, _, at| r
            .value(at)
            .map(|v| v.span.end)));
        assert!(Reader::read_object(br#"{"a":"\ud800"}"#, |r, _, at| r
            .value(at)
            .map(|v| v.span.end)));
        // Not an object, or more after it.
        for b in [&b"[]"[..], b"1", b"", b"{} {}", b"{},"] {
            assert!(
                !Reader::read_object(b, |r, _, at| r.value(at).map(|v| v.span.end)),
                "{b:?}"
            );
        }
        // A callback's refusal refuses the whole.
        assert!(!Reader::read_object(b"{\"a\":1}", |_, _, _| None));
    }

    #[test]
    fn the_reader_takes_128_levels_the_top_object_included() {
        let nested = |levels: usize| format!("{{\"a\":{}1{}}}", "[".repeat(levels - 1), "]".repeat(levels - 1));
        for levels in [1, 2, 127, 128, 129, 300] {
            let b = nested(levels);
            assert!(serde(b.as_bytes()));
            let flat = Reader::read_object(b.as_bytes(), |r, _, at| r.value(at).map(|v| v.span.end));
            let mut r = Reader {
                b: b.as_bytes(),
                high: false,
                depth: 0,
                skim: false,
            };
            let walked = deep(&mut r, 0) == Some(b.len());
            assert_eq!(flat, levels <= 128, "{levels}");
            assert_eq!(walked, levels <= 128, "{levels}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn accepts_exactly_what_serde_json_accepts(t in text()) {
            prop_assert_eq!(valid(&t), serde(&t), "{:?}", String::from_utf8_lossy(&t));
        }

        /// Read flat or member by member all the way down, an object is
        /// accepted exactly when serde_json reads it, and each member's span
        /// and type are its value's.
        #[test]
        fn the_reader_accepts_what_serde_json_accepts(t in object_text()) {
            let text = String::from_utf8_lossy(&t);
            let expected = serde_object(&t);
            let flat = members(&t);
            prop_assert_eq!(flat.is_some(), expected, "{}", text);
            // (A number out of `f64`'s range is JSON serde_json skips but
            // does not build.)
            if let (Some(flat), Ok(parsed)) = (flat, serde_json::from_slice::<Map<String, Value>>(&t)) {
                let mut read = Map::new();
                for (key, span, kind) in flat {
                    let value: Value = serde_json::from_slice(&t[span]).unwrap();
                    prop_assert_eq!(kind_of(&value), kind, "{}", text);
                    read.insert(key, value);
                }
                prop_assert_eq!(read, parsed, "{}", text);
            }
            let walked = Reader::read_object(&t, |r, _, at| deep(r, at));
            prop_assert_eq!(walked, expected, "{}", text);
            // Skimmed, what serde_json reads is read alike (more may be).
            if expected {
                let mut skimmed = Vec::new();
                let read = Reader::read(&t, true, |r, key, at| {
                    let v = r.value(at)?;
                    skimmed.push((key.to_vec(), v.span.clone(), v.kind));
                    Some(v.span.end)
                });
                let strict: Vec<_> = members(&t).unwrap_or_default().into_iter().map(|(k, s, v)| (k.into_bytes(), s, v)).collect();
                prop_assert!(read, "{}", text);
                prop_assert_eq!(skimmed, strict, "{}", text);
            }
        }
    }
}
