"""The OpenAI Python SDK, unmodified, on `/v1/completions`: the scoring subset (API.md).

Many evaluation scripts read log-likelihoods with the official SDK rather than lm-evaluation-harness:
`client.completions.create(prompt=..., max_tokens=0, echo=True, logprobs=k)`. The SDK parses the
answer into its own pydantic types, so a field of the wrong shape fails here. Values are checked
against llama.cpp's own log-probs of the same token ids (tests/data/lm-eval-endorm-tiny-llamacpp.json,
the reference test_lm_eval.py uses).
"""

from __future__ import annotations

import json

import openai
import pytest

from conftest import REPO, Daemon

REFERENCE = REPO / "tests" / "data" / "lm-eval-endorm-tiny-llamacpp.json"
TOLERANCE = 1e-3  # per token, as test_lm_eval.py's per sum


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=daemon.token, timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return json.loads(REFERENCE.read_text(encoding="utf-8"))["samples"]


def test_echoed_token_ids_give_llama_cpps_log_probs(daemon: Daemon, client: openai.OpenAI,
                                                   samples: list[dict]) -> None:
    for s in samples:
        ids = s["context_ids"] + s["continuation_ids"]
        response = client.completions.create(model=daemon.model, prompt=ids, max_tokens=0, echo=True,
                                             logprobs=1)
        assert response.object == "text_completion"
        assert response.model == daemon.model
        (choice,) = response.choices
        got = choice.logprobs.token_logprobs
        want = s["token_logprobs"]
        assert len(got) == len(want) == len(ids), s
        assert got[0] is None and want[0] is None
        for position, (g, w) in enumerate(zip(got[1:], want[1:]), start=1):
            assert abs(g - w) <= TOLERANCE, (s["doc_id"], s["choice"], position, g, w)
        assert choice.logprobs.top_logprobs[0] is None
        assert all(len(top) == 1 for top in choice.logprobs.top_logprobs[1:])
        assert response.usage.prompt_tokens == len(ids)
        assert response.usage.completion_tokens == 0
    # The check can fail: the same values one position off miss llama.cpp's by far more.
    shifted = [abs(a - b) for s in samples for a, b in zip(s["token_logprobs"][1:], s["token_logprobs"][2:])]
    assert max(shifted) > 100 * TOLERANCE


def test_a_text_prompt_echoes_its_tokens_and_offsets(daemon: Daemon, client: openai.OpenAI) -> None:
    prompt = "Question: What is the capital of France?\nAnswer: Paris"
    response = client.completions.create(model=daemon.model, prompt=prompt, max_tokens=0, echo=True,
                                         logprobs=3)
    (choice,) = response.choices
    tokens, offsets = choice.logprobs.tokens, choice.logprobs.text_offset
    assert "".join(tokens) == prompt == choice.text
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    # The best alternative at a position is at least as likely as the token that is there.
    for logprob, top in zip(choice.logprobs.token_logprobs[1:], choice.logprobs.top_logprobs[1:]):
        assert len(top) == 3
        assert max(top.values()) >= logprob - 1e-9
    assert choice.finish_reason == "length"


def test_several_prompts_come_back_in_order(daemon: Daemon, client: openai.OpenAI,
                                            samples: list[dict]) -> None:
    lists = [s["context_ids"] + s["continuation_ids"] for s in samples[:4]]
    response = client.completions.create(model=daemon.model, prompt=lists, max_tokens=0, echo=True,
                                         logprobs=0)
    assert [c.index for c in response.choices] == list(range(len(lists)))
    assert [len(c.logprobs.token_logprobs) for c in response.choices] == [len(ids) for ids in lists]
    assert response.usage.prompt_tokens == sum(len(ids) for ids in lists)


def test_max_tokens_1_appends_the_greedy_token(daemon: Daemon, client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    scored = client.completions.create(model=daemon.model, prompt=prompt, max_tokens=0, echo=True,
                                       logprobs=1)
    greedy = client.completions.create(model=daemon.model, prompt=prompt, max_tokens=1, echo=True,
                                       logprobs=1, temperature=0)
    (a,), (b,) = scored.choices, greedy.choices
    assert b.logprobs.tokens[:-1] == a.logprobs.tokens
    assert b.logprobs.token_logprobs[:-1] == a.logprobs.token_logprobs
    # The appended token is the likeliest one after the prompt: its own top-1 alternative.
    last_top = b.logprobs.top_logprobs[-1]
    assert list(last_top) == [b.logprobs.tokens[-1]]
    assert b.logprobs.token_logprobs[-1] == pytest.approx(last_top[b.logprobs.tokens[-1]])
    assert greedy.usage.completion_tokens == 1


def test_what_it_cannot_do_is_a_bad_request(daemon: Daemon, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=daemon.model, prompt="Hello", max_tokens=16)
    assert "max_tokens" in str(refused.value)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=daemon.model, prompt="Hello", max_tokens=0, echo=True, n=2)


def test_a_wrong_key_is_refused(daemon: Daemon) -> None:
    wrong = openai.OpenAI(base_url=daemon.url + "/v1", api_key="not-the-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model=daemon.model, prompt="Hello", max_tokens=0, echo=True)
