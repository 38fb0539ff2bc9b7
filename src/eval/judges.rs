//! The two training-free judges built on the same model (REWARD.md, "Judge baselines"): the
//! verifier asks "is this answer correct?" per candidate and reads `log P(Yes)`; the pairwise
//! judge shows two candidates in both orders and reads `log P(A) − log P(B)`.

use std::collections::BTreeMap;

use super::methods::{distinct, expand, ItemRef, Method, Scores};
use crate::api::Format;
use crate::engine::{EngineError, Model, Scorer, Token};

/// The verifier judge's question for a preference item.
pub fn verifier_prompt(request: &str, response: &str) -> String {
    format!(
        "Here is a request and a response to it.\n\n[Request]\n{request}\n\n[Response]\n{response}\n\n\
         Is the response a good answer to the request: helpful, correct, and following its \
         instructions? Answer Yes or No."
    )
}

/// The verifier judge's question for a code completion.
pub fn verifier_code_prompt(prompt: &str, completion: &str) -> String {
    format!(
        "Here is a Python function: its signature and docstring were given, its body was written \
         by a student.\n\n```python\n{prompt}{completion}\n```\n\nIs the function correct: does it \
         do exactly what its docstring says? Answer Yes or No."
    )
}

/// The pairwise judge's question for a preference item.
pub fn pairwise_prompt(request: &str, a: &str, b: &str) -> String {
    format!(
        "Here is a request and two responses to it.\n\n[Request]\n{request}\n\n[Response A]\n{a}\n\n\
         [Response B]\n{b}\n\nWhich response is the better answer to the request: more helpful, \
         more correct, and closer to its instructions? Answer with a single letter, A or B."
    )
}

/// The pairwise judge's question for two code completions.
pub fn pairwise_code_prompt(prompt: &str, a: &str, b: &str) -> String {
    format!(
        "Here is the start of a Python function and two completions of its body.\n\n```python\n\
         {prompt}```\n\n[Completion A]\n```python\n{a}\n```\n\n[Completion B]\n```python\n{b}\n```\n\n\
         Which completion is correct: which makes the function do exactly what its docstring says? \
         Answer with a single letter, A or B."
    )
}

/// The first token of `text` as the model writes it at the start of its answer.
fn answer_token(model: &Model, text: &str) -> Result<Token, EngineError> {
    model
        .tokenize(text, false, false)?
        .first()
        .copied()
        .ok_or_else(|| EngineError::InvalidInput(format!("`{text}` has no tokens for this model")))
}

/// `log P(Yes)` for each candidate, asked one candidate per question.
pub(super) fn verifier_scores(
    scorer: &mut Scorer<'_>,
    item: ItemRef<'_>,
) -> Result<(BTreeMap<String, Scores>, usize), EngineError> {
    let (candidates, index) = distinct(&item.candidates());
    // Each question its own group: only the beginning before the candidate is shared.
    let questions: Vec<(usize, String)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| match item {
            ItemRef::Preference(p) => (i, verifier_prompt(&p.prompt, c)),
            ItemRef::Ranking(r) if r.format == Format::Chat => (i, verifier_prompt(&r.prompt, c)),
            ItemRef::Ranking(r) => (i, verifier_code_prompt(&r.prompt, c)),
        })
        .collect();
    let yes = answer_token(scorer.model(), "Yes")?;
    let probed = scorer.probe(&questions, &[yes])?;
    let tokens = probed.tokens;
    let scores: Vec<f64> = probed.logprobs.iter().map(|l| l[0]).collect();
    let scores = expand(&scores, &index);
    Ok((
        BTreeMap::from([(
            Method::JudgeVerifier.name().to_owned(),
            Scores::Candidates(scores),
        )]),
        tokens,
    ))
}

/// Writes the pairwise question for candidates A and B.
type AskPair = Box<dyn Fn(&str, &str) -> String>;

/// Preference: for each chosen × rejected pair, `½[(lA − lB | chosen first) + (lB − lA | rejected
/// first)]`, > 0 when the judge prefers chosen. Ranking: comparing all pairs of 100 completions
/// would take ~10⁴ questions a task, so each distinct completion is compared with its neighbours in
/// a fixed cycle over the distinct completions (`i` with `i + 1 mod n`, both orders), and scores
/// the mean of its two margins.
pub(super) fn pairwise_scores(
    scorer: &mut Scorer<'_>,
    item: ItemRef<'_>,
) -> Result<(BTreeMap<String, Scores>, usize), EngineError> {
    let model = scorer.model();
    let probes = [answer_token(model, "A")?, answer_token(model, "B")?];
    let all = item.candidates();
    let (distinct_completions, index) = distinct(&all);
    // Ordered pairs of candidate indices (first shown as A).
    let (pairs, ask): (Vec<(usize, usize)>, AskPair) = match item {
        ItemRef::Preference(p) => {
            let nc = p.chosen.len();
            let pairs = (0..nc)
                .flat_map(|c| (0..p.rejected.len()).map(move |r| (c, nc + r)))
                .collect();
            let request = p.prompt.clone();
            (pairs, Box::new(move |a, b| pairwise_prompt(&request, a, b)))
        }
        ItemRef::Ranking(_) => {
            let n = distinct_completions.len();
            let pairs = if n < 2 {
                Vec::new()
            } else if n == 2 {
                vec![(0, 1)]
            } else {
                (0..n).map(|i| (i, (i + 1) % n)).collect()
            };
            let (prompt, chat) = match item {
                ItemRef::Ranking(r) => (r.prompt.clone(), r.format == Format::Chat),
                ItemRef::Preference(p) => (p.prompt.clone(), true),
            };
            let ask: AskPair = if chat {
                Box::new(move |a, b| pairwise_prompt(&prompt, a, b))
            } else {
                Box::new(move |a, b| pairwise_code_prompt(&prompt, a, b))
            };
            (pairs, ask)
        }
    };
    // Preference pairs index `item.candidates()`; ranking pairs index the distinct completions.
    let candidates = match item {
        ItemRef::Preference(_) => item.candidates(),
        ItemRef::Ranking(_) => distinct_completions.clone(),
    };
    // Grouped by the candidate shown first: the questions that show it first share everything up
    // to the second candidate (the probe's two-level layout).
    let questions: Vec<(usize, String)> = pairs
        .iter()
        .flat_map(|&(x, y)| {
            [
                (x, ask(candidates[x], candidates[y])),
                (y, ask(candidates[y], candidates[x])),
            ]
        })
        .collect();
    let probed = scorer.probe(&questions, &probes)?;
    let (logprobs, tokens) = (probed.logprobs, probed.tokens);
    // Margin for the first of each pair: (lA − lB) with it as A, (lB − lA) with it as B.
    let margins: Vec<f64> = logprobs
        .chunks(2)
        .map(|two| 0.5 * ((two[0][0] - two[0][1]) + (two[1][1] - two[1][0])))
        .collect();
    let scores = match item {
        ItemRef::Preference(_) => Scores::Pairs(margins),
        ItemRef::Ranking(_) => {
            let mut sum = vec![0.0; distinct_completions.len()];
            let mut count = vec![0usize; distinct_completions.len()];
            for (&(x, y), &m) in pairs.iter().zip(&margins) {
                sum[x] += m;
                sum[y] -= m;
                count[x] += 1;
                count[y] += 1;
            }
            let means: Vec<f64> = sum
                .iter()
                .zip(&count)
                .map(|(s, &c)| s / c.max(1) as f64)
                .collect();
            Scores::Candidates(expand(&means, &index))
        }
    };
    Ok((
        BTreeMap::from([(Method::JudgePairwise.name().to_owned(), scores)]),
        tokens,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_prompts_hold_their_inputs_in_order() {
        let p = pairwise_prompt("REQ", "FIRST", "SECOND");
        let (a, b) = (p.find("FIRST").unwrap(), p.find("SECOND").unwrap());
        assert!(p.find("REQ").unwrap() < a && a < b);
        assert!(p.ends_with("A or B."));
        assert!(verifier_prompt("REQ", "RESP").ends_with("Answer Yes or No."));
        assert!(verifier_code_prompt("def f():\n", "    return 1\n")
            .contains("def f():\n    return 1\n"));
        assert!(pairwise_code_prompt("P", "X", "Y").contains("[Completion B]\n```python\nY\n```"));
    }
}
