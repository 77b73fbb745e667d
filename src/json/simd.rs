//! The crate's only `unsafe`: sorting 64 bytes of a string into "quote" and
//! "backslash" bit masks with SSE2, for the scanner's dense-escape gear, and
//! 64 bytes of a nested value into a mask of its structural bytes (quotes
//! and brackets), so long runs without any (an embedding's numbers) are
//! passed over a block at a time; and 16 bytes of a string into the mask
//! of the bytes its check stops at (`json::valid`: quote, backslash,
//! control byte) and of those past ASCII, so a stream event's strings and
//! keys are read sixteen bytes a step, not eight.
//!
//! Why: in text where escaped quotes come every few bytes (code, JSON inside
//! JSON) the scanner classifies whole 64-byte blocks. Without `unsafe` the
//! masks are built from per-byte compares gathered by multiplies, about 35
//! cycles a block, which held escape-dense bodies at 4.6 GB/s; `pmovmskb`
//! does the gathering in one instruction per 16 bytes (BENCHMARKS.md,
//! section 1, has the figures before and after).
//!
//! Why it is sound: SSE2 is part of the x86_64 baseline, so the intrinsics
//! exist on every CPU this code is compiled for; the four loads read bytes
//! 0..16, 16..32, 32..48 and 48..64 of a `[u8; 64]`, never past it, and
//! `_mm_loadu_si128` has no alignment requirement. Nothing else is done
//! with pointers. Other architectures use the portable version, and tests
//! compare the two on every byte value.

#![allow(unsafe_code)]

/// Bit `k` of the first mask is set when `bytes[k]` is `"`, of the second
/// when it is `\`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn quote_backslash_masks(bytes: &[u8; 64]) -> (u64, u64) {
    use core::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    let mut quote = 0u64;
    let mut backslash = 0u64;
    // SAFETY: see the module docs: SSE2 is always present on x86_64, and each
    // load reads 16 bytes at offset 0, 16, 32 or 48 of the 64-byte array.
    unsafe {
        let quotes = _mm_set1_epi8(b'"' as i8);
        let backslashes = _mm_set1_epi8(b'\\' as i8);
        for k in 0..4 {
            let v = _mm_loadu_si128(bytes.as_ptr().add(16 * k).cast());
            quote |= u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, quotes)) as u16) << (16 * k);
            backslash |= u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, backslashes)) as u16) << (16 * k);
        }
    }
    (quote, backslash)
}

/// Bit `k` is set when `bytes[k]` is `"`, `{`, `}`, `[` or `]`: the bytes
/// that matter when a nested value is skipped (`b | 0x20` folds the square
/// brackets onto the curly ones).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn structural_mask(bytes: &[u8; 64]) -> u64 {
    use core::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8};
    let mut mask = 0u64;
    // SAFETY: as for `quote_backslash_masks`: SSE2 is always present on
    // x86_64, and each load reads 16 bytes at offset 0, 16, 32 or 48.
    unsafe {
        let fold = _mm_set1_epi8(0x20);
        let quote = _mm_set1_epi8(b'"' as i8);
        let open = _mm_set1_epi8(b'{' as i8);
        let close = _mm_set1_epi8(b'}' as i8);
        for k in 0..4 {
            let v = _mm_loadu_si128(bytes.as_ptr().add(16 * k).cast());
            let folded = _mm_or_si128(v, fold);
            let hits = _mm_or_si128(
                _mm_cmpeq_epi8(v, quote),
                _mm_or_si128(_mm_cmpeq_epi8(folded, open), _mm_cmpeq_epi8(folded, close)),
            );
            mask |= u64::from(_mm_movemask_epi8(hits) as u16) << (16 * k);
        }
    }
    mask
}

/// Bit `k` of the first mask is set when `bytes[k]` is `"`, `\\` or a
/// control byte (below 0x20), of the second when it is past ASCII: where a
/// string's scan stops, and whether its UTF-8 needs a look, sixteen bytes
/// at once (`min(b, 0x1f) == b` is `b <= 0x1f`, unsigned).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn string_masks(bytes: &[u8; 16]) -> (u32, u32) {
    use core::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: as for `quote_backslash_masks`: SSE2 is always present on
    // x86_64, and the load reads the 16 bytes of the array.
    unsafe {
        let v = _mm_loadu_si128(bytes.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        let stops = _mm_or_si128(_mm_or_si128(quote, backslash), control);
        (_mm_movemask_epi8(stops) as u32, _mm_movemask_epi8(v) as u32)
    }
}

/// [`string_masks`] without `unsafe`.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
pub(super) fn string_masks_portable(bytes: &[u8; 16]) -> (u32, u32) {
    let mut stops = 0;
    let mut past_ascii = 0;
    for (k, &c) in bytes.iter().enumerate() {
        stops |= u32::from(c == b'"' || c == b'\\' || c < 0x20) << k;
        past_ascii |= u32::from(c >= 0x80) << k;
    }
    (stops, past_ascii)
}

/// [`structural_mask`] without `unsafe`.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
pub(super) fn structural_mask_portable(bytes: &[u8; 64]) -> u64 {
    let mut flags = [0u8; 64];
    for (flag, b) in flags.iter_mut().zip(bytes) {
        *flag = u8::from(matches!(b, b'"' | b'{' | b'}' | b'[' | b']'));
    }
    bits(&flags)
}

/// The same without `unsafe`, for other architectures (and as the reference).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
pub(super) fn quote_backslash_masks_portable(bytes: &[u8; 64]) -> (u64, u64) {
    let mut quote = [0u8; 64];
    let mut backslash = [0u8; 64];
    for ((q, bs), b) in quote.iter_mut().zip(backslash.iter_mut()).zip(bytes) {
        *q = u8::from(*b == b'"');
        *bs = u8::from(*b == b'\\');
    }
    (bits(&quote), bits(&backslash))
}

/// Bytes that are 0 or 1 to bits: each 8-byte word's flags are gathered
/// into its top byte by one multiply (the partial products never carry).
#[inline(always)]
fn bits(flags: &[u8; 64]) -> u64 {
    let mut mask = 0;
    for (k, word) in flags.chunks_exact(8).enumerate() {
        let word = word.first_chunk::<8>().map_or(0, |w| u64::from_le_bytes(*w));
        mask |= (word.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * k);
    }
    mask
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) use quote_backslash_masks_portable as quote_backslash_masks;
#[cfg(not(target_arch = "x86_64"))]
pub(super) use string_masks_portable as string_masks;
#[cfg(not(target_arch = "x86_64"))]
pub(super) use structural_mask_portable as structural_mask;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masks_agree_with_the_portable_version_on_every_byte() {
        // Every byte value at every position, among quotes and backslashes.
        for value in 0..=255u8 {
            for at in 0..64 {
                let mut bytes = [b'a'; 64];
                bytes[at] = value;
                bytes[(at + 17) % 64] = b'"';
                bytes[(at + 40) % 64] = b'\\';
                assert_eq!(
                    quote_backslash_masks(&bytes),
                    quote_backslash_masks_portable(&bytes),
                    "{value:#x} at {at}"
                );
            }
        }
        for value in 0..=255u8 {
            for at in 0..64 {
                let mut bytes = [b'a'; 64];
                bytes[at] = value;
                bytes[(at + 23) % 64] = b'[';
                assert_eq!(
                    structural_mask(&bytes),
                    structural_mask_portable(&bytes),
                    "{value:#x} at {at}"
                );
            }
        }
        for value in 0..=255u8 {
            for at in 0..16 {
                let mut bytes = [b'a'; 16];
                bytes[at] = value;
                bytes[(at + 5) % 16] = b'"';
                bytes[(at + 11) % 16] = 0xc3;
                assert_eq!(
                    string_masks(&bytes),
                    string_masks_portable(&bytes),
                    "{value:#x} at {at}"
                );
            }
        }
        assert_eq!(string_masks(&[b'a'; 16]), (0, 0));
        assert_eq!(string_masks(&[0x1f; 16]), (0xffff, 0));
        assert_eq!(string_masks(&[0x20; 16]), (0, 0));
        assert_eq!(string_masks(&[0xff; 16]), (0, 0xffff));
        let mut all = [0u8; 64];
        for (k, b) in all.iter_mut().enumerate() {
            *b = b"\"{}[]"[k % 5];
        }
        assert_eq!(structural_mask(&all), u64::MAX);
        assert_eq!(structural_mask(&[b'0'; 64]), 0);
        let all_quotes = [b'"'; 64];
        assert_eq!(quote_backslash_masks(&all_quotes), (u64::MAX, 0));
        let all_backslashes = [b'\\'; 64];
        assert_eq!(quote_backslash_masks(&all_backslashes), (0, u64::MAX));
    }
}
