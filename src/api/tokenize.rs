//! `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info`, with llama-server's and vLLM's
//! field names both accepted.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `/tokenize`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    /// Model id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The text (llama-server's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The text (vLLM's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Add BOS where the model wants one (llama-server; default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_special: Option<bool>,
    /// Add BOS where the model wants one (vLLM; default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_special_tokens: Option<bool>,
    /// Turn special-token text such as `<|im_end|>` into its token (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_special: Option<bool>,
    /// Answer `[{"id", "piece"}]` instead of ids.
    #[serde(default)]
    pub with_pieces: bool,
    /// Also answer `token_strs` (vLLM).
    #[serde(default)]
    pub return_token_strs: bool,
}

impl TokenizeRequest {
    /// The text and whether to add BOS (where the model wants one), by dialect: llama-server's
    /// `content` adds none unless asked, vLLM's `prompt` adds it unless asked not to. `None`
    /// unless exactly one of `content` and `prompt` is given.
    pub fn text_and_add_special(&self) -> Option<(&str, bool)> {
        match (&self.content, &self.prompt) {
            (Some(text), None) => Some((
                text,
                self.add_special
                    .or(self.add_special_tokens)
                    .unwrap_or(false),
            )),
            (None, Some(text)) => Some((
                text,
                self.add_special_tokens.or(self.add_special).unwrap_or(true),
            )),
            _ => None,
        }
    }

    /// Whether special-token text becomes its token (default true).
    pub fn parses_special(&self) -> bool {
        self.parse_special.unwrap_or(true)
    }
}

/// Response of `/tokenize`: `{"tokens", "count", "max_model_len"}` (+ `token_strs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenizeResponse {
    /// Ids, or ids with their pieces.
    pub tokens: TokenList,
    /// How many tokens.
    pub count: usize,
    /// The model's context window as served.
    pub max_model_len: usize,
    /// Each token's text, when `return_token_strs` was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_strs: Option<Vec<String>>,
}

impl TokenizeResponse {
    /// The answer for `tokens`, counting them.
    pub fn new(tokens: TokenList, max_model_len: usize, token_strs: Option<Vec<String>>) -> Self {
        TokenizeResponse {
            count: tokens.len(),
            tokens,
            max_model_len,
            token_strs,
        }
    }
}

/// `tokens` of `/tokenize`: plain ids, or with `with_pieces` each id with its piece.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TokenList {
    /// `[id, ...]`.
    Ids(Vec<i32>),
    /// `[{"id", "piece"}, ...]`.
    Pieces(Vec<TokenPiece>),
}

impl TokenList {
    /// How many tokens.
    pub fn len(&self) -> usize {
        match self {
            TokenList::Ids(ids) => ids.len(),
            TokenList::Pieces(pieces) => pieces.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A token id with its piece.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenPiece {
    /// Token id in the model's vocabulary.
    pub id: i32,
    /// Its bytes.
    pub piece: Piece,
}

/// A token's piece as llama-server gives it: text when it is valid UTF-8, else its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Piece {
    /// Valid UTF-8.
    Text(String),
    /// Part of a character: the bytes as numbers.
    Bytes(Vec<u8>),
}

impl Piece {
    /// Text when `bytes` are valid UTF-8, else the bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        match String::from_utf8(bytes) {
            Ok(text) => Piece::Text(text),
            Err(error) => Piece::Bytes(error.into_bytes()),
        }
    }
}

/// Body of `/detokenize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    /// Model id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Token ids (checked against the vocabulary by the handler).
    pub tokens: Vec<i64>,
}

/// Response of `/detokenize`: the same text under llama-server's and vLLM's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DetokenizeResponse {
    /// The text (llama-server).
    pub content: String,
    /// The text (vLLM).
    pub prompt: String,
}

impl DetokenizeResponse {
    /// `text` under both names.
    pub fn new(text: String) -> Self {
        DetokenizeResponse {
            content: text.clone(),
            prompt: text,
        }
    }
}

/// Query of `GET /tokenizer_info` (`?model=ID`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelQuery {
    /// Model id; the default model when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Response of `GET /tokenizer_info` (what lm-evaluation-harness's remote tokenizer reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenizerInfoResponse {
    /// The model id.
    pub model: String,
    /// Text of the BOS token (`null` when none).
    pub bos_token: Option<String>,
    /// Text of the end-of-generation token.
    pub eos_token: Option<String>,
    /// The end-of-generation token again (endorm pads with nothing).
    pub pad_token: Option<String>,
    /// The Jinja chat template source in use.
    pub chat_template: Option<String>,
    /// Whether the model adds BOS.
    pub add_bos_token: bool,
    /// The context window as served.
    pub model_max_length: usize,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::assert_wire;
    use super::*;

    fn request(value: serde_json::Value) -> TokenizeRequest {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn tokenize_request_takes_both_dialects() {
        let llama = request(json!({"content": "Hi", "with_pieces": true}));
        assert_eq!(llama.text_and_add_special(), Some(("Hi", false)));
        assert!(llama.parses_special());
        assert_wire(
            &llama,
            json!({"content": "Hi", "with_pieces": true, "return_token_strs": false}),
        );
        let vllm = request(
            json!({"model": "m", "prompt": "Hi", "add_special_tokens": false,
                                  "return_token_strs": true}),
        );
        assert_eq!(vllm.text_and_add_special(), Some(("Hi", false)));
        assert_wire(
            &vllm,
            json!({"model": "m", "prompt": "Hi", "add_special_tokens": false,
                   "with_pieces": false, "return_token_strs": true}),
        );
        assert_eq!(
            request(json!({"prompt": "Hi"})).text_and_add_special(),
            Some(("Hi", true))
        );
        assert_eq!(
            request(json!({"content": "Hi", "add_special_tokens": true, "parse_special": false}))
                .text_and_add_special(),
            Some(("Hi", true))
        );
        assert!(!request(json!({"content": "x", "parse_special": false})).parses_special());
        assert_eq!(request(json!({})).text_and_add_special(), None);
        assert_eq!(
            request(json!({"content": "a", "prompt": "b"})).text_and_add_special(),
            None
        );
        assert!(serde_json::from_value::<TokenizeRequest>(json!({"text": "x"})).is_err());
    }

    #[test]
    fn tokenize_response_is_todays_json() {
        let ids = TokenizeResponse::new(TokenList::Ids(vec![19556, 905]), 2048, None);
        assert_wire(
            &ids,
            json!({"tokens": [19556, 905], "count": 2, "max_model_len": 2048}),
        );
        let pieces = TokenizeResponse::new(
            TokenList::Pieces(vec![
                TokenPiece {
                    id: 19556,
                    piece: Piece::from_bytes(b"Hello".to_vec()),
                },
                TokenPiece {
                    id: 37,
                    piece: Piece::from_bytes(vec![0xe6, 0x97]),
                },
            ]),
            2048,
            Some(vec!["Hello".into(), "\u{FFFD}".into()]),
        );
        assert_wire(
            &pieces,
            json!({"tokens": [{"id": 19556, "piece": "Hello"}, {"id": 37, "piece": [230, 151]}],
                   "count": 2, "max_model_len": 2048, "token_strs": ["Hello", "\u{FFFD}"]}),
        );
        assert!(TokenList::Ids(Vec::new()).is_empty());
    }

    #[test]
    fn detokenize_is_the_text_twice() {
        let request: DetokenizeRequest =
            serde_json::from_value(json!({"tokens": [1, -1, 99_999_999_999i64]})).unwrap();
        assert_wire(&request, json!({"tokens": [1, -1, 99_999_999_999i64]}));
        assert!(serde_json::from_value::<DetokenizeRequest>(json!({"tokens": [3.5]})).is_err());
        assert_wire(
            &DetokenizeResponse::new("Hello world".into()),
            json!({"content": "Hello world", "prompt": "Hello world"}),
        );
    }

    #[test]
    fn tokenizer_info_keeps_its_nulls() {
        assert_wire(&ModelQuery::default(), json!({}));
        let info = TokenizerInfoResponse {
            model: "m".into(),
            bos_token: None,
            eos_token: Some("<|im_end|>".into()),
            pad_token: Some("<|im_end|>".into()),
            chat_template: None,
            add_bos_token: false,
            model_max_length: 2048,
        };
        assert_wire(
            &info,
            json!({"model": "m", "bos_token": null, "eos_token": "<|im_end|>",
                   "pad_token": "<|im_end|>", "chat_template": null, "add_bos_token": false,
                   "model_max_length": 2048}),
        );
    }
}
