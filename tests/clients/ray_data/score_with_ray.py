"""Scores a JSONL file of `endorm score` input lines on a local Ray cluster, loopback only.

    python score_with_ray.py INPUT OUTPUT --model GGUF [--binary endorm] [--actors 2] [--ray-dir D]

Starts Ray on this machine with its node address 127.0.0.1 (no dashboard, no usage reporting,
token authentication with a random token kept in the environment, not in ~/.ray),
reads INPUT with `ray.data.read_json`, scores it with `endorm.ray.EndormScorer` on an actor pool
(one `endorm serve` per actor) in input order, and writes OUTPUT as `endorm score` would.
The test test_ray_data.py runs it in a child process so that a hang is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets

# Set before Ray starts: no usage-statistics report leaves the machine, and the cluster's token
# stays in this process tree (Ray would otherwise write one to ~/.ray/auth_token).
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# Ray replaces a node address of 127.0.0.1 with the machine's routable address
# (services.resolve_ip_for_localhost) unless clusters are off, as they are by default on macOS and
# Windows: then it keeps to loopback. This run is one machine, so off they go.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

import ray  # noqa: E402

from endorm.ray import EndormScorer, drop_nulls  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--model", required=True)
    parser.add_argument("--binary")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--ray-dir", help="Ray's session files [default: /tmp/ray]")
    args = parser.parse_args()

    ray.init(
        _node_ip_address="127.0.0.1",
        num_cpus=args.actors,
        include_dashboard=False,
        object_store_memory=100 << 20,
        log_to_driver=False,
        _temp_dir=args.ray_dir,
    )
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # output rows in input order
        context.enable_progress_bars = False
        scored = (
            ray.data.read_json(args.input)
            .repartition(2 * args.actors)  # more blocks than actors: every actor gets work
            .map_batches(
                EndormScorer,
                fn_constructor_kwargs={
                    "model": args.model,
                    "binary": args.binary,
                    "serve_args": ["--threads", "1"],
                },
                compute=ray.data.ActorPoolStrategy(size=args.actors),
                # One CPU per actor, but a fraction of one to Ray's bookkeeping: the read and
                # repartition tasks must fit beside the pool on num_cpus.
                num_cpus=0.5,
                batch_size=3,
                batch_format="pyarrow",
            )
        )
        with open(args.output, "w") as out:
            for row in scored.iter_rows():
                out.write(json.dumps(drop_nulls(row)) + "\n")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
