//! Finds the members of a top-level JSON object, and their byte spans,
//! without building a DOM.
//!
//! The top level is validated strictly (structure, keys, scalar values), so
//! the spans the engine rewrites are exactly right. Nested values are only
//! skipped, as fast as possible: brackets are matched and strings are jumped
//! over (`memchr`, 8-byte words), but nested scalars, string escapes and
//! UTF-8 are not checked. So the scanner never rejects valid JSON (RFC 8259), and may
//! accept a body that is invalid deep inside a nested value; the upstream
//! will judge that body as it would have without us.

use memchr::{memchr, memchr2};
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// Deepest nesting accepted, the top-level object included. A member value
/// thus has at most 127 levels, which `serde_json` (limit 127) can parse.
const MAX_DEPTH: usize = 128;

/// The JSON type of a top-level value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueKind {
    String,
    Number,
    Object,
    Array,
    True,
    False,
    Null,
}

/// One top-level member of the scanned object.
#[derive(Debug, Clone)]
pub(crate) struct Member<'a> {
    /// The decoded key, as UTF-8 bytes (checked: a key that is not UTF-8
    /// fails the scan); borrowed from the input unless it has escapes.
    /// Bytes, not `str`: callers compare it with known names, and most keys
    /// are plain ASCII that needs no second pass to become a `str`.
    pub(crate) key: Cow<'a, [u8]>,
    /// The key literal, quotes included.
    pub(crate) key_span: Range<usize>,
    /// The value: quotes included for strings, brackets for objects/arrays.
    pub(crate) value: Range<usize>,
    pub(crate) kind: ValueKind,
}

#[cfg(test)]
impl Member<'_> {
    /// The key as text (lossless: keys are checked UTF-8).
    pub(crate) fn key_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }
}

/// Why a body was refused, and at which byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanError {
    kind: ScanErrorKind,
    offset: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanErrorKind {
    NotAnObject,
    UnexpectedEnd,
    ExpectedKey,
    TrailingComma,
    ExpectedColon,
    ExpectedCommaOrEnd,
    ExpectedValue,
    NotAString,
    InvalidEscape,
    LoneSurrogate,
    ControlCharacter,
    InvalidUtf8,
    KeyNotUtf8,
    InvalidNumber,
    InvalidLiteral,
    TooDeep,
    Mismatched { found: u8, open: u8 },
    Trailing,
}

impl ScanError {
    fn new(kind: ScanErrorKind, offset: usize) -> Self {
        ScanError { kind, offset }
    }
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ScanErrorKind::*;
        let what = match self.kind {
            // No offset: the whole body is the problem.
            NotAnObject => return f.write_str("body is not a JSON object"),
            UnexpectedEnd => "unexpected end of JSON",
            ExpectedKey => "expected a string object key",
            TrailingComma => "trailing comma before '}'",
            ExpectedColon => "expected ':' after object key",
            ExpectedCommaOrEnd => "expected ',' or '}' after object value",
            ExpectedValue => "expected a JSON value",
            NotAString => "expected a JSON string",
            InvalidEscape => "invalid escape in string",
            LoneSurrogate => "unpaired surrogate in \\u escape",
            ControlCharacter => "unescaped control character in string",
            InvalidUtf8 => "string is not valid UTF-8",
            KeyNotUtf8 => "object key is not valid UTF-8",
            InvalidNumber => "invalid number",
            InvalidLiteral => "invalid literal",
            TooDeep => {
                return write!(f, "JSON nested deeper than {MAX_DEPTH} levels at byte {}", self.offset);
            }
            Mismatched { found, open } => {
                let want = if open == b'{' { '}' } else { ']' };
                return write!(
                    f,
                    "mismatched '{}' at byte {} (expected '{want}')",
                    found as char, self.offset
                );
            }
            Trailing => "trailing characters after the JSON object",
        };
        write!(f, "{what} at byte {}", self.offset)
    }
}

impl std::error::Error for ScanError {}

/// A scan stopped by bad JSON, or by the caller's callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanFail<E> {
    Scan(ScanError),
    Callback(E),
}

impl<E> From<ScanError> for ScanFail<E> {
    fn from(e: ScanError) -> Self {
        ScanFail::Scan(e)
    }
}

/// Scans the top-level object in `input`, calling `on_member` for each member
/// in order; an `Err` from the callback stops the scan at once (e.g. on a
/// duplicate key). Returns the span of the object itself, `{` to `}`.
///
/// Allocates nothing unless a key has escapes (that key is decoded into an
/// owned string). (The engine's readers all watch a key; the tests read
/// plain objects.)
#[cfg(test)]
pub(crate) fn scan_object<'a, E>(
    input: &'a [u8],
    on_member: impl FnMut(Member<'a>) -> Result<(), E>,
) -> Result<Range<usize>, ScanFail<E>> {
    scan_object_watching(input, Watch::Nothing, on_member)
}

/// A key whose object or array value is read in the scan's own pass.
pub(crate) enum Watch<'w> {
    /// No key is watched.
    Nothing,
    /// Called with the span (quotes included) of every string inside the
    /// key's value, as it is skipped: the capability checks read `messages`
    /// this way without a second walk over it.
    Strings(&'w str, &'w mut dyn FnMut(usize, usize)),
    /// Offered every object or array value with its (decoded) key, from its
    /// `{` or `[`: `Some` when it read the value itself (one past its end,
    /// or why it does not scan), `None` to leave it to the scanner. An
    /// answer's `choices` and `usage` are read this way in the body's one
    /// pass instead of skipped and then walked again.
    Nested(&'w mut NestedRead<'w>),
}

/// The reader of [`Watch::Nested`]: given a member's decoded key and the
/// offset of its `{` or `[`, one past the value's end if it read it.
pub(crate) type NestedRead<'a> = dyn FnMut(&[u8], usize) -> Option<Result<usize, ScanError>> + 'a;

/// [`scan_object`], and reads the value of the key `watch` names in the
/// same pass.
pub(crate) fn scan_object_watching<'a, E>(
    input: &'a [u8],
    watch: Watch<'_>,
    on_member: impl FnMut(Member<'a>) -> Result<(), E>,
) -> Result<Range<usize>, ScanFail<E>> {
    let start = skip_ws(input, 0);
    // No BOM, no other top-level type, not empty.
    if input.get(start) != Some(&b'{') {
        return Err(ScanFail::Scan(ScanError::new(ScanErrorKind::NotAnObject, start)));
    }
    let end = scan_members::<true, E>(input, start, watch, on_member)?;
    let rest = skip_ws(input, end);
    if rest != input.len() {
        return Err(ScanFail::Scan(ScanError::new(ScanErrorKind::Trailing, rest)));
    }
    Ok(start..end)
}

/// [`scan_object`] for the object opening at `start` inside `input` (an
/// element of an array, say): returns one past its closing brace and
/// leaves what follows to the caller.
///
/// Its string values are skimmed, as strings inside nested values are:
/// their end is found (escaped quotes included) but their escapes are not
/// checked one by one. It reads a nested object (a choice of an answer)
/// whose long text the caller never decodes, at the speed the same text
/// has one level deeper.
pub(crate) fn scan_object_at<'a, E>(
    input: &'a [u8],
    start: usize,
    on_member: impl FnMut(Member<'a>) -> Result<(), E>,
) -> Result<usize, ScanFail<E>> {
    scan_nested_object::<false, E>(input, start, on_member)
}

/// [`scan_object_at`] with the top level's strictness: string values get
/// their escapes checked, as [`scan_object`] checks them. For a nested
/// object read in the enclosing scan's pass (an answer's `usage`) exactly
/// as [`scan_object`] would read it alone.
pub(crate) fn scan_strict_object_at<'a, E>(
    input: &'a [u8],
    start: usize,
    on_member: impl FnMut(Member<'a>) -> Result<(), E>,
) -> Result<usize, ScanFail<E>> {
    scan_nested_object::<true, E>(input, start, on_member)
}

/// The object opening at `start` inside `input`, its string values checked
/// (`STRICT`) or skimmed; one past its `}`.
#[inline(always)]
fn scan_nested_object<'a, const STRICT: bool, E>(
    input: &'a [u8],
    start: usize,
    on_member: impl FnMut(Member<'a>) -> Result<(), E>,
) -> Result<usize, ScanFail<E>> {
    if input.get(start) != Some(&b'{') {
        return Err(ScanFail::Scan(ScanError::new(ScanErrorKind::NotAnObject, start)));
    }
    scan_members::<STRICT, E>(input, start, Watch::Nothing, on_member)
}

/// The members of the object whose `{` is at `start`; returns one past its
/// `}`. `STRICT`: string values get their escapes checked ([`scan_value`]);
/// otherwise only their end is found.
#[inline(always)]
fn scan_members<'a, const STRICT: bool, E>(
    input: &'a [u8],
    start: usize,
    mut watch: Watch<'_>,
    mut on_member: impl FnMut(Member<'a>) -> Result<(), E>,
) -> Result<usize, ScanFail<E>> {
    use ScanErrorKind::*;
    let err = |kind, at| ScanFail::Scan(ScanError::new(kind, at));
    let mut pos = skip_ws(input, start + 1);
    if input.get(pos) == Some(&b'}') {
        pos += 1;
    } else {
        let mut after_comma = false;
        loop {
            let key_start = pos;
            match input.get(pos) {
                Some(b'"') => {}
                Some(b'}') if after_comma => return Err(err(TrailingComma, pos)),
                Some(_) => return Err(err(ExpectedKey, pos)),
                None => return Err(err(UnexpectedEnd, pos)),
            }
            let (key_end, key) = match plain_key(input, key_start) {
                Some(plain) => plain,
                None => {
                    let key_end = string_end(input, key_start)?;
                    let literal = super::within(input, key_start..key_end);
                    let key = decode_at(literal, key_start).map_err(|mut e| {
                        if e.kind == InvalidUtf8 {
                            e.kind = KeyNotUtf8;
                        }
                        e
                    })?;
                    let key = match key {
                        Cow::Borrowed(k) => Cow::Borrowed(k.as_bytes()),
                        Cow::Owned(k) => Cow::Owned(k.into_bytes()),
                    };
                    (key_end, key)
                }
            };
            pos = skip_ws(input, key_end);
            match input.get(pos) {
                Some(b':') => {}
                Some(_) => return Err(err(ExpectedColon, pos)),
                None => return Err(err(UnexpectedEnd, pos)),
            }
            let value_start = skip_ws(input, pos + 1);
            let (value_end, kind) = match (&mut watch, input.get(value_start)) {
                (Watch::Strings(name, on_string), Some(&open @ (b'[' | b'{'))) if name.as_bytes() == &*key => {
                    let end = skip_nested_with::<false, _>(input, value_start, &mut |a, b| on_string(a, b))?;
                    (
                        end,
                        if open == b'[' {
                            ValueKind::Array
                        } else {
                            ValueKind::Object
                        },
                    )
                }
                (Watch::Nested(read), Some(&open @ (b'[' | b'{'))) => match read(&key, value_start) {
                    Some(end) => (
                        end?,
                        if open == b'[' {
                            ValueKind::Array
                        } else {
                            ValueKind::Object
                        },
                    ),
                    None => scan_value(input, value_start)?,
                },
                // Strings and numbers, most scalars, are read here, not
                // through a call to `scan_value` (which does the same).
                (_, Some(b'"')) if !STRICT => (string_end(input, value_start)?, ValueKind::String),
                (_, Some(b'"')) => (checked_string_end(input, value_start)?, ValueKind::String),
                (_, Some(b'-' | b'0'..=b'9')) => (number_end(input, value_start)?, ValueKind::Number),
                _ => scan_value(input, value_start)?,
            };
            on_member(Member {
                key,
                key_span: key_start..key_end,
                value: value_start..value_end,
                kind,
            })
            .map_err(ScanFail::Callback)?;
            pos = skip_ws(input, value_end);
            match input.get(pos) {
                Some(b',') => {
                    pos = skip_ws(input, pos + 1);
                    after_comma = true;
                }
                Some(b'}') => {
                    pos += 1;
                    break;
                }
                Some(_) => return Err(err(ExpectedCommaOrEnd, pos)),
                None => return Err(err(UnexpectedEnd, pos)),
            }
        }
    }
    Ok(pos)
}

/// The end and text of the key opening at `open` when it is short plain
/// ASCII (no escape, control or non-ASCII byte, closing within 24 bytes),
/// as almost every key is: found and validated eight bytes at a time, in
/// one pass where the general path (find the end, then decode) takes two.
#[inline(always)]
fn plain_key(input: &[u8], open: usize) -> Option<(usize, Cow<'_, [u8]>)> {
    let mut from = open + 1;
    for _ in 0..3 {
        let word = u64::from_le_bytes(input.get(from..from + 8)?.try_into().ok()?);
        // Non-ASCII bytes too: a plain key needs no UTF-8 check.
        let special = not_plain(word) | (word & HIGH);
        if special != 0 {
            let at = from + special.trailing_zeros() as usize / 8;
            if input.get(at) != Some(&b'"') {
                return None;
            }
            return Some((at + 1, Cow::Borrowed(input.get(open + 1..at)?)));
        }
        from += 8;
    }
    None
}

/// Scans the array opening at `start` in `input`; returns one past its
/// `]`. `on_element` gets each element's first byte and returns one past
/// its end: it reads the element itself (with [`scan_object_at`] or
/// [`scan_value`]), so nothing is walked twice.
pub(crate) fn scan_array_at(
    input: &[u8],
    start: usize,
    mut on_element: impl FnMut(usize) -> Result<usize, ScanError>,
) -> Result<usize, ScanError> {
    use ScanErrorKind::*;
    if input.get(start) != Some(&b'[') {
        return Err(ScanError::new(ExpectedValue, start));
    }
    let mut pos = skip_ws(input, start + 1);
    if input.get(pos) == Some(&b']') {
        return Ok(pos + 1);
    }
    loop {
        // `on_element` always gets a byte to look at.
        if pos >= input.len() {
            return Err(ScanError::new(UnexpectedEnd, input.len()));
        }
        let end = on_element(pos)?;
        pos = skip_ws(input, end);
        match input.get(pos) {
            Some(b',') => pos = skip_ws(input, pos + 1),
            Some(b']') => return Ok(pos + 1),
            Some(_) => return Err(ScanError::new(ExpectedCommaOrEnd, pos)),
            None => return Err(ScanError::new(UnexpectedEnd, pos)),
        }
    }
}

/// The position of the first non-whitespace byte at or after `pos` (JSON's
/// four whitespace bytes), or `input.len()`.
#[inline]
pub(crate) fn skip_ws(input: &[u8], mut pos: usize) -> usize {
    while let Some(&c) = input.get(pos) {
        // Most bytes are past the space: one comparison for them.
        if c > b' ' || !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            break;
        }
        pos += 1;
    }
    pos
}

/// Validates the value at `start` like a top-level one (scalars strictly,
/// nested values skipped); returns its end and kind.
pub(crate) fn scan_value(input: &[u8], start: usize) -> Result<(usize, ValueKind), ScanError> {
    scan_value_with::<false>(input, start)
}

/// [`scan_value`] for a value that may hold long arrays of numbers (an
/// embedding): runs of numbers are passed over 64 bytes at a time.
pub(crate) fn scan_numeric_value(input: &[u8], start: usize) -> Result<(usize, ValueKind), ScanError> {
    scan_value_with::<true>(input, start)
}

#[inline(always)]
fn scan_value_with<const NUMBERS: bool>(input: &[u8], start: usize) -> Result<(usize, ValueKind), ScanError> {
    use ScanErrorKind::*;
    let Some(&b) = input.get(start) else {
        return Err(ScanError::new(UnexpectedEnd, start));
    };
    Ok(match b {
        b'"' => (checked_string_end(input, start)?, ValueKind::String),
        b'{' => (
            skip_nested_with::<NUMBERS, _>(input, start, &mut |_, _| {})?,
            ValueKind::Object,
        ),
        b'[' => (
            skip_nested_with::<NUMBERS, _>(input, start, &mut |_, _| {})?,
            ValueKind::Array,
        ),
        b't' => (literal(input, start, b"true")?, ValueKind::True),
        b'f' => (literal(input, start, b"false")?, ValueKind::False),
        b'n' => (literal(input, start, b"null")?, ValueKind::Null),
        b'-' | b'0'..=b'9' => (number_end(input, start)?, ValueKind::Number),
        _ => return Err(ScanError::new(ExpectedValue, start)),
    })
}

fn literal(input: &[u8], start: usize, word: &[u8]) -> Result<usize, ScanError> {
    match input.get(start..) {
        Some(rest) if rest.starts_with(word) => Ok(start + word.len()),
        Some(rest) if word.starts_with(rest) => Err(ScanError::new(ScanErrorKind::UnexpectedEnd, input.len())),
        _ => Err(ScanError::new(ScanErrorKind::InvalidLiteral, start)),
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, and not glued to more
/// number-ish bytes (`01`, `1.2.3`, `1x` are invalid numbers, not structure
/// errors).
fn number_end(input: &[u8], start: usize) -> Result<usize, ScanError> {
    let invalid = Err(ScanError::new(ScanErrorKind::InvalidNumber, start));
    let digits = |mut p: usize| {
        let from = p;
        while input.get(p).is_some_and(u8::is_ascii_digit) {
            p += 1;
        }
        (p, p > from)
    };
    let mut p = start;
    if input.get(p) == Some(&b'-') {
        p += 1;
    }
    match input.get(p) {
        Some(b'0') => p += 1,
        Some(b'1'..=b'9') => p = digits(p).0,
        _ => return invalid,
    }
    // An integer, as most numbers in an answer are (counts, an index, a
    // time), followed by what may follow any number: done. (Not a fraction,
    // an exponent or a glued byte, which the checks below would refuse.)
    if let None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') = input.get(p) {
        return Ok(p);
    }
    if input.get(p) == Some(&b'.') {
        let (q, any) = digits(p + 1);
        if !any {
            return invalid;
        }
        p = q;
    }
    if let Some(b'e' | b'E') = input.get(p) {
        p += 1;
        if let Some(b'+' | b'-') = input.get(p) {
            p += 1;
        }
        let (q, any) = digits(p);
        if !any {
            return invalid;
        }
        p = q;
    }
    match input.get(p) {
        Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-') => invalid,
        _ => Ok(p),
    }
}

/// End (one past the closing quote) of the string whose opening quote is at
/// `open`, without validating escapes. Three gears:
///
/// - Near the start, and after each escaped quote: 8 bytes at a time
///   (SWAR), taking every `"`/`\\` hit of a word from its bit mask. Keys and
///   short values end in the first word on one predictable branch, and a
///   `\"word\"` in prose costs a few bit operations.
/// - Past that: `memchr` to the next `"` and count the backslashes right
///   before it (odd: escaped), so long text goes at vector speed and costs
///   one call per quote, not per backslash.
/// - Where an escaped quote comes soon after the last (code, JSON inside a
///   string, prose that quotes): 64-byte blocks classified without branches
///   ([`Block`]), until the string ends or a few blocks in a row have no
///   quote (then back to `memchr`). Dense escapes cost the same as none
///   there, where a `memchr` call per `\"` would not.
#[inline(always)]
fn string_end(input: &[u8], open: usize) -> Result<usize, ScanError> {
    // Most strings (keys, roles, short values) end in the first two words:
    // that much is inlined where strings are skipped, the rest is a call.
    let i = open + 1;
    if let Some(words) = input.get(i..i + 16).and_then(<[u8]>::first_chunk::<16>) {
        let words16 = u128::from_le_bytes(*words);
        let first = quote_or_backslash(words16 as u64);
        if first != 0 {
            let at = first.trailing_zeros() as usize / 8;
            if words.get(at) == Some(&b'"') {
                return Ok(i + at + 1);
            }
        } else {
            let second = quote_or_backslash((words16 >> 64) as u64);
            let at = 8 + second.trailing_zeros() as usize / 8;
            if second != 0 && words.get(at) == Some(&b'"') {
                return Ok(i + at + 1);
            }
        }
    }
    string_end_far(input, i)
}

/// [`string_end`] from `i` (inside the string, not inside an escape).
#[inline(never)]
fn string_end_far(input: &[u8], mut i: usize) -> Result<usize, ScanError> {
    const INLINE: usize = 16;
    loop {
        // `i` is never inside an escape here, so a `\` hit starts one.
        let stop = i + INLINE;
        'words: while i < stop {
            let Some(word) = input.get(i..i + 8).and_then(<[u8]>::first_chunk::<8>) else {
                match input.get(i) {
                    None => return Err(ScanError::new(ScanErrorKind::UnexpectedEnd, input.len())),
                    Some(b'"') => return Ok(i + 1),
                    Some(b'\\') => i += 2,
                    Some(_) => i += 1,
                }
                continue;
            };
            let mut hits = quote_or_backslash(u64::from_le_bytes(*word));
            loop {
                if hits == 0 {
                    i += 8;
                    continue 'words;
                }
                let at = hits.trailing_zeros() as usize / 8;
                if word.get(at) == Some(&b'"') {
                    return Ok(i + at + 1);
                }
                if at >= 6 {
                    // The escaped byte is the word's last, or in the next.
                    i += at + 2;
                    continue 'words;
                }
                // Drop the backslash and the byte it escapes.
                hits &= u64::MAX << ((at + 2) * 8);
            }
        }
        let Some(found) = input.get(i..).and_then(|rest| memchr(b'"', rest)) else {
            return Err(ScanError::new(ScanErrorKind::UnexpectedEnd, input.len()));
        };
        let quote = i + found;
        // The run may start before `i`: parity of the whole run decides. It
        // cannot pass the opening quote, which is not a backslash.
        let run = input
            .get(..quote)
            .into_iter()
            .flatten()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if run % 2 == 0 {
            return Ok(quote + 1);
        }
        i = quote + 1;
        // An escaped quote close to where `memchr` started: the text has
        // them often (code, JSON, quoted prose), where a call per quote
        // costs more than classifying blocks.
        if found < DENSE_NEAR {
            match dense_string_end(input, i)? {
                Ok(end) => return Ok(end),
                Err(sparse) => i = sparse,
            }
        }
    }
}

/// An escaped quote found within this many bytes of where `memchr`
/// started switches [`string_end_far`] to the block gear.
const DENSE_NEAR: usize = 256;
/// Consecutive blocks without a quote after which the block gear hands
/// back to `memchr` (faster on quote-free stretches).
const DENSE_EXIT: usize = 4;

/// [`string_end`]'s third gear, from `i` (not inside an escape): `Ok(end)`
/// when the string ends, or `Err(at)` once [`DENSE_EXIT`] blocks in a row
/// had no quote (so `memchr` is faster again); `at` is past the escape a block's last
/// backslash begins, so it is never inside one.
fn dense_string_end(input: &[u8], mut i: usize) -> Result<Result<usize, usize>, ScanError> {
    let mut escape_carry = 0;
    let mut quiet = 0;
    loop {
        let block = Block::at(input, i);
        let escaped = block.escaped(&mut escape_carry);
        let closing = block.quote & !escaped;
        if closing != 0 {
            let end = i + closing.trailing_zeros() as usize + 1;
            // Padding past the input is blank, so a hit is always in range.
            return Ok(Ok(end));
        }
        i += 64;
        if i >= input.len() {
            return Err(ScanError::new(ScanErrorKind::UnexpectedEnd, input.len()));
        }
        if block.quote != 0 {
            quiet = 0;
        } else {
            quiet += 1;
            if quiet == DENSE_EXIT {
                // A block ending in an odd run of backslashes escapes the next
                // block's first byte: resume after it.
                return Ok(Err(i + escape_carry as usize));
            }
        }
    }
}

/// One 64-byte block of input as bit masks (bit `k` is byte `k`), computed
/// without branches (`json::simd`: SSE2 on x86_64, portable elsewhere).
#[derive(Clone, Copy)]
struct Block {
    quote: u64,
    backslash: u64,
}

impl Block {
    /// The 64 bytes from `at`; past the end of `input` it reads blanks.
    #[inline]
    fn at(input: &[u8], at: usize) -> Block {
        match input.get(at..at + 64).and_then(<[u8]>::first_chunk::<64>) {
            Some(bytes) => Block::new(bytes),
            None => Block::new(&padded(super::within(input, at..))),
        }
    }

    #[inline(always)]
    fn new(bytes: &[u8; 64]) -> Block {
        let (quote, backslash) = super::simd::quote_backslash_masks(bytes);
        Block { quote, backslash }
    }

    /// The bytes escaped by a backslash: each one right after an odd run of
    /// backslashes. `carry` is 1 when the block's first byte is escaped by a
    /// run that ended the previous block, and is updated for the next block.
    /// (simdjson's branchless `find_escaped`.)
    #[inline(always)]
    fn escaped(&self, carry: &mut u64) -> u64 {
        const EVEN: u64 = 0x5555_5555_5555_5555;
        let backslash = self.backslash & !*carry;
        let follows_escape = (backslash << 1) | *carry;
        let odd_starts = backslash & !EVEN & !follows_escape;
        let (even_series, overflow) = odd_starts.overflowing_add(backslash);
        *carry = u64::from(overflow);
        (EVEN ^ (even_series << 1)) & follows_escape
    }
}

/// High bit set in each byte of `word` that is `"` or `\`; exact (no
/// false positives), so the lowest set bit is the first hit.
#[inline]
fn quote_or_backslash(word: u64) -> u64 {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const LOW7: u64 = u64::from_ne_bytes([0x7f; 8]);
    let zero = |v: u64| !(((v & LOW7) + LOW7) | v | LOW7);
    zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\')))
}

/// Like [`string_end`], but checks that every escape is well formed (a
/// top-level string value is validated; its UTF-8 is left to whoever decodes
/// it).
fn checked_string_end(input: &[u8], open: usize) -> Result<usize, ScanError> {
    let mut from = open + 1;
    // Short values (a model name, a role) end in the first words: find the
    // first `"` or `\\` eight bytes at a time before paying for a call.
    let stop = from + 32;
    while let Some(word) = input
        .get(from..from + 8)
        .and_then(<[u8]>::first_chunk::<8>)
        .filter(|_| from < stop)
    {
        let hits = quote_or_backslash(u64::from_le_bytes(*word));
        if hits == 0 {
            from += 8;
            continue;
        }
        let at = from + hits.trailing_zeros() as usize / 8;
        if input.get(at) == Some(&b'"') {
            return Ok(at + 1);
        }
        from = at + escape_len(input, at)?;
        break;
    }
    loop {
        let Some(i) = input.get(from..).and_then(|rest| memchr2(b'"', b'\\', rest)) else {
            return Err(ScanError::new(ScanErrorKind::UnexpectedEnd, input.len()));
        };
        let at = from + i;
        if input.get(at) == Some(&b'"') {
            return Ok(at + 1);
        }
        from = at + escape_len(input, at)?;
    }
}

/// Length of the well-formed escape at `at` (a backslash): 2, or 6 for `\uXXXX`.
#[inline]
fn escape_len(input: &[u8], at: usize) -> Result<usize, ScanError> {
    match input.get(at + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(2),
        Some(b'u') => match input.get(at + 2..at + 6) {
            Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => Ok(6),
            None if super::within(input, at + 2..).iter().all(u8::is_ascii_hexdigit) => {
                Err(ScanError::new(ScanErrorKind::UnexpectedEnd, input.len()))
            }
            _ => Err(ScanError::new(ScanErrorKind::InvalidEscape, at)),
        },
        None => Err(ScanError::new(ScanErrorKind::UnexpectedEnd, input.len())),
        Some(_) => Err(ScanError::new(ScanErrorKind::InvalidEscape, at)),
    }
}

/// Skips the object or array opening at `start`; returns one past its
/// closing bracket, calling `on_string` with each string's span. Brackets
/// are matched with a bit stack (1 = object), strings jumped over, and
/// everything else passed over unchecked, byte by byte. With `NUMBERS`, a number that starts an array
/// element starts a run to the next quote or bracket, found 64 bytes at a
/// time (`json::simd`), so a long array of numbers (an embedding) costs a
/// few instructions per block, not per byte; without it the loop is the
/// plain one (requests: the extra arms cost ~10 % on their short values).
#[inline]
fn skip_nested_with<const NUMBERS: bool, F: FnMut(usize, usize)>(
    input: &[u8],
    start: usize,
    on_string: &mut F,
) -> Result<usize, ScanError> {
    use ScanErrorKind::*;
    let mut stack: u128 = 0;
    let mut depth = 0usize; // open levels below the top-level object
    let mut i = start;
    while let Some(&b) = input.get(i) {
        match b {
            b'"' => {
                let end = string_end(input, i)?;
                on_string(i, end);
                i = end;
                continue;
            }
            b'{' | b'[' => {
                if depth + 1 >= MAX_DEPTH {
                    return Err(ScanError::new(TooDeep, i));
                }
                stack = (stack << 1) | u128::from(b == b'{');
                depth += 1;
                if NUMBERS && b == b'[' && starts_number(input, i + 1) {
                    i = number_run(input, i + 1);
                    continue;
                }
            }
            b'}' | b']' => {
                let open_is_object = stack & 1 == 1;
                if open_is_object != (b == b'}') {
                    let open = if open_is_object { b'{' } else { b'[' };
                    return Err(ScanError::new(Mismatched { found: b, open }, i));
                }
                stack >>= 1;
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {
                if NUMBERS && b == b',' && stack & 1 == 0 && starts_number(input, i + 1) {
                    i = number_run(input, i + 1);
                    continue;
                }
            }
        }
        i += 1;
    }
    Err(ScanError::new(UnexpectedEnd, input.len()))
}

/// A number starts at `at` (its first byte, unchecked: the skip does not
/// validate).
#[inline(always)]
fn starts_number(input: &[u8], at: usize) -> bool {
    matches!(input.get(at), Some(b'0'..=b'9' | b'-'))
}

/// Where the next quote or bracket is from `at` (the end of the input when
/// there is none): past a run of array elements that hold none.
#[inline(never)]
fn number_run(input: &[u8], mut at: usize) -> usize {
    while let Some(hits) = structural_at(input, at) {
        if hits != 0 {
            return at + hits.trailing_zeros() as usize;
        }
        at += 64;
    }
    input.len()
}

/// The structural bytes among the 64 of `input` from `at` (blanks past its
/// end); `None` when `at` is past the end.
#[inline(always)]
fn structural_at(input: &[u8], at: usize) -> Option<u64> {
    if let Some(bytes) = input.get(at..at + 64).and_then(<[u8]>::first_chunk::<64>) {
        return Some(super::simd::structural_mask(bytes));
    }
    let rest = input.get(at..).filter(|rest| !rest.is_empty())?;
    Some(super::simd::structural_mask(&padded(rest)))
}

/// `rest` (shorter than 64 bytes) and blanks after it, as one block.
fn padded(rest: &[u8]) -> [u8; 64] {
    let mut block = [b' '; 64];
    for (to, from) in block.iter_mut().zip(rest) {
        *to = *from;
    }
    block
}

/// Decodes a JSON string literal (quotes included): every escape, surrogate
/// pairs too. Borrowed when it has no backslash. Errors on bad escapes, lone
/// surrogates, unescaped control characters or quotes, and invalid UTF-8;
/// error offsets count from the literal's opening quote.
pub(crate) fn decode_string(literal: &[u8]) -> Result<Cow<'_, str>, ScanError> {
    decode_at(literal, 0)
}

/// [`decode_string`] into an owned `String`, which costs the copy either
/// way; a short literal with nothing to decode is copied first and its
/// UTF-8 checked in the copy, whose start is word-aligned, so the check
/// runs a word at a time from its first byte (in the input it would go
/// byte by byte up to an alignment).
pub(crate) fn decode_owned(literal: &[u8]) -> Result<String, ScanError> {
    let n = literal.len();
    if let Some(body) = literal.get(1..n.saturating_sub(1)).filter(|b| b.len() <= 64) {
        if literal.first() == Some(&b'"') && literal.last() == Some(&b'"') && nothing_to_decode(body) {
            return String::from_utf8(body.to_vec())
                .map_err(|e| ScanError::new(ScanErrorKind::InvalidUtf8, 1 + e.utf8_error().valid_up_to()));
        }
    }
    decode_at(literal, 0).map(Cow::into_owned)
}

/// [`decode_string`] with error offsets shifted by `base`.
fn decode_at(literal: &[u8], base: usize) -> Result<Cow<'_, str>, ScanError> {
    use ScanErrorKind::*;
    let [b'"', body @ .., b'"'] = literal else {
        return Err(ScanError::new(NotAString, base));
    };
    let at = |i: usize| base + 1 + i;
    // Keys and model names: short, and nothing to decode. One pass, where the
    // general path below costs three (and a `memchr2` call).
    if body.len() <= 64 && nothing_to_decode(body) {
        return std::str::from_utf8(body)
            .map(Cow::Borrowed)
            .map_err(|e| ScanError::new(InvalidUtf8, at(e.valid_up_to())));
    }
    if let Some(i) = body.iter().position(|&b| b < 0x20) {
        return Err(ScanError::new(ControlCharacter, at(i)));
    }
    // Escapes are ASCII, so the body is valid UTF-8 iff the decoded text is.
    let text = std::str::from_utf8(body).map_err(|e| ScanError::new(InvalidUtf8, at(e.valid_up_to())))?;
    let Some(first) = memchr2(b'\\', b'"', body) else {
        return Ok(Cow::Borrowed(text));
    };
    let mut out = String::with_capacity(body.len());
    let mut done = 0; // body[..done] is decoded into `out`
    let mut next = Some(first);
    while let Some(i) = next {
        if body.get(i) == Some(&b'"') {
            return Err(ScanError::new(NotAString, at(i)));
        }
        // `done` and `i` sit at ASCII bytes (an escape's end, a `\\`).
        out.push_str(text.get(done..i).ok_or(ScanError::new(InvalidUtf8, at(done)))?);
        let len = escape_len(body, i).map_err(|_| ScanError::new(InvalidEscape, at(i)))?;
        let escaped = body.get(i + 1).copied().ok_or(ScanError::new(InvalidEscape, at(i)))?;
        let c = match escaped {
            b'u' => {
                let unit = body
                    .get(i + 2..i + 6)
                    .and_then(hex4)
                    .ok_or(ScanError::new(InvalidEscape, at(i)))?;
                match unit {
                    0xD800..=0xDBFF => {
                        // A high surrogate must be followed by `\u` + low surrogate.
                        let low = body
                            .get(i + 6..i + 12)
                            .and_then(|e| match e {
                                [b'\\', b'u', hex @ ..] => hex4(hex),
                                _ => None,
                            })
                            .filter(|low| (0xDC00..=0xDFFF).contains(low))
                            .ok_or(ScanError::new(LoneSurrogate, at(i)))?;
                        done = i + 12;
                        char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                    }
                    0xDC00..=0xDFFF => return Err(ScanError::new(LoneSurrogate, at(i))),
                    _ => {
                        done = i + len;
                        char::from_u32(unit)
                    }
                }
                // Surrogates were excluded: every unit left is a scalar value.
                .ok_or(ScanError::new(LoneSurrogate, at(i)))?
            }
            short => {
                done = i + len;
                match short {
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    other => other as char, // `"`, `\`, `/`
                }
            }
        };
        out.push(c);
        next = body
            .get(done..)
            .and_then(|rest| memchr2(b'\\', b'"', rest))
            .map(|j| done + j);
    }
    out.push_str(text.get(done..).ok_or(ScanError::new(InvalidUtf8, at(done)))?);
    Ok(Cow::Owned(out))
}

/// No control character, quote or backslash in `bytes`: eight at a time.
#[inline]
fn nothing_to_decode(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    let clean = words.by_ref().all(|w| {
        w.first_chunk::<8>()
            .is_some_and(|w| not_plain(u64::from_le_bytes(*w)) == 0)
    });
    clean && words.remainder().iter().all(|&b| b >= 0x20 && b != b'\\' && b != b'"')
}

const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// High bit set in each byte of `word` that a JSON string cannot hold as
/// is: a control character (below 0x20), `"` or `\\`. Exact up to the first
/// hit (a borrow from a control byte can only mark bytes above it), so the
/// lowest set bit is the first one and "no bit" means none.
#[inline]
fn not_plain(word: u64) -> u64 {
    const SPACES: u64 = u64::from_ne_bytes([0x20; 8]);
    (word.wrapping_sub(SPACES) & !word & HIGH) | quote_or_backslash(word)
}

/// The value of four hex digits; `None` for anything else.
fn hex4(hex: &[u8]) -> Option<u32> {
    match hex.len() {
        4 => hex
            .iter()
            .try_fold(0, |acc, &h| Some(acc * 16 + char::from(h).to_digit(16)?)),
        _ => None,
    }
}

/// The JSON string literal for `s`, quotes included, byte for byte as
/// `serde_json` writes it: `"` and `\` escaped, control characters as
/// `\b \f \n \r \t` or `\u00xx`, everything else (non-ASCII too) verbatim.
pub(crate) fn encode_string(s: &str) -> bytes::Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut done = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\x08' => b'b',
            b'\x0c' => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0..=0x1f => 0,
            _ => continue,
        };
        out.extend_from_slice(super::within(bytes, done..i));
        done = i + 1;
        if short == 0 {
            let hex = |nibble: u8| HEX.get(usize::from(nibble)).copied().unwrap_or(b'0');
            let (hi, lo) = (hex(b >> 4), hex(b & 0xf));
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hi, lo]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
    }
    out.extend_from_slice(super::within(bytes, done..));
    out.push(b'"');
    out.into()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    #[test]
    fn plain_keys_take_the_short_path_and_others_are_decoded() {
        // JSON key literals (between the quotes): plain ones of every length
        // around the 8-byte words, and ones the general path must decode.
        for key in [
            "",
            "a",
            "model",
            "1234567",
            "12345678",
            "123456789",
            "0123456789abcdef",
            "0123456789abcdefghijklm",
            "0123456789abcdefghijklmn",
            "0123456789abcdefghijklmno",
            "café",
            r"tab\tkey",
            r#"quote\"d"#,
            r"\u00e9t\u00e9",
        ] {
            let text = format!(r#"{{"{key}":1}}"#);
            let want: String = serde_json::from_str(&format!(r#""{key}""#)).unwrap();
            let mut got = None;
            scan_object(text.as_bytes(), |m| {
                got = Some(m.key_text().into_owned());
                Ok::<_, ()>(())
            })
            .unwrap();
            assert_eq!(got.as_deref(), Some(want.as_str()), "{key:?}");
        }
        // A raw control character in a key is refused on either path.
        for key in ["a\u{1}b", "0123456789abc\u{1f}"] {
            let text = format!(r#"{{"{key}":1}}"#);
            assert!(scan_object(text.as_bytes(), |_| Ok::<_, ()>(())).is_err(), "{text:?}");
        }
    }

    /// `(key, value text, kind)` of every member, or the scan error.
    fn members(input: &[u8]) -> Result<Vec<(String, &str, ValueKind)>, ScanError> {
        let mut out = Vec::new();
        let span = scan_object(input, |m| {
            assert_eq!(decode_string(&input[m.key_span.clone()]).unwrap(), m.key_text());
            let text = std::str::from_utf8(&input[m.value.clone()]).unwrap();
            out.push((m.key_text().into_owned(), text, m.kind));
            Ok::<_, ()>(())
        })
        .map_err(|e| match e {
            ScanFail::Scan(e) => e,
            ScanFail::Callback(()) => unreachable!(),
        })?;
        assert_eq!(input[span.start], b'{');
        assert_eq!(input[span.end - 1], b'}');
        Ok(out)
    }

    fn model_of(input: &str) -> String {
        let found = members(input.as_bytes()).unwrap_or_else(|e| panic!("{e}: {input}"));
        let models: Vec<_> = found.iter().filter(|(k, ..)| k == "model").collect();
        assert_eq!(models.len(), 1, "{input}");
        assert_eq!(models[0].2, ValueKind::String);
        models[0].1.to_owned()
    }

    fn error_of(input: &[u8]) -> String {
        match members(input) {
            Ok(m) => panic!("accepted {:?}: {m:?}", String::from_utf8_lossy(input)),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn finds_model_anywhere() {
        assert_eq!(model_of(r#"{"model":"a/b","messages":[]}"#), r#""a/b""#);
        assert_eq!(model_of(r#"{"messages":[],"model":"a/b"}"#), r#""a/b""#);
        assert_eq!(model_of(r#"{"x":1,"model":"a/b","y":{"model":"no"}}"#), r#""a/b""#);
        assert_eq!(
            model_of("\r\n\t { \"messages\" :\n[ ] ,\n\t\"model\"\t:\r\n \"a/b\" \n,\"t\" : 0.5e-3 }\n\t "),
            r#""a/b""#
        );
    }

    #[test]
    fn escapes_and_unicode_around_the_model() {
        let body =
            r#"{"a\"b":"x\"y\\","c":"\\","model":"caf\u00e9 🚀 \ud83d\ude80","d":"é\"","e":["\\\"",{"model":"\""}]}"#;
        assert_eq!(model_of(body), r#""caf\u00e9 🚀 \ud83d\ude80""#);
        let m = members(body.as_bytes()).unwrap();
        assert_eq!(
            m.iter().map(|(k, ..)| k.as_str()).collect::<Vec<_>>(),
            ["a\"b", "c", "model", "d", "e"]
        );
        assert_eq!(decode_string(model_of(body).as_bytes()).unwrap(), "café 🚀 🚀");
    }

    #[test]
    fn the_dense_gear_hands_back_past_a_carried_escape() {
        // Near escaped quotes switch to the block gear; after DENSE_EXIT
        // blocks without a quote it hands back to memchr. At one of these
        // pads the last quiet block ends in a backslash whose escaped quote
        // opens the next block: that quote is text, not the string's end.
        for pad in 0..64 * (DENSE_EXIT + 2) {
            let s = format!(
                "\"{}\\\"{}\\\"{}\\\"tail\"",
                "x".repeat(20),
                "y".repeat(20),
                "a".repeat(pad)
            );
            assert_eq!(string_end(s.as_bytes(), 0), Ok(s.len()), "pad {pad}");
            let body = format!(r#"{{"messages":[{s}],"model":"m"}}"#);
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(parsed["model"], "m");
            let m = members(body.as_bytes()).unwrap();
            assert_eq!(m.len(), 2, "{body}");
        }
    }

    #[test]
    fn escaped_key_decodes() {
        let body = br#"{"mod\u0065l":"m","\ud83d\ude80\n":1}"#;
        let m = members(body).unwrap();
        assert_eq!(m[0].0, "model");
        assert_eq!(m[1].0, "🚀\n");
        // Plain keys are borrowed, not allocated.
        scan_object(br#"{"model":1}"#, |m| {
            assert!(matches!(m.key, Cow::Borrowed(b"model")));
            Ok::<_, ()>(())
        })
        .unwrap();
    }

    #[test]
    fn nested_model_is_not_top_level() {
        let body = r#"{"messages":[{"role":"user","content":"model"},{"model":"inner","nested":{"model":[{"model":1}]}}],"model":"outer"}"#;
        assert_eq!(model_of(body), r#""outer""#);
        let m = members(br#"{"messages":[{"model":"x"}]}"#).unwrap();
        assert_eq!(m, [("messages".into(), r#"[{"model":"x"}]"#, ValueKind::Array)]);
    }

    #[test]
    fn kinds_and_spans() {
        let body = br#"{"s":"x","n":-1.5E+3,"z":0,"o":{"a":[1,{}]},"a":[],"t":true,"f":false,"u":null}"#;
        let got = members(body).unwrap();
        let want = [
            ("s", r#""x""#, ValueKind::String),
            ("n", "-1.5E+3", ValueKind::Number),
            ("z", "0", ValueKind::Number),
            ("o", r#"{"a":[1,{}]}"#, ValueKind::Object),
            ("a", "[]", ValueKind::Array),
            ("t", "true", ValueKind::True),
            ("f", "false", ValueKind::False),
            ("u", "null", ValueKind::Null),
        ];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0.as_str(), g.1, g.2), w);
        }
    }

    #[test]
    fn empty_object() {
        assert_eq!(members(b"{}").unwrap(), []);
        assert_eq!(members(b" \n{ \t}\r\n").unwrap(), []);
        assert_eq!(scan_object(b"  {}  ", |_| Ok::<_, ()>(())).unwrap(), 2..4);
    }

    #[test]
    fn depth_limit() {
        let nest = |levels: usize| {
            let inner = levels - 1; // the top-level object is a level
            format!(r#"{{"a":{}1{}}}"#, "[".repeat(inner), "]".repeat(inner))
        };
        let ok = nest(128);
        assert_eq!(members(ok.as_bytes()).unwrap().len(), 1);
        // A member value within the limit is one serde_json can parse alone.
        let span = &members(ok.as_bytes()).unwrap()[0].1;
        serde_json::from_str::<Value>(span).unwrap();
        let deep = nest(129);
        assert_eq!(
            error_of(deep.as_bytes()),
            "JSON nested deeper than 128 levels at byte 132"
        );
        let objects = format!(r#"{{"a":{}{}}}"#, r#"{"b":"#.repeat(130), "}".repeat(130));
        assert!(error_of(objects.as_bytes()).starts_with("JSON nested deeper than 128 levels"));
    }

    #[test]
    fn structure_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "body is not a JSON object"),
            (b" \n\t ", "body is not a JSON object"),
            (b"[1,2]", "body is not a JSON object"),
            (br#""model""#, "body is not a JSON object"),
            (b"42", "body is not a JSON object"),
            (b"null", "body is not a JSON object"),
            (b"\xEF\xBB\xBF{}", "body is not a JSON object"),
            (br#"{"a":[1}]}"#, "mismatched '}' at byte 7 (expected ']')"),
            (br#"{"a":{"b":1]}"#, "mismatched ']' at byte 11 (expected '}')"),
            (br#"{"a":1,}"#, "trailing comma before '}' at byte 7"),
            (
                br#"{"a":[1,2],"b":2} x"#,
                "trailing characters after the JSON object at byte 18",
            ),
            (br#"{}{}"#, "trailing characters after the JSON object at byte 2"),
            (br#"{"a":"unterminated}"#, "unexpected end of JSON at byte 19"),
            (br#"{"a":["unterminated]}"#, "unexpected end of JSON at byte 21"),
            (br#"{"a":[1,2"#, "unexpected end of JSON at byte 9"),
            (br#"{"a":1"#, "unexpected end of JSON at byte 6"),
            (br#"{"a""#, "unexpected end of JSON at byte 4"),
            (br#"{"a":"#, "unexpected end of JSON at byte 5"),
            (br#"{"a":tr"#, "unexpected end of JSON at byte 7"),
            (b"{", "unexpected end of JSON at byte 1"),
            (br#"{"a" 1}"#, "expected ':' after object key at byte 5"),
            (br#"{"a":1 "b":2}"#, "expected ',' or '}' after object value at byte 7"),
            (br#"{a:1}"#, "expected a string object key at byte 1"),
            (br#"{"a":}"#, "expected a JSON value at byte 5"),
            (br#"{"a":'x'}"#, "expected a JSON value at byte 5"),
            (br#"{"a":"\x"}"#, "invalid escape in string at byte 6"),
            (br#"{"a":"\u12G4"}"#, "invalid escape in string at byte 6"),
            (br#"{"a\q":1}"#, "invalid escape in string at byte 3"),
            (br#"{"\udc00":1}"#, "unpaired surrogate in \\u escape at byte 2"),
            (b"{\"a\x01\":1}", "unescaped control character in string at byte 3"),
            (b"{\"a\xff\":1}", "object key is not valid UTF-8 at byte 3"),
            (br#"{"a":01}"#, "invalid number at byte 5"),
            (br#"{"a":1.}"#, "invalid number at byte 5"),
            (br#"{"a":.5}"#, "expected a JSON value at byte 5"),
            (br#"{"a":-}"#, "invalid number at byte 5"),
            (br#"{"a":1e}"#, "invalid number at byte 5"),
            (br#"{"a":1.5.2}"#, "invalid number at byte 5"),
            (br#"{"a":+1}"#, "expected a JSON value at byte 5"),
            (br#"{"a":tru}"#, "invalid literal at byte 5"),
            (br#"{"a":nul1}"#, "invalid literal at byte 5"),
            (br#"{"a":True}"#, "expected a JSON value at byte 5"),
            (br#"{"a":truex}"#, "expected ',' or '}' after object value at byte 9"),
        ];
        let wrong: Vec<_> = cases
            .iter()
            .map(|(input, want)| (String::from_utf8_lossy(input), error_of(input), want))
            .filter(|(_, got, want)| got != *want)
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn callback_stops_the_scan() {
        let mut seen = Vec::new();
        let r = scan_object(br#"{"model":"a","model":"b","x":1}"#, |m| {
            if seen.contains(&m.key) {
                return Err(m.value);
            }
            seen.push(m.key);
            Ok(())
        });
        assert_eq!(r, Err(ScanFail::Callback(21..24)));
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn nested_values_are_skipped_not_validated() {
        // Documented leniency: bad JSON inside nested values passes.
        assert_eq!(members(br#"{"a":[tru, 01, "\q"]}"#).unwrap()[0].1, r#"[tru, 01, "\q"]"#);
    }

    #[test]
    fn backslash_runs_before_quotes() {
        for (content, end) in [(r#"\\"#, 4), (r#"\\\""#, 6), (r#"\\\\"#, 6), (r#"a\"\\"#, 7)] {
            let body = format!(r#"{{"a":["{content}"],"model":"m"}}"#);
            assert_eq!(model_of(&body), r#""m""#, "{body}");
            let lit = format!(r#""{content}""#);
            assert_eq!(string_end(lit.as_bytes(), 0).unwrap(), end);
        }
    }

    #[test]
    fn large_body() {
        let turn =
            r#"{"role":"user","content":"Tell me about the \"model\" — ünïcødé ✓\nwith lines\\ and \\\"quotes\\\"."},"#;
        let mut s = String::from(r#"{"messages":["#);
        while s.len() < 8 << 20 {
            s.push_str(turn);
        }
        s.push_str(r#"{"role":"user","content":"end"}],"model":"caller/model","temperature":0.3}"#);
        let m = members(s.as_bytes()).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1], ("model".into(), r#""caller/model""#, ValueKind::String));
        assert_eq!(
            m[0].1.len(),
            s.len() - r#"{"messages":,"model":"caller/model","temperature":0.3}"#.len()
        );
    }

    #[test]
    fn decode_string_cases() {
        let ok: &[(&str, &str)] = &[
            (r#""""#, ""),
            (r#""plain é""#, "plain é"),
            (r#""\"\\\/\b\f\n\r\t""#, "\"\\/\u{8}\u{c}\n\r\t"),
            (r#""\u0041\u00E9\u20ac""#, "Aé€"),
            (r#""x\ud83d\ude80y""#, "x🚀y"),
            (r#""\u0000""#, "\0"),
        ];
        for (lit, want) in ok {
            assert_eq!(decode_string(lit.as_bytes()).unwrap(), *want, "{lit}");
        }
        assert!(matches!(decode_string(br#""abc""#).unwrap(), Cow::Borrowed("abc")));
        let bad: &[(&[u8], &str)] = &[
            (br#""\ud83d""#, "unpaired surrogate in \\u escape at byte 1"),
            (br#""\ud83dx\ude80""#, "unpaired surrogate in \\u escape at byte 1"),
            (br#""\ud83d\u0041""#, "unpaired surrogate in \\u escape at byte 1"),
            (br#""\u12""#, "invalid escape in string at byte 1"),
            (br#""ab\""#, "invalid escape in string at byte 3"),
            (br#""a"b""#, "expected a JSON string at byte 2"),
            (b"\"a\xc3\"", "string is not valid UTF-8 at byte 2"),
            (b"\"a\nb\"", "unescaped control character in string at byte 2"),
            (b"abc", "expected a JSON string at byte 0"),
            (b"\"", "expected a JSON string at byte 0"),
        ];
        for (lit, want) in bad {
            let got = decode_string(lit).unwrap_err().to_string();
            assert_eq!(got, *want, "{:?}", String::from_utf8_lossy(lit));
            assert_eq!(decode_owned(lit).unwrap_err().to_string(), *want);
        }
        for (lit, want) in ok {
            assert_eq!(decode_owned(lit.as_bytes()).unwrap(), *want, "{lit}");
        }
        // Plain but not UTF-8, short and long (the general path): refused alike.
        for lit in [
            &b"\"ab\xe9\""[..],
            b"\"ab\xe9cdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\"",
        ] {
            assert_eq!(decode_owned(lit).map(Cow::Owned), decode_string(lit), "{lit:?}");
        }
    }

    #[test]
    fn encode_string_matches_serde_json() {
        for s in [
            "",
            "openai/gpt-4o",
            "a\"b\\c/d",
            "\u{0}\u{1f}\u{7f}\u{8}\u{c}\n\r\t",
            "é🚀\u{2028}",
        ] {
            assert_eq!(&encode_string(s)[..], serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    /// Random JSON values: nested objects/arrays, strings with anything in
    /// them (quotes, backslashes, controls, astral chars), numbers.
    pub(crate) fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            "[\"\\\\a-z \n\u{e9}\u{1f680}]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Top-level members written out with random whitespace, each value
    /// compact or pretty.
    pub(crate) fn object_text() -> impl Strategy<Value = String> {
        let ws = || "[ \t\r\n]{0,2}";
        let member = (
            "[a-z\"\\\\\u{e9}\u{1}]{0,6}",
            value(),
            any::<bool>(),
            ws(),
            ws(),
            ws(),
            ws(),
        );
        (prop::collection::vec(member, 0..8), ws(), ws()).prop_map(|(members, lead, tail)| {
            let mut seen = std::collections::HashSet::new();
            let mut s = format!("{lead}{{");
            for (key, v, pretty, w1, w2, w3, w4) in members {
                if !seen.insert(key.clone()) {
                    continue; // duplicate keys: serde_json would keep only the last
                }
                if seen.len() > 1 {
                    s.push(',');
                }
                let v = if pretty {
                    serde_json::to_string_pretty(&v)
                } else {
                    serde_json::to_string(&v)
                };
                s += &format!("{w1}{}{w2}:{w3}{}{w4}", Value::from(key), v.unwrap());
            }
            s + &format!("}}{tail}")
        })
    }

    proptest! {
        #[test]
        fn number_runs_end_where_the_plain_skip_ends(
            v in value(),
            floats in prop::collection::vec(-1e3f64..1e3, 0..60),
            pad in 0usize..70,
            pretty in any::<bool>(),
        ) {
            // Any value, and an embedding-like entry whose brackets fall at
            // every offset of a block; cut short, both skips fail alike.
            let entry = serde_json::json!({"pad": "x".repeat(pad), "embedding": floats, "more": [v.clone(), [1, 2], "]"]});
            for value in [v, entry] {
                let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }.unwrap();
                let bytes = text.as_bytes();
                prop_assert_eq!(scan_numeric_value(bytes, 0), scan_value(bytes, 0));
                prop_assert_eq!(scan_numeric_value(bytes, 0).map(|(end, _)| end), Ok(bytes.len()));
                for cut in [bytes.len() / 2, bytes.len().saturating_sub(1)] {
                    prop_assert_eq!(scan_numeric_value(&bytes[..cut], 0).is_ok(), scan_value(&bytes[..cut], 0).is_ok());
                }
            }
        }

        #[test]
        fn spans_match_serde_json(text in object_text()) {
            let whole: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
            let mut count = 0;
            scan_object(text.as_bytes(), |m| {
                count += 1;
                let alone: Value = serde_json::from_slice(&text.as_bytes()[m.value.clone()]).unwrap();
                assert_eq!(Some(&alone), whole.get(&*m.key_text()));
                let kind = match alone {
                    Value::String(_) => ValueKind::String,
                    Value::Number(_) => ValueKind::Number,
                    Value::Object(_) => ValueKind::Object,
                    Value::Array(_) => ValueKind::Array,
                    Value::Bool(true) => ValueKind::True,
                    Value::Bool(false) => ValueKind::False,
                    Value::Null => ValueKind::Null,
                };
                assert_eq!(m.kind, kind);
                let key: String = serde_json::from_slice(&text.as_bytes()[m.key_span.clone()]).unwrap();
                assert_eq!(key, m.key_text());
                Ok::<_, ()>(())
            }).unwrap();
            prop_assert_eq!(count, whole.len());
        }

        /// What serde_json accepts as an object, the scanner accepts with
        /// the same members, even after random damage; and it never panics.
        #[test]
        fn never_rejects_what_serde_json_accepts(text in object_text(), at in any::<prop::sample::Index>(), byte in any::<u8>(), op in 0..3u8) {
            let mut bytes = text.into_bytes();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                match op {
                    0 => bytes[i] = byte,
                    1 => { bytes.remove(i); }
                    _ => bytes.insert(i, byte),
                }
            }
            let mut keys = Vec::new();
            let scanned = scan_object(&bytes, |m| { keys.push(m.key_text().into_owned()); Ok::<_, ()>(()) });
            if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes) {
                prop_assert!(scanned.is_ok(), "{:?}: {:?}", String::from_utf8_lossy(&bytes), scanned);
                keys.sort();
                keys.dedup();
                prop_assert_eq!(keys, map.keys().cloned().collect::<Vec<_>>());
            }
        }

        /// Both gears and the tail agree with a byte-at-a-time reference,
        /// wherever the quotes and backslashes fall relative to words.
        #[test]
        fn string_end_matches_reference(body in prop::collection::vec(prop::sample::select(&b"\"\\\\ax"[..]), 0..80)) {
            let mut input = vec![b'"'];
            input.extend(&body);
            let mut i = 1;
            let want = loop {
                match input.get(i) {
                    None => break Err(ScanError::new(ScanErrorKind::UnexpectedEnd, input.len())),
                    Some(b'"') => break Ok(i + 1),
                    Some(b'\\') => i += 2,
                    Some(_) => i += 1,
                }
            };
            prop_assert_eq!(string_end(&input, 0), want);
        }

        /// The same over long strings, sparse and dense in quotes and
        /// backslashes, so every gear and the switches between them run,
        /// with block edges anywhere.
        #[test]
        fn long_strings_match_reference(
            body in prop::collection::vec(
                prop_oneof![8 => Just(b'a'), 1 => Just(b'"'), 2 => Just(b'\\'), 1 => Just(b'\n')],
                0..700,
            ),
            sparse_prefix in 0..200usize,
        ) {
            let mut input = vec![b'"'];
            input.extend(std::iter::repeat_n(b'x', sparse_prefix));
            input.extend(&body);
            let mut i = 1;
            let want = loop {
                match input.get(i) {
                    None => break Err(ScanError::new(ScanErrorKind::UnexpectedEnd, input.len())),
                    Some(b'"') => break Ok(i + 1),
                    Some(b'\\') => i += 2,
                    Some(_) => i += 1,
                }
            };
            prop_assert_eq!(string_end(&input, 0), want);
        }

        #[test]
        fn strings_round_trip(s in any::<String>(), escape_mask in any::<u64>()) {
            let lit = encode_string(&s);
            prop_assert_eq!(&lit[..], &serde_json::to_vec(&s).unwrap()[..]);
            prop_assert_eq!(decode_string(&lit).unwrap(), s.as_str());
            // Any char may be written as \uXXXX (a surrogate pair when astral).
            let mut escaped = String::from("\"");
            for (i, c) in s.chars().enumerate() {
                if escape_mask >> (i % 64) & 1 == 1 || c < ' ' || c == '"' || c == '\\' {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        escaped += &format!("\\u{u:04X}");
                    }
                } else {
                    escaped.push(c);
                }
            }
            escaped.push('"');
            prop_assert_eq!(decode_string(escaped.as_bytes()).unwrap(), s.as_str());
            prop_assert_eq!(decode_owned(&lit).unwrap(), s.as_str());
            prop_assert_eq!(decode_owned(escaped.as_bytes()).unwrap(), s.as_str());
            // Cut or damaged: the owned decode fails (or not) as the borrowed one.
            let mut bad = lit.to_vec();
            if bad.len() > 2 {
                let at = 1 + escape_mask as usize % (bad.len() - 2);
                bad[at] = 0xff;
            }
            prop_assert_eq!(decode_owned(&bad).map(Cow::Owned), decode_string(&bad));
            prop_assert_eq!(decode_owned(&lit[..lit.len() - 1]).map(Cow::Owned), decode_string(&lit[..lit.len() - 1]));
        }
    }
}
