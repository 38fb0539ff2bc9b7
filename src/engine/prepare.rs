//! From a score request to tokens: the context and, per candidate, the tokens that are scored
//! (REWARD.md, "Which tokens are the candidate").

use crate::api::{Format, Message, ScoreRequest};

use super::{EngineError, LlamaToken, Model};

/// A request in tokens, ready for the scorer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The context, decoded once and shared by every candidate.
    pub context: Vec<LlamaToken>,
    /// The candidates, in request order.
    pub candidates: Vec<Candidate>,
}

/// The scored tokens of one candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// `a_1 … a_H`.
    pub tokens: Vec<LlamaToken>,
    /// Whether `a_H` ends the trajectory (`V(s_{H+1}) = 0`).
    pub terminal: bool,
}

/// Tokenizes a request. `default_principle` is the model's configured principle, used when the
/// request names none.
pub fn prepare(
    model: &Model,
    request: &ScoreRequest,
    default_principle: Option<&str>,
) -> Result<Prepared, EngineError> {
    if request.candidates.is_empty() {
        return Err(invalid(
            "`candidates` is empty: send at least one text to score",
        ));
    }
    let format = request
        .format
        .unwrap_or(if model.chat_template().is_some() {
            Format::Chat
        } else {
            Format::Raw
        });
    let prepared = match format {
        Format::Chat => {
            if request.terminal {
                return Err(invalid(
                    "`terminal` applies to raw format only: a chat candidate always ends its turn",
                ));
            }
            let principle = request.principle.as_deref().or(default_principle);
            let messages = conversation(request, principle)?;
            chat(model, &messages, &request.candidates)?
        }
        Format::Raw => {
            if request.messages.is_some() || request.principle.is_some() {
                return Err(invalid(
                    "raw format takes a `prompt` (the context text); `messages` and `principle` \
                     need chat format",
                ));
            }
            raw(
                model,
                request.prompt.as_deref().unwrap_or(""),
                &request.candidates,
                request.terminal,
            )?
        }
    };
    if let Some(index) = prepared.candidates.iter().position(|c| c.tokens.is_empty()) {
        return Err(invalid(format!(
            "candidate {index} is empty: there is nothing to score"
        )));
    }
    Ok(prepared)
}

fn invalid(message: impl Into<String>) -> EngineError {
    EngineError::InvalidInput(message.into())
}

/// The messages of a chat request with the principle as its system message.
///
/// A principle and a system message of the caller's own are joined (principle first, a blank line
/// between) because many templates accept only one system message.
fn conversation(
    request: &ScoreRequest,
    principle: Option<&str>,
) -> Result<Vec<Message>, EngineError> {
    let mut messages = match (&request.messages, &request.prompt) {
        (Some(_), Some(_)) => return Err(invalid("send either `messages` or `prompt`, not both")),
        (None, None) => return Err(invalid("chat format needs `messages` or `prompt`")),
        (Some(messages), None) => messages.clone(),
        (None, Some(prompt)) => vec![Message {
            role: "user".into(),
            content: prompt.clone(),
        }],
    };
    if let Some(principle) = principle {
        match messages.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{principle}\n\n{}", first.content);
            }
            _ => messages.insert(
                0,
                Message {
                    role: "system".into(),
                    content: principle.to_owned(),
                },
            ),
        }
    }
    Ok(messages)
}

/// Chat format: the template with the generation prompt is the context; a candidate is what the
/// template adds for the assistant's reply, up to and including its first end-of-generation token.
///
/// Template text around the reply is tokenized with special-token parsing, the reply itself without,
/// so a candidate that contains `<|im_end|>` as text cannot end its own turn early.
fn chat(
    model: &Model,
    messages: &[Message],
    candidates: &[String],
) -> Result<Prepared, EngineError> {
    let template = model.chat_template().ok_or(EngineError::NoChatTemplate)?;
    let render = |reply: Option<&str>| {
        let mut turn = messages.to_vec();
        turn.extend(reply.map(|content| Message {
            role: "assistant".into(),
            content: content.to_owned(),
        }));
        template
            .render(&turn, reply.is_none())
            .map_err(|e| EngineError::Template(e.to_string()))
    };
    let context_text = render(None)?;
    let context = tokenize_context(model, &context_text)?;

    // A rendering with a marker as the reply shows what the template puts around every reply.
    const MARKER: &str = "\u{E000}endorm-reply\u{E001}";
    let marked = render(Some(MARKER))?;
    let (before, after) = marked
        .strip_prefix(context_text.as_str())
        .and_then(|turn| turn.split_once(MARKER))
        .ok_or_else(|| {
            EngineError::Template(
                "rendering the conversation with a reply does not extend its rendering with the \
                 generation prompt, so the reply's tokens cannot be told apart; use raw format"
                    .into(),
            )
        })?;
    let opening = model.tokenize(before, false, true)?;
    let closing = model.tokenize(after, false, true)?;
    let end = closing
        .iter()
        .position(|&t| model.is_end_of_generation(t))
        .ok_or_else(|| {
            EngineError::Template(
                "the template ends an assistant turn without an end-of-generation token; use raw format"
                    .into(),
            )
        })?;
    let closing = &closing[..=end];

    let candidates = candidates
        .iter()
        .map(|content| {
            let rendered = render(Some(content))?;
            // Templates may transform a reply (Llama 3 trims it): score the text they render.
            let reply = rendered
                .strip_prefix(context_text.as_str())
                .and_then(|turn| turn.strip_prefix(before))
                .and_then(|turn| turn.strip_suffix(after))
                .ok_or_else(|| {
                    EngineError::Template("the template renders this reply inconsistently".into())
                })?;
            let mut tokens = opening.clone();
            tokens.extend(model.tokenize(reply, false, false)?);
            tokens.extend_from_slice(closing);
            Ok(Candidate {
                tokens,
                terminal: true,
            })
        })
        .collect::<Result<_, EngineError>>()?;
    Ok(Prepared {
        context,
        candidates,
    })
}

/// A rendered chat context in tokens: special-token text parsed, BOS added where the model wants
/// one unless the template already wrote it.
fn tokenize_context(model: &Model, text: &str) -> Result<Vec<LlamaToken>, EngineError> {
    let mut tokens = model.tokenize(text, model.adds_bos(), true)?;
    if let (Some(bos), [first, second, ..]) = (model.bos(), tokens.as_slice()) {
        if *first == bos && *second == bos {
            tokens.remove(0);
        }
    }
    Ok(tokens)
}

/// Raw format: plain text without special-token parsing; BOS on the context as the model wants,
/// none on a candidate; a terminal candidate gets the end-of-generation token appended.
fn raw(
    model: &Model,
    prompt: &str,
    candidates: &[String],
    terminal: bool,
) -> Result<Prepared, EngineError> {
    let context = model.tokenize(prompt, model.adds_bos(), false)?;
    if context.is_empty() {
        return Err(invalid(
            "raw format needs a non-empty `prompt`: the first candidate token is scored from the \
             context's last token, and this model adds no BOS token to stand in for it",
        ));
    }
    let end = match (terminal, model.end_of_generation()) {
        (false, _) => None,
        (true, Some(end)) => Some(end),
        (true, None) => {
            return Err(invalid(
                "`terminal` needs an end-of-generation token, and this model has none",
            ))
        }
    };
    let candidates = candidates
        .iter()
        .map(|text| {
            let mut tokens = model.tokenize(text, false, false)?;
            tokens.extend(end);
            Ok(Candidate { tokens, terminal })
        })
        .collect::<Result<_, EngineError>>()?;
    Ok(Prepared {
        context,
        candidates,
    })
}
