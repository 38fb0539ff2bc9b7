"""lm-evaluation-harness, unmodified, against the real daemon: the recipe of docs/INTEGRATIONS.md.

Runs the real `lm_eval` CLI (`--model local-completions`, `tokenizer_backend=remote`) on the tiny
local task tests/clients/lm_eval_task/, reads the per-sample log-likelihoods it logs
(`--log_samples`), and checks them against llama.cpp's own values for the same token ids
(tests/data/lm-eval-endorm-tiny-llamacpp.json, written by scripts/lm-eval-reference.py with
llama-cpp-python on the kernels endorm builds).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, Daemon

REFERENCE = REPO / "tests" / "data" / "lm-eval-endorm-tiny-llamacpp.json"
TOLERANCE = 1e-3


def lm_eval_cli() -> str:
    beside = Path(sys.executable).parent / "lm_eval"  # the venv's own, when pytest runs from one
    found = str(beside) if beside.exists() else shutil.which("lm_eval")
    if not found:
        pytest.skip("no lm_eval CLI (pip install -r tests/clients/requirements.txt)")
    return found


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def run(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One `lm_eval` run, as the recipe gives it; its samples, log and output folder."""
    out = tmp_path_factory.mktemp("lm_eval")
    env = {
        **os.environ,
        "OPENAI_API_KEY": daemon.token,  # local-completions sends it as `Authorization: Bearer`
        "HF_HOME": str(out / "hf"),  # datasets' cache of the local JSON, not the user's
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    model_args = ",".join([
        f"model={daemon.model}",
        f"base_url={daemon.url}/v1/completions",
        "tokenizer_backend=remote",
        f"auth_token={daemon.token}",  # the remote tokenizer's requests (/tokenizer_info, /tokenize)
    ])
    command = [
        lm_eval_cli(), "--model", "local-completions", "--model_args", model_args,
        "--include_path", "tests/clients/lm_eval_task", "--tasks", "endorm_tiny",
        "--log_samples", "--output_path", str(out / "results"),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"lm_eval exited {done.returncode}:\n{log}\ndaemon:\n{daemon.log_text()}"
    files = sorted((out / "results").rglob("samples_endorm_tiny_*.jsonl"))
    assert len(files) == 1, f"expected one samples file under {out}: {files}\n{log}"
    samples = [json.loads(line) for line in files[0].read_text(encoding="utf-8").splitlines()]
    return {"samples": sorted(samples, key=lambda s: s["doc_id"]), "log": log}


def logged(run: dict) -> list[dict]:
    """(doc_id, choice, context, continuation, log-likelihood, is_greedy) of every request lm_eval made."""
    rows = []
    for sample in run["samples"]:
        for choice, (args, resp) in enumerate(zip(sample["arguments"].values(), sample["resps"])):
            ll, greedy = resp[0]  # lm_eval logs both as strings
            rows.append({
                "doc_id": sample["doc_id"], "choice": choice,
                "context": args["arg_0"], "continuation": args["arg_1"],
                "loglikelihood": float(ll), "is_greedy": str(greedy) == "True",
            })
    return rows


def test_lm_eval_used_endorms_tokenizer(daemon: Daemon, run: dict) -> None:
    assert "Using tokenizer remote" in run["log"], run["log"]
    daemon_log = daemon.log_text()
    assert 'route="/tokenizer_info" status=200' in daemon_log, daemon_log
    assert 'route="/tokenize" status=200' in daemon_log, daemon_log
    assert 'route="/v1/completions" status=200' in daemon_log, daemon_log


def test_same_requests_and_token_ids_as_the_reference(daemon: Daemon, run: dict, reference: dict) -> None:
    rows = logged(run)
    want = reference["samples"]
    assert [(r["doc_id"], r["choice"], r["context"], r["continuation"]) for r in rows] == [
        (s["doc_id"], s["choice"], s["context"], s["continuation"]) for s in want
    ]
    # lm_eval's ids are endorm's /tokenize of the split text (lm-eval's `_encode_pair`); they must
    # be the ids llama-cpp-python scored.
    for s in want:
        context, continuation = s["context"], s["continuation"]
        moved = len(context) - len(context.rstrip())
        if moved:
            context, continuation = context[:-moved], context[-moved:] + continuation
        tok = lambda text: daemon.post("/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"]  # noqa: E731
        whole, ctx = tok(context + continuation), tok(context)
        assert (ctx, whole[len(ctx):]) == (s["context_ids"], s["continuation_ids"]), s


def test_log_likelihoods_equal_llama_cpp(run: dict, reference: dict) -> None:
    rows = logged(run)
    want = reference["samples"]
    assert len(rows) == len(want) == 14
    deltas = [abs(r["loglikelihood"] - s["loglikelihood"]) for r, s in zip(rows, want)]
    print(f"lm_eval vs llama.cpp: max |Δ| {max(deltas):.2e} over {len(deltas)} log-likelihoods")
    for r, s, d in zip(rows, want, deltas):
        assert d <= TOLERANCE, f"{r} vs llama.cpp {s['loglikelihood']}"
        if s["greedy_margin"] > TOLERANCE:
            assert r["is_greedy"] == s["is_greedy"], (r, s)
    # The check can fail: with the context/continuation split one token off, either way, every
    # sample would miss llama.cpp's value by more than the tolerance.
    for shift in (-1, 1):
        off = [sum(s["token_logprobs"][len(s["context_ids"]) + shift:]) for s in want]
        assert min(abs(r["loglikelihood"] - o) for r, o in zip(rows, off)) > TOLERANCE, shift
    # And the harness's accuracy follows llama.cpp's values: acc is 1 where the answer is the likeliest.
    for sample in run["samples"]:
        lls = [s["loglikelihood"] for s in want if s["doc_id"] == sample["doc_id"]]
        expected = float(max(range(len(lls)), key=lls.__getitem__) == sample["doc"]["answer"])
        assert sample["acc"] == expected, sample
