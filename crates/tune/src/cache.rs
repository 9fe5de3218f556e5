//! Whether a kernel's constant inputs (weights, packed panels, tables) are in the cache when
//! a candidate is timed.
//!
//! Inside a compiled model a kernel reads its weights once per inference, and everything the
//! rest of the model reads passes through the caches in between; when the model's constants
//! are large against the last-level cache, each kernel finds its weights in memory. Timed
//! alone, call after call, the same kernel finds them in cache, and a schedule that wins with
//! warm weights may lose with cold ones (mobilenet_v2's classifier: 0.47 ms alone, 2.0 ms in
//! the model). So [`ConstantCache::Auto`] measures the kernels of such a model cold: the
//! calls of a repeat read, in turn, enough copies of the constant inputs to exceed twice the
//! last-level cache ([`copies_for_cold`]); activations and outputs stay one buffer each, warm
//! as a producer leaves them.
//!
//! Invariant: every copy holds the same bytes, so a candidate computes the same results
//! whichever copy a call reads; only where the bytes are in the memory hierarchy changes.

use serde::{Deserialize, Serialize};

/// How constant inputs are cached when candidates are timed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConstantCache {
    /// Cold when the model's constants exceed [`COLD_SHARE_OF_CACHE`] of the last-level
    /// cache of the machine that measures, warm otherwise.
    #[default]
    Auto,
    /// Every call reads the same constants (cached after the first).
    Warm,
    /// The calls rotate over copies of the constants that together exceed the cache.
    Cold,
}

/// A model whose constants take more than this share of the last-level cache is measured
/// cold: the cache also holds activations, and other work shares it.
pub const COLD_SHARE_OF_CACHE: f64 = 0.25;

/// The last-level cache assumed where the machine does not report one.
pub const ASSUMED_CACHE_BYTES: u64 = 32 << 20;

/// Copies are bounded, so that tiny constants (a bias) do not become millions of buffers.
pub const MAX_COPIES: usize = 4096;

impl ConstantCache {
    /// Whether candidates of a model with `model_constant_bytes` of constants are timed cold
    /// on a machine with `cache_bytes` of last-level cache (`None`: not reported).
    pub fn is_cold(self, model_constant_bytes: u64, cache_bytes: Option<u64>) -> bool {
        match self {
            ConstantCache::Warm => false,
            ConstantCache::Cold => true,
            ConstantCache::Auto => match cache_bytes {
                Some(cache) => model_constant_bytes as f64 > cache as f64 * COLD_SHARE_OF_CACHE,
                None => false,
            },
        }
    }
}

/// The bytes of every constant of `graph`.
pub fn model_constant_bytes(graph: &kiln_ir::Graph) -> u64 {
    graph
        .consts()
        .iter()
        .map(|c| (c.ty().num_elements() * c.dtype().size_bytes()) as u64)
        .sum()
}

/// How many copies of a kernel's `constant_bytes` a cold measurement rotates over: together
/// at least twice the cache, at least two, at most [`MAX_COPIES`].
pub fn copies_for_cold(constant_bytes: u64, cache_bytes: Option<u64>) -> usize {
    if constant_bytes == 0 {
        return 1;
    }
    let cache = cache_bytes.unwrap_or(ASSUMED_CACHE_BYTES);
    let copies = (2 * cache).div_ceil(constant_bytes);
    (copies as usize).clamp(2, MAX_COPIES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_cold_only_for_constants_large_against_the_cache() {
        let mb = 1u64 << 20;
        let cache = Some(32 * mb);
        assert!(!ConstantCache::Auto.is_cold(mb, cache));
        assert!(!ConstantCache::Auto.is_cold(8 * mb, cache));
        assert!(ConstantCache::Auto.is_cold(14 * mb, cache));
        assert!(!ConstantCache::Auto.is_cold(100 * mb, None));
        assert!(ConstantCache::Cold.is_cold(0, cache));
        assert!(!ConstantCache::Warm.is_cold(100 * mb, cache));
    }

    #[test]
    fn cold_copies_exceed_twice_the_cache_within_bounds() {
        let mb = 1u64 << 20;
        assert_eq!(copies_for_cold(0, Some(32 * mb)), 1);
        assert_eq!(copies_for_cold(5 * mb, Some(32 * mb)), 13);
        assert_eq!(copies_for_cold(100 * mb, Some(32 * mb)), 2);
        assert_eq!(copies_for_cold(64, Some(32 * mb)), MAX_COPIES);
        assert_eq!(copies_for_cold(mb, None), 64);
    }
}
