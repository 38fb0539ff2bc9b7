//! The texts of a vocabulary's special tokens (`<|im_end|>`, `<|endoftext|>`...), found in one
//! pass over a text (Aho-Corasick), for two jobs:
//!
//! * telling whether a message holds special-token text, so that it is kept apart from a chat
//!   template's markup ([`SpecialTokens::occurs_in`]);
//! * bounding llama.cpp's special-token parsing: it walks a linked list from its head for every
//!   occurrence it carves out, so a text of `k` occurrences costs `k²` (16,000 `<|im_end|>` took
//!   a second, 200,000 minutes). [`SpecialTokens::cut_points`] names where such a text can be
//!   cut into pieces that tokenize, one after another, into exactly the same tokens.
//!
//! The set is llama.cpp's own (`cache_special_tokens`): control, user-defined and unknown tokens.

use aho_corasick::AhoCorasick;

/// A cut is made after this many occurrences at most, where one is safe.
const OCCURRENCES_PER_PIECE: usize = 256;

/// One special token's text and how llama.cpp strips whitespace beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Special {
    /// The token's text.
    pub text: String,
    /// Whitespace before it is dropped when it is carved out.
    pub lstrip: bool,
    /// Whitespace after it is dropped when it is carved out.
    pub rstrip: bool,
}

/// The special tokens of one vocabulary.
#[derive(Debug)]
pub(super) struct SpecialTokens {
    specials: Vec<Special>,
    /// Every special text; `None` when the vocabulary has none.
    matcher: Option<AhoCorasick>,
}

impl SpecialTokens {
    /// The set of `specials` (empty texts are left out: they match nowhere in llama.cpp either).
    pub fn new(specials: Vec<Special>) -> SpecialTokens {
        let specials: Vec<Special> = specials
            .into_iter()
            .filter(|s| !s.text.is_empty())
            .collect();
        let matcher = (!specials.is_empty())
            .then(|| AhoCorasick::new(specials.iter().map(|s| s.text.as_bytes())).ok())
            .flatten();
        SpecialTokens { specials, matcher }
    }

    /// Whether `text` holds the text of a special token.
    pub fn occurs_in(&self, text: &str) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.is_match(text))
    }

    /// Byte offsets at which `text` may be cut, in order, each after at least
    /// [`OCCURRENCES_PER_PIECE`] occurrences since the last: the pieces, tokenized one after
    /// another with special-token parsing and without BOS, give exactly the tokens of the whole.
    ///
    /// llama.cpp carves the special tokens out longest first. A cut is safe right after an
    /// occurrence that is carved whatever else is found (every occurrence overlapping it is
    /// shorter and inside it), that strips no whitespace after it, and that is not followed at once
    /// by one that strips whitespace before it: the text after it is then tokenized on its own in
    /// the whole text too (with a space prefix where the model wants one, as at a text's start).
    /// Empty for a text of few occurrences, which is tokenized whole.
    pub fn cut_points(&self, text: &str) -> Vec<usize> {
        let Some(matcher) = &self.matcher else {
            return Vec::new();
        };
        let Ok(iter) = matcher.try_find_overlapping_iter(text.as_bytes()) else {
            return Vec::new();
        };
        // (start, end, pattern) of every occurrence, overlapping ones too: by start, the longest
        // first among those that start together.
        let mut found: Vec<(usize, usize, usize)> = iter
            .map(|m| (m.start(), m.end(), m.pattern().as_usize()))
            .collect();
        if found.len() <= OCCURRENCES_PER_PIECE {
            return Vec::new();
        }
        found.sort_unstable_by_key(|&(start, end, _)| (start, std::cmp::Reverse(end)));
        let mut cuts = Vec::new();
        let mut since = 0;
        // The furthest end of the occurrences before the one looked at.
        let mut reach = 0;
        for (i, &(start, end, pattern)) in found.iter().enumerate() {
            since += 1;
            let overlapped_before = reach > start;
            reach = reach.max(end);
            if since < OCCURRENCES_PER_PIECE || overlapped_before || end == text.len() {
                continue;
            }
            let after = &found[i + 1..];
            let inside = after.iter().take_while(|&&(s, _, _)| s < end);
            let contains_all = inside.clone().all(|&(_, e, _)| e <= end);
            let next = after.iter().find(|&&(s, _, _)| s >= end);
            let lstrip_next = next.is_some_and(|&(s, _, p)| s == end && self.specials[p].lstrip);
            if contains_all && !lstrip_next && !self.specials[pattern].rstrip {
                cuts.push(end);
                since = 0;
            }
        }
        cuts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special(text: &str) -> Special {
        Special {
            text: text.into(),
            lstrip: false,
            rstrip: false,
        }
    }

    #[test]
    fn a_text_with_few_occurrences_is_not_cut() {
        let set = SpecialTokens::new(vec![special("<|im_end|>")]);
        assert!(set.occurs_in("a<|im_end|>b"));
        assert!(!set.occurs_in("a<|im_end|b"));
        assert!(set.cut_points(&"<|im_end|>".repeat(200)).is_empty());
    }

    #[test]
    fn many_occurrences_are_cut_after_every_256th_where_safe() {
        let set = SpecialTokens::new(vec![special("<|im_end|>"), special("<|im")]);
        let text = "x<|im_end|>".repeat(600) + "tail";
        let cuts = set.cut_points(&text);
        // Each `<|im_end|>` holds an overlapping `<|im`: 1,200 occurrences, every cut after an
        // `<|im_end|>` (never inside one), at least 256 occurrences apart.
        assert!(!cuts.is_empty());
        for &cut in &cuts {
            assert!(text[..cut].ends_with("<|im_end|>"), "cut at {cut}");
        }
        let unit = "x<|im_end|>".len();
        assert!(cuts.windows(2).all(|w| (w[1] - w[0]) / unit >= 128));
    }

    #[test]
    fn no_cut_where_whitespace_is_stripped() {
        let mut stripping = special("<r>");
        stripping.rstrip = true;
        let set = SpecialTokens::new(vec![stripping]);
        assert!(set.cut_points(&"<r> ".repeat(1000)).is_empty());
        let mut left = special("<l>");
        left.lstrip = true;
        let set = SpecialTokens::new(vec![special("<a>"), left]);
        // Every `<a>` is followed by an `<l>` that would strip before it; the `<l>`s themselves
        // are safe cuts.
        let text = "<a><l>".repeat(600);
        for cut in set.cut_points(&text) {
            assert!(text[..cut].ends_with("<l>"));
        }
    }

    #[test]
    fn a_vocabulary_without_special_tokens_finds_nothing() {
        let set = SpecialTokens::new(vec![special("")]);
        assert!(!set.occurs_in("anything"));
        assert!(set.cut_points("anything").is_empty());
    }
}
