//! Every token layout the engine scores is built here, in one place: a `/v1/score` request in
//! chat or raw format (REWARD.md, "Which tokens are the candidate"), and its extra layouts (the
//! candidates after the neutral context, the instruction after each candidate), texts scored from their first
//! token, texts split at their prompt, a judge's question, the benchmark's synthetic request.
//!
//! Tokenizing is CPU work that can take a while (a request may hold 65,536 tokens): callers on an
//! async executor run these functions on a blocking thread.

use crate::api::{Format, Message, ScoreRequest};

use super::template::ChatTemplate;
use super::{cancel, EngineError, Model, Token};

mod rewards;

pub use rewards::rewards;

/// A request in tokens, ready for the scorer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prepared {
    /// The context, decoded once and shared by every candidate.
    pub context: Vec<Token>,
    /// The candidates, in request order.
    pub candidates: Vec<Candidate>,
}

impl Prepared {
    /// Tokens of all candidates together.
    pub fn candidate_tokens(&self) -> usize {
        self.candidates.iter().map(|c| c.tokens.len()).sum()
    }

    /// Tokens of the context and all candidates.
    pub fn tokens(&self) -> usize {
        self.context.len() + self.candidate_tokens()
    }

    /// The same request split into one request per candidate, each with the whole context.
    pub fn one_per_candidate(&self) -> Vec<Prepared> {
        self.candidates
            .iter()
            .map(|candidate| Prepared {
                context: self.context.clone(),
                candidates: vec![candidate.clone()],
            })
            .collect()
    }

    /// The context followed by every candidate, as one sequence.
    pub fn concatenated(&self) -> Vec<Token> {
        let candidates = self.candidates.iter().flat_map(|c| &c.tokens);
        self.context.iter().chain(candidates).copied().collect()
    }
}

/// The scored tokens of one candidate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    /// `a_1 … a_H`.
    pub tokens: Vec<Token>,
    /// Whether `a_H` ends the trajectory (`V(s_{H+1}) = 0`).
    pub terminal: bool,
}

/// Tokenizes a `/v1/score` request. `default_principle` is the model's configured principle, used
/// when the request names none.
pub fn score_request(
    model: &Model,
    request: &ScoreRequest,
    default_principle: Option<&str>,
) -> Result<Prepared, EngineError> {
    if request.candidates.is_empty() {
        return Err(invalid(
            "`candidates` is empty: send at least one text to score",
        ));
    }
    let prepared = match format(model, request) {
        Format::Chat => {
            if request.terminal {
                return Err(invalid(
                    "`terminal` applies to raw format only: a chat candidate always ends its turn",
                ));
            }
            let principle = request.principle.as_deref().or(default_principle);
            let messages = conversation(request, principle)?;
            chat(
                model,
                &messages,
                &request.candidates,
                request.max_candidate_tokens,
            )?
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
                request.max_candidate_tokens,
            )?
        }
    };
    non_empty(prepared)
}

/// The request's format: `chat` when the model has a chat template, else `raw`, when it names none.
pub fn format(model: &Model, request: &ScoreRequest) -> Format {
    request
        .format
        .unwrap_or(if model.chat_template().is_some() {
            Format::Chat
        } else {
            Format::Raw
        })
}

/// The candidates of `main` (a request's layout from [`score_request`]) after the neutral context
/// (`contrast: "neutral"`): chat, the template over one empty user turn (no principle, no system
/// message) with its generation prompt; raw, the empty prompt ([`raw_context`]). The neutral
/// context is the same for every request of a model, so the prefix cache keeps it decoded.
///
/// The candidates must be the very same tokens in both layouts, or the difference would compare
/// different texts: raw candidates are tokenized on their own, so they are; a chat template could
/// render a reply differently after another conversation, which is refused.
pub fn neutral(
    model: &Model,
    request: &ScoreRequest,
    main: &Prepared,
) -> Result<Prepared, EngineError> {
    let neutral = match format(model, request) {
        Format::Chat => {
            let empty = [Message {
                role: "user".into(),
                content: String::new(),
            }];
            chat(
                model,
                &empty,
                &request.candidates,
                request.max_candidate_tokens,
            )?
        }
        Format::Raw => Prepared {
            context: raw_context(model, "")?,
            candidates: main.candidates.clone(),
        },
    };
    if neutral.candidates != main.candidates {
        return Err(EngineError::Template(
            "the template renders the candidates as other tokens after an empty user turn, so \
             the neutral contrast would compare different texts; use raw format"
                .into(),
        ));
    }
    Ok(neutral)
}

/// The reviewer layouts (`reviewer: true`, Coder-Reviewer reranking): for each candidate, the
/// instruction scored after it, `log p(x | y)`. Chat: a user turn that holds the candidate, then an
/// assistant turn that is the instruction (the request's `prompt`, or the last user message of
/// `messages`; no principle), its tokens being what [`chat`] makes of a reply. Raw: the candidate
/// text as the context (BOS as the model wants), then the prompt's tokens, unterminated. The
/// candidate is taken whole (`max_candidate_tokens` does not cut it here).
pub fn reviewer(model: &Model, request: &ScoreRequest) -> Result<Vec<Prepared>, EngineError> {
    let layouts = match format(model, request) {
        Format::Chat => {
            let instruction = match (&request.prompt, &request.messages) {
                (Some(prompt), _) => prompt.clone(),
                (None, Some(messages)) => messages
                    .iter()
                    .rev()
                    .find(|m| m.role == "user")
                    .map(|m| m.content.clone())
                    .ok_or_else(|| {
                        invalid("`reviewer` needs a user message: the instruction it scores")
                    })?,
                (None, None) => return Err(invalid("chat format needs `messages` or `prompt`")),
            };
            request
                .candidates
                .iter()
                .map(|candidate| {
                    let turn = [Message {
                        role: "user".into(),
                        content: candidate.clone(),
                    }];
                    chat(model, &turn, std::slice::from_ref(&instruction), None)
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Format::Raw => {
            let prompt = request.prompt.as_deref().unwrap_or("");
            let instruction = model.tokenize(prompt, false, false)?;
            if instruction.is_empty() {
                return Err(invalid(
                    "`reviewer` needs a non-empty `prompt`: the instruction it scores",
                ));
            }
            request
                .candidates
                .iter()
                .map(|candidate| {
                    Ok(Prepared {
                        context: raw_context(model, candidate)?,
                        candidates: vec![Candidate {
                            tokens: instruction.clone(),
                            terminal: false,
                        }],
                    })
                })
                .collect::<Result<Vec<_>, EngineError>>()?
        }
    };
    layouts.into_iter().map(non_empty).collect()
}

fn invalid(message: impl Into<String>) -> EngineError {
    EngineError::InvalidInput(message.into())
}

/// The roles a message may have: those every chat template knows. Anything else would be passed
/// to the template as given, where a made-up role can open a turn of any name.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

fn check_roles(messages: &[Message]) -> Result<(), EngineError> {
    for (index, message) in messages.iter().enumerate() {
        if !ROLES.contains(&message.role.as_str()) {
            return Err(invalid(format!(
                "messages[{index}].role is {:?}; a role is one of {}",
                message.role,
                ROLES.join(", ")
            )));
        }
    }
    Ok(())
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
        (Some(messages), None) if messages.is_empty() => {
            return Err(invalid(
                "`messages` is empty: send at least one message (the conversation to reply to)",
            ))
        }
        (Some(messages), None) => {
            check_roles(messages)?;
            messages.clone()
        }
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
    max_tokens: Option<usize>,
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
    let (context_text, context) = render_context(model, template, messages)?;

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
            cancel::check()?;
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
            tokens.extend(cut(model.tokenize(reply, false, false)?, max_tokens));
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

/// The template over `messages` with its generation prompt: the text and its tokens. The
/// template's own markup is special (`<|im_start|>` is that token); the messages' text is text, so
/// a message (or principle) that holds `<|im_end|>` cannot close its turn and forge another.
///
/// Text without special-token text is tokenized with the markup in one piece, as llama.cpp
/// tokenizes a rendered template. Otherwise the template is rendered a second time with a marker
/// for each message's text, the markup between the markers is tokenized with special-token
/// parsing and each message's text without; a template that rewrites message text in a way this
/// cannot follow (other than trimming it, as Llama 3's does) is refused for such a message.
fn render_context(
    model: &Model,
    template: &ChatTemplate,
    messages: &[Message],
) -> Result<(String, Vec<Token>), EngineError> {
    let render = |messages: &[Message]| {
        template
            .render(messages, true)
            .map_err(|e| EngineError::Template(e.to_string()))
    };
    let text = render(messages)?;
    if !messages.iter().any(|m| model.has_special_text(&m.content)) {
        let tokens = tokenize_context(model, &text)?;
        return Ok((text, tokens));
    }
    let marked: Vec<Message> = (0..messages.len())
        .map(|i| Message {
            role: messages[i].role.clone(),
            content: format!("{MARK_OPEN}{i}{MARK_CLOSE}"),
        })
        .collect();
    let marked = render(&marked)?;
    let pieces = marked_pieces(&marked, messages.len())?;
    let rebuilt = |trim: bool| -> String {
        pieces
            .iter()
            .map(|piece| match *piece {
                Piece::Markup(markup) => markup,
                Piece::Message(i) if trim => messages[i].content.trim(),
                Piece::Message(i) => messages[i].content.as_str(),
            })
            .collect()
    };
    let trim = match () {
        () if rebuilt(false) == text => false,
        () if rebuilt(true) == text => true,
        () => {
            return Err(EngineError::Template(
                "a message holds special-token text and the template rewrites message text in a                  way endorm cannot follow, so the text could not be kept apart from the template's                  markup; use raw format"
                    .into(),
            ))
        }
    };
    let mut tokens = Vec::new();
    for piece in &pieces {
        cancel::check()?;
        match *piece {
            Piece::Markup(markup) => tokens.extend(model.tokenize(markup, false, true)?),
            Piece::Message(i) => {
                let content = &messages[i].content;
                let content = if trim { content.trim() } else { content };
                tokens.extend(model.tokenize(content, false, false)?);
            }
        }
    }
    if let (true, Some(bos)) = (model.adds_bos(), model.bos()) {
        if tokens.first() != Some(&bos) {
            tokens.insert(0, bos);
        }
    }
    Ok((text, tokens))
}

/// The markers that stand for message `i`'s text in a second rendering (private-use characters,
/// which no template writes).
const MARK_OPEN: char = '\u{E002}';
const MARK_CLOSE: char = '\u{E003}';

/// A part of a rendered conversation: the template's markup, or where message `i`'s text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Markup(&'a str),
    Message(usize),
}

/// Splits a rendering with markers into the template's markup and the messages' places.
fn marked_pieces(text: &str, messages: usize) -> Result<Vec<Piece<'_>>, EngineError> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(MARK_OPEN) {
        if open > 0 {
            pieces.push(Piece::Markup(&rest[..open]));
        }
        let after = &rest[open + MARK_OPEN.len_utf8()..];
        let close = after.find(MARK_CLOSE).ok_or_else(|| {
            EngineError::Template("the template cut a message's text apart".into())
        })?;
        let index: usize = after[..close]
            .parse()
            .ok()
            .filter(|&i| i < messages)
            .ok_or_else(|| EngineError::Template("the template rewrote a message's text".into()))?;
        pieces.push(Piece::Message(index));
        rest = &after[close + MARK_CLOSE.len_utf8()..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Markup(rest));
    }
    Ok(pieces)
}

/// A rendered chat context in tokens: special-token text parsed, BOS added where the model wants
/// one unless the template already wrote it.
fn tokenize_context(model: &Model, text: &str) -> Result<Vec<Token>, EngineError> {
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
    max_tokens: Option<usize>,
) -> Result<Prepared, EngineError> {
    let context = raw_context(model, prompt)?;
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
            let mut tokens = cut(model.tokenize(text, false, false)?, max_tokens);
            tokens.extend(end);
            Ok(Candidate { tokens, terminal })
        })
        .collect::<Result<_, EngineError>>()?;
    Ok(Prepared {
        context,
        candidates,
    })
}

/// A raw context: `text` without special-token parsing, BOS first as the model wants. An empty
/// text of a model that adds no BOS becomes the model's BOS token all the same: the first
/// candidate token is scored from the context's last token, so the context needs one, and BOS is
/// what a model puts before any text (Qwen2.5's is `<|endoftext|>`, SmolLM2's `<|im_start|>`).
fn raw_context(model: &Model, text: &str) -> Result<Vec<Token>, EngineError> {
    let context = model.tokenize(text, model.adds_bos(), false)?;
    match (context.is_empty(), model.bos()) {
        (false, _) => Ok(context),
        (true, Some(bos)) => Ok(vec![bos]),
        (true, None) => Err(invalid(
            "raw format needs a non-empty `prompt` on this model: the first candidate token is \
             scored from the context's last token, and the model has no BOS token to stand in",
        )),
    }
}

/// The context of a one-message chat: the template over `messages` with its generation prompt,
/// exactly as a chat-format `/v1/score` request renders its context.
pub fn chat_context(model: &Model, messages: &[Message]) -> Result<Vec<Token>, EngineError> {
    let template = model.chat_template().ok_or(EngineError::NoChatTemplate)?;
    Ok(render_context(model, template, messages)?.1)
}

/// At most `max` of `tokens`.
fn cut(mut tokens: Vec<Token>, max: Option<usize>) -> Vec<Token> {
    if let Some(max) = max {
        tokens.truncate(max);
    }
    tokens
}

/// A prompt for log-probabilities along it (`/v1/completions`): text is tokenized as a model
/// server would (BOS as the model wants, special-token text parsed); ids are checked.
pub fn sequence(model: &Model, prompt: SequenceText<'_>) -> Result<Vec<Token>, EngineError> {
    let tokens = match prompt {
        SequenceText::Text(text) => model.tokenize(text, model.adds_bos(), true)?,
        SequenceText::Ids(ids) => model.tokens(ids)?,
    };
    if tokens.is_empty() {
        return Err(invalid("it has no tokens"));
    }
    Ok(tokens)
}

/// A prompt given as text or as token ids.
#[derive(Debug, Clone, Copy)]
pub enum SequenceText<'a> {
    /// Text, tokenized by the model.
    Text(&'a str),
    /// Token ids, checked against the vocabulary.
    Ids(&'a [i64]),
}

/// The benchmark's request: `context_tokens` tokens of a fixed English text, then `candidates`
/// candidates of `candidate_tokens` tokens each (the text's continuation), unterminated.
pub fn synthetic(
    model: &Model,
    context_tokens: usize,
    candidates: usize,
    candidate_tokens: usize,
) -> Result<Prepared, EngineError> {
    const TEXT: &str =
        "The river runs past the old mill, where the miller keeps a ledger of every \
        sack of grain. In winter the wheel freezes and the village waits; in spring the water \
        returns and the stones turn again. Children count the sacks, merchants argue over prices, \
        and the ledger grows thicker every year. ";
    let n = context_tokens + candidates * candidate_tokens;
    let mut text = String::new();
    let mut stream = Vec::new();
    while stream.len() < n {
        text.push_str(TEXT);
        stream = model.tokenize(&text, false, false)?;
    }
    stream.truncate(n);
    let rest = stream.split_off(context_tokens);
    Ok(Prepared {
        context: stream,
        candidates: rest
            .chunks(candidate_tokens.max(1))
            .map(|tokens| Candidate {
                tokens: tokens.to_vec(),
                terminal: false,
            })
            .collect(),
    })
}

/// The cost sweep's request (`endorm bench --sweep`): `context_tokens` tokens of context (at least
/// one), then `candidates` candidates of `candidate_tokens` tokens whose first `shared` tokens are
/// the same. The ids are drawn by a fixed generator from the vocabulary past its first 1,000 ids
/// (where models keep their special tokens, which a few place at the end: at most the first
/// 30,000 are used), so the candidates share nothing beyond those tokens; a decode's cost does
/// not depend on which tokens it holds.
pub fn synthetic_shared(
    model: &Model,
    context_tokens: usize,
    candidates: usize,
    candidate_tokens: usize,
    shared: usize,
) -> Result<Prepared, EngineError> {
    const FIRST: u64 = 1_000;
    let n_vocab = u64::from(model.meta().n_vocab).min(30_000);
    if n_vocab <= FIRST {
        return Err(EngineError::InvalidInput(format!(
            "a vocabulary of {n_vocab} tokens is too small for the sweep's request"
        )));
    }
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        Token((FIRST + (state >> 33) % (n_vocab - FIRST)) as i32)
    };
    let context: Vec<Token> = (0..context_tokens.max(1)).map(|_| next()).collect();
    let shared = shared.min(candidate_tokens);
    let common: Vec<Token> = (0..shared).map(|_| next()).collect();
    let candidates = (0..candidates)
        .map(|_| {
            let mut tokens = common.clone();
            tokens.extend((shared..candidate_tokens.max(1)).map(|_| next()));
            Candidate {
                tokens,
                terminal: false,
            }
        })
        .collect();
    Ok(Prepared {
        context,
        candidates,
    })
}

/// Length of the longest prefix that all `sequences` share.
pub(super) fn common_prefix<T: PartialEq>(sequences: &[&[T]]) -> usize {
    let Some((first, rest)) = sequences.split_first() else {
        return 0;
    };
    rest.iter().fold(first.len(), |n, sequence| {
        first[..n]
            .iter()
            .zip(sequence.iter())
            .take_while(|(a, b)| a == b)
            .count()
    })
}

fn non_empty(prepared: Prepared) -> Result<Prepared, EngineError> {
    match prepared.candidates.iter().position(|c| c.tokens.is_empty()) {
        None => Ok(prepared),
        Some(index) => Err(invalid(format!(
            "candidate {index} is empty: there is nothing to score"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_of_several() {
        let (a, b, c) = ([1, 2, 3, 4], [1, 2, 3], [1, 2, 9, 4]);
        assert_eq!(common_prefix::<i32>(&[&a, &b, &c]), 2);
        assert_eq!(common_prefix::<i32>(&[&a, &b]), 3);
        assert_eq!(common_prefix::<i32>(&[&a]), 4);
        assert_eq!(common_prefix::<i32>(&[]), 0);
        assert_eq!(common_prefix::<i32>(&[&a, &[]]), 0);
    }
}
