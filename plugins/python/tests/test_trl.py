"""endorm.trl.EndormReward against the real daemon, called with the two dataset shapes TRL's
trainers pass (standard strings, conversational messages). The run with TRL's own GRPOTrainer
is tests/clients/trl (by hand: it needs torch)."""

from __future__ import annotations

from typing import Any

import pytest

from endorm import Client
from endorm.trl import EndormReward

ADD = "def add(a, b):\n"
CAPITAL = "The capital of France is"


def test_standard_prompts_are_grouped_and_scored_in_raw_format(
    client: Client, socket_path: str
) -> None:
    # Interleaved, as a trainer may pass them: each prompt's completions must still be scored in
    # one request, and come back in the trainer's order.
    prompts = [ADD, CAPITAL, ADD, CAPITAL, ADD]
    completions = ["    return a + b\n", " Paris.", "    return a - b\n", " London.", "    pass\n"]
    with EndormReward(socket_path) as reward:
        rewards = reward(prompts=prompts, completions=completions, trainer_state=None, answer=[1] * 5)
    add = client.score(ADD, [completions[i] for i in (0, 2, 4)], format="raw",
                       aggregate="endo_mean")
    capital = client.score(CAPITAL, [completions[i] for i in (1, 3)], format="raw",
                           aggregate="endo_mean")
    expected = [add.scores[0], capital.scores[0], add.scores[1], capital.scores[1], add.scores[2]]
    assert rewards == pytest.approx(expected, abs=1e-9)
    assert rewards[0] > rewards[2]  # a + b, not a - b


def test_conversational_prompts_are_scored_as_chat(client: Client, socket_path: str) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    completions = [[{"role": "assistant", "content": text}] for text in ("London.", "Paris.")]
    with EndormReward(socket_path, aggregate="endo") as reward:
        rewards = reward(prompts=[question, question], completions=completions)
    direct = client.score(question, ["London.", "Paris."], aggregate="endo")
    assert rewards == pytest.approx(direct.scores, abs=1e-9)
    assert rewards[1] > rewards[0]


def test_over_tcp_as_on_the_socket(socket_path: str, daemon: Any) -> None:
    completions = [[{"role": "assistant", "content": t}] for t in ("London.", "Paris.")]
    question = [{"role": "user", "content": "What is the capital of France?"}]
    with EndormReward(socket_path) as local, EndormReward(url=daemon.url, token=daemon.token) as tcp:
        assert tcp(prompts=[question] * 2, completions=completions) == local(
            prompts=[question] * 2, completions=completions
        )


def test_malformed_batches_are_refused(socket_path: str) -> None:
    with EndormReward(socket_path) as reward:
        with pytest.raises(ValueError, match="one prompt per completion"):
            reward(prompts=[ADD], completions=["a", "b"])
        with pytest.raises(ValueError, match="one assistant message"):
            reward(prompts=[[{"role": "user", "content": "hi"}]],
                   completions=[[{"role": "user", "content": "hi"}]])
        with pytest.raises(TypeError, match="not /v1/score options: \\['agregate'\\]"):
            EndormReward(socket_path, agregate="endo")
        with pytest.raises(TypeError, match="'format'"):
            EndormReward(socket_path, format="raw")
        with pytest.raises(ValueError, match="ends with an assistant message"):
            reward(prompts=[[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "He"}]],
                   completions=[[{"role": "assistant", "content": "llo"}]])
