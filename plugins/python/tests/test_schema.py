"""The client against the daemon's wire schema, docs/openapi.json (derived from the Rust types of
src/api/): every field name the client sends or reads is in it, its Literal types list exactly the
schema's values, and it reads every field of the score and rerank results. The names on the
client's side come from its code (score()'s and rerank()'s keywords, the result dataclasses), so a
field added there is checked too. No daemon is needed."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, get_args

import pytest

from endorm import (
    Aggregate,
    CandidateScore,
    Client,
    Contrast,
    Format,
    HealthStatus,
    RerankItem,
    RerankResult,
    ScoreResult,
    TokenScore,
)
from endorm._client import SCORE_OPTIONS

SCHEMA = Path(
    os.environ.get("ENDORM_OPENAPI", Path(__file__).resolve().parents[3] / "docs" / "openapi.json")
)

#: Fields of the rerank response the client does not read: the same list again under Voyage's
#: name (`data`), Cohere's `meta` and the response `id`.
RERANK_NOT_READ = {"id", "data", "meta"}


@pytest.fixture(scope="module")
def doc() -> Dict[str, Any]:
    if not SCHEMA.exists():
        pytest.fail(
            f"no wire schema at {SCHEMA}: docs/openapi.json is generated from src/api/ "
            "(ENDORM_UPDATE_OPENAPI=1 cargo test --release --lib openapi)"
        )
    return json.loads(SCHEMA.read_text())


def resolve(doc: Dict[str, Any], schema: Dict[str, Any]) -> Dict[str, Any]:
    """``schema`` with its ``$ref`` followed (``#/components/schemas/X``, ``#/$defs/X``, ...)."""
    seen = 0
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
        seen += 1
        assert seen < 50, "a $ref cycle"
    return schema


def variants(doc: Dict[str, Any], schema: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The object schemas ``schema`` stands for: itself, or each of its allOf/anyOf/oneOf (an
    Option<T> is often ``oneOf: [null, T]``), without the null ones."""
    schema = resolve(doc, schema)
    out: List[Dict[str, Any]] = [schema]
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            out.extend(variants(doc, sub))
    return [s for s in out if s.get("type") != "null"]


def props(doc: Dict[str, Any], schema: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    found: Dict[str, Dict[str, Any]] = {}
    for s in variants(doc, schema):
        found.update(s.get("properties", {}))
    return found


def field(doc: Dict[str, Any], schema: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The schema of property ``name`` of ``schema``, through arrays to their items."""
    p = props(doc, schema)
    assert name in p, f"no field {name!r} in the schema (it has {sorted(p)})"
    s = p[name]
    for v in variants(doc, s):
        if "items" in v:
            return v["items"]
    return s


def enum_values(doc: Dict[str, Any], schema: Dict[str, Any]) -> Set[Any]:
    values: Set[Any] = set()
    for s in variants(doc, schema):
        values.update(s.get("enum", []))
        if "const" in s:
            values.add(s["const"])
    values.discard(None)
    return values


def body(doc: Dict[str, Any], path: str, method: str, status: Optional[str], name: str) -> Dict[str, Any]:
    """The request body (``status`` None) or the response of ``status`` of a route, from
    ``paths``; without it, the component named ``name`` (the Rust type, docs/API.md)."""
    op = doc.get("paths", {}).get(path, {}).get(method)
    if op is not None:
        part = op.get("requestBody") if status is None else op.get("responses", {}).get(status)
        if part is not None:
            part = resolve(doc, part)
            return part["content"]["application/json"]["schema"]
    for where in (("components", "schemas"), ("$defs",), ("definitions",)):
        node: Any = doc
        for key in where:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if name in node:
            return node[name]
    raise AssertionError(f"{method.upper()} {path} ({name}) is not in {SCHEMA}")


def names(cls: Any) -> Set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def keywords(method: Any) -> Set[str]:
    return {
        n for n, p in inspect.signature(method).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def missing(sent_or_read: Set[str], schema_fields: Any) -> List[str]:
    return sorted(sent_or_read - set(schema_fields))


def test_what_score_sends_is_in_the_schema(doc: Dict[str, Any]) -> None:
    request = body(doc, "/v1/score", "post", None, "ScoreRequest")
    sent = {"prompt", "messages", "candidates"} | SCORE_OPTIONS
    assert missing(sent, props(doc, request)) == []
    assert missing({"role", "content"}, props(doc, field(doc, request, "messages"))) == []
    for name, literal in (("format", Format), ("aggregate", Aggregate), ("contrast", Contrast)):
        assert set(get_args(literal)) == enum_values(doc, field(doc, request, name)), name


def test_what_score_reads_is_the_schema(doc: Dict[str, Any]) -> None:
    response = body(doc, "/v1/score", "post", "200", "ScoreResponse")
    result = field(doc, response, "results")
    token = field(doc, result, "tokens")
    for cls, schema in ((ScoreResult, response), (CandidateScore, result), (TokenScore, token)):
        have = props(doc, schema)
        assert missing(names(cls), have) == [], f"{cls.__name__} reads fields the wire lacks"
        assert sorted(set(have) - names(cls)) == [], f"{cls.__name__} does not read these"
    assert set(get_args(Aggregate)) == enum_values(doc, props(doc, response)["aggregate"])


def test_what_rerank_sends_and_reads_is_in_the_schema(doc: Dict[str, Any]) -> None:
    request = body(doc, "/v1/rerank", "post", None, "RerankRequest")
    sent = {"query", "documents", "return_documents"} | keywords(Client.rerank)
    assert missing(sent, props(doc, request)) == []
    response = body(doc, "/v1/rerank", "post", "200", "RerankResponse")
    assert missing(names(RerankResult), props(doc, response)) == []
    assert sorted(set(props(doc, response)) - names(RerankResult) - RERANK_NOT_READ) == []
    item = field(doc, response, "results")
    assert missing(names(RerankItem), props(doc, item)) == []
    assert sorted(set(props(doc, item)) - names(RerankItem)) == []
    assert missing({"text"}, props(doc, field(doc, item, "document"))) == []


def test_what_health_models_and_errors_read_is_in_the_schema(doc: Dict[str, Any]) -> None:
    health = body(doc, "/health", "get", "200", "HealthResponse")
    assert missing({"status", "models"}, props(doc, health)) == []
    assert set(get_args(HealthStatus)) == enum_values(doc, props(doc, health)["status"])
    assert missing({"data"}, props(doc, body(doc, "/v1/models", "get", "200", "ModelList"))) == []
    try:
        error = body(doc, "/v1/score", "post", "400", "ErrorBody")
    except (AssertionError, KeyError):
        error = body(doc, "", "", None, "ErrorBody")
    assert missing({"message", "code", "type"}, props(doc, field(doc, error, "error"))) == []
