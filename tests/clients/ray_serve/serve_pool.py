"""Deploys or removes the endorm pools of test_ray_serve.py on the running cluster ($RAY_ADDRESS).

    python serve_pool.py deploy PORT APPS_JSON   # APPS_JSON: [{"name", "route_prefix", "args"}]
    python serve_pool.py shutdown

`deploy` starts Serve's HTTP proxy on 127.0.0.1:PORT and runs each application from
`endorm.ray.serve:app` with its `args`, as a Serve config's `applications` list would, waits until
their replicas are healthy, then exits: the applications stay on the cluster. `shutdown` removes Serve (its replicas stop gracefully,
stopping their daemons).
"""

from __future__ import annotations

import json
import sys

import ray
from ray import serve


def main() -> None:
    ray.init(log_to_driver=False)
    if sys.argv[1] == "shutdown":
        serve.shutdown()
        return
    port, apps = int(sys.argv[2]), json.loads(sys.argv[3])
    from endorm.ray.serve import app

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for spec in apps:  # serve.run returns once the application's replicas are up and healthy
        serve.run(app(spec["args"]), name=spec["name"], route_prefix=spec["route_prefix"])
    print("deployed", flush=True)


if __name__ == "__main__":
    main()
