#!/usr/bin/env python3
"""How much the candidate prefix tree can save on a best-of-n file: per task, the candidates'
tokens against the nodes of their token trie (what `/v1/score` decodes with the tree on).

    scripts/trie-share.py [--endorm target/release/endorm] [--model GGUF] [--data code-dev.jsonl]

Each completion is tokenized after its prompt through the daemon's /tokenize (raw format: the
prompt's tokens are dropped from the tokens of prompt + completion), so the count can differ from
`usage.decoded_candidate_tokens` by a token where the two texts meet. No decoding: seconds.
"""

import argparse
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endorm", default=str(ROOT / "target/release/endorm"))
    parser.add_argument("--model", type=Path, default=bench.DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/evaldata/code-dev.jsonl")
    args = parser.parse_args()
    tasks = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    daemon = bench.Daemon(args.endorm, args.model, 1)

    def tokens(text):
        _, body = bench.call(daemon.sock, "POST", "/tokenize", {"content": text, "add_special": False})
        return body["tokens"]

    total = nodes = 0
    shares = []
    try:
        for task in tasks:
            prompt = len(tokens(task["prompt"]))
            trie, count = set(), 0
            for completion in task["completions"]:
                candidate = tuple(tokens(task["prompt"] + completion)[prompt:])
                count += len(candidate)
                trie.update(candidate[:i] for i in range(1, len(candidate) + 1))
            total += count
            nodes += len(trie)
            shares.append(len(trie) / max(count, 1))
    finally:
        daemon.close()
    print(f"{len(tasks)} tasks: {total} candidate tokens, {nodes} trie nodes = {nodes / total:.3f} of them "
          f"(per task {min(shares):.3f}-{max(shares):.3f}); bound on the speed-up {total / nodes:.2f}x")


if __name__ == "__main__":
    main()
