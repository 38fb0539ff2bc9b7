"""A local Ray cluster on 127.0.0.1 for the Ray tests, in a child process of its own.

    with LocalRay(tmp, cpus=2, env={...}) as cluster:
        subprocess.run([python, "script.py"], env=cluster.driver_env(ENDORM_BIN=...))

Run as a script, this file is that child: it starts Ray (`ray.init` with node address 127.0.0.1,
no dashboard), prints the cluster's address, and shuts Ray down when its standard input closes.
Drivers then connect to it as they would to any cluster, with `RAY_ADDRESS`: a script's own
`ray.init()` joins it. The cluster's processes (and so every actor and replica) inherit the child's
environment, not the drivers': that is what makes a driver's `ENDORM_BIN` reach the actors only
through Ray's `runtime_env`.

Loopback only: Ray replaces a node address of 127.0.0.1 with the machine's routable address
unless its cluster mode is off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, the default on macOS and
Windows), and then keeps its servers on 127.0.0.1, but for one of Ray Serve's, which
ray_loopback/sitecustomize.py moves there; `listening_addresses` lets a test check. No usage statistics leave the machine, and the
cluster's token for Ray's token authentication stays in these processes' environment (Ray would
otherwise write one to ~/.ray/auth_token).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Set

REPO = Path(__file__).resolve().parents[2]
#: The package under test, from this working tree, for drivers and (through the cluster's
#: environment) actors and replicas.
PACKAGE = REPO / "plugins" / "python" / "src"
#: sitecustomize.py there keeps Ray Serve's one server that binds every interface on loopback.
LOOPBACK_PATCH = Path(__file__).with_name("ray_loopback")
START_TIMEOUT_S = 180

LOOPBACK = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "token",
}


def _base_env() -> Dict[str, str]:
    """This environment without endorm's variables and without a PATH entry holding an `endorm`,
    the package under test first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("ENDORM_BIN", "ENDORM_TOKEN", "ENDORM_SOCKET", "RAY_ADDRESS")}
    path = [str(LOOPBACK_PATCH), str(PACKAGE), *filter(None, [os.environ.get("PYTHONPATH")])]
    bins = [d for d in env.get("PATH", "").split(os.pathsep) if not Path(d, "endorm").exists()]
    return {**env, **LOOPBACK, "PYTHONPATH": os.pathsep.join(path), "PATH": os.pathsep.join(bins)}


class LocalRay:
    """The child process holding a local Ray cluster; ``address`` once entered."""

    def __init__(self, tmp: Path, cpus: int, env: Optional[Dict[str, str]] = None) -> None:
        self.tmp = Path(tmp)
        self.cpus = cpus
        self.token = secrets.token_hex(32)
        self.env = {**_base_env(), "RAY_AUTH_TOKEN": self.token, **(env or {})}
        self.ray_dir = self.tmp / "ray"  # Ray's session files (logs), not /tmp/ray
        self.log = self.tmp / "ray-cluster.log"
        self.address = ""
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "LocalRay":
        with open(self.log, "wb") as log:
            # Its own session: on a failure the child and what Ray started go together.
            self.proc = subprocess.Popen(
                [sys.executable, __file__, str(self.cpus), str(self.ray_dir)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.env,
                start_new_session=True, text=True,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the address, or EOF if Ray did not start
        if not line.startswith("address "):
            self.__exit__()
            raise RuntimeError(f"Ray did not start: {self.log_tail()}")
        self.address = line.split()[1]
        return self

    def driver_env(self, **extra: str) -> Dict[str, str]:
        """The environment of a driver that joins this cluster with a plain ``ray.init()``."""
        return {**_base_env(), "RAY_AUTH_TOKEN": self.token, "RAY_ADDRESS": self.address, **extra}

    def node_addresses(self) -> set:
        """The addresses the cluster's nodes registered under (GCS's log)."""
        gcs = (self.ray_dir / "session_latest" / "logs" / "gcs_server.out").read_text()
        return set(re.findall(r"node_address=(\S+)", gcs))

    def listening_addresses(self) -> Set[str]:
        """The addresses the cluster's processes (and their children: daemons) listen on, TCP."""
        assert self.proc is not None
        return _listening(_descendants(self.proc.pid))

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()  # the child shuts Ray down and exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _descendants(root: int) -> Set[int]:
    """`root` and every process below it."""
    children: Dict[int, Set[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, set()).add(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def _listening(pids: Set[int]) -> Set[str]:
    """The local addresses of the listening TCP sockets that `pids` hold (/proc/net/tcp{,6})."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:  # gone, or not ours to read
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(words)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            found.add(str(address))
    return found


def _hold(cpus: int, ray_dir: str) -> None:
    import ray

    ray.init(
        _node_ip_address="127.0.0.1",
        num_cpus=cpus,
        include_dashboard=False,
        object_store_memory=100 << 20,
        log_to_driver=False,
        _temp_dir=ray_dir,
    )
    try:
        print("address", ray.get_runtime_context().gcs_address, flush=True)
        sys.stdin.read()  # until the test closes it
    finally:
        ray.shutdown()


if __name__ == "__main__":
    _hold(int(sys.argv[1]), sys.argv[2])
