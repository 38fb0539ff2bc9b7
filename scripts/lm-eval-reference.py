#!/usr/bin/env python3
"""llama.cpp's own log-likelihoods for the tiny lm-evaluation-harness task, for tests/clients/test_lm_eval.py.

For every (context, choice) of tests/clients/lm_eval_task/endorm_tiny.jsonl this makes the request
lm-eval 0.4.13 makes (`local-completions`, `tokenizer_backend=remote`) and scores it with llama.cpp
through llama-cpp-python, independently of endorm:

- the pair: context = the doc's `context`, continuation = target_delimiter ("" in the task's YAML)
  + choice; trailing whitespace of the context moves to the continuation (`TemplateLM._encode_pair`);
- the ids: `whole = tok(context + continuation)`, `context_ids = tok(context)`,
  `continuation_ids = whole[len(context_ids):]`, where `tok` is llama.cpp's tokenizer with no BOS
  and special tokens parsed — what endorm's `/tokenize` does for lm-eval's
  `{"prompt": text, "add_special_tokens": false}`;
- the values: one sequence `context_ids + continuation_ids`, `logits_all`, each token's
  log-softmax (float64) at the position before it; the log-likelihood is the sum over the
  continuation (what lm-eval sums from `token_logprobs[ctxlen:-1]`), greedy when every continuation
  token is the arg-max.

Every position's log-prob is kept, so the test can show that a split one token off would fail.
Build llama-cpp-python with the kernels endorm uses (see .cargo/config.toml), then run this and
commit its output:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \\
        pip install llama-cpp-python==0.3.36 numpy
    scripts/lm-eval-reference.py MODEL.gguf > tests/data/lm-eval-endorm-tiny-llamacpp.json
"""

import hashlib
import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
from llama_cpp import Llama

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "tests" / "clients" / "lm_eval_task" / "endorm_tiny.jsonl"
TARGET_DELIMITER = ""  # endorm_tiny.yaml


def log_softmax(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64)
    top = row.max()
    return row - (top + np.log(np.exp(row - top).sum()))


def split(llm: Llama, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair` for a causal model."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    tok = lambda text: llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)  # noqa: E731
    whole = tok(context + continuation)
    context_ids = tok(context)
    return context_ids, whole[len(context_ids):]


def main() -> None:
    model = Path(sys.argv[1])
    # flash_attn=True: endorm leaves llama.cpp's "auto", which enables it on CPU.
    llm = Llama(model_path=str(model), logits_all=True, n_ctx=512, n_threads=2, flash_attn=True, verbose=False)
    samples = []
    for doc_id, line in enumerate(TASK.read_text(encoding="utf-8").splitlines()):
        doc = json.loads(line)
        for choice_index, choice in enumerate(doc["choices"]):
            context, continuation = doc["context"], TARGET_DELIMITER + choice
            context_ids, continuation_ids = split(llm, context, continuation)
            ids = context_ids + continuation_ids
            llm.reset()
            llm.eval(ids)
            logits = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
            token_logprobs: list[float | None] = [None]
            margins = []  # how far each continuation token is from the arg-max's side of a tie
            for i in range(1, len(ids)):
                row = log_softmax(logits[i - 1])
                token_logprobs.append(float(row[ids[i]]))
                if i >= len(context_ids):
                    others = np.delete(row, ids[i])
                    margins.append(float(row[ids[i]] - others.max()))
            samples.append({
                "doc_id": doc_id,
                "choice": choice_index,
                "context": context,
                "continuation": continuation,
                "context_ids": context_ids,
                "continuation_ids": continuation_ids,
                "token_logprobs": token_logprobs,
                "loglikelihood": sum(token_logprobs[len(context_ids):]),
                "is_greedy": all(m > 0 for m in margins),
                "greedy_margin": min(abs(m) for m in margins),
            })
    out = {
        "model": model.name,
        "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "llama_cpp_python": version("llama-cpp-python"),
        "split": "lm-eval 0.4.13 TemplateLM._encode_pair; tokenizer: no BOS, special tokens parsed",
        "samples": samples,
    }
    json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
