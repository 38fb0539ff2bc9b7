"""Tests against the real daemon: `target/release/endorm serve` on a temporary socket."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from endorm import AsyncClient, Client, EndormError

QUESTION = "What is the capital of France?"


def test_health_and_models(client: Client) -> None:
    assert client.health()["status"] == "ok"
    models = client.models()
    assert models and "id" in models[0]


def test_score_ranks_paris_first(client: Client) -> None:
    r = client.score(["London.", "Paris."], prompt=QUESTION)
    assert [c.index for c in r.results] == [0, 1]
    assert r.best_index == 1
    assert r.results[1].rank == 1 and r.results[0].rank == 2
    assert r.results[1].score > r.results[0].score
    assert r.aggregate == "endo" and r.model
    assert r.results[0].n_tokens and r.results[0].tokens is None


def test_score_return_tokens(client: Client) -> None:
    r = client.score(["Paris."], prompt=QUESTION, return_tokens=True)
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
    direct = client.score(out.candidates, prompt=QUESTION)
    assert out.best_index == direct.order[0]
    assert out.best == out.candidates[direct.order[0]]
    assert out.scores == pytest.approx(direct.scores)


def test_score_options_reach_the_daemon(client: Client) -> None:
    # score = aggregate - neutral + reviewer (docs/API.md): the daemon got both options and the
    # client read the terms back.
    r = client.score(["London.", "Paris."], prompt=QUESTION, aggregate="endo_mean",
                     contrast="neutral", reviewer=True)
    assert r.aggregate == "endo_mean"
    for c in r.results:
        assert c.neutral is not None and c.reviewer is not None and c.endo_mean is not None
        assert c.score == pytest.approx(c.endo_mean - c.neutral + c.reviewer, abs=1e-9)
    plain = client.score(["London.", "Paris."], prompt=QUESTION, aggregate="endo_mean")
    assert all(c.neutral is None and c.reviewer is None for c in plain.results)
    assert [c.endo_mean for c in r.results] == pytest.approx([c.score for c in plain.results])

    cut = client.score(["Paris is the capital of France."], prompt=QUESTION,
                       max_candidate_tokens=1)
    whole = client.score(["Paris is the capital of France."], prompt=QUESTION)
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
    sync = client.score(["London.", "Paris."], prompt=QUESTION)

    async def run() -> list:
        async with AsyncClient(socket_path) as ac:
            assert (await ac.health())["status"] == "ok"
            r = await ac.score(["London.", "Paris."], prompt=QUESTION)

            async def gen(prompt: str) -> str:
                return "Paris."

            b = await ac.best_of_n(gen, QUESTION, 2)
            assert b.candidates == ["Paris.", "Paris."]
            return r.scores

    assert asyncio.run(run()) == pytest.approx(sync.scores)


def test_tcp_with_the_token_gives_the_socket_scores(client: Client, daemon: Any) -> None:
    on_socket = client.score(["London.", "Paris."], prompt=QUESTION)
    with Client(url=daemon.url, token=daemon.token) as tcp:
        assert tcp.score(["London.", "Paris."], prompt=QUESTION).scores == on_socket.scores

    async def run() -> list:
        async with AsyncClient(url=daemon.url + "/", token=daemon.token) as ac:
            return (await ac.score(["London.", "Paris."], prompt=QUESTION)).scores

    assert asyncio.run(run()) == on_socket.scores


def test_tcp_token_from_the_environment_and_without_one(
    daemon: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENDORM_TOKEN", daemon.token)
    with Client(url=daemon.url) as tcp:
        assert tcp.health()["status"] == "ok"
    monkeypatch.delenv("ENDORM_TOKEN")
    with Client(url=daemon.url) as tcp, pytest.raises(EndormError) as e:
        tcp.score(["Paris."], prompt=QUESTION)
    assert e.value.status == 401
    with pytest.raises(ValueError, match="not both"):
        Client("/tmp/x.sock", url=daemon.url)


def test_tcp_without_a_daemon_says_listen() -> None:
    with socket.socket() as s:  # a loopback port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(url=f"http://127.0.0.1:{port}", token="t") as tcp:
        with pytest.raises(EndormError) as e:
            tcp.health()
    assert e.value.status == 0 and "--listen" in e.value.message


def test_empty_candidates_is_400(client: Client) -> None:
    with pytest.raises(EndormError) as e:
        client.score([], prompt=QUESTION)
    assert e.value.status == 400
    assert "candidates" in e.value.message
    assert e.value.message in str(e.value)


def test_missing_socket_says_start_daemon(tmp_path: Path) -> None:
    with Client(str(tmp_path / "nope.sock")) as c:
        with pytest.raises(EndormError, match="endorm serve") as e:
            c.health()
    assert e.value.status == 0

    async def run() -> None:
        async with AsyncClient(str(tmp_path / "nope.sock")) as ac:
            await ac.score(["x"], prompt="y")

    with pytest.raises(EndormError, match="endorm serve"):
        asyncio.run(run())


def test_default_socket_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from endorm import default_socket

    monkeypatch.setenv("ENDORM_SOCKET", "/x/y.sock")
    assert default_socket() == "/x/y.sock"
    monkeypatch.delenv("ENDORM_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert default_socket() == "/run/user/7/endorm/endorm.sock"
