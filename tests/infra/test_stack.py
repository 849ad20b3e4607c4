"""The launcher's per-component supervision, on real child processes (no broker)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from governance.posture import component_findings
from infra.stack import (
    BACKOFF,
    FAILED,
    RUNNING,
    Component,
    LauncherView,
    RestartPolicy,
    Stack,
    component_health,
    reap_stale,
    state_path,
    stop_running_stack,
)
from tests.conftest import free_port
from tests.infra.test_cli import run_cli

FAST = RestartPolicy(max_restarts=3, window=60.0, initial=0.05, cap=0.2)
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
CRASHER = [sys.executable, "-c", "import sys; sys.exit(3)"]


def supervise_until(stack: Stack, done: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.supervise_once()
        if callable(done) and done():
            return
        time.sleep(0.02)
    raise AssertionError(f"supervision did not get there: {stack.states()}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    said: list[str] = []
    built = Stack(
        tmp_path / "data",
        [Component("steady", SLEEPER), Component("crasher", CRASHER)],
        dict(os.environ),
        stop_timeout=5,
        max_restarts=FAST,
        say=said.append,
        seed=1,
    )
    built.said = said  # type: ignore[attr-defined]
    yield built
    built.stop()


@given(
    st.integers(min_value=1, max_value=200),
    st.floats(min_value=0.01, max_value=10),
    st.floats(min_value=0.01, max_value=100),
    st.integers(min_value=0, max_value=2**32),
)
def test_backoff_doubles_with_jitter_and_is_capped(
    attempt: int, initial: float, cap: float, seed: int
) -> None:
    """The n-th restart waits between half and all of min(cap, initial * 2**(n-1))."""
    policy = RestartPolicy(max_restarts=5, window=60, initial=initial, cap=cap)
    ceiling = min(cap, initial * 2 ** min(attempt - 1, 30))
    delay = policy.delay(attempt, random.Random(seed))
    assert ceiling / 2 <= delay <= ceiling + 1e-9
    assert delay <= cap + 1e-9


def test_policy_refuses_nonsense() -> None:
    """A non-positive window or backoff is refused, naming the settings to fix."""
    with pytest.raises(ValueError, match="PRIVMESH_STACK_MAX_RESTARTS"):
        RestartPolicy(max_restarts=-1)
    with pytest.raises(ValueError, match="_BACKOFF_"):
        RestartPolicy(initial=0)


def test_crash_loop_is_failed_and_the_rest_keeps_running(stack: Stack) -> None:
    """A component that keeps exiting is restarted max_restarts times with backoff, then
    marked failed (state file, status rows, posture finding, metric source), while the
    other component runs on untouched and supervision never raises."""
    stack.start()
    steady, crasher = stack.components
    steady_pid = steady.process.pid if steady.process else None
    supervise_until(stack, lambda: crasher.state == FAILED)
    assert crasher.restarts == FAST.max_restarts
    assert crasher.last_exit_code == 3
    assert steady.state == RUNNING and steady.process is not None
    assert steady.process.pid == steady_pid and steady.process.poll() is None
    for _ in range(20):  # a failed component stays down
        stack.supervise_once()
    assert crasher.state == FAILED and crasher.restarts == FAST.max_restarts

    state = json.loads(state_path(stack.data_dir).read_text())
    assert state["components"]["crasher"]["state"] == "failed"
    assert state["components"]["crasher"]["pid"] is None
    rows = {r["name"]: r for r in component_health(state)}
    assert rows["crasher"]["healthy"] is False and rows["crasher"]["state"] == "failed"
    assert rows["steady"]["healthy"] is True and rows["steady"]["state"] == "running"
    found = component_findings(LauncherView(stack.data_dir).components())
    assert [(f["code"], f["subject"]) for f in found] == [("component_failed", "crasher")]
    assert any("failed" in line for line in stack.said)  # type: ignore[attr-defined]


def test_restarts_outside_the_window_do_not_count(tmp_path: Path) -> None:
    """Exits further apart than the window never add up to the limit."""
    stack = Stack(
        tmp_path,
        [Component("crasher", CRASHER)],
        dict(os.environ),
        stop_timeout=5,
        max_restarts=RestartPolicy(max_restarts=1, window=0.3, initial=0.8, cap=0.8),
        say=lambda _: None,
    )
    try:
        stack.start()
        crasher = stack.components[0]
        supervise_until(stack, lambda: crasher.restarts >= 4, timeout=30)
        assert crasher.state != FAILED
    finally:
        stack.stop()


def test_a_critical_component_is_never_given_up(tmp_path: Path) -> None:
    """The broker (critical) keeps being restarted past the limit, never marked failed."""
    stack = Stack(
        tmp_path,
        [Component("broker", CRASHER, critical=True)],
        dict(os.environ),
        stop_timeout=5,
        max_restarts=FAST,
        say=lambda _: None,
    )
    try:
        stack.start()
        broker = stack.components[0]
        supervise_until(stack, lambda: broker.restarts > FAST.max_restarts + 2)
        assert broker.state != FAILED
    finally:
        stack.stop()


def test_a_killed_component_comes_back_with_a_new_pid(stack: Stack) -> None:
    """kill -9 of a running component: it is restarted after the backoff and runs again."""
    stack.start()
    steady = stack.components[0]
    assert steady.process is not None
    first = steady.process.pid
    steady.process.kill()
    supervise_until(stack, lambda: steady.state == BACKOFF)
    supervise_until(stack, lambda: steady.state == RUNNING)
    assert steady.process.pid != first and steady.restarts == 1


def test_per_component_environment(tmp_path: Path) -> None:
    """A component's own environment entries reach it on top of the stack's."""
    out = tmp_path / "seen"
    probe = [sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write(os.environ['X'])"]
    stack = Stack(
        tmp_path,
        [Component("probe", probe, env={"X": "mine"})],
        {**os.environ, "X": "stack"},
        stop_timeout=5,
        max_restarts=FAST,
        say=lambda _: None,
    )
    try:
        stack.start()
        supervise_until(stack, out.exists)
    finally:
        stack.stop()
    assert out.read_text() == "mine"


def test_reap_stale_stops_what_a_killed_launcher_left(tmp_path: Path) -> None:
    """A state file whose launcher is dead: its still-running children are stopped and the
    file removed; a pid that started after the file was written is left alone."""
    orphan = subprocess.Popen(SLEEPER)
    later = None
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        path = state_path(tmp_path)
        path.parent.mkdir(parents=True)
        later = subprocess.Popen(SLEEPER)  # pid recorded, but started after the record
        recorded_before = psutil.Process(later.pid).create_time() - 5
        state = {
            "launcher_pid": dead.pid,
            "components": {
                "worker-x": {
                    "pid": orphan.pid,
                    "spawned_at": psutil.Process(orphan.pid).create_time(),
                },
                "reused": {"pid": later.pid, "spawned_at": recorded_before},
            },
        }
        path.write_text(json.dumps(state))
        assert reap_stale(tmp_path, 5) == ["worker-x"]
        assert orphan.wait(5) is not None
        assert later.poll() is None
        assert not path.exists()
    finally:
        for proc in (orphan, later):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_down_stops_what_a_killed_launcher_left(tmp_path: Path) -> None:
    """`privmesh down` with the launcher gone stops the components it left running (they
    outlive it) and leaves alone a pid that now names another process."""
    orphan, later = subprocess.Popen(SLEEPER), subprocess.Popen(SLEEPER)
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        path = state_path(tmp_path)
        path.parent.mkdir(parents=True)
        created = {p.pid: psutil.Process(p.pid).create_time() for p in (orphan, later)}
        state = {
            "launcher_pid": dead.pid,
            "components": {
                "worker-x": {"pid": orphan.pid, "created": created[orphan.pid]},
                "reused": {"pid": later.pid, "created": created[later.pid] - 5},
            },
        }
        path.write_text(json.dumps(state))
        assert stop_running_stack(tmp_path, 5) == ["worker-x", "reused"]
        assert orphan.wait(5) is not None
        assert later.poll() is None
        assert not path.exists()
    finally:
        for proc in (orphan, later):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


LAUNCHER = """
import os, sys, time
from pathlib import Path
from infra.stack import Component, RestartPolicy, Stack
port = int(sys.argv[2])
stack = Stack(
    Path(sys.argv[1]),
    [
        Component("steady", {sleeper!r}),
        Component("server", [sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)],
                  port=port),
        Component("changed", {sleeper!r} + ["v1"]),
    ],
    dict(os.environ), stop_timeout=5,
    max_restarts=RestartPolicy(max_restarts=3, window=60.0, initial=0.05, cap=0.2),
    say=print,
)
stack.start()
print("started", flush=True)
while True:
    stack.supervise_once()
    time.sleep(0.05)
"""


def test_a_killed_launchers_components_live_on_and_the_next_one_adopts_them(
    tmp_path: Path,
) -> None:
    """kill -9 of the launcher leaves its components running (serving on their ports); the
    next launcher on the same data dir adopts each one that runs the same command (same
    pid, no restart, its port not refused as occupied), supervises it from then on (a
    later kill -9 of it is a restart), and replaces one whose command changed."""
    data, port = tmp_path / "data", free_port()
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER.format(sleeper=SLEEPER))
    launcher = subprocess.Popen(
        [sys.executable, str(script), str(data), str(port)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert _wait_line(launcher, "started")
    before = json.loads(state_path(data).read_text())["components"]
    launcher.kill()
    launcher.wait(10)
    time.sleep(0.5)
    pids = {name: info["pid"] for name, info in before.items()}
    assert all(psutil.pid_exists(p) for p in pids.values()), pids
    # status shows what still serves and that nothing supervises it (exit 1)
    shown = run_cli("status", env={"PRIVMESH_DATA_DIR": str(data)})
    assert shown.returncode == 1 and "no launcher" in shown.stdout, shown.stdout + shown.stderr
    assert all(name in shown.stdout for name in pids), shown.stdout

    said: list[str] = []
    again = Stack(
        data,
        [
            Component("steady", SLEEPER),
            Component(
                "server",
                [sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)],
                port=port,
            ),
            Component("changed", [*SLEEPER, "v2"]),
        ],
        dict(os.environ),
        stop_timeout=5,
        max_restarts=FAST,
        say=said.append,
    )
    try:
        again.preflight({port: ("the test server", "PORT")})
        again.start()
        supervise_until(again, lambda: set(again.states().values()) == {RUNNING})
        now = {c.name: c.process.pid for c in again.components if c.process is not None}
        assert now["steady"] == pids["steady"] and now["server"] == pids["server"], said
        assert now["changed"] != pids["changed"]
        assert not psutil.pid_exists(pids["changed"]) or (
            psutil.Process(pids["changed"]).status() == psutil.STATUS_ZOMBIE
        )
        recorded = json.loads(state_path(data).read_text())
        assert recorded["launcher_pid"] == os.getpid()
        steady = again.components[0]
        os.kill(pids["steady"], 9)
        supervise_until(again, lambda: steady.state == BACKOFF)
        supervise_until(again, lambda: steady.state == RUNNING)
        assert steady.process is not None and steady.process.pid != pids["steady"]
        assert steady.restarts == 1
    finally:
        again.stop()
        for pid in pids.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()


def _wait_line(proc: subprocess.Popen[str], wanted: str, timeout: float = 60) -> bool:
    """True once ``proc`` printed a line containing ``wanted``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if wanted in line:
            return True
        if not line and proc.poll() is not None:
            return False
    return False
