//! The layout of OpenRLHF's `/get_reward`: texts as a policy generated them, special tokens and all.

use std::collections::BTreeMap;

use super::{invalid, tokenize_context, Candidate, EngineError, Model, Prepared};

/// Texts to reward as a policy generated them (OpenRLHF's `/get_reward`): special-token text is
/// parsed, so a templated conversation is the token sequence the policy saw and wrote. Returns
/// groups of candidates that share a context, each with the indices of its texts; a text with
/// nothing to score (an empty response) is in no group, and its reward is 0, the empty sum.
///
/// With `prompts`, a text's response is what follows its prompt, cut after its first
/// end-of-generation token (which makes it terminal: `V = 0` after it; what follows, such as
/// padding, is not scored), and the texts of one prompt are scored together. That is the
/// chat-format candidate of `/v1/score` when the prompt is the rendered conversation and the
/// response the reply with its end-of-turn token. Without `prompts`, a text is scored from its
/// first token, terminal when it ends with an end-of-generation token.
pub fn rewards(
    model: &Model,
    texts: &[String],
    prompts: Option<&[String]>,
) -> Result<Vec<(Prepared, Vec<usize>)>, EngineError> {
    let Some(prompts) = prompts else {
        let mut groups = Vec::new();
        for (index, text) in texts.iter().enumerate() {
            let mut context =
                tokenize_context(model, text).map_err(|e| e.at(format!("query[{index}]")))?;
            if context.len() < 2 {
                continue;
            }
            let tokens = context.split_off(1);
            let terminal = tokens
                .last()
                .is_some_and(|&t| model.is_end_of_generation(t));
            let candidates = vec![Candidate { tokens, terminal }];
            groups.push((
                Prepared {
                    context,
                    candidates,
                },
                vec![index],
            ));
        }
        return Ok(groups);
    };
    if prompts.len() != texts.len() {
        return Err(invalid(format!(
            "`prompts` has {} entries and `query` {}: give one prompt per query",
            prompts.len(),
            texts.len()
        )));
    }
    let mut by_prompt: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, (text, prompt)) in texts.iter().zip(prompts).enumerate() {
        if !text.starts_with(prompt.as_str()) {
            return Err(invalid(format!(
                "query[{index}] does not start with prompts[{index}]"
            )));
        }
        by_prompt.entry(prompt).or_default().push(index);
    }
    let mut groups = Vec::new();
    for (prompt, indices) in by_prompt {
        let name = || format!("query[{}]", indices[0]);
        let context = tokenize_context(model, prompt).map_err(|e| e.at(name()))?;
        let mut candidates = Vec::new();
        let mut scored = Vec::new();
        for &index in &indices {
            let response = &texts[index][prompt.len()..];
            let mut tokens = model
                .tokenize(response, false, true)
                .map_err(|e| e.at(format!("query[{index}]")))?;
            let end = tokens.iter().position(|&t| model.is_end_of_generation(t));
            if let Some(end) = end {
                tokens.truncate(end + 1);
            }
            if !tokens.is_empty() {
                candidates.push(Candidate {
                    tokens,
                    terminal: end.is_some(),
                });
                scored.push(index);
            }
        }
        if candidates.is_empty() {
            continue;
        }
        if context.is_empty() {
            return Err(invalid(
                "the prompt has no tokens: the first response token is scored from the                  prompt's last token, and this model adds no BOS token to stand in for it",
            )
            .at(name()));
        }
        groups.push((
            Prepared {
                context,
                candidates,
            },
            scored,
        ));
    }
    Ok(groups)
}
