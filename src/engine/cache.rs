//! The prefix cache: which cached context a new request continues, and where its tokens go.
//!
//! Each slot is a llama.cpp sequence that keeps the KV cells of one recent context, and the logits
//! row after its last token. A request whose context extends a slot's (an editor's file as the user
//! types) decodes only the new tokens; one that shares a prefix with a slot but diverges (another
//! file, an edit in the middle) gets the shared part copied into the least recently used slot,
//! which costs no memory in the unified KV cache, the cells being shared. Pure bookkeeping: the
//! scorer carries out the [`SlotPlan`] on llama.cpp.

use super::prepare::common_prefix;
use super::Token;

/// A context that diverges from a slot at most this many tokens before the slot's end continues it
/// in place instead of forking it.
const REWRITTEN_TAIL: usize = 16;

/// A cached context.
#[derive(Debug, Clone, Default)]
struct Slot {
    tokens: Vec<Token>,
    /// Logits after the last token, when kept: a request with exactly this context decodes nothing.
    last_row: Option<Vec<f32>>,
    last_used: u64,
}

/// How to get a context's KV into a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPlan {
    /// The slot (sequence id) that will hold the context.
    pub slot: usize,
    /// Copy positions `0..reused` from this slot first (`None`: the target already holds them).
    pub copy_from: Option<usize>,
    /// Leading context tokens already in the KV cache: decoding starts here.
    pub reused: usize,
    /// The context is cached whole with its last row: nothing to decode.
    pub full_hit: bool,
}

/// Slots of cached contexts, least recently used evicted first.
#[derive(Debug, Clone)]
pub struct PrefixCache {
    slots: Vec<Slot>,
    clock: u64,
    /// A context half decoded by a job that lets other clients' jobs run between its slices: no
    /// plan decodes into it and nothing evicts it until [`PrefixCache::unpin`].
    pinned: Option<usize>,
}

impl PrefixCache {
    /// A cache of `slots` contexts (at least one: the current request's context lives in a slot).
    pub fn new(slots: usize) -> Self {
        PrefixCache {
            slots: vec![Slot::default(); slots.max(1)],
            clock: 0,
            pinned: None,
        }
    }

    /// Number of slots; they are sequences `0..slot_count`.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Keeps `slot` as it is until [`PrefixCache::unpin`]: plans may copy its prefix but never
    /// decode into it, and it is never evicted or cleared.
    pub fn pin(&mut self, slot: usize) {
        self.pinned = Some(slot);
    }

    /// Lets the pinned slot be planned into and evicted again.
    pub fn unpin(&mut self) {
        self.pinned = None;
    }

    /// The pinned slot, if any.
    pub fn pinned(&self) -> Option<usize> {
        self.pinned
    }

    /// Where `context` goes. The plan always leaves at least the last context token to decode,
    /// unless the whole context and its last row are cached. A plan that would decode into the
    /// pinned slot forks its prefix into another slot instead.
    pub fn plan(&self, context: &[Token]) -> SlotPlan {
        let plan = self.plan_unpinned(context);
        if plan.full_hit || Some(plan.slot) != self.pinned {
            return plan;
        }
        let source = plan.copy_from.unwrap_or(plan.slot);
        SlotPlan {
            slot: self.least_recently_used(),
            copy_from: (plan.reused > 0).then_some(source),
            ..plan
        }
    }

    fn plan_unpinned(&self, context: &[Token]) -> SlotPlan {
        let (best, shared) = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, slot)| (i, common_prefix(&[&slot.tokens, context])))
            .max_by_key(|&(i, shared)| (shared, self.slots[i].last_used))
            .unwrap_or((0, 0));
        let slot = &self.slots[best];
        if shared == context.len() && slot.tokens.len() == shared && slot.last_row.is_some() {
            return SlotPlan {
                slot: best,
                copy_from: None,
                reused: shared,
                full_hit: true,
            };
        }
        let reused = shared.min(context.len().saturating_sub(1));
        if slot.tokens.len() == reused || reused == 0 {
            // The context extends this slot (or shares nothing): decode into it in place... unless it
            // shares nothing, in which case the least recently used slot is the one to overwrite.
            let target = if reused == 0 {
                self.least_recently_used()
            } else {
                best
            };
            return SlotPlan {
                slot: target,
                copy_from: None,
                reused,
                full_hit: false,
            };
        }
        if slot.tokens.len() - reused <= REWRITTEN_TAIL {
            // Diverges only in the slot's last few tokens (text deleted at the end, or the
            // tokenizer merging the last token with what was typed after it): continue it in
            // place, nobody is left to resume those tokens.
            return SlotPlan {
                slot: best,
                copy_from: None,
                reused,
                full_hit: false,
            };
        }
        // Diverges from the slot: keep the slot for whoever continues it, fork the shared part.
        let target = self.least_recently_used();
        SlotPlan {
            slot: target,
            copy_from: (target != best).then_some(best),
            reused,
            full_hit: false,
        }
    }

    /// The logits row after the context of a full hit.
    pub fn last_row(&self, slot: usize) -> Option<&[f32]> {
        self.slots.get(slot)?.last_row.as_deref()
    }

    /// Records that `slot` now holds `context`, with the row after its last token.
    pub fn store(&mut self, slot: usize, context: &[Token], last_row: Option<Vec<f32>>) {
        self.clock += 1;
        if let Some(s) = self.slots.get_mut(slot) {
            s.tokens.clear();
            s.tokens.extend_from_slice(context);
            s.last_row = last_row;
            s.last_used = self.clock;
        }
    }

    /// Marks `slot` used now (a full hit).
    pub fn touch(&mut self, slot: usize) {
        self.clock += 1;
        if let Some(s) = self.slots.get_mut(slot) {
            s.last_used = self.clock;
        }
    }

    /// Tokens cached in `slot`.
    pub fn tokens_in(&self, slot: usize) -> usize {
        self.slots.get(slot).map_or(0, |s| s.tokens.len())
    }

    /// Tokens cached in slots other than `keep` (an upper bound on their KV cells: shared prefixes
    /// are counted once per slot).
    pub fn tokens_besides(&self, keep: usize) -> usize {
        self.slots
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != keep)
            .map(|(_, s)| s.tokens.len())
            .sum()
    }

    /// The least recently used non-empty slot other than `keep` (and the pinned one), to evict
    /// for room.
    pub fn eviction_candidate(&self, keep: usize) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|&(i, s)| i != keep && Some(i) != self.pinned && !s.tokens.is_empty())
            .min_by_key(|&(_, s)| s.last_used)
            .map(|(i, _)| i)
    }

    /// Forgets one slot.
    pub fn evict(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Slot::default();
        }
    }

    /// Forgets everything but the pinned slot.
    pub fn clear(&mut self) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            if Some(i) != self.pinned {
                *s = Slot::default();
            }
        }
    }

    /// The slot a new context goes to: an empty one, else the least recently used; never the
    /// pinned one while there is another.
    fn least_recently_used(&self) -> usize {
        self.slots
            .iter()
            .enumerate()
            .min_by_key(|&(i, s)| (Some(i) == self.pinned, !s.tokens.is_empty(), s.last_used))
            .map_or(0, |(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(ids: &[i32]) -> Vec<Token> {
        ids.iter().map(|&i| Token(i)).collect()
    }

    #[test]
    fn a_cold_cache_decodes_everything() {
        let cache = PrefixCache::new(2);
        let plan = cache.plan(&tokens(&[1, 2, 3]));
        assert_eq!(
            (plan.reused, plan.full_hit, plan.copy_from),
            (0, false, None)
        );
    }

    #[test]
    fn an_extended_context_decodes_only_the_new_tokens_in_place() {
        let mut cache = PrefixCache::new(2);
        cache.store(1, &tokens(&[1, 2, 3]), Some(vec![0.0]));
        let plan = cache.plan(&tokens(&[1, 2, 3, 4, 5]));
        assert_eq!(
            plan,
            SlotPlan {
                slot: 1,
                copy_from: None,
                reused: 3,
                full_hit: false
            }
        );
    }

    #[test]
    fn the_same_context_is_a_full_hit_only_with_its_row() {
        let mut cache = PrefixCache::new(2);
        cache.store(0, &tokens(&[1, 2, 3]), Some(vec![0.5]));
        let plan = cache.plan(&tokens(&[1, 2, 3]));
        assert!(plan.full_hit);
        assert_eq!(cache.last_row(plan.slot), Some(&[0.5][..]));

        let mut rowless = PrefixCache::new(2);
        rowless.store(0, &tokens(&[1, 2, 3]), None);
        let plan = rowless.plan(&tokens(&[1, 2, 3]));
        assert!(!plan.full_hit);
        assert_eq!(
            plan.reused, 2,
            "the last token is decoded again for its row"
        );
    }

    #[test]
    fn a_diverging_context_forks_into_the_least_recently_used_slot() {
        let mut cache = PrefixCache::new(3);
        let long: Vec<i32> = (1..=40).collect();
        cache.store(0, &tokens(&long), Some(vec![]));
        cache.store(1, &tokens(&[9, 9]), Some(vec![]));
        let plan = cache.plan(&tokens(&[1, 2, 7]));
        assert_eq!(
            plan,
            SlotPlan {
                slot: 2,
                copy_from: Some(0),
                reused: 2,
                full_hit: false
            }
        );
    }

    #[test]
    fn a_rewritten_tail_continues_the_slot_in_place() {
        let mut cache = PrefixCache::new(3);
        let long: Vec<i32> = (1..=40).collect();
        cache.store(0, &tokens(&long), Some(vec![]));
        // The last token retokenized with what was typed after it.
        let mut typed: Vec<i32> = (1..=39).collect();
        typed.extend([77, 78]);
        let plan = cache.plan(&tokens(&typed));
        assert_eq!((plan.slot, plan.copy_from, plan.reused), (0, None, 39));
        // Text deleted at the end.
        let plan = cache.plan(&tokens(&long[..30]));
        assert_eq!((plan.slot, plan.copy_from, plan.reused), (0, None, 29));
    }

    #[test]
    fn eviction_goes_least_recently_used_first_and_spares_the_kept_slot() {
        let mut cache = PrefixCache::new(3);
        cache.store(0, &tokens(&[1]), None);
        cache.store(1, &tokens(&[2, 2]), None);
        cache.store(2, &tokens(&[3, 3, 3]), None);
        cache.touch(0);
        assert_eq!(cache.tokens_besides(2), 3);
        assert_eq!(cache.eviction_candidate(2), Some(1));
        cache.evict(1);
        assert_eq!(cache.eviction_candidate(2), Some(0));
        assert_eq!(cache.eviction_candidate(0), Some(2));
    }

    #[test]
    fn a_pinned_slot_is_never_decoded_into_evicted_or_cleared() {
        let mut cache = PrefixCache::new(3);
        cache.store(0, &tokens(&[1, 2, 3]), None);
        cache.store(1, &tokens(&[8]), None);
        cache.pin(0);
        // A context that extends the pinned one forks its prefix instead of continuing it.
        let plan = cache.plan(&tokens(&[1, 2, 3, 4]));
        assert_eq!((plan.slot, plan.copy_from, plan.reused), (2, Some(0), 3));
        // One that shares nothing goes elsewhere too, even when the pinned slot is the oldest.
        let plan = cache.plan(&tokens(&[5, 6]));
        assert_ne!(plan.slot, 0);
        assert_eq!((plan.copy_from, plan.reused), (None, 0));
        assert_eq!(cache.eviction_candidate(2), Some(1));
        cache.evict(1);
        assert_eq!(cache.eviction_candidate(2), None);
        cache.clear();
        assert_eq!(cache.tokens_besides(2), 3, "the pinned context stays");
        cache.unpin();
        assert_eq!(cache.eviction_candidate(2), Some(0));
    }

    #[test]
    fn a_slot_stored_without_a_row_is_no_full_hit_whatever_it_held_before() {
        let mut cache = PrefixCache::new(2);
        cache.store(0, &tokens(&[1, 2]), Some(vec![0.5]));
        cache.store(0, &tokens(&[1, 2]), None);
        assert!(!cache.plan(&tokens(&[1, 2])).full_hit);
    }
}
