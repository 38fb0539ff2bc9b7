"""One ``endorm serve`` on a private Unix socket, owned by one Ray actor.

A Ray Data scorer (:mod:`endorm.ray.data`) and a Ray Serve replica (:mod:`endorm.ray.serve`) each
start their own daemon this way: a temporary directory of mode 0700 holds its socket, its log and
(unless the caller gives a config) an empty config, so that no user config of the node applies.
The daemon runs with ``--exit-on-eof`` and a pipe from the actor as its standard input: when the
actor process ends, even killed, the kernel closes the pipe and the daemon stops.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import httpx

#: How long a daemon may take to load its models and answer ``/health`` with ``ok``.
STARTUP_TIMEOUT_S = 300.0


def find_binary(binary: Optional[str] = None) -> str:
    """``binary``, else ``$ENDORM_BIN``, else ``endorm`` on PATH, as this process sees them."""
    found = binary or os.environ.get("ENDORM_BIN") or shutil.which("endorm")
    if not found:
        raise FileNotFoundError(
            "no endorm binary on this node: pass binary=..., set ENDORM_BIN, or put endorm on PATH"
        )
    return str(found)


def ray_cpus() -> Optional[int]:
    """The CPUs Ray gave the calling actor (at least 1), or None outside a Ray worker."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not in a Ray worker, or a Ray without this API: leave it to the daemon
        return None
    return max(1, round(cpus)) if cpus else None


class Daemon:
    """``endorm serve --model MODEL`` on ``self.socket``, healthy when the constructor returns.

    ``config`` (a path) replaces the empty config; ``threads`` becomes ``--threads`` unless
    ``serve_args`` (added to the command line) already has it.
    """

    def __init__(
        self,
        model: str,
        *,
        binary: Optional[str] = None,
        config: Optional[str] = None,
        threads: Optional[int] = None,
        serve_args: Sequence[str] = (),
    ) -> None:
        self.proc: Optional[subprocess.Popen] = None
        # mkdtemp makes the directory 0700: only this user can reach the socket.
        self.dir = tempfile.mkdtemp(prefix="endorm-ray-")
        self.socket = os.path.join(self.dir, "endorm.sock")
        self.log = os.path.join(self.dir, "serve.log")
        try:
            self._start(find_binary(binary), model, config, threads, serve_args)
        except BaseException:
            self.close()
            raise

    def _start(
        self,
        binary: str,
        model: str,
        config: Optional[str],
        threads: Optional[int],
        serve_args: Sequence[str],
    ) -> None:
        if config is None:
            config = os.path.join(self.dir, "endorm.toml")
            Path(config).write_text("")
        args = list(serve_args)
        if threads is not None and "--threads" not in args:
            args += ["--threads", str(threads)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "serve", "--socket", self.socket, "--config", str(config), "--model",
                 str(model), "--exit-on-eof", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(transport=httpx.HTTPTransport(uds=self.socket), timeout=5) as http:
            while True:
                self.check()
                try:
                    health = http.get("http://endorm/health").json()
                except (httpx.HTTPError, OSError, ValueError):  # not listening yet
                    health = {}
                if health.get("status") == "ok":
                    return
                if health.get("status") == "degraded":  # a model failed to load: it will not heal
                    raise RuntimeError(f"endorm serve is degraded: {health}: {self.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"endorm serve did not become healthy in {STARTUP_TIMEOUT_S:.0f} s: "
                        f"{self.log_tail()}"
                    )
                time.sleep(0.1)

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def exit_code(self) -> Optional[int]:
        """The daemon's exit status once it has exited (negative: killed by that signal)."""
        return self.proc.poll() if self.proc is not None else None

    def check(self) -> None:
        """Raises RuntimeError, with the end of its log, if the daemon has exited."""
        code = self.exit_code()
        if code is not None:
            raise RuntimeError(f"endorm serve exited {code}: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stops the daemon (closing its standard input) and removes its directory."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()  # --exit-on-eof: the daemon finishes and exits
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
