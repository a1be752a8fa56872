//! Byte tests sixteen bytes at a time (one SSE2 vector through the `wide` crate; plain code where
//! the target has no vector unit), for the scanners that look for a few kinds of byte in every
//! record: JSON's string ends, the redact detectors' first bytes.
//!
//! Guarantees: a test answers a mask with bit `k` set exactly when byte `at + k` passes it (every
//! byte is tested exactly, not only the first); bytes past the end of the input read as zero,
//! which no test flags except [`below`] (zero is below every bound), so a caller clamps to the end.

use wide::u8x16;

/// Bytes per block.
pub const BLOCK: usize = 16;

/// The sixteen bytes at `at` (zero where they run past the end). Inside the slice it is one
/// unaligned load (a zeroed array copied into first went through the stack on every call).
#[inline(always)]
pub fn block_at(bytes: &[u8], at: usize) -> u8x16 {
    if let Some(chunk) = bytes.get(at..at.saturating_add(BLOCK)).and_then(|c| <[u8; BLOCK]>::try_from(c).ok()) {
        return u8x16::new(chunk);
    }
    let mut block = [0u8; BLOCK];
    let tail = bytes.get(at..).unwrap_or_default();
    let n = tail.len().min(BLOCK);
    block[..n].copy_from_slice(&tail[..n]);
    u8x16::new(block)
}

/// The bytes of `block` equal to `byte`.
#[inline(always)]
pub fn equal(block: u8x16, byte: u8) -> u32 {
    block.simd_eq(u8x16::splat(byte)).to_bitmask()
}

/// The bytes of `block` from `low` to `high` inclusive.
#[inline(always)]
pub fn within(block: u8x16, low: u8, high: u8) -> u32 {
    if high.wrapping_sub(low) == u8::MAX {
        return (1 << BLOCK) - 1;
    }
    // Shifted down by `low`, the range starts at zero and everything below it wraps above it.
    (block - u8x16::splat(low)).simd_lt(u8x16::splat(high.wrapping_sub(low).wrapping_add(1))).to_bitmask()
}

/// The bytes of `block` below `bound`.
#[inline(always)]
pub fn below(block: u8x16, bound: u8) -> u32 {
    block.simd_lt(u8x16::splat(bound)).to_bitmask()
}

/// Offsets of the set bits of `mask`, lowest first.
pub fn offsets(mut mask: u32) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let offset = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            offset
        })
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn every_byte_is_tested_exactly(bytes in proptest::collection::vec(any::<u8>(), 0..40), probe in any::<u8>(), low in any::<u8>(), span in any::<u8>()) {
            let high = low.saturating_add(span);
            for at in 0..bytes.len() + 1 {
                let block = block_at(&bytes, at);
                let byte = |k: usize| bytes.get(at + k).copied().unwrap_or(0);
                let expect = |test: &dyn Fn(u8) -> bool| -> Vec<usize> { (0..BLOCK).filter(|&k| test(byte(k))).collect() };
                prop_assert_eq!(offsets(equal(block, probe)).collect::<Vec<_>>(), expect(&|b| b == probe));
                prop_assert_eq!(offsets(within(block, low, high)).collect::<Vec<_>>(), expect(&|b| (low..=high).contains(&b)));
                prop_assert_eq!(offsets(below(block, probe)).collect::<Vec<_>>(), expect(&|b| b < probe));
            }
        }
    }
}
