//! The wire as a machine-readable document: OpenAPI 3.1, its schemas derived from the types of
//! this module's siblings (`utoipa`), its paths from [`ROUTES`], the one list of the daemon's
//! routes (the router's 404 message names them too). `GET /openapi.json` serves it;
//! `docs/openapi.json` is the checked-in copy that a test keeps equal, and that the Python,
//! TypeScript and Lua clients' tests check their field names against.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi, PathsBuilder, Ref, RefOr, Required, ResponseBuilder,
    Schema,
};
use utoipa::OpenApi as _;

/// How a route is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`, with a JSON body.
    Post,
}

impl Method {
    /// `GET` or `POST`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// What a route takes or gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Nothing.
    None,
    /// A JSON body of the named schema.
    Json(&'static str),
    /// A JSON body of one of the named schemas.
    OneOf(&'static [&'static str]),
    /// JSON: one of the named schema or a list of the other.
    SchemaOrList(&'static str, &'static str),
    /// Text of this media type.
    Text(&'static str),
}

/// One route of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `GET` or `POST`.
    pub method: Method,
    /// The path.
    pub path: &'static str,
    /// What it does, in a few words.
    pub summary: &'static str,
    /// Its request body.
    pub request: Body,
    /// Its answer on success.
    pub response: Body,
}

const fn route(
    method: Method,
    path: &'static str,
    summary: &'static str,
    request: Body,
    response: Body,
) -> Route {
    Route {
        method,
        path,
        summary,
        request,
        response,
    }
}

/// Every route of the daemon, in API.md's order.
pub const ROUTES: &[Route] = &[
    route(
        Method::Get,
        "/health",
        "Whether the daemon and each model are ready",
        Body::None,
        Body::Json("HealthResponse"),
    ),
    route(
        Method::Get,
        "/v1/models",
        "The served models",
        Body::None,
        Body::Json("ModelList"),
    ),
    route(
        Method::Get,
        "/metrics",
        "Prometheus counters",
        Body::None,
        Body::Text("text/plain; version=0.0.4"),
    ),
    route(
        Method::Post,
        "/v1/score",
        "Score candidates after a context: endorm's own call",
        Body::Json("ScoreRequest"),
        Body::Json("ScoreResponse"),
    ),
    route(
        Method::Post,
        "/v1/rerank",
        "Rerank documents for a query (Cohere v1, Jina, vLLM, Voyage)",
        Body::Json("RerankRequest"),
        Body::Json("RerankResponse"),
    ),
    route(
        Method::Post,
        "/v2/rerank",
        "Rerank documents for a query (Cohere v2)",
        Body::Json("RerankRequest"),
        Body::Json("RerankResponse"),
    ),
    route(
        Method::Post,
        "/rerank",
        "Rerank: text-embeddings-inference's shape for a body with `texts`, else /v1/rerank's",
        Body::OneOf(&["RerankRequest", "TeiRerankRequest"]),
        Body::SchemaOrList("RerankResponse", "TeiRank"),
    ),
    route(
        Method::Get,
        "/info",
        "The default model, as text-embeddings-inference describes itself",
        Body::None,
        Body::Json("TeiInfo"),
    ),
    route(
        Method::Post,
        "/v1/completions",
        "Log-probabilities of prompts (lm-evaluation-harness's local-completions)",
        Body::Json("CompletionRequest"),
        Body::Json("CompletionResponse"),
    ),
    route(
        Method::Post,
        "/get_reward",
        "Rewards of policy outputs (OpenRLHF's remote reward model)",
        Body::Json("RewardRequest"),
        Body::Json("RewardResponse"),
    ),
    route(
        Method::Post,
        "/tokenize",
        "Text to token ids (llama-server's and vLLM's fields)",
        Body::Json("TokenizeRequest"),
        Body::Json("TokenizeResponse"),
    ),
    route(
        Method::Post,
        "/detokenize",
        "Token ids to text",
        Body::Json("DetokenizeRequest"),
        Body::Json("DetokenizeResponse"),
    ),
    route(
        Method::Get,
        "/tokenizer_info",
        "A model's special tokens and chat template",
        Body::None,
        Body::Json("TokenizerInfoResponse"),
    ),
    route(
        Method::Get,
        "/openapi.json",
        "This document",
        Body::None,
        Body::Json("OpenApi"),
    ),
];

/// Every route as `METHOD /path`, comma-separated: what a 404 names.
pub fn route_list() -> String {
    let routes: Vec<String> = ROUTES
        .iter()
        .map(|r| format!("{} {}", r.method.name(), r.path))
        .collect();
    routes.join(", ")
}

/// The schemas of every request and response type (and what they contain).
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(
    super::HealthResponse,
    super::ModelList,
    super::ScoreRequest,
    super::ScoreResponse,
    super::RerankRequest,
    super::TeiRerankRequest,
    super::RerankResponse,
    super::TeiRank,
    super::TeiInfo,
    super::CompletionRequest,
    super::CompletionResponse,
    super::RewardRequest,
    super::RewardResponse,
    super::TokenizeRequest,
    super::TokenizeResponse,
    super::DetokenizeRequest,
    super::DetokenizeResponse,
    super::TokenizerInfoResponse,
    super::ErrorBody,
)))]
struct Schemas;

/// The OpenAPI document of the daemon's routes.
pub fn document() -> OpenApi {
    let mut doc = Schemas::openapi();
    doc.info = InfoBuilder::new()
        .title("endorm")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "A local reward model: endogenous rewards from a GGUF model's logits, over a Unix \
             socket (and loopback TCP with a bearer token). docs/API.md explains every field.",
        ))
        .build();
    let mut paths = PathsBuilder::new();
    for route in ROUTES {
        paths = paths.path(route.path, path_item(route));
    }
    doc.paths = paths.build();
    doc
}

/// The document as the daemon serves it and `docs/openapi.json` holds it: pretty JSON and a
/// newline.
pub fn document_json() -> String {
    let doc = document();
    let mut text = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

fn path_item(route: &Route) -> PathItem {
    let mut operation = OperationBuilder::new()
        .summary(Some(route.summary))
        .operation_id(Some(operation_id(route.path)));
    if let Some((media, schema)) = content(route.request) {
        operation = operation.request_body(Some(
            RequestBodyBuilder::new()
                .content(media, ContentBuilder::new().schema(Some(schema)).build())
                .required(Some(Required::True))
                .build(),
        ));
    }
    let mut ok = ResponseBuilder::new().description("Success");
    if let Some((media, schema)) = content(route.response) {
        ok = ok.content(media, ContentBuilder::new().schema(Some(schema)).build());
    }
    let error = ResponseBuilder::new()
        .description("An error: `{\"error\": {\"message\", \"type\", \"code\"}}` (API.md)")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    let operation = operation
        .response("200", ok.build())
        .response("4XX", error.clone())
        .response("5XX", error)
        .build();
    let method = match route.method {
        Method::Get => HttpMethod::Get,
        Method::Post => HttpMethod::Post,
    };
    PathItem::new(method, operation)
}

fn operation_id(path: &str) -> String {
    let id: String = path
        .trim_start_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    id.trim_end_matches("_json").to_owned()
}

fn content(body: Body) -> Option<(&'static str, RefOr<Schema>)> {
    let reference = |name: &str| RefOr::Ref(Ref::from_schema_name(name));
    match body {
        Body::None => None,
        // The document itself: any JSON object.
        Body::Json("OpenApi") => Some(("application/json", RefOr::T(Schema::default()))),
        Body::Json(name) => Some(("application/json", reference(name))),
        Body::OneOf(names) => {
            let one_of = names.iter().fold(OneOfBuilder::new(), |one_of, name| {
                one_of.item(reference(name))
            });
            Some(("application/json", RefOr::T(Schema::OneOf(one_of.build()))))
        }
        Body::SchemaOrList(name, item) => {
            let list = ArrayBuilder::new().items(reference(item)).build();
            let one_of = OneOfBuilder::new()
                .item(reference(name))
                .item(Schema::Array(list))
                .build();
            Some(("application/json", RefOr::T(Schema::OneOf(one_of))))
        }
        Body::Text(media) => Some((media, RefOr::T(Schema::default()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_a_route_names_is_in_the_document() {
        let doc = document();
        let schemas = doc.components.expect("components").schemas;
        let named = ROUTES.iter().flat_map(|r| [r.request, r.response]);
        for body in named {
            let names: Vec<&str> = match body {
                Body::Json("OpenApi") | Body::None | Body::Text(_) => vec![],
                Body::Json(name) => vec![name],
                Body::OneOf(names) => names.to_vec(),
                Body::SchemaOrList(a, b) => vec![a, b],
            };
            for name in names {
                assert!(schemas.contains_key(name), "no schema {name}");
            }
        }
        assert_eq!(doc.paths.paths.len(), ROUTES.len(), "one path per route");
    }

    #[test]
    fn the_score_request_lists_every_option_of_the_wire() {
        let json: serde_json::Value =
            serde_json::from_str(&document_json()).expect("the document is JSON");
        let request = &json["components"]["schemas"]["ScoreRequest"]["properties"];
        for field in [
            "model",
            "format",
            "messages",
            "prompt",
            "principle",
            "candidates",
            "aggregate",
            "alpha",
            "terminal",
            "return_tokens",
            "max_candidate_tokens",
            "consensus",
            "contrast",
            "reviewer",
            "reference_model",
        ] {
            assert!(request.get(field).is_some(), "ScoreRequest.{field}");
        }
        assert_eq!(
            json["components"]["schemas"]["ScoreRequest"]["required"],
            serde_json::json!(["candidates"])
        );
    }

    #[test]
    fn the_route_list_names_each_route_once() {
        let list = route_list();
        assert!(list.starts_with("GET /health, GET /v1/models"));
        assert_eq!(list.matches("POST /v1/score").count(), 1);
        assert_eq!(list.split(", ").count(), ROUTES.len());
    }
}
