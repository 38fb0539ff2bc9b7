//! The candidate prefix tree: the candidates of one group merged into a token trie, so a beginning
//! several candidates share is decoded once. Pure bookkeeping, tested without llama.cpp.
//!
//! Each node is one token at one position after the context. It is decoded once, as a token that
//! belongs to the KV sequence of every leaf under it, so its KV cell is visible to every candidate
//! through it; the logits row after it serves all of those candidates, since by causality the row
//! depends only on the tokens before it. Nodes are numbered depth-first with children in the order
//! their candidates first appear, so the leaves under a node are consecutive (its sequences are one
//! range) and candidates that share nothing are laid out exactly as without the tree: each one's
//! tokens in turn, one sequence each.

use std::ops::Range;

use super::super::Token;

/// One token of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The token.
    pub token: Token,
    /// Candidate tokens before it (0: the first token after the context).
    pub depth: usize,
    /// The leaves under it (a leaf: itself), numbered depth-first: the sequences its KV cell
    /// belongs to, counted from the group's first candidate sequence.
    pub leaves: Range<usize>,
    /// Whether a candidate reads the logits row after it (not after a terminal token).
    pub wants_row: bool,
}

/// A candidate's reading of one row: the row after a node gives `candidate` its value `V` there
/// and the logit of its `next` token (none after its last token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    /// Index of the candidate in the group.
    pub candidate: usize,
    /// The candidate's token after the node, if any.
    pub next: Option<Token>,
}

/// The candidates of one group as a token trie, nodes in decode order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    nodes: Vec<Node>,
    /// `reads[starts[n]..starts[n + 1]]` read the row after node `n`, by candidate.
    reads: Vec<Read>,
    starts: Vec<usize>,
    leaves: usize,
    /// Per candidate, the node of its last token (`usize::MAX` for a candidate without tokens).
    ends: Vec<usize>,
}

impl Tree {
    /// The tree of `candidates` (token sequences, each with whether its last token is terminal).
    /// With `merge` off no node is shared: every candidate is a chain of its own, in order, as
    /// scoring without the tree lays them out.
    pub fn new<'a>(candidates: impl IntoIterator<Item = (&'a [Token], bool)>, merge: bool) -> Tree {
        struct Building {
            token: Token,
            depth: usize,
            children: Vec<usize>,
        }
        let mut arena: Vec<Building> = Vec::new();
        let mut roots: Vec<usize> = Vec::new();
        let mut paths: Vec<(Vec<usize>, &[Token], bool)> = Vec::new();
        for (tokens, terminal) in candidates {
            let mut path: Vec<usize> = Vec::with_capacity(tokens.len());
            for (depth, &token) in tokens.iter().enumerate() {
                let siblings = match path.last() {
                    Some(&parent) => &arena[parent].children,
                    None => &roots,
                };
                let found = siblings
                    .iter()
                    .copied()
                    .find(|&n| merge && arena[n].token == token);
                let node = found.unwrap_or_else(|| {
                    arena.push(Building {
                        token,
                        depth,
                        children: Vec::new(),
                    });
                    let node = arena.len() - 1;
                    match path.last() {
                        Some(&parent) => arena[parent].children.push(node),
                        None => roots.push(node),
                    }
                    node
                });
                path.push(node);
            }
            paths.push((path, tokens, terminal));
        }

        // Depth-first, children in order of appearance: decode order and leaf ranges.
        let mut order = vec![0; arena.len()];
        let mut nodes: Vec<Node> = Vec::with_capacity(arena.len());
        let mut leaves = 0;
        // (arena node, whether its subtree is done)
        let mut stack: Vec<(usize, bool)> = roots.iter().rev().map(|&n| (n, false)).collect();
        while let Some((n, done)) = stack.pop() {
            if done {
                nodes[order[n]].leaves.end = leaves;
                continue;
            }
            order[n] = nodes.len();
            nodes.push(Node {
                token: arena[n].token,
                depth: arena[n].depth,
                leaves: leaves..leaves,
                wants_row: false,
            });
            if arena[n].children.is_empty() {
                leaves += 1;
            }
            stack.push((n, true));
            stack.extend(arena[n].children.iter().rev().map(|&c| (c, false)));
        }

        let mut by_node: Vec<Vec<Read>> = vec![Vec::new(); nodes.len()];
        for (candidate, (path, tokens, terminal)) in paths.iter().enumerate() {
            let last = tokens.len().saturating_sub(1);
            for (t, &n) in path.iter().enumerate() {
                // No row after a terminal token: its value is 0 by definition.
                if *terminal && t == last {
                    continue;
                }
                let n = order[n];
                nodes[n].wants_row = true;
                by_node[n].push(Read {
                    candidate,
                    next: tokens.get(t + 1).copied(),
                });
            }
        }
        let mut starts = Vec::with_capacity(nodes.len() + 1);
        let mut reads = Vec::new();
        for node_reads in by_node {
            starts.push(reads.len());
            reads.extend(node_reads);
        }
        starts.push(reads.len());
        let ends = paths
            .iter()
            .map(|(path, _, _)| path.last().map_or(usize::MAX, |&n| order[n]))
            .collect();
        Tree {
            nodes,
            reads,
            starts,
            leaves,
            ends,
        }
    }

    /// The nodes in decode order: every node after its parent.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Leaves: the candidate sequences the tree needs.
    pub fn leaves(&self) -> usize {
        self.leaves
    }

    /// Who reads the row after node `n`.
    pub fn reads(&self, n: usize) -> &[Read] {
        &self.reads[self.starts[n]..self.starts[n + 1]]
    }
}

/// The candidates of a request in the order their prefix tree visits them (depth-first, children
/// in order of appearance: candidates that share a beginning become neighbours; without sharing,
/// the request's order), with what each adds to a group that already holds its predecessor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeOrder {
    /// Candidate indices in tree order.
    pub order: Vec<usize>,
    /// Per position in `order`: the candidate's tokens.
    pub lens: Vec<usize>,
    /// Per position in `order`: tokens it shares with its predecessor (0 for the first).
    pub shared: Vec<usize>,
}

impl TreeOrder {
    /// The order of `candidates` (token sequences); with `merge` off, the given order with
    /// nothing shared.
    pub fn new<'a>(candidates: impl IntoIterator<Item = &'a [Token]>, merge: bool) -> TreeOrder {
        let candidates: Vec<&[Token]> = candidates.into_iter().collect();
        let order: Vec<usize> = if merge {
            // Sorting by the node each candidate ends at (stable: copies keep their order) visits
            // the trie depth-first, children in order of appearance: a node's subtree follows it,
            // and a candidate that ends at a node comes before those that go on.
            let tree = Tree::new(candidates.iter().map(|&c| (c, false)), true);
            let mut order: Vec<usize> = (0..candidates.len()).collect();
            order.sort_by_key(|&c| tree.ends[c]);
            order
        } else {
            (0..candidates.len()).collect()
        };
        let lens = order.iter().map(|&c| candidates[c].len()).collect();
        let shared = order
            .iter()
            .enumerate()
            .map(|(k, &c)| match k.checked_sub(1) {
                Some(p) if merge => common_prefix(candidates[order[p]], candidates[c]),
                _ => 0,
            })
            .collect();
        TreeOrder {
            order,
            lens,
            shared,
        }
    }

    /// The candidates from position `from` on, as an order of their own.
    pub fn tail(&self, from: usize) -> TreeOrder {
        let from = from.min(self.order.len());
        let mut shared = self.shared[from..].to_vec();
        if let Some(first) = shared.first_mut() {
            *first = 0;
        }
        TreeOrder {
            order: self.order[from..].to_vec(),
            lens: self.lens[from..].to_vec(),
            shared,
        }
    }

    /// Candidates.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are no candidates.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// KV cells and sequences the candidates at positions `range` of the order take in one group:
    /// its tree's nodes and leaves.
    pub fn cost(&self, range: Range<usize>) -> (usize, usize) {
        let (mut cells, mut sequences) = (0, 0);
        for k in range.clone() {
            let (c, s) = self.added(k, k == range.start);
            cells += c;
            sequences += s;
        }
        (cells, sequences)
    }

    /// Cells and sequences position `k` adds to a group: all its tokens and a sequence when it
    /// starts the group; otherwise the tokens after those it shares with its predecessor, and a
    /// sequence unless it only repeats its predecessor or continues it (taking over its leaf).
    pub fn added(&self, k: usize, first: bool) -> (usize, usize) {
        if first {
            return (self.lens[k], 1);
        }
        let shared = self.shared[k];
        let continues = shared == self.lens[k - 1];
        let repeats = shared == self.lens[k];
        (self.lens[k] - shared, usize::from(!continues && !repeats))
    }
}

fn common_prefix(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[i32]) -> Vec<Token> {
        ids.iter().map(|&i| Token(i)).collect()
    }

    fn tree(candidates: &[Vec<Token>], terminal: bool, merge: bool) -> Tree {
        Tree::new(candidates.iter().map(|c| (c.as_slice(), terminal)), merge)
    }

    /// (token, depth, leaves, wants_row) of every node, in decode order.
    fn shape(tree: &Tree) -> Vec<(i32, usize, Range<usize>, bool)> {
        let nodes = tree.nodes().iter();
        nodes
            .map(|n| (n.token.id(), n.depth, n.leaves.clone(), n.wants_row))
            .collect()
    }

    #[test]
    fn a_shared_beginning_is_one_node_whose_row_serves_every_candidate_through_it() {
        let candidates = [ids(&[1, 2, 3]), ids(&[9]), ids(&[1, 2, 4])];
        let t = tree(&candidates, false, true);
        assert_eq!(
            shape(&t),
            vec![
                (1, 0, 0..2, true),
                (2, 1, 0..2, true),
                (3, 2, 0..1, true),
                (4, 2, 1..2, true),
                (9, 0, 2..3, true),
            ]
        );
        assert_eq!(t.leaves(), 3);
        let read = |candidate, next: Option<i32>| Read {
            candidate,
            next: next.map(Token),
        };
        assert_eq!(t.reads(0), [read(0, Some(2)), read(2, Some(2))]);
        assert_eq!(t.reads(1), [read(0, Some(3)), read(2, Some(4))]);
        assert_eq!(t.reads(2), [read(0, None)]);
        assert_eq!(t.reads(3), [read(2, None)]);
        assert_eq!(t.reads(4), [read(1, None)]);
    }

    #[test]
    fn without_merging_or_sharing_the_layout_is_each_candidate_in_turn() {
        let shared = [ids(&[1, 2]), ids(&[1, 3])];
        let apart = tree(&shared, false, false);
        assert_eq!(
            shape(&apart),
            vec![
                (1, 0, 0..1, true),
                (2, 1, 0..1, true),
                (1, 0, 1..2, true),
                (3, 1, 1..2, true),
            ]
        );
        // Candidates that share nothing: the same layout merged or not.
        let distinct = [ids(&[5, 6, 7]), ids(&[8]), ids(&[9, 5])];
        assert_eq!(tree(&distinct, true, true), tree(&distinct, true, false));
        let order = TreeOrder::new(distinct.iter().map(Vec::as_slice), true);
        assert_eq!(order.order, [0, 1, 2]);
        assert_eq!(order.cost(0..3), (6, 3));
    }

    #[test]
    fn a_terminal_token_wants_its_row_only_where_another_candidate_goes_on() {
        // [1, 2] ends with its terminal token 2; [1, 2, 3] goes on after it.
        let t = tree(&[ids(&[1, 2]), ids(&[1, 2, 3])], true, true);
        assert_eq!(
            shape(&t),
            vec![(1, 0, 0..1, true), (2, 1, 0..1, true), (3, 2, 0..1, false)]
        );
        assert_eq!(t.reads(1).len(), 1, "{:?}", t.reads(1));
        assert_eq!(t.reads(1)[0].candidate, 1);
        let alone = tree(&[ids(&[4, 2])], true, true);
        assert_eq!(shape(&alone), vec![(4, 0, 0..1, true), (2, 1, 0..1, false)]);
    }

    #[test]
    fn copies_and_prefixes_add_no_leaf() {
        let candidates = [ids(&[1, 2]), ids(&[1, 2]), ids(&[1, 2, 3]), ids(&[1])];
        let t = tree(&candidates, false, true);
        assert_eq!(t.nodes().len(), 3);
        assert_eq!(t.leaves(), 1);
        // Every candidate reads one row per token, in token order.
        for (c, candidate) in candidates.iter().enumerate() {
            let reads: Vec<usize> = (0..t.nodes().len())
                .filter(|&n| t.reads(n).iter().any(|r| r.candidate == c))
                .collect();
            assert_eq!(reads.len(), candidate.len());
        }
        let order = TreeOrder::new(candidates.iter().map(Vec::as_slice), true);
        // Pre-order: [1] first, then the copies of [1, 2], then [1, 2, 3].
        assert_eq!(order.order, [3, 0, 1, 2]);
        assert_eq!(order.shared, [0, 1, 2, 2]);
        assert_eq!(order.cost(0..4), (3, 1));
    }

    #[test]
    fn every_group_of_the_order_costs_what_its_tree_holds() {
        // Candidates from a small alphabet share beginnings at every depth.
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        for _ in 0..50 {
            let candidates: Vec<Vec<Token>> = (0..1 + next(12))
                .map(|_| (0..1 + next(6)).map(|_| Token(next(3) as i32)).collect())
                .collect();
            let order = TreeOrder::new(candidates.iter().map(Vec::as_slice), true);
            let mut sorted = order.order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..candidates.len()).collect::<Vec<_>>());
            for start in 0..order.len() {
                for end in start + 1..=order.len() {
                    let group = order.order[start..end].iter().map(|&c| &candidates[c]);
                    let t = Tree::new(group.map(|c| (c.as_slice(), false)), true);
                    assert_eq!(
                        order.cost(start..end),
                        (t.nodes().len(), t.leaves()),
                        "{candidates:?} {start}..{end}"
                    );
                    // Depth-first: a node's parent comes before it, and its leaves lie within
                    // its parent's.
                    let mut open: Vec<&Node> = Vec::new();
                    for node in t.nodes() {
                        open.truncate(node.depth);
                        if let Some(parent) = open.last() {
                            assert!(parent.leaves.start <= node.leaves.start);
                            assert!(node.leaves.end <= parent.leaves.end);
                        }
                        assert_eq!(open.len(), node.depth);
                        open.push(node);
                    }
                }
            }
        }
    }
}
