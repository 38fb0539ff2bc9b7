"""Scores a JSONL file of `endorm score` input lines with `EndormScorer` on 2 actors.

    RAY_ADDRESS=... python score_with_ray.py INPUT OUTPUT --model GGUF --binary endorm [--actors 2]

Joins the running cluster ($RAY_ADDRESS: the test's local loopback cluster, local_ray.py), reads
INPUT with `ray.data.read_json`, cuts it into twice as many blocks as actors, scores it with
`map_batches(EndormScorer, ...)` in batches of 3 on a fixed pool of half-CPU actors, in input
order, and writes OUTPUT as `endorm score` would. The documented path, `score_dataset`, gives one
actor on the test's 2 CPUs; this one has several actors share the file.
"""

from __future__ import annotations

import argparse
import json

import ray

from endorm.ray import EndormScorer, drop_nulls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--model", required=True)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()

    ray.init(log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # output rows in input order
    context.enable_progress_bars = False
    scored = (
        ray.data.read_json(args.input)
        .repartition(2 * args.actors)  # more blocks than actors: every actor gets work
        .map_batches(
            EndormScorer,
            fn_constructor_kwargs={"model": args.model, "serve_args": ["--threads", "1"]},
            compute=ray.data.ActorPoolStrategy(size=args.actors),
            # Half a CPU per actor: the read and repartition tasks fit beside the pool on the
            # test's 2 CPUs (a pool that takes every CPU waits forever: docs/SCALE.md).
            num_cpus=0.5,
            batch_size=3,
            batch_format="pyarrow",
            runtime_env={"env_vars": {"ENDORM_BIN": args.binary}},
        )
    )
    with open(args.output, "w") as out:
        for row in scored.iter_rows():
            out.write(json.dumps(drop_nulls(row)) + "\n")


if __name__ == "__main__":
    main()
