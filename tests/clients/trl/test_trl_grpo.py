"""TRL's own GRPOTrainer trains a policy with `endorm.trl.EndormReward` as its reward function.

Not in CI: TRL needs torch (gigabytes with its CUDA wheels), so CI's venv does not hold it and this
file is skipped there. Run by hand (docs/INTEGRATIONS.md, "TRL"):

    python3 -m venv .venv-trl && .venv-trl/bin/pip install -r tests/clients/trl/requirements-manual.txt
    .venv-trl/bin/python -m pytest -q tests/clients/trl

The policy is the default model itself, SmolLM2-135M-Instruct, which transformers reads from the
same GGUF file the daemon serves (no download). One training step with two prompts and two
completions each: TRL must call the reward function with its conversational batch, log it under
the function's name, and every reward must be the daemon's score of that completion among the
completions of its own prompt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import pytest

trl = pytest.importorskip("trl", reason="TRL (and torch) are not in CI's venv: run by hand")
datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[3]
MODEL = Path(
    os.environ.get(
        "ENDORM_TEST_MODEL",
        Path.home() / ".cache" / "endorm" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    )
).expanduser()
# The package under test from this working tree, not an installed copy.
sys.path.insert(0, str(REPO / "plugins" / "python" / "src"))

from endorm import Client  # noqa: E402
from endorm.trl import EndormReward  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Name a primary colour."]


class Recorded(EndormReward):
    """EndormReward that keeps every batch TRL passed and what it answered."""

    calls: List[Tuple[Sequence[Any], Sequence[Any], List[float]]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = []

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> List[float]:
        rewards = super().__call__(prompts=prompts, completions=completions, **columns)
        self.calls.append((list(prompts), list(completions), rewards))
        return rewards


def test_grpo_trains_a_step_on_endorm_rewards(daemon: Any, tmp_path: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL.parent, gguf_file=MODEL.name)
    # transformers de-quantizes the GGUF to fp32 but marks the model quantized, which Trainer
    # refuses to train: the same weights in a plain model.
    loaded = transformers.AutoModelForCausalLM.from_pretrained(MODEL.parent, gguf_file=MODEL.name)
    loaded.config.quantization_config = None
    policy = transformers.AutoModelForCausalLM.from_config(loaded.config)
    policy.load_state_dict(loaded.state_dict())
    dataset = datasets.Dataset.from_list(
        [{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS]
    )
    config = trl.GRPOConfig(
        output_dir=str(tmp_path),
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=8,
        max_steps=1,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    reward = Recorded(daemon.socket, aggregate="endo_mean")
    trainer = trl.GRPOTrainer(
        model=policy,
        processing_class=tokenizer,
        reward_funcs=[reward],
        args=config,
        train_dataset=dataset,
    )
    trainer.train()

    assert reward.calls, "GRPOTrainer never called the reward function"
    with Client(daemon.socket) as client:
        for prompts, completions, rewards in reward.calls:
            assert len(prompts) == len(completions) == len(rewards) == 4
            for question in QUESTIONS:
                messages = [{"role": "user", "content": question}]
                mine = [i for i, p in enumerate(prompts) if p == messages]
                assert len(mine) == 2, (question, prompts)
                texts = [completions[i][0]["content"] for i in mine]
                direct = client.score(messages, texts, aggregate="endo_mean")
                assert [rewards[i] for i in mine] == pytest.approx(direct.scores, abs=1e-9)
    logged = [k for entry in trainer.state.log_history for k in entry]
    assert any("endorm" in k for k in logged), logged
