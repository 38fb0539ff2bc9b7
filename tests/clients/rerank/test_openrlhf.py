"""OpenRLHF's remote reward model (`--reward.remote_url http://HOST:PORT/get_reward`) against the
daemon with `[server] auth = "none"`, run by OpenRLHF's own code.

`openrlhf` 0.11.2 cannot be imported whole here: `openrlhf/utils/__init__.py` imports torch and
transformers (its GPU stack). The code that calls the reward model, `openrlhf/utils/agent.py`
(`SingleTurnAgentExecutor.execute` and `_fetch_rewards_via_http`), needs only aiohttp and
`openrlhf/utils/logging_utils.py`, so the test loads those two files from the installed package
(installed with `--no-deps`) without running that `__init__`; the code itself runs unmodified.

What it sends (agent.py, `_fetch_rewards_via_http`): `aiohttp.ClientSession().post(url,
json=payload)` with `payload = {"query": [prompt + response, decoded with
skip_special_tokens=False], "prompts": [prompt], "labels": [label]}`: only `Content-Type:
application/json`, no `Authorization`. It reads `rewards`, `scores` (falling back to `rewards`) and
`extra_logs` of the answer.

The policy's generation (vLLM) and its Hugging Face tokenizer are stood in for: the tokenizer by
the daemon's own (`/tokenize`, `/detokenize`: SmolLM2's vocabulary, special-token text parsed and
written out, as `tokenizer(text)` and `tokenizer.decode(ids, skip_special_tokens=False)` do), the
engine by one that "samples" a fixed reply and the end-of-turn token. The prompt is SmolLM2's chat
template rendered with its generation prompt as `tokenizer.apply_chat_template` renders it (Jinja,
`trim_blocks`, `lstrip_blocks`), as OpenRLHF's prompt dataset does with `--apply_chat_template`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import sys
import types
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import pytest

from .support import QUERY, Endorm, close

REPLIES = ["Paris is the capital of France.", "I think it is London."]


def openrlhf_agent() -> types.ModuleType:
    """`openrlhf.utils.agent`, without `openrlhf/utils/__init__.py` (torch, transformers)."""
    spec = importlib.util.find_spec("openrlhf")
    assert spec is not None and spec.origin is not None, "openrlhf is not installed"
    utils = types.ModuleType("openrlhf.utils")
    utils.__path__ = [str(Path(spec.origin).parent / "utils")]
    sys.modules.setdefault("openrlhf.utils", utils)
    return importlib.import_module("openrlhf.utils.agent")


class Ids(list):
    """A row of `tokenizer(..., return_tensors="pt")["input_ids"]`: OpenRLHF calls `.tolist()`."""

    def tolist(self) -> list[int]:
        return list(self)


class DaemonTokenizer:
    """The policy's tokenizer, SmolLM2's, served by the daemon."""

    def __init__(self, daemon: Endorm) -> None:
        self.daemon = daemon

    def __call__(self, text: str, add_special_tokens: bool = True,
                 return_tensors: Any = None) -> dict:
        tokens = self.daemon.call("/tokenize", {"content": text, "add_special": add_special_tokens,
                                                "parse_special": True})["tokens"]
        return {"input_ids": [Ids(tokens)]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        assert not skip_special_tokens
        return self.daemon.call("/detokenize", {"tokens": list(ids)})["content"]


class OneReplyEngine:
    """vLLM's engine, as `execute` uses it, always generating `reply` (token ids)."""

    def __init__(self, reply: list[int]) -> None:
        self.reply = reply

    async def generate(self, prompt_token_ids: list[int], sampling_params: Any,
                       multi_modal_data: Any = None) -> Any:
        output = SimpleNamespace(token_ids=list(self.reply), finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[output])


def chat_prompt(daemon: Endorm, question: str) -> str:
    """The model's chat template with its generation prompt, as transformers renders it."""
    info = daemon.call("/tokenizer_info")
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    return env.from_string(info["chat_template"]).render(
        messages=[{"role": "user", "content": question}], add_generation_prompt=True,
        bos_token=info["bos_token"], eos_token=info["eos_token"])


def end_of_turn(daemon: Endorm) -> list[int]:
    eos = daemon.call("/tokenizer_info")["eos_token"]
    body = {"content": eos, "add_special": False, "parse_special": True}
    return daemon.call("/tokenize", body)["tokens"]


def test_single_turn_rollout_reward_is_chat_endo(open_daemon: Endorm) -> None:
    agent = openrlhf_agent()
    executor = agent.SingleTurnAgentExecutor(open_daemon.url + "/get_reward")
    prompt = chat_prompt(open_daemon, QUERY)
    assert prompt.endswith("<|im_start|>assistant\n"), prompt
    tokenizer = DaemonTokenizer(open_daemon)
    expected = open_daemon.score(QUERY, REPLIES).endo
    for reply, endo in zip(REPLIES, expected):
        ids = tokenizer(reply, add_special_tokens=False)["input_ids"][0].tolist()
        engine = OneReplyEngine(ids + end_of_turn(open_daemon))
        params = SimpleNamespace(max_tokens=64, logprobs=None)
        output = asyncio.run(executor.execute(prompt, "", params, 512, tokenizer, engine))
        # OpenRLHF logs and swallows a failed request, leaving the reward None.
        assert output["reward"] is not None, "no reward: see the log of OpenRLHF's executor"
        # The answer's list for the one query sent, as OpenRLHF's own `serve_rm` answers.
        assert output["reward"] == [close(endo)]
        assert output["scores"] == [close(endo)]
        assert output["extra_logs"] == {}
    assert expected[0] > expected[1]


def test_a_batch_as_openrlhf_shards_it(open_daemon: Endorm) -> None:
    """`_fetch_rewards_via_http` with several queries, one server: one request with all of them;
    padding after the end of turn is not scored, an empty response gets 0."""
    agent = openrlhf_agent()
    executor = agent.SingleTurnAgentExecutor(open_daemon.url + "/get_reward")
    prompt = chat_prompt(open_daemon, QUERY)
    queries = [f"{prompt}{REPLIES[0]}<|im_end|>",
               f"{prompt}{REPLIES[1]}<|im_end|><|im_end|><|im_end|>",  # padding after the end
               prompt]  # an empty response
    answers = asyncio.run(executor._fetch_rewards_via_http(queries, [prompt] * 3, ["", "", ""]))
    assert len(answers) == 1
    expected = open_daemon.score(QUERY, REPLIES).endo
    assert answers[0]["rewards"] == [close(expected[0]), close(expected[1]), 0.0]
    assert answers[0]["scores"] == answers[0]["rewards"]


def test_the_default_daemon_refuses_a_request_without_token(daemon: Endorm) -> None:
    """Why OpenRLHF needs `auth = "none"`: it sends no Authorization header."""
    body = b'{"query": ["hi"], "prompts": ["hi"], "labels": [""]}'
    request = urllib.request.Request(daemon.url + "/get_reward", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 401
