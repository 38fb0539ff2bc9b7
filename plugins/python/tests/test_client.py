"""Tests against the real daemon: `target/release/endorm serve` on a temporary socket."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from endorm import (
    APIConnectionError,
    APIStatusError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    EndormError,
    NotFoundError,
    UnprocessableEntityError,
)

QUESTION = "What is the capital of France?"
ANSWERS = ["London.", "Paris.", "Berlin.", "Rome."]


def test_health_and_models(client: Client) -> None:
    assert client.health()["status"] == "ok"
    models = client.models()
    assert models and "id" in models[0]


def test_score_ranks_paris_first(client: Client) -> None:
    r = client.score(QUESTION, ["London.", "Paris."])
    assert [c.index for c in r.results] == [0, 1]
    assert r.best_index == 1
    assert r.results[1].rank == 1 and r.results[0].rank == 2
    assert r.results[1].score > r.results[0].score
    assert r.aggregate == "endo" and r.model
    assert r.results[0].n_tokens and r.results[0].tokens is None


def test_score_return_tokens(client: Client) -> None:
    r = client.score(QUESTION, ["Paris."], return_tokens=True)
    toks = r.results[0].tokens
    assert toks and len(toks) == r.results[0].n_tokens


def test_rerank_best_first(client: Client) -> None:
    r = client.rerank(QUESTION, ["London.", "Paris.", "Berlin."])
    assert r.results[0].index == 1
    assert r.results[0].document == "Paris."
    scores = [x.relevance_score for x in r.results]
    assert scores == sorted(scores, reverse=True)
    assert len(client.rerank(QUESTION, ["London.", "Paris."], top_n=1).results) == 1


def test_best_of_n_picks_daemon_best(client: Client) -> None:
    answers = iter(["London.", "Paris.", "Berlin."])
    out = client.best_of_n(lambda prompt: next(answers), QUESTION, 3)
    assert out.candidates == ["London.", "Paris.", "Berlin."]
    direct = client.score(QUESTION, out.candidates)
    assert out.best_index == direct.order[0]
    assert out.best == out.candidates[direct.order[0]]
    assert out.scores == pytest.approx(direct.scores)


def test_score_options_reach_the_daemon(client: Client) -> None:
    # score = aggregate - neutral + reviewer (docs/API.md): the daemon got both options and the
    # client read the terms back.
    r = client.score(QUESTION, ["London.", "Paris."], aggregate="endo_mean",
                     contrast="neutral", reviewer=True)
    assert r.aggregate == "endo_mean"
    for c in r.results:
        assert c.neutral is not None and c.reviewer is not None and c.endo_mean is not None
        assert c.score == pytest.approx(c.endo_mean - c.neutral + c.reviewer, abs=1e-9)
    plain = client.score(QUESTION, ["London.", "Paris."], aggregate="endo_mean")
    assert all(c.neutral is None and c.reviewer is None for c in plain.results)
    assert [c.endo_mean for c in r.results] == pytest.approx([c.score for c in plain.results])

    cut = client.score(QUESTION, ["Paris is the capital of France."], max_candidate_tokens=1)
    whole = client.score(QUESTION, ["Paris is the capital of France."])
    # One token of the text, plus the end-of-turn token a chat reply always ends with.
    assert cut.results[0].n_tokens == 2 < (whole.results[0].n_tokens or 0)


def test_best_of_n_with_consensus(client: Client) -> None:
    samples = iter(["The capital is Paris.", "The capital is Paris, France.", "London."])
    out = client.best_of_n(lambda prompt: next(samples), QUESTION, 3, consensus=1.0)
    agreement = [c.agreement for c in out.score.results]
    assert all(a is not None and 0.0 <= a <= 1.0 for a in agreement)
    assert agreement[2] < min(agreement[0], agreement[1])  # "London." shares no word
    assert out.best_index == max(range(3), key=lambda i: out.scores[i])


def test_async_client_same_scores(client: Client, socket_path: str) -> None:
    sync = client.score(QUESTION, ["London.", "Paris."])

    async def run() -> list:
        async with AsyncClient(socket_path) as ac:
            assert (await ac.health())["status"] == "ok"
            r = await ac.score(QUESTION, ["London.", "Paris."])

            async def gen(prompt: str) -> str:
                return "Paris."

            b = await ac.best_of_n(gen, QUESTION, 2)
            assert b.candidates == ["Paris.", "Paris."]
            return r.scores

    assert asyncio.run(run()) == pytest.approx(sync.scores)


def test_tcp_with_the_token_gives_the_socket_scores(client: Client, daemon: Any) -> None:
    on_socket = client.score(QUESTION, ["London.", "Paris."])
    with Client(url=daemon.url, token=daemon.token) as tcp:
        assert tcp.score(QUESTION, ["London.", "Paris."]).scores == on_socket.scores

    async def run() -> list:
        async with AsyncClient(url=daemon.url + "/", token=daemon.token) as ac:
            return (await ac.score(QUESTION, ["London.", "Paris."])).scores

    assert asyncio.run(run()) == on_socket.scores


def test_tcp_token_from_the_environment_and_without_one(
    daemon: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENDORM_TOKEN", daemon.token)
    with Client(url=daemon.url) as tcp:
        assert tcp.health()["status"] == "ok"
    monkeypatch.delenv("ENDORM_TOKEN")
    with Client(url=daemon.url) as tcp, pytest.raises(AuthenticationError) as e:
        tcp.score(QUESTION, ["Paris."])
    assert e.value.status_code == 401
    with pytest.raises(ValueError, match="not both"):
        Client("/tmp/x.sock", url=daemon.url)


def test_tcp_without_a_daemon_says_listen() -> None:
    with socket.socket() as s:  # a loopback port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(url=f"http://127.0.0.1:{port}", token="t") as tcp:
        with pytest.raises(APIConnectionError) as e:
            tcp.health()
    assert "--listen" in e.value.message and e.value.where == f"http://127.0.0.1:{port}"


def test_empty_candidates_is_400(client: Client) -> None:
    with pytest.raises(BadRequestError) as e:
        client.score(QUESTION, [])
    assert isinstance(e.value, APIStatusError) and isinstance(e.value, EndormError)
    assert e.value.status_code == 400 and e.value.code and e.value.type
    assert "candidates" in e.value.message
    assert str(e.value) == f"400 {e.value.code}: {e.value.message}"
    assert e.value.body == {"error": {"message": e.value.message, "type": e.value.type,
                                      "code": e.value.code}}


def test_missing_socket_says_start_daemon(tmp_path: Path) -> None:
    with Client(str(tmp_path / "nope.sock"), max_retries=0) as c:
        with pytest.raises(APIConnectionError, match="endorm serve"):
            c.health()

    async def run() -> None:
        async with AsyncClient(str(tmp_path / "nope.sock"), max_retries=0) as ac:
            await ac.score("y", ["x"])

    with pytest.raises(APIConnectionError, match="endorm serve"):
        asyncio.run(run())


def test_default_socket_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from endorm import default_socket

    monkeypatch.setenv("ENDORM_SOCKET", "/x/y.sock")
    assert default_socket() == "/x/y.sock"
    monkeypatch.delenv("ENDORM_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert default_socket() == "/run/user/7/endorm/endorm.sock"


def test_a_conversation_is_the_prompt(client: Client) -> None:
    # Chat format: a prompt's text is one user message, so the two forms are one request.
    as_text = client.score(QUESTION, ["London.", "Paris."])
    as_messages = client.score([{"role": "user", "content": QUESTION}], ["London.", "Paris."])
    assert as_messages.scores == as_text.scores


def test_a_str_or_a_swapped_call_is_refused_before_sending(client: Client) -> None:
    with pytest.raises(TypeError, match="candidates must be a list of texts, not a str"):
        client.score(QUESTION, "Paris.")
    # The old order, score(candidates, prompt): the prompt lands in candidates.
    with pytest.raises(TypeError, match="not a str"):
        client.score(["London.", "Paris."], QUESTION)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="multiple values for argument 'prompt'"):
        client.score(["London.", "Paris."], prompt=QUESTION)  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"candidates\[1\] is a int"):
        client.score(QUESTION, ["Paris.", 1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="prompt must be a str or a list of"):
        client.score(["What?"], ["Paris."])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not NoneType"):
        client.score(None, ["Paris."])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="positional"):
        client.score(QUESTION, ["Paris."], "raw")  # type: ignore[misc]
    with pytest.raises(TypeError, match="documents must be a list of texts, not a str"):
        client.rerank(QUESTION, "Paris.")


def test_status_errors_have_their_class(client: Client) -> None:
    with pytest.raises(NotFoundError) as missing:
        client.score(QUESTION, ["Paris."], model="no-such-model")
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"
    # More tokens than the context holds (SmolLM2: 4096 here): 422, not retried, nothing scored.
    with pytest.raises(UnprocessableEntityError) as long:
        client.score(QUESTION, ["word " * 6000])
    assert long.value.status_code == 422 and long.value.code == "context_length_exceeded"
    with pytest.raises(BadRequestError, match="unknown variant `best`, expected one of `endo`"):
        client.score(QUESTION, ["Paris."], aggregate="best")  # type: ignore[arg-type]


def test_post_passes_a_body_and_its_answer_through(client: Client, socket_path: str) -> None:
    body = {"prompt": QUESTION, "candidates": ["Paris.", "London."], "aggregate": "logprob"}
    answer = client.post("/v1/score", body)
    assert isinstance(answer, dict) and answer["model"]
    typed = client.score(QUESTION, ["Paris.", "London."], aggregate="logprob")
    assert [r["score"] for r in answer["results"]] == typed.scores
    # A field the client does not know reaches the daemon, which refuses it with its own error.
    with pytest.raises(BadRequestError) as unknown:
        client.post("/v1/score", {**body, "no_such_field": 1})
    assert unknown.value.code == "invalid_request" and "no_such_field" in unknown.value.message
    assert isinstance(unknown.value.body, dict) and "error" in unknown.value.body
    with pytest.raises(NotFoundError):
        client.post("/v1/no-such-route", body)
    with pytest.raises(ValueError, match="a route of the daemon"):
        client.post("http://elsewhere/v1/score", body)

    async def run() -> Any:
        async with AsyncClient(socket_path) as a:
            return await a.post("/v1/score", body)

    assert asyncio.run(run())["results"] == answer["results"]


def test_rerank_keeps_the_reward(client: Client) -> None:
    docs = ["London.", "Paris.", "Berlin."]
    ranked = client.rerank(QUESTION, docs)
    scored = client.score(QUESTION, docs)  # rerank scores endo in chat format, as /v1/score
    for item in ranked.results:
        assert item.reward == pytest.approx(scored.results[item.index].endo, abs=1e-6)
    assert [i.reward for i in ranked.results] == sorted(scored.scores, reverse=True)
    assert sum(i.relevance_score for i in ranked.results) == pytest.approx(1.0)


def test_best_of_n_checks_its_options_before_generating(client: Client) -> None:
    calls = []

    def generate(prompt: str) -> str:
        calls.append(prompt)
        return "Paris."

    with pytest.raises(TypeError, match=r"not score\(\) options: \['agregate'\]"):
        client.best_of_n(generate, QUESTION, 4, agregate="endo_mean")
    with pytest.raises(ValueError, match="at least 1"):
        client.best_of_n(generate, QUESTION, 0)
    assert calls == []


def test_async_best_of_n_draws_concurrently(socket_path: str) -> None:
    n = len(ANSWERS)

    async def run() -> Any:
        started = 0
        all_started = asyncio.Event()

        async def generate(prompt: str) -> str:
            # Each draw waits until all n have started: drawn one after another, the first
            # would wait for ever (the timeout below fails the test).
            nonlocal started
            mine = started
            started += 1
            if started == n:
                all_started.set()
            await all_started.wait()
            return ANSWERS[mine]

        async with AsyncClient(socket_path) as ac:
            return await asyncio.wait_for(ac.best_of_n(generate, QUESTION, n), timeout=30)

    out = asyncio.run(run())
    assert out.candidates == ANSWERS  # gathered in the order they were drawn
    assert out.best == "Paris."
