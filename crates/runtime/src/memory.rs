//! Static memory planning: every intermediate buffer of a model gets an offset in one arena.
//!
//! Invariant: two buffers whose lifetimes overlap (each is live from the step that first writes
//! it to the step that last reads it, both inclusive) never overlap in the arena, except where a
//! request explicitly reuses a dying buffer in place ([`BufferRequest::in_place_of`], which the
//! lowering only asks for when the kernel reads each element before writing the same element).
//! Every offset is a multiple of [`ALIGN`].
//!
//! The strategy is TFLite's "greedy by size": buffers are placed largest first, each at the
//! lowest offset that does not collide with an already placed buffer it is live with. It is
//! simple, deterministic and close to optimal on CNN-shaped lifetimes.

/// Alignment of every buffer in the arena, in bytes (a cache line; enough for any SIMD load).
pub const ALIGN: usize = 64;

/// One buffer the plan must place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferRequest {
    /// Size in bytes.
    pub size: usize,
    /// The step (kernel index) that writes it first.
    pub first_use: usize,
    /// The last step that reads it (at least `first_use`).
    pub last_use: usize,
    /// Share the storage of this earlier request, whose last use is this request's first use
    /// and whose size is at least this one's.
    pub in_place_of: Option<usize>,
}

/// Where each buffer lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Byte offset of each request in the arena.
    pub offsets: Vec<usize>,
    /// Size of the arena in bytes (the peak).
    pub arena_bytes: usize,
    /// What the buffers would take without any reuse: the sum of their aligned sizes.
    pub naive_bytes: usize,
}

/// Why a set of requests cannot be planned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("buffer {index}: last use {last} precedes first use {first}")]
    Lifetime {
        index: usize,
        first: usize,
        last: usize,
    },
    #[error("buffer {index} cannot reuse buffer {other} in place: {reason}")]
    InPlace {
        index: usize,
        other: usize,
        reason: String,
    },
    #[error("the arena would exceed the address space")]
    Overflow,
}

fn aligned(size: usize) -> Option<usize> {
    size.checked_add(ALIGN - 1).map(|s| s / ALIGN * ALIGN)
}

/// Places every request; see the module doc for the guarantees.
pub fn plan(requests: &[BufferRequest]) -> Result<MemoryPlan, PlanError> {
    // Union in-place chains into groups that share one slot, with the union of their lifetimes.
    let mut group_of: Vec<usize> = (0..requests.len()).collect();
    for (i, r) in requests.iter().enumerate() {
        if r.last_use < r.first_use {
            return Err(PlanError::Lifetime {
                index: i,
                first: r.first_use,
                last: r.last_use,
            });
        }
        if let Some(o) = r.in_place_of {
            let bad = |reason: &str| PlanError::InPlace {
                index: i,
                other: o,
                reason: reason.into(),
            };
            let other = requests
                .get(o)
                .filter(|_| o < i)
                .ok_or_else(|| bad("no such earlier buffer"))?;
            if other.last_use != r.first_use {
                return Err(bad("the reused buffer must die where this one is born"));
            }
            if other.size < r.size {
                return Err(bad("the reused buffer is smaller"));
            }
            if requests[..i]
                .iter()
                .enumerate()
                .any(|(j, q)| j != o && q.in_place_of == Some(o))
            {
                return Err(bad("the buffer is already reused in place"));
            }
            group_of[i] = group_of[o];
        }
    }
    struct Slot {
        size: usize,
        first: usize,
        last: usize,
    }
    let mut slots: Vec<Option<Slot>> = (0..requests.len()).map(|_| None).collect();
    let mut naive_bytes = 0usize;
    for (i, r) in requests.iter().enumerate() {
        let size = aligned(r.size).ok_or(PlanError::Overflow)?;
        naive_bytes = naive_bytes.checked_add(size).ok_or(PlanError::Overflow)?;
        let slot = slots[group_of[i]].get_or_insert(Slot {
            size,
            first: r.first_use,
            last: r.last_use,
        });
        slot.size = slot.size.max(size);
        slot.first = slot.first.min(r.first_use);
        slot.last = slot.last.max(r.last_use);
    }
    let mut order: Vec<usize> = (0..slots.len()).filter(|&s| slots[s].is_some()).collect();
    let slot = |s: usize| slots[s].as_ref().expect("only filled slots are ordered");
    order.sort_by_key(|&s| (std::cmp::Reverse(slot(s).size), slot(s).first, s));
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new(); // offset, size, first, last
    let mut slot_offset = vec![0usize; slots.len()];
    let mut arena_bytes = 0usize;
    for s in order {
        let Slot { size, first, last } = *slot(s);
        let mut live: Vec<(usize, usize)> = placed
            .iter()
            .filter(|p| p.2 <= last && first <= p.3)
            .map(|p| (p.0, p.1))
            .collect();
        live.sort_unstable();
        let mut offset = 0usize;
        for (o, sz) in live {
            if offset.checked_add(size).ok_or(PlanError::Overflow)? <= o {
                break;
            }
            offset = offset.max(o + sz);
        }
        let end = offset.checked_add(size).ok_or(PlanError::Overflow)?;
        arena_bytes = arena_bytes.max(end);
        placed.push((offset, size, first, last));
        slot_offset[s] = offset;
    }
    Ok(MemoryPlan {
        offsets: (0..requests.len())
            .map(|i| slot_offset[group_of[i]])
            .collect(),
        arena_bytes,
        naive_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(size: usize, first: usize, last: usize) -> BufferRequest {
        BufferRequest {
            size,
            first_use: first,
            last_use: last,
            in_place_of: None,
        }
    }

    #[test]
    fn a_chain_reuses_two_slots() {
        // a -> b -> c -> d: each buffer dies when the next is written, so two slots suffice.
        let reqs: Vec<_> = (0..4).map(|i| req(1000, i, i + 1)).collect();
        let p = plan(&reqs).unwrap();
        assert_eq!(p.arena_bytes, 2 * 1024);
        assert_eq!(p.naive_bytes, 4 * 1024);
        assert_ne!(p.offsets[0], p.offsets[1]);
        assert_eq!(p.offsets[0], p.offsets[2]);
    }

    #[test]
    fn in_place_shares_the_slot() {
        let reqs = vec![
            req(256, 0, 1),
            BufferRequest {
                in_place_of: Some(0),
                ..req(256, 1, 2)
            },
        ];
        let p = plan(&reqs).unwrap();
        assert_eq!(p.offsets[0], p.offsets[1]);
        assert_eq!(p.arena_bytes, 256);
    }

    #[test]
    fn bad_requests_are_errors() {
        assert!(matches!(
            plan(&[req(1, 3, 2)]),
            Err(PlanError::Lifetime { .. })
        ));
        let reqs = vec![
            req(64, 0, 2),
            BufferRequest {
                in_place_of: Some(0),
                ..req(64, 1, 2)
            },
        ];
        assert!(matches!(plan(&reqs), Err(PlanError::InPlace { .. })));
        assert_eq!(plan(&[req(usize::MAX, 0, 0)]), Err(PlanError::Overflow));
    }

    proptest! {
        /// Buffers that are live at the same time never share bytes, offsets are aligned, and the
        /// arena never exceeds the naive sum.
        #[test]
        fn live_buffers_never_overlap(
            raw in proptest::collection::vec((1usize..5000, 0usize..20, 0usize..6), 1..40)
        ) {
            let reqs: Vec<_> = raw.iter().map(|&(s, f, l)| req(s, f, f + l)).collect();
            let p = plan(&reqs).unwrap();
            prop_assert!(p.arena_bytes <= p.naive_bytes);
            for (i, a) in reqs.iter().enumerate() {
                prop_assert_eq!(p.offsets[i] % ALIGN, 0);
                prop_assert!(p.offsets[i] + a.size <= p.arena_bytes);
                for (j, b) in reqs.iter().enumerate().skip(i + 1) {
                    let live_together = a.first_use <= b.last_use && b.first_use <= a.last_use;
                    let disjoint = p.offsets[i] + a.size <= p.offsets[j]
                        || p.offsets[j] + b.size <= p.offsets[i];
                    prop_assert!(!live_together || disjoint, "{i} and {j} overlap");
                }
            }
        }
    }
}
