"""Retries and wait_ready against fresh daemons: one that is still starting, and one whose only
connection slot (`max_connections = 1`) is taken, which answers a real 503 with Retry-After."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest
from conftest import Daemon, need_binary_and_model, start_daemon, wait_healthy

from endorm import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    Client,
    InternalServerError,
    ServiceUnavailableError,
)

QUESTION = "What is the capital of France?"


@pytest.fixture()
def starting(short_tmp: str) -> Iterator[Daemon]:
    """A daemon just started: its socket does not exist yet."""
    need_binary_and_model()
    d = start_daemon(short_tmp)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture()
def one_slot(short_tmp: str) -> Iterator[Daemon]:
    """A ready daemon that takes one connection at a time."""
    need_binary_and_model()
    d = start_daemon(short_tmp, "[server]\nmax_connections = 1\n")
    try:
        wait_healthy(d)
        yield d
    finally:
        d.stop()


def take_the_slot(path: str) -> socket.socket:
    """A connection that holds the daemon's one slot (sending nothing: it is closed after
    idle_timeout_secs, 60 s). The daemon answers a connection over the limit 503 once it has read
    its request head or waited 200 ms for one (src/server/listen.rs, `refuse`), so one that got an
    answer within 0.5 s was refused (the slot was still counted for a client just closed): retry."""
    for _ in range(50):
        held = socket.socket(socket.AF_UNIX)
        held.connect(path)
        time.sleep(0.5)
        try:
            refused = held.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return held
        held.close()
        assert refused, "the daemon closed a connection without answering"
    raise AssertionError("the daemon's one connection slot never came free")


def retried(caplog: pytest.LogCaptureFixture, what: str) -> int:
    return sum(1 for r in caplog.records if r.name == "endorm" and what in r.getMessage())


def test_a_request_sent_as_the_daemon_starts_is_retried_until_it_serves(
    starting: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="endorm")
    assert not os.path.exists(starting.socket)
    # No socket yet, then (maybe) a model still loading: each retried, the last after
    # the daemon's Retry-After.
    with Client(starting.socket, max_retries=10) as c:
        r = c.score(QUESTION, ["London.", "Paris."])
    assert r.best_index == 1
    assert retried(caplog, "retrying in") >= 1


def test_wait_ready_waits_through_start_up(starting: Daemon) -> None:
    with Client(starting.socket, max_retries=0) as c:
        health = c.wait_ready(timeout=120)
        assert health["status"] == "ok"
        # Ready means served: no retry needed.
        assert c.score(QUESTION, ["Paris."]).results[0].n_tokens

    async def run() -> str:
        async with AsyncClient(starting.socket, max_retries=0) as ac:
            return (await ac.wait_ready(timeout=5))["status"]

    assert asyncio.run(run()) == "ok"


def test_wait_ready_times_out_with_the_last_error(tmp_path: Path) -> None:
    with Client(str(tmp_path / "nope.sock")) as c:
        with pytest.raises(APITimeoutError, match=r"not ready after 0\.3 s .*cannot reach") as e:
            c.wait_ready(timeout=0.3)
    assert isinstance(e.value, APIConnectionError)


def test_no_daemon_is_retried_then_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="endorm")
    with Client(str(tmp_path / "nope.sock"), max_retries=1) as c:
        with pytest.raises(APIConnectionError, match="endorm serve"):
            c.models()
    assert retried(caplog, "retrying in") == 1


def test_503_is_raised_without_retries_and_retried_after_retry_after(
    one_slot: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="endorm")
    held = take_the_slot(one_slot.socket)
    try:
        with Client(one_slot.socket, max_retries=0) as c:
            with pytest.raises(ServiceUnavailableError) as e:
                c.score(QUESTION, ["Paris."])
        assert isinstance(e.value, InternalServerError)
        assert e.value.status_code == 503 and e.value.code == "too_many_connections"
        assert e.value.retry_after == 1.0
        # wait_ready keeps polling through such a 503 (it is not "ready"), then says what it saw.
        with Client(one_slot.socket) as c:
            with pytest.raises(APITimeoutError, match="too_many_connections"):
                c.wait_ready(timeout=0.5)
        # The slot comes free while the client waits the daemon's Retry-After (1 s).
        threading.Timer(0.3, held.close).start()
        with Client(one_slot.socket) as c:
            assert c.score(QUESTION, ["London.", "Paris."]).best_index == 1
        assert retried(caplog, "503 from") == 1
    finally:
        held.close()


def test_async_client_retries_a_503_too(
    one_slot: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="endorm")
    held: List[socket.socket] = []

    async def run() -> int:
        # A first request sets up httpx's async stack, which can take longer than the 0.3 s below
        # on a busy machine: then the slot would be free before the score was sent.
        async with AsyncClient(one_slot.socket) as ac:
            await ac.health()
        held.append(take_the_slot(one_slot.socket))
        async with AsyncClient(one_slot.socket) as ac:
            asyncio.get_running_loop().call_later(0.3, held[0].close)
            return (await ac.score(QUESTION, ["London.", "Paris."])).best_index

    try:
        assert asyncio.run(run()) == 1
        assert retried(caplog, "503 from") == 1
    finally:
        for connection in held:
            connection.close()
