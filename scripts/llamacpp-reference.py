#!/usr/bin/env python3
"""Per-token reference values from llama.cpp itself, through llama-cpp-python, for tests/reference.rs.

An implementation independent of endorm's (one sequence, `logits_all`, numpy for the math of
docs/REWARD.md) on the token ids of tests/data/smollm2-reference.json. Build llama-cpp-python with the
kernels endorm uses (see .cargo/config.toml), then run this and commit its output:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \\
        pip install llama-cpp-python==0.3.36
    scripts/llamacpp-reference.py MODEL.gguf > tests/data/smollm2-llamacpp-x86-64-v3.json
"""

import json
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def soft_value(row: np.ndarray, alpha: float) -> float:
    row = row.astype(np.float64)
    top = row.max()
    return float(top + alpha * np.log(np.exp((row - top) / alpha).sum()))


def main() -> None:
    model = sys.argv[1]
    # flash_attn=True: endorm leaves llama.cpp's "auto", which enables it on CPU.
    llm = Llama(model_path=model, logits_all=True, n_ctx=512, n_threads=2, flash_attn=True, verbose=False)
    eos = llm.token_eos()
    out = []
    for case in json.loads((DATA / "smollm2-reference.json").read_text()):
        alpha = case.get("alpha", 1.0)
        terminal = case["format"] == "chat" or case.get("terminal", False)
        context = case["context_ids"]
        results = []
        for candidate in case["results"]:
            ids = [t["id"] for t in candidate["tokens"]]
            llm.reset()
            llm.eval(context + ids)
            logits = np.asarray(llm.scores[: len(context) + len(ids)], dtype=np.float32)
            tokens = []
            for t, token in enumerate(ids):
                state = logits[len(context) - 1 + t]
                q, v = float(state[token]), soft_value(state, alpha)
                last = t + 1 == len(ids)
                v_next = 0.0 if last and terminal and token == eos else soft_value(logits[len(context) + t], alpha)
                tokens.append({"id": token, "logprob": (q - v) / alpha, "q": q, "v_next": v_next, "reward": q - v_next})
            endo = sum(t["reward"] for t in tokens)
            logprob = alpha * sum(t["logprob"] for t in tokens)
            results.append({
                "n_tokens": len(tokens),
                "endo": endo, "endo_mean": endo / len(tokens),
                "logprob": logprob, "logprob_mean": logprob / len(tokens),
                "tokens": tokens,
            })
        out.append({"name": case["name"], "results": results})
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
