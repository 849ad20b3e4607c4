"""The zygote that forks restarted components, and the launcher supervising what it forks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from infra import stack as stack_module
from infra.ports import wait_for_port
from infra.stack import RUNNING, Component, RestartPolicy, Stack
from infra.zygote import PRELOAD, Zygote, ZygoteChild, child_environ
from tests.conftest import free_port

LIGHT = ("json",)  # the protocol does not depend on what is preloaded
FAST = RestartPolicy(max_restarts=5, window=60.0, initial=0.05, cap=0.2)


def until(check: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def supervise_until(stack: Stack, done: Callable[[], bool], timeout: float = 20.0) -> None:
    def step() -> bool:
        stack.supervise_once()
        return done()

    until(step, timeout)


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    started = Zygote(dict(os.environ), tmp_path / "zygote.log", preload=LIGHT)
    started.start()
    assert started.wait_ready(30)
    yield started
    started.close(5)


def serve_http(zygote: Zygote, tmp_path: Path, port: int) -> ZygoteChild:
    child = zygote.spawn(
        ["http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        dict(os.environ),
        tmp_path / "child.log",
        module="http.server",
    )
    assert child is not None
    return child


def test_forked_child_matches_a_cold_start(zygote: Zygote, tmp_path: Path) -> None:
    """A forked module gets its own argv and environment: same output and exit code as cold."""
    env = {**os.environ, "PYTHONUSERBASE": str(tmp_path / "userbase")}
    cold = subprocess.run(
        [sys.executable, "-m", "site", "--user-base"], env=env, capture_output=True, check=False
    )
    log = tmp_path / "site.log"
    child = zygote.spawn(["site", "--user-base"], env, log, module="site")
    assert child is not None
    assert child.wait(timeout=20) == cold.returncode
    assert log.read_bytes() == cold.stdout
    assert str(tmp_path / "userbase") in log.read_text()


def test_kill_9_of_a_forked_child_is_reported(zygote: Zygote, tmp_path: Path) -> None:
    """A forked child runs in its own session under the zygote; kill -9 reads as -9."""
    child = serve_http(zygote, tmp_path, free_port())
    proc = psutil.Process(child.pid)
    assert proc.ppid() == zygote.process.pid  # type: ignore[union-attr]
    until(lambda: os.getsid(child.pid) == child.pid)  # setsid() is the child's first step
    until(lambda: proc.name() == "pm-child")  # named after its log file's component
    assert child.poll() is None
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL


def test_sigterm_exit_code_is_reported(zygote: Zygote, tmp_path: Path) -> None:
    """What terminate_tree sends is reported like Popen does (-15)."""
    child = serve_http(zygote, tmp_path, free_port())
    os.kill(child.pid, signal.SIGTERM)
    assert child.wait(timeout=10) == -signal.SIGTERM


def test_children_outlive_the_zygote_and_spawn_then_fails(zygote: Zygote, tmp_path: Path) -> None:
    """Killing the zygote (it dies with its launcher) leaves its children serving, for the
    next launcher to adopt; spawn then answers None, and the child's end is still seen."""
    port = free_port()
    child = serve_http(zygote, tmp_path, port)
    assert zygote.process is not None and wait_for_port(port, 20)
    os.kill(zygote.process.pid, signal.SIGKILL)
    until(lambda: zygote.gone)
    time.sleep(0.5)
    assert child.poll() is None
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    assert zygote.spawn(["site"], dict(os.environ), tmp_path / "x.log", module="site") is None
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGTERM  # the code is unknown without the zygote


def http_component(tmp_path: Path) -> Component:
    port = free_port()
    return Component(
        "web",
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        health_url=f"http://127.0.0.1:{port}/",
        ready_timeout=20,
        forkable=True,
    )


@pytest.fixture
def fast_stack(tmp_path: Path) -> Iterator[Stack]:
    built = Stack(
        tmp_path / "data",
        [http_component(tmp_path)],
        dict(os.environ),
        stop_timeout=5,
        max_restarts=FAST,
        say=lambda _line: None,
        seed=1,
        fast_restarts=True,
        zygote_preload=LIGHT,
    )
    built.start()
    yield built
    built.stop()


def test_stack_restarts_a_killed_component_by_forking(fast_stack: Stack) -> None:
    """First start and restarts after kill -9 are forked, supervised and recorded."""
    comp = fast_stack.components[0]
    assert isinstance(comp.process, ZygoteChild)
    assert fast_stack.zygote is not None and fast_stack.zygote.ready
    first = comp.process.pid
    os.kill(first, signal.SIGKILL)
    supervise_until(fast_stack, lambda: comp.state == RUNNING and comp.restarts == 1)
    assert isinstance(comp.process, ZygoteChild)
    assert comp.last_exit_code == -signal.SIGKILL
    forked = comp.process.pid
    os.kill(forked, signal.SIGKILL)
    supervise_until(fast_stack, lambda: comp.state == RUNNING and comp.restarts == 2)
    assert comp.last_exit_code == -signal.SIGKILL
    state = json.loads((fast_stack.data_dir / "run" / "stack.json").read_text())
    assert state["components"]["web"]["pid"] == comp.process.pid != forked
    assert state["zygote_pid"] == fast_stack.zygote.process.pid  # type: ignore[union-attr]


def test_stack_falls_back_to_a_cold_spawn_without_zygote(
    fast_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the zygote dead (and not restarted), a restart is a cold spawn as before."""
    monkeypatch.setattr(stack_module, "ZYGOTE_MAX_STARTS", 1)
    comp = fast_stack.components[0]
    zygote = fast_stack.zygote
    assert zygote is not None and zygote.wait_ready(30) and zygote.process is not None
    os.kill(zygote.process.pid, signal.SIGKILL)
    until(lambda: zygote.gone)
    os.kill(comp.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
    supervise_until(fast_stack, lambda: comp.state == RUNNING and comp.restarts == 1)
    assert isinstance(comp.process, subprocess.Popen)


def test_stop_ends_forked_components_and_the_zygote(fast_stack: Stack) -> None:
    """stop() terminates a forked component's tree and then the zygote."""
    comp = fast_stack.components[0]
    zygote = fast_stack.zygote
    assert zygote is not None and zygote.wait_ready(30) and zygote.process is not None
    os.kill(comp.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
    supervise_until(fast_stack, lambda: comp.state == RUNNING and comp.restarts == 1)
    forked = comp.process.pid  # type: ignore[union-attr]
    fast_stack.stop()
    assert zygote.process.poll() is not None
    assert not psutil.pid_exists(forked) or psutil.Process(forked).status() == "zombie"


def test_preloaded_modules_read_no_settings_and_start_no_thread() -> None:
    """Importing PRELOAD constructs no pydantic settings and starts no Python thread."""
    probe = (
        "import importlib, sys, threading, pydantic_settings\n"
        "made = []\n"
        "orig = pydantic_settings.BaseSettings.__init__\n"
        "def spy(self, *a, **k):\n"
        "    made.append(type(self).__name__); orig(self, *a, **k)\n"
        "pydantic_settings.BaseSettings.__init__ = spy\n"
        f"for name in {PRELOAD!r}: importlib.import_module(name)\n"
        "print(made, threading.active_count())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[] 1"


def test_child_environ_keeps_what_imports_set_unless_requested_otherwise() -> None:
    """Variables the preload added reach the child; a request's own value wins."""
    before = {"A": "1", "KEEP": "x"}
    imported = {"A": "1", "KEEP": "x", "PROM_DIR": "/tmp/feast_metrics_1", "CHANGED": "new"}
    requested = {"A": "2", "KEEP": "x", "CHANGED": "mine"}
    assert child_environ(requested, before, imported) == {
        "A": "2",
        "KEEP": "x",
        "PROM_DIR": "/tmp/feast_metrics_1",
        "CHANGED": "mine",
    }
    assert child_environ({}, before, {"A": "1", "NEW": "v"}) == {"NEW": "v"}
