"""The local stack launcher: start, supervise and stop privmesh's processes.

Children run in their own sessions (Ctrl-C reaches only the launcher, which then
stops them in reverse order) and get SIGTERM from the kernel if the launcher dies
(``PR_SET_PDEATHSIG``), so no orphan outlives it. State for ``privmesh status`` and
``privmesh down`` is kept in ``<data_dir>/run/stack.json``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from infra.broker import ensure_topics, tansu_command
from infra.errors import ComponentFailed, StackAlreadyRunning, StackNotRunning
from infra.ports import require_free, wait_for_port

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers 200."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Component:
    """One supervised child process."""

    name: str
    command: list[str]
    health_url: str | None = None
    port: int | None = None
    ready_timeout: float = 60.0
    after_start: Callable[[], object] | None = None
    process: subprocess.Popen[bytes] | None = None
    start_first: bool = False
    restarts: int = 0
    log: IO[bytes] | None = field(default=None, repr=False)

    def healthy(self) -> bool:
        """Alive and answering its health check."""
        if self.process is None or self.process.poll() is not None:
            return False
        if self.health_url:
            return http_ok(self.health_url)
        if self.port:
            return wait_for_port(self.port, 0.5)
        return True


def state_path(data_dir: Path) -> Path:
    """Where the running stack records its processes."""
    return data_dir / "run" / "stack.json"


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """The recorded state if its launcher is still alive, else None."""
    path = state_path(data_dir)
    try:
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not psutil.pid_exists(int(state.get("launcher_pid", -1))):
        return None
    return state


class Stack:
    """Starts components in order, supervises them, stops them in reverse order."""

    def __init__(
        self,
        data_dir: Path,
        components: list[Component],
        env: dict[str, str],
        stop_timeout: float,
        max_restarts: int,
        say: Callable[[str], None],
    ) -> None:
        self.data_dir = data_dir
        self.components = components
        self.env = env
        self.stop_timeout = stop_timeout
        self.max_restarts = max_restarts
        self.say = say
        self.log_dir = data_dir / "logs"
        self._stopping = False

    def preflight(self, ports: dict[int, tuple[str, str]]) -> None:
        """Refuse to start over a running stack or on occupied ports."""
        state = read_state(self.data_dir)
        if state is not None:
            raise StackAlreadyRunning(
                f"a stack is already running from {self.data_dir} (launcher pid "
                f"{state['launcher_pid']}); stop it with `privmesh down`"
            )
        for port, (what, setting) in ports.items():
            require_free(port, what, setting)

    def _spawn(self, comp: Component) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if comp.log is None:
            comp.log = (self.log_dir / f"{comp.name}.log").open("ab")
        comp.process = subprocess.Popen(
            comp.command,
            stdin=subprocess.DEVNULL,
            stdout=comp.log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, async-signal-safe
        )

    def _wait_ready(self, comp: Component) -> None:
        deadline = time.monotonic() + comp.ready_timeout
        while time.monotonic() < deadline:
            if comp.process is not None and comp.process.poll() is not None:
                raise ComponentFailed(
                    f"{comp.name} exited with code {comp.process.returncode} while starting; "
                    f"see {self.log_dir / (comp.name + '.log')}"
                )
            if comp.healthy():
                return
            time.sleep(0.2)
        raise ComponentFailed(
            f"{comp.name} was not healthy after {comp.ready_timeout:.0f}s; "
            f"see {self.log_dir / (comp.name + '.log')}"
        )

    def start(self) -> None:
        """Start the components: ``first`` ones in order, the rest at once; wait for health."""
        began = time.monotonic()
        ordered = [c for c in self.components if c.start_first]
        together = [c for c in self.components if not c.start_first]
        for comp in ordered:
            self.say(f"starting {comp.name} ...")
            self._spawn(comp)
            self._ready(comp, began)
        for comp in together:
            self.say(f"starting {comp.name} ...")
            self._spawn(comp)
        self.write_state()
        for comp in together:
            self._ready(comp, began)

    def _ready(self, comp: Component, began: float) -> None:
        self._wait_ready(comp)
        if comp.after_start is not None:
            comp.after_start()
        self.say(f"[green]ok[/] {comp.name} ready at {time.monotonic() - began:.1f}s")
        self.write_state()

    def write_state(self) -> None:
        """Record pids and endpoints for ``status``/``down``."""
        path = state_path(self.data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "launcher_pid": os.getpid(),
            "started_at": time.time(),
            "components": {
                c.name: {
                    "pid": c.process.pid if c.process else None,
                    "health_url": c.health_url,
                    "port": c.port,
                    "restarts": c.restarts,
                }
                for c in self.components
            },
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        tmp.replace(path)

    def supervise_once(self) -> None:
        """Restart any component that exited (up to ``max_restarts`` each)."""
        for comp in self.components:
            if self._stopping or comp.process is None or comp.process.poll() is None:
                continue
            code = comp.process.returncode
            if comp.restarts >= self.max_restarts:
                raise ComponentFailed(
                    f"{comp.name} exited with code {code} and was restarted "
                    f"{comp.restarts} times; see {self.log_dir / (comp.name + '.log')}"
                )
            comp.restarts += 1
            self.say(f"[yellow]{comp.name} exited with code {code}; restarting[/]")
            self._spawn(comp)
            self._wait_ready(comp)
            if comp.after_start is not None:
                comp.after_start()
            self.write_state()

    def stop(self) -> None:
        """Stop components in reverse order: SIGTERM, then SIGKILL after the timeout."""
        self._stopping = True
        for comp in reversed(self.components):
            proc = comp.process
            if proc is None or proc.poll() is not None:
                continue
            self.say(f"stopping {comp.name} ...")
            terminate_tree(proc.pid, self.stop_timeout)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        for comp in self.components:
            if comp.log is not None:
                comp.log.close()
        with contextlib.suppress(FileNotFoundError):
            state_path(self.data_dir).unlink()


def terminate_tree(pid: int, timeout: float) -> None:
    """SIGTERM ``pid`` and its descendants; SIGKILL whatever is left after ``timeout``."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def stop_running_stack(data_dir: Path, timeout: float) -> list[str]:
    """Stop the stack recorded under ``data_dir``; returns the stopped components."""
    path = state_path(data_dir)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StackNotRunning(f"no stack is running from {data_dir} (no {path})") from exc
    launcher = int(state.get("launcher_pid", -1))
    names = list(state.get("components", {}))
    if psutil.pid_exists(launcher):
        with contextlib.suppress(ProcessLookupError):
            os.kill(launcher, signal.SIGTERM)
        _wait_gone(launcher, timeout + 10)
    for info in state.get("components", {}).values():  # anything the launcher left
        if info.get("pid"):
            terminate_tree(int(info["pid"]), timeout)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return names


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (a zombie counts as exited); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def component_health(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-component pid liveness and health-check result."""
    rows = []
    for name, info in state.get("components", {}).items():
        pid = info.get("pid")
        alive = bool(pid) and psutil.pid_exists(int(pid))
        if not alive:
            healthy = False
        elif info.get("health_url"):
            healthy = http_ok(info["health_url"])
        elif info.get("port"):
            healthy = wait_for_port(int(info["port"]), 0.5)
        else:
            healthy = True
        rows.append(
            {
                "name": name,
                "pid": pid,
                "alive": alive,
                "healthy": healthy,
                "restarts": info.get("restarts", 0),
                "endpoint": info.get("health_url") or info.get("port"),
            }
        )
    return rows


def build_components(
    *,
    domains: dict[str, int],
    generated: list[str],
    embedded_broker: bool,
    broker_port: int,
    bootstrap: str,
    topics: list[str],
    partitions: int,
    replication: int,
    api_port: int,
    start_timeout: float,
    retention_every: float = 0.0,
) -> list[Component]:
    """The components of the demo stack, in start order.

    ``domains`` maps each domain to its worker's health-page port; ``generated`` lists
    the domains the synthetic generator feeds (one generator process for all).
    """
    cli = [sys.executable, "-m", "infra.cli"]
    components: list[Component] = []

    def create_topics() -> None:
        ensure_topics(bootstrap, topics, partitions, replication)

    if embedded_broker:
        components.append(
            Component(
                "broker",
                tansu_command(broker_port),
                port=broker_port,
                ready_timeout=20,
                after_start=create_topics,
                start_first=True,
            )
        )
    for index, (domain, web_port) in enumerate(domains.items()):
        components.append(
            Component(
                f"worker-{domain}",
                [*cli, "worker", "--domain", domain, "--web-port", str(web_port)],
                health_url=f"http://127.0.0.1:{web_port}/privmesh/health",
                ready_timeout=start_timeout,
                after_start=create_topics if index == 0 and not embedded_broker else None,
            )
        )
    components.append(
        Component(
            "api",
            [*cli, "api"],
            health_url=f"http://127.0.0.1:{api_port}/healthz",
            ready_timeout=start_timeout,
        )
    )
    if retention_every > 0:
        components.append(
            Component(
                "retention",
                [*cli, "retention", "run", *(a for d in domains for a in ("--domain", d)),
                 "--every", str(retention_every)],
                ready_timeout=start_timeout,
            )
        )  # fmt: skip
    if generated:
        components.append(
            Component(
                "generator",
                [*cli, "generate", *(arg for d in generated for arg in ("--domain", d))],
                ready_timeout=start_timeout,
            )
        )
    return components
