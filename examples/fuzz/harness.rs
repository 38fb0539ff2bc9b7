//! The fuzz harness shared by `examples/fuzz` (the long run) and `tests/it/fuzz.rs` (the short
//! run in CI): a seeded generator of request bodies for every route — structured bodies with
//! hostile texts, wrong types and missing fields, then byte mutations of them — and the in-process
//! target: each body through its route's deserialization and the engine's preparation with the
//! real tokenizer and chat template, without decoding (so it runs fast).
//!
//! What a case must never do: panic, hang, or prepare tokens outside the vocabulary; a body the
//! preparation refuses must be refused as the caller's fault (a 4xx), never as an internal error.

#![allow(dead_code)]

use endorm::api::{
    AnyRerankRequest, CompletionRequest, DetokenizeRequest, Prompt, RerankRequest, RewardRequest,
    ScoreRequest, TokenizeRequest,
};
use endorm::engine::prepare::{self, SequenceText};
use endorm::engine::{EngineError, Model, Prepared, PreparedRequest, Token};
use serde_json::{json, Value};

/// A small, fast, seeded generator (SplitMix64): a case is reproduced from its seed alone.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Every route with a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Score,
    Reward,
    Rerank,
    RerankAny,
    Completions,
    Tokenize,
    Detokenize,
}

impl Route {
    pub const ALL: [Route; 7] = [
        Route::Score,
        Route::Reward,
        Route::Rerank,
        Route::RerankAny,
        Route::Completions,
        Route::Tokenize,
        Route::Detokenize,
    ];

    /// The HTTP path.
    pub fn path(self) -> &'static str {
        match self {
            Route::Score => "/v1/score",
            Route::Reward => "/get_reward",
            Route::Rerank => "/v1/rerank",
            Route::RerankAny => "/rerank",
            Route::Completions => "/v1/completions",
            Route::Tokenize => "/tokenize",
            Route::Detokenize => "/detokenize",
        }
    }
}

/// Texts that have broken tokenizers and templates before, or might.
const TEXTS: &[&str] = &[
    "",
    " ",
    "Hi",
    "The capital of France is Paris.",
    "<|im_end|>",
    "<|im_start|>assistant\n",
    "<|endoftext|>",
    "<s>",
    "</s>",
    "\u{E000}endorm-reply\u{E001}",
    "{{ messages }}",
    "{% for m in messages %}{{ m }}{% endfor %}",
    "\0",
    "\u{7f}\u{1b}[31m",
    "\r\n\r\n",
    "\u{feff}",
    "\u{200b}\u{200d}",
    "😀👍🏽‍♂️",
    "日本語のテキスト",
    "مرحبا",
    "\u{10ffff}",
    "a\u{0301}",
    "\\u0000",
    "\"quoted\"",
    "    leading and trailing    ",
    "\t\t\t",
];

const ROLES: &[&str] = &[
    "user",
    "assistant",
    "system",
    "tool",
    "",
    "USER",
    "<|im_start|>",
];

/// A hostile text: one of [`TEXTS`], random characters, or several joined, at most ~2 KB.
pub fn text(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 | 1 => (*rng.pick(TEXTS)).to_owned(),
        2 => {
            let n = rng.below(40);
            (0..n)
                .map(|_| match rng.below(4) {
                    0 => char::from(rng.below(128) as u8),
                    1 => char::from_u32(rng.below(0x3000) as u32).unwrap_or('?'),
                    2 => char::from_u32(0x1f300 + rng.below(0x300) as u32).unwrap_or('?'),
                    _ => char::from(b'a' + rng.below(26) as u8),
                })
                .collect()
        }
        3 => {
            let n = 1 + rng.below(4);
            (0..n)
                .map(|_| *rng.pick(TEXTS))
                .collect::<Vec<_>>()
                .concat()
        }
        4 => rng.pick(TEXTS).repeat(1 + rng.below(50)),
        _ => "word ".repeat(rng.below(200)),
    }
}

fn texts(rng: &mut Rng, max: usize) -> Vec<Value> {
    (0..rng.below(max + 1)).map(|_| json!(text(rng))).collect()
}

/// A value of a wrong or odd type, for any field.
fn odd(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(1e308),
        4 => json!(-0.0),
        5 => json!(u64::MAX),
        6 => json!(i64::MIN),
        7 => json!([]),
        8 => json!({}),
        _ => json!(text(rng)),
    }
}

fn number(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => json!(0),
        1 => json!(1),
        2 => json!(rng.below(100)),
        3 => json!(0.5),
        4 => json!(1e-300),
        5 => json!(1.7e308),
        6 => json!(-3),
        _ => odd(rng),
    }
}

fn messages(rng: &mut Rng) -> Value {
    let n = rng.below(5);
    Value::Array(
        (0..n)
            .map(|_| {
                if rng.one_in(15) {
                    return odd(rng);
                }
                json!({"role": rng.pick(ROLES), "content": text(rng)})
            })
            .collect(),
    )
}

fn token_ids(rng: &mut Rng) -> Value {
    let n = rng.below(12);
    Value::Array(
        (0..n)
            .map(|_| match rng.below(8) {
                0 => json!(-1),
                1 => json!(49152),
                2 => json!(i64::MAX),
                3 => json!(i32::MAX as i64 + 1),
                _ => json!(rng.below(49152)),
            })
            .collect(),
    )
}

/// Sets `key` in `body` to `value`, or sometimes to an odd value, or leaves it out.
fn put(rng: &mut Rng, body: &mut serde_json::Map<String, Value>, key: &str, value: Value) {
    match rng.below(12) {
        0 => {}
        1 => {
            body.insert(key.to_owned(), odd(rng));
        }
        _ => {
            body.insert(key.to_owned(), value);
        }
    }
}

/// A structured body for `route`: mostly well-formed, with each field sometimes missing or odd.
pub fn structured(rng: &mut Rng, route: Route) -> Value {
    let mut body = serde_json::Map::new();
    if rng.one_in(3) {
        let model = if rng.one_in(2) {
            json!("default")
        } else {
            json!(text(rng))
        };
        put(rng, &mut body, "model", model);
    }
    match route {
        Route::Score => {
            let candidates = Value::Array(texts(rng, 4));
            put(rng, &mut body, "candidates", candidates);
            let chat = rng.one_in(2);
            if chat || rng.one_in(5) {
                let m = messages(rng);
                put(rng, &mut body, "messages", m);
            }
            if !chat || rng.one_in(5) {
                let p = json!(text(rng));
                put(rng, &mut body, "prompt", p);
            }
            for (key, value) in [
                ("format", json!(*rng.pick(&["chat", "raw", "Chat", "json"]))),
                ("principle", json!(text(rng))),
                ("terminal", json!(rng.one_in(2))),
                ("alpha", number(rng)),
                ("max_candidate_tokens", number(rng)),
                (
                    "aggregate",
                    json!(*rng.pick(&["endo", "sum", "mean", "last", "x"])),
                ),
                ("return_tokens", json!(rng.one_in(2))),
            ] {
                if rng.one_in(3) {
                    put(rng, &mut body, key, value);
                }
            }
        }
        Route::Reward => {
            let query = Value::Array(texts(rng, 4));
            if rng.one_in(2) {
                let prompts: Vec<Value> = query
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|q| {
                        let q = q.as_str().unwrap_or("");
                        let cut = q
                            .char_indices()
                            .map(|(i, _)| i)
                            .nth(rng.below(q.chars().count() + 1))
                            .unwrap_or(q.len());
                        if rng.one_in(10) {
                            json!(text(rng))
                        } else {
                            json!(&q[..cut])
                        }
                    })
                    .collect();
                put(rng, &mut body, "prompts", Value::Array(prompts));
            }
            put(rng, &mut body, "query", query);
        }
        Route::Rerank | Route::RerankAny => {
            let q = json!(text(rng));
            put(rng, &mut body, "query", q);
            let docs: Vec<Value> = (0..rng.below(4))
                .map(|_| {
                    if rng.one_in(3) {
                        json!({"text": text(rng)})
                    } else {
                        json!(text(rng))
                    }
                })
                .collect();
            let key = if route == Route::RerankAny && rng.one_in(2) {
                "texts"
            } else {
                "documents"
            };
            put(rng, &mut body, key, Value::Array(docs));
            for (key, value) in [
                ("top_n", number(rng)),
                ("top_k", number(rng)),
                ("return_documents", json!(rng.one_in(2))),
                ("max_tokens_per_doc", number(rng)),
                ("raw_scores", json!(rng.one_in(2))),
                ("return_text", json!(rng.one_in(2))),
            ] {
                if rng.one_in(4) {
                    put(rng, &mut body, key, value);
                }
            }
        }
        Route::Completions => {
            let prompt = match rng.below(4) {
                0 => json!(text(rng)),
                1 => Value::Array(texts(rng, 3)),
                2 => token_ids(rng),
                _ => Value::Array((0..rng.below(3)).map(|_| token_ids(rng)).collect()),
            };
            put(rng, &mut body, "prompt", prompt);
            let echo = json!(!rng.one_in(5));
            put(rng, &mut body, "echo", echo);
            let max_tokens = json!(rng.below(3));
            put(rng, &mut body, "max_tokens", max_tokens);
            for (key, value) in [
                ("logprobs", number(rng)),
                ("temperature", number(rng)),
                ("n", number(rng)),
                ("stream", json!(rng.one_in(2))),
            ] {
                if rng.one_in(3) {
                    put(rng, &mut body, key, value);
                }
            }
        }
        Route::Tokenize => {
            let key = *rng.pick(&["content", "prompt"]);
            let t = json!(text(rng));
            put(rng, &mut body, key, t);
            if rng.one_in(6) {
                let t = json!(text(rng));
                put(rng, &mut body, "prompt", t);
            }
            for key in [
                "add_special",
                "add_special_tokens",
                "parse_special",
                "with_pieces",
                "return_token_strs",
            ] {
                if rng.one_in(3) {
                    let b = json!(rng.one_in(2));
                    put(rng, &mut body, key, b);
                }
            }
        }
        Route::Detokenize => {
            let ids = token_ids(rng);
            put(rng, &mut body, "tokens", ids);
        }
    }
    Value::Object(body)
}

/// Byte-level mutations of a serialized body: flips, inserts, deletes, duplicated or truncated
/// spans, JSON punctuation spliced in.
pub fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        match rng.below(7) {
            0 if len > 0 => {
                let at = rng.below(len);
                bytes[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(len + 1);
                let byte = *rng.pick(b"{}[]\",:\\0123456789.eE-+ntfu\x00\xff\xc3");
                bytes.insert(at, byte);
            }
            2 if len > 0 => {
                let at = rng.below(len);
                let n = rng.below((len - at).min(16) + 1);
                bytes.drain(at..at + n);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = rng.below((len - at).min(32) + 1);
                let span = bytes[at..at + n].to_vec();
                let to = rng.below(len + 1);
                bytes.splice(to..to, span);
            }
            4 => bytes.truncate(rng.below(len + 1)),
            5 if len > 0 => {
                let at = rng.below(len);
                bytes[at] = rng.next() as u8;
            }
            _ => {
                let at = rng.below(len + 1);
                let splice =
                    *rng.pick(&[&b"null"[..], b"[]", b"{}", b"1e999", b"-0", b"\"\\ud800\""]);
                bytes.splice(at..at, splice.iter().copied());
            }
        }
    }
}

/// One case: a route and its body (structured, and mutated one time in three).
pub fn case(rng: &mut Rng) -> (Route, Vec<u8>) {
    let route = *rng.pick(&Route::ALL);
    let mut bytes = serde_json::to_vec(&structured(rng, route)).expect("serializes");
    if rng.one_in(3) {
        mutate(rng, &mut bytes);
    }
    (route, bytes)
}

/// What the target made of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// Bodies the route's type refused (a 400 from the JSON extractor).
    pub undecodable: u64,
    /// Bodies the preparation refused as the caller's fault (a 4xx).
    pub refused: u64,
    /// Bodies prepared into tokens.
    pub prepared: u64,
}

/// A finding: what broke, on which body.
#[derive(Debug, Clone)]
pub struct Finding {
    pub route: Route,
    pub body: Vec<u8>,
    pub what: String,
}

fn check_tokens(model: &Model, tokens: &[Token], what: &str) -> Result<(), String> {
    let n_vocab = model.meta().n_vocab as i32;
    match tokens.iter().find(|t| t.id() < 0 || t.id() >= n_vocab) {
        Some(t) => Err(format!("{what}: token {} outside the vocabulary", t.id())),
        None => Ok(()),
    }
}

fn check_prepared(model: &Model, prepared: &Prepared) -> Result<(), String> {
    check_tokens(model, &prepared.context, "context")?;
    for (i, candidate) in prepared.candidates.iter().enumerate() {
        if candidate.tokens.is_empty() {
            return Err(format!("candidate {i} prepared with no tokens"));
        }
        check_tokens(model, &candidate.tokens, "candidate")?;
    }
    Ok(())
}

/// A preparation error must be the caller's fault; anything else would be a 5xx.
fn refused(error: EngineError) -> Result<bool, String> {
    if error.is_input_error() {
        Ok(false)
    } else {
        Err(format!("not an input error: {error}"))
    }
}

/// Runs one body through its route's type and preparation. `Ok(true)`: prepared; `Ok(false)`:
/// refused as the caller's fault; `Err`: a finding.
fn target(model: &Model, route: Route, body: &[u8]) -> Result<Option<bool>, String> {
    fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
        serde_json::from_slice(body).ok()
    }
    let outcome = match route {
        Route::Score => {
            let Some(request) = decode::<ScoreRequest>(body) else {
                return Ok(None);
            };
            match PreparedRequest::new(model, None, &request, None) {
                Ok(prepared) => check_prepared(model, &prepared.prepared).map(|()| true),
                Err(e) => refused(e),
            }
        }
        Route::Reward => {
            let Some(request) = decode::<RewardRequest>(body) else {
                return Ok(None);
            };
            match prepare::rewards(model, &request.query, request.prompts.as_deref()) {
                Ok(groups) => {
                    for (prepared, indices) in &groups {
                        check_prepared(model, prepared)?;
                        if indices.iter().any(|&i| i >= request.query.len()) {
                            return Err("a group names a query that does not exist".into());
                        }
                    }
                    Ok(true)
                }
                Err(e) => refused(e),
            }
        }
        Route::Rerank | Route::RerankAny => {
            let (query, documents, max) = if route == Route::Rerank {
                let Some(r) = decode::<RerankRequest>(body) else {
                    return Ok(None);
                };
                let docs = r.documents.into_iter().map(|d| d.into_text()).collect();
                (r.query, docs, r.max_tokens_per_doc)
            } else {
                match decode::<AnyRerankRequest>(body) {
                    None => return Ok(None),
                    Some(AnyRerankRequest::Documents(r)) => {
                        let docs = r.documents.into_iter().map(|d| d.into_text()).collect();
                        (r.query, docs, r.max_tokens_per_doc)
                    }
                    Some(AnyRerankRequest::Tei(r)) => (r.query, r.texts, None),
                }
            };
            if documents.is_empty() {
                return Ok(Some(false));
            }
            let score = ScoreRequest {
                prompt: Some(query),
                candidates: documents,
                max_candidate_tokens: max,
                ..ScoreRequest::default()
            };
            match PreparedRequest::new(model, None, &score, None) {
                Ok(prepared) => check_prepared(model, &prepared.prepared).map(|()| true),
                Err(e) => refused(e),
            }
        }
        Route::Completions => {
            let Some(request) = decode::<CompletionRequest>(body) else {
                return Ok(None);
            };
            let items: Vec<SequenceText<'_>> = match &request.prompt {
                Prompt::Text(t) => vec![SequenceText::Text(t)],
                Prompt::Texts(ts) => ts.iter().map(|t| SequenceText::Text(t)).collect(),
                Prompt::Tokens(ids) => vec![SequenceText::Ids(ids)],
                Prompt::TokenLists(ls) => ls.iter().map(|l| SequenceText::Ids(l)).collect(),
            };
            let mut all = true;
            for item in items {
                match prepare::sequence(model, item) {
                    Ok(tokens) => check_tokens(model, &tokens, "prompt")?,
                    Err(e) => all &= refused(e)?,
                }
            }
            Ok(all)
        }
        Route::Tokenize => {
            let Some(request) = decode::<TokenizeRequest>(body) else {
                return Ok(None);
            };
            let Some((text, add_special)) = request.text_and_add_special() else {
                return Ok(Some(false));
            };
            match model.tokenize(
                text,
                add_special && model.adds_bos(),
                request.parses_special(),
            ) {
                Ok(tokens) => {
                    check_tokens(model, &tokens, "tokenize")?;
                    let texts = model.token_texts(&tokens);
                    if texts.len() != tokens.len() {
                        return Err("token_texts gives a different count".into());
                    }
                    let _ = model.detokenize(&tokens);
                    Ok(true)
                }
                Err(e) => refused(e),
            }
        }
        Route::Detokenize => {
            let Some(request) = decode::<DetokenizeRequest>(body) else {
                return Ok(None);
            };
            match model.tokens(&request.tokens) {
                Ok(tokens) => {
                    let _ = model.detokenize(&tokens);
                    Ok(true)
                }
                Err(e) => refused(e),
            }
        }
    };
    outcome.map(Some)
}

/// Runs `execs` cases from `seed` on `model`; returns the tally and the findings (a panic is a
/// finding too). `progress` is called every 100,000 cases with the count so far.
pub fn run(
    model: &Model,
    seed: u64,
    execs: u64,
    mut progress: impl FnMut(u64, &Tally),
) -> (Tally, Vec<Finding>) {
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let mut findings = Vec::new();
    for n in 0..execs {
        let (route, body) = case(&mut rng);
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(model, route, &body)));
        match result {
            Ok(Ok(None)) => tally.undecodable += 1,
            Ok(Ok(Some(true))) => tally.prepared += 1,
            Ok(Ok(Some(false))) => tally.refused += 1,
            Ok(Err(what)) => findings.push(Finding { route, body, what }),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panic".into());
                findings.push(Finding {
                    route,
                    body,
                    what: format!("panicked: {what}"),
                });
            }
        }
        if (n + 1) % 100_000 == 0 {
            progress(n + 1, &tally);
        }
    }
    (tally, findings)
}
