"""endorm as a reward function for TRL's ``GRPOTrainer`` (and any trainer that calls reward
functions the same way: ``reward_func(prompts=..., completions=..., **columns) -> list[float]``).

    from trl import GRPOConfig, GRPOTrainer
    from endorm.trl import EndormReward

    trainer = GRPOTrainer(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        reward_funcs=[EndormReward(aggregate="endo_mean")],   # `endorm serve` on its default socket
        args=GRPOConfig(num_generations=8),
        train_dataset=dataset,
    )

GRPO compares the rewards of the completions of one prompt with each other (each is centred on
its group's mean), and endorm's scores are comparable exactly there: between the candidates of one
request. So the completions are grouped by their prompt and each group is scored in one
``/v1/score`` request, whatever order the trainer passes them in; the rewards come back in the
trainer's order. Keep GRPOConfig's ``scale_rewards`` at ``"group"`` (or ``"none"``): ``"batch"``
divides by a standard deviation over all prompts, whose scores are not on one scale.

Both of TRL's dataset formats work: *conversational* (``prompts[i]`` a list of messages,
``completions[i]`` ``[{"role": "assistant", "content": ...}]``) is scored in chat format, the
completion as the assistant's turn; *standard* (plain strings) in raw format, the completion as the
continuation of the prompt's text. No TRL import: this module only needs the endorm client.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ._client import SCORE_OPTIONS, Client
from ._types import Format

Prompt = Union[str, Sequence[Mapping[str, Any]]]
Completion = Union[str, Sequence[Mapping[str, Any]]]

#: What each batch decides, not the caller.
_PER_BATCH = {"format"}


class EndormReward:
    """A reward function: ``EndormReward(...)(prompts=..., completions=...)`` is one endogenous
    reward per completion, from the daemon on ``socket`` (default: where ``endorm serve``
    listens), or on its TCP listener with ``url`` and ``token`` (as :class:`endorm.Client`), for
    trainers on other machines.

    ``aggregate`` defaults to ``endo_mean`` (per-token mean: completions of one prompt differ in
    length, and a sum favours the short ones; docs/QUALITY.md). ``score_options`` go into every
    ``/v1/score`` request as they are (``model``, ``principle``, ``alpha``, ``terminal``,
    ``consensus``, ``contrast``, ...: docs/API.md). ``max_retries`` is the client's (a 503 or a
    lost connection, e.g. a daemon restarting, is retried that many times).
    """

    #: TRL logs each reward function's mean under its ``__name__``.
    __name__ = "endorm"

    def __init__(
        self,
        socket: Optional[str] = None,
        *,
        url: Optional[str] = None,
        token: Optional[str] = None,
        aggregate: str = "endo_mean",
        timeout: float = 600.0,
        max_retries: int = 2,
        **score_options: Any,
    ) -> None:
        # A misspelt option fails here, when the trainer is set up, not after the first rollout.
        allowed = SCORE_OPTIONS - _PER_BATCH
        unknown = sorted(set(score_options) - allowed)
        if unknown:
            raise TypeError(f"not /v1/score options: {unknown}; these are: {sorted(allowed)}")
        self._client = Client(socket, url=url, token=token, timeout=timeout, max_retries=max_retries)
        self._options: Dict[str, Any] = {"aggregate": aggregate, **score_options}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "EndormReward":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(
        self, prompts: Sequence[Prompt], completions: Sequence[Completion], **_columns: Any
    ) -> List[float]:
        if len(prompts) != len(completions):
            raise ValueError(
                f"{len(prompts)} prompts but {len(completions)} completions: one prompt per completion"
            )
        groups: Dict[str, Tuple[Prompt, List[int]]] = {}
        for i, prompt in enumerate(prompts):
            key = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
            groups.setdefault(key, (prompt, []))[1].append(i)
        rewards: List[float] = [0.0] * len(completions)
        for prompt, indices in groups.values():
            texts = [_completion_text(completions[i]) for i in indices]
            context, format = _context(prompt)
            result = self._client.score(context, texts, format=format, **self._options)
            for i, score in zip(indices, result.scores):
                rewards[i] = score
        return rewards


def _context(prompt: Prompt) -> Tuple[Prompt, Format]:
    """What the completions answer, and the format they are scored in."""
    if isinstance(prompt, str):
        return prompt, "raw"
    messages = [dict(m) for m in prompt]
    if messages and messages[-1].get("role") == "assistant":
        # TRL then continues that message; chat format scores a new assistant turn instead.
        raise ValueError(
            "the prompt ends with an assistant message, which the completion continues: "
            "endorm's chat format scores a whole assistant turn, so this cannot be scored as chat"
        )
    return messages, "chat"


def _completion_text(completion: Completion) -> str:
    """A standard completion is its text; a conversational one is one assistant message."""
    if isinstance(completion, str):
        return completion
    messages = list(completion)
    if len(messages) != 1 or messages[0].get("role") != "assistant":
        roles = [m.get("role") for m in messages]
        raise ValueError(
            f"a conversational completion must be one assistant message, got roles {roles}"
        )
    content = messages[0].get("content", "")
    if not isinstance(content, str):
        raise ValueError("a completion's content must be text, not a list of parts")
    return content
