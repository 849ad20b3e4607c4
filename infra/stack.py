"""The local stack launcher: start, supervise and stop privmesh's processes.

Children run in their own sessions (Ctrl-C reaches only the launcher, which then
stops them in reverse order) and get SIGTERM from the kernel if the launcher dies
(``PR_SET_PDEATHSIG``), so no orphan outlives it. State for ``privmesh status``,
``privmesh down`` and the posture view is kept in ``<data_dir>/run/stack.json``.

Supervision is per component and never blocks on one of them: a component that exits
(or is not healthy within its start timeout) is restarted after an exponential backoff
with jitter, capped; past ``max_restarts`` restarts within ``restart_window`` seconds it
is marked ``failed`` and left down while every other component keeps running. The
launcher itself ends only when asked to (Ctrl-C, SIGTERM, ``privmesh down``). The
embedded broker is ``critical``: everything depends on it, so it is never given up on;
it is restarted on the same port (its topics created again) for as long as it takes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from infra.broker import embedded_broker_command, ensure_topics, stop_embedded_broker
from infra.errors import ComponentFailed, InfraError, StackAlreadyRunning, StackNotRunning
from infra.ports import port_is_free, require_free, wait_for_port
from infra.zygote import PRELOAD, Zygote, ZygoteChild

_PR_SET_PDEATHSIG = 1
ZYGOTE_MAX_STARTS = 3  # then restarts stay cold spawns, as without the zygote
ZYGOTE_READY_WAIT = 90.0  # seconds `start` waits for the zygote's imports, then starts cold

STARTING, RUNNING, BACKOFF, FAILED, STOPPED = "starting", "running", "backoff", "failed", "stopped"
STATES = (STARTING, RUNNING, BACKOFF, FAILED, STOPPED)


def die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers 200."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class RestartPolicy:
    """How a component that exits is restarted.

    The n-th restart within ``window`` seconds waits ``min(cap, initial * 2**(n-1))``,
    of which a random half is jitter (so components that fail together do not restart in
    lock step); past ``max_restarts`` restarts within the window the component is failed.
    """

    max_restarts: int = 5
    window: float = 300.0
    initial: float = 1.0
    cap: float = 30.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.window <= 0 or self.initial <= 0 or self.cap <= 0:
            raise ValueError(
                "restart policy: max_restarts must be >= 0 and window, initial and cap > 0 "
                "(PRIVMESH_STACK_MAX_RESTARTS, _RESTART_WINDOW_SECONDS, _BACKOFF_*_SECONDS)"
            )

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before restart number ``attempt`` (1-based) in the window."""
        ceiling = min(self.cap, self.initial * 2 ** min(max(attempt - 1, 0), 30))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass
class Component:
    """One supervised child process and its supervision state."""

    name: str
    command: list[str]
    health_url: str | None = None
    port: int | None = None
    ready_timeout: float = 60.0
    after_start: Callable[[], object] | None = None
    process: subprocess.Popen[bytes] | ZygoteChild | None = None
    start_first: bool = False
    forkable: bool = False  # a `python -m infra.cli` command the zygote can fork on restart
    critical: bool = False  # never marked failed: restarted at the capped backoff forever
    env: dict[str, str] = field(default_factory=dict)  # on top of the stack's environment
    restarts: int = 0
    state: str = STOPPED
    last_exit_code: int | None = None
    last_exit_at: float | None = None  # wall clock
    spawned_at: float = 0.0  # monotonic
    restart_at: float = 0.0  # monotonic, in BACKOFF
    exits: deque[float] = field(default_factory=deque)  # monotonic times within the window
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


def reap_stale(data_dir: Path, timeout: float) -> list[str]:
    """Stop what a launcher that died without stopping (``kill -9``) left behind.

    Its children get SIGTERM from the kernel; this waits for them (SIGKILL after
    ``timeout``) so that a new ``up`` finds the ports free. A recorded pid counts only
    if that process started before the state was written (not a reused pid). Returns the
    components that were still running.
    """
    path = state_path(data_dir)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if psutil.pid_exists(int(state.get("launcher_pid", -1))):
        return []
    left = []
    zygote, recorded = state.get("zygote_pid"), state.get("updated_at")
    with contextlib.suppress(psutil.NoSuchProcess):
        # the zygote dies with its launcher (PDEATHSIG); this is for one that did not
        if zygote and (
            recorded is None or psutil.Process(int(zygote)).create_time() <= float(recorded) + 1
        ):
            terminate_tree(int(zygote), timeout)
    for name, info in state.get("components", {}).items():
        pid, since = info.get("pid"), info.get("spawned_at")
        if not pid:
            continue
        try:
            proc = psutil.Process(int(pid))
            if since is not None and proc.create_time() > float(since) + 1:
                continue
        except psutil.NoSuchProcess:
            continue
        left.append(name)
        terminate_tree(int(pid), timeout)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return left


class Stack:
    """Starts components in order, supervises each on its own, stops them in reverse order."""

    def __init__(
        self,
        data_dir: Path,
        components: list[Component],
        env: dict[str, str],
        stop_timeout: float,
        max_restarts: int | RestartPolicy,
        say: Callable[[str], None],
        seed: int | None = None,
        fast_restarts: bool = False,
        zygote_preload: tuple[str, ...] = PRELOAD,
    ) -> None:
        self.data_dir = data_dir
        self.components = components
        self.env = env
        self.stop_timeout = stop_timeout
        self.policy = (
            max_restarts
            if isinstance(max_restarts, RestartPolicy)
            else RestartPolicy(max_restarts=max_restarts)
        )
        self.say = say
        self.log_dir = data_dir / "logs"
        self.stop_requested = False
        self._stopping = False
        self._rng = random.Random(seed)  # noqa: S311 - restart jitter, not a secret
        self._started_at = time.time()
        self.fast_restarts = fast_restarts
        self.zygote_preload = zygote_preload
        self.zygote: Zygote | None = None
        self._zygote_starts = 0
        self._zygote_announced = False

    @property
    def max_restarts(self) -> int:
        """Restarts allowed within the policy's window before a component is failed."""
        return self.policy.max_restarts

    def preflight(self, ports: dict[int, tuple[str, str]]) -> None:
        """Refuse to start over a running stack or on occupied ports.

        What a killed launcher left behind is stopped first (its ports come free).
        """
        state = read_state(self.data_dir)
        if state is not None:
            raise StackAlreadyRunning(
                f"a stack is already running from {self.data_dir} (launcher pid "
                f"{state['launcher_pid']}); stop it with `privmesh down`"
            )
        left = reap_stale(self.data_dir, self.stop_timeout)
        if left:
            self.say(f"[yellow]stopped what a killed launcher left running: {', '.join(left)}[/]")
            deadline = time.monotonic() + self.stop_timeout
            while time.monotonic() < deadline and not all(port_is_free(p) for p in ports):
                time.sleep(0.2)
        for port, (what, setting) in ports.items():
            require_free(port, what, setting)

    def _start_zygote(self) -> None:
        """Start (or restart, a few times) the zygote that forks restarted components."""
        if not self.fast_restarts or self._zygote_starts >= ZYGOTE_MAX_STARTS:
            return
        if self.zygote is not None and not self.zygote.gone:
            return
        if self.zygote is not None:
            self.zygote.close(self.stop_timeout)
            self.say("[yellow]the zygote exited; restarts spawn cold until it is back[/]")
        self._zygote_starts += 1
        self._zygote_announced = False
        self.zygote = Zygote(self.env, self.log_dir / "zygote.log", preload=self.zygote_preload)
        self.zygote.start()

    def _fork(self, comp: Component) -> ZygoteChild | None:
        """``comp`` forked by the zygote, or None (not forkable, zygote not ready, failed).

        Forkable is a ``python -m <module> ...`` command; the child runs that module as
        ``__main__`` with the same arguments, environment and log as a cold start.
        """
        command = comp.command
        if not comp.forkable or len(command) < 3 or command[:2] != [sys.executable, "-m"]:
            return None
        if self.zygote is None or not self.zygote.ready:
            return None
        return self.zygote.spawn(
            command[2:],
            {**self.env, **comp.env},
            self.log_dir / f"{comp.name}.log",
            module=command[2],
        )

    def _spawn(self, comp: Component) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if comp.log is None:
            comp.log = (self.log_dir / f"{comp.name}.log").open("ab")
        comp.state = STARTING
        comp.spawned_at = time.monotonic()
        forked = self._fork(comp)
        if forked is not None:
            comp.process = forked
            return
        comp.process = subprocess.Popen(
            comp.command,
            stdin=subprocess.DEVNULL,
            stdout=comp.log,
            stderr=subprocess.STDOUT,
            env={**self.env, **comp.env},
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, async-signal-safe
        )

    def _log_hint(self, comp: Component) -> str:
        return f"see {self.log_dir / (comp.name + '.log')}"

    def _wait_ready(self, comp: Component) -> None:
        """Block until ``comp`` is healthy (used for the ``start_first`` components)."""
        deadline = time.monotonic() + comp.ready_timeout
        while time.monotonic() < deadline:
            if comp.process is not None and comp.process.poll() is not None:
                raise ComponentFailed(
                    f"{comp.name} exited with code {comp.process.returncode} while starting; "
                    f"{self._log_hint(comp)}"
                )
            if comp.healthy():
                return
            time.sleep(0.2)
        raise ComponentFailed(
            f"{comp.name} was not healthy after {comp.ready_timeout:.0f}s; {self._log_hint(comp)}"
        )

    def start(self) -> None:
        """Start the components: ``first`` ones in order, the rest at once.

        A ``first`` component (the embedded broker) that cannot start fails ``up``; the
        others are supervised from their first start, so one that keeps failing is
        restarted and then marked failed while the rest run. Returns once no component is
        starting (each is running, waiting to restart or failed) or a stop was requested.
        With fast restarts the zygote imports while the first components start, and the
        rest are forked from it (one import instead of one per process on shared cores);
        if it is not ready within ``ZYGOTE_READY_WAIT`` or exits, they start cold.
        """
        began = time.monotonic()
        ordered = [c for c in self.components if c.start_first]
        together = [c for c in self.components if not c.start_first]
        if any(c.forkable for c in together):
            self._start_zygote()
        for comp in ordered:
            self.say(f"starting {comp.name} ...")
            self._spawn(comp)
            self._wait_ready(comp)
            self._became_ready(comp, began)
        if self.zygote is not None:
            deadline = time.monotonic() + ZYGOTE_READY_WAIT
            while not self.stop_requested and time.monotonic() < deadline:
                if self.zygote.wait_ready(0.2) or self.zygote.gone:
                    break
        for comp in together:
            self.say(f"starting {comp.name} ...")
            self._spawn(comp)
        self.write_state()
        while not self.stop_requested and any(c.state == STARTING for c in together):
            self.supervise_once(began)
            time.sleep(0.2)

    def _became_ready(self, comp: Component, began: float) -> None:
        if comp.after_start is not None:
            comp.after_start()
        comp.state = RUNNING
        if comp.restarts:
            took = time.monotonic() - comp.spawned_at
            self.say(
                f"[green]ok[/] {comp.name} ready again (restart {comp.restarts}) in {took:.1f}s"
            )
        else:
            self.say(f"[green]ok[/] {comp.name} ready at {time.monotonic() - began:.1f}s")
        self.write_state()

    def write_state(self) -> None:
        """Record pids, endpoints and supervision state for ``status``/``down``/posture."""
        path = state_path(self.data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "launcher_pid": os.getpid(),
            "zygote_pid": (
                self.zygote.process.pid
                if self.zygote is not None and self.zygote.process is not None
                else None
            ),
            "started_at": self._started_at,
            "updated_at": time.time(),
            "policy": {
                "max_restarts": self.policy.max_restarts,
                "window_seconds": self.policy.window,
                "backoff_initial_seconds": self.policy.initial,
                "backoff_max_seconds": self.policy.cap,
            },
            "components": {
                c.name: {
                    "pid": c.process.pid if c.process and c.state != FAILED else None,
                    "spawned_at": (
                        _wall(c.spawned_at) if c.process and c.state != FAILED else None
                    ),
                    "health_url": c.health_url,
                    "port": c.port,
                    "state": c.state,
                    "restarts": c.restarts,
                    "last_exit_code": c.last_exit_code,
                    "last_exit_at": c.last_exit_at,
                    "critical": c.critical,
                }
                for c in self.components
            },
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        tmp.replace(path)

    def supervise_once(self, began: float | None = None) -> None:
        """One pass over every component; never blocks on one nor raises for one.

        An exited component (or one not healthy within its start timeout) is scheduled
        for a restart after the policy's backoff, or marked failed past its limit; a
        scheduled restart that is due is started; a starting one that answers its health
        check becomes running.
        """
        began = time.monotonic() if began is None else began
        changed = False
        for comp in self.components:
            if self._stopping or self.stop_requested:
                return
            proc = comp.process
            now = time.monotonic()
            if comp.state in (RUNNING, STARTING) and proc is not None and proc.poll() is not None:
                self._exited(comp, proc.returncode, f"exited with code {proc.returncode}")
                changed = True
            elif comp.state == STARTING and now - comp.spawned_at > comp.ready_timeout:
                if proc is not None:
                    terminate_tree(proc.pid, self.stop_timeout)
                self._exited(comp, None, f"was not healthy within {comp.ready_timeout:.0f}s")
                changed = True
            elif comp.state == STARTING and comp.healthy():
                try:
                    self._became_ready(comp, began)
                except InfraError as exc:
                    if proc is not None:
                        terminate_tree(proc.pid, self.stop_timeout)
                    self._exited(comp, None, f"did not finish starting ({exc.code})")
                    changed = True
            elif comp.state == BACKOFF and now >= comp.restart_at:
                comp.restarts += 1
                self._spawn(comp)
                how = "forked" if isinstance(comp.process, ZygoteChild) else "spawned"
                self.say(f"restarting {comp.name} (restart {comp.restarts}, {how}) ...")
                changed = True
        if self.zygote is not None and self.zygote.gone and not self._stopping:
            self._start_zygote()
            changed = True
        elif self.zygote is not None and self.zygote.ready and not self._zygote_announced:
            self._zygote_announced = True
            self.say(f"zygote ready: restarts fork from {self.zygote.process_pid}")
        if changed:
            self.write_state()

    def _exited(self, comp: Component, code: int | None, what: str) -> None:
        now = time.monotonic()
        comp.last_exit_code = code
        comp.last_exit_at = time.time()
        comp.exits.append(now)
        while comp.exits and now - comp.exits[0] > self.policy.window:
            comp.exits.popleft()
        # restarts within the window so far = exits within the window before this one
        attempt = len(comp.exits)
        if attempt > self.policy.max_restarts and not comp.critical:
            comp.state = FAILED
            self.say(
                f"[red]{comp.name} {what}; failed[/] after {attempt - 1} restart(s) within "
                f"{self.policy.window:.0f}s: left down, the rest keeps running; "
                f"{self._log_hint(comp)}"
            )
            return
        delay = self.policy.delay(attempt, self._rng)
        comp.state = BACKOFF
        comp.restart_at = now + delay
        self.say(f"[yellow]{comp.name} {what}; restarting in {delay:.1f}s[/]")

    def states(self) -> dict[str, str]:
        """Each component's supervision state."""
        return {c.name: c.state for c in self.components}

    def stop(self) -> None:
        """Stop components in reverse order: SIGTERM, then SIGKILL after the timeout."""
        self._stopping = True
        for comp in reversed(self.components):
            proc = comp.process
            if proc is None or proc.poll() is not None:
                comp.state = STOPPED
                continue
            self.say(f"stopping {comp.name} ...")
            if comp.name == "broker":  # the journaled broker drains into its journal first
                stop_embedded_broker(proc.pid, self.stop_timeout)
            terminate_tree(proc.pid, self.stop_timeout)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
            comp.state = STOPPED
        if self.zygote is not None:
            self.zygote.close(self.stop_timeout)
        for comp in self.components:
            if comp.log is not None:
                comp.log.close()
        with contextlib.suppress(FileNotFoundError):
            state_path(self.data_dir).unlink()


def _wall(monotonic_at: float) -> float:
    """The wall-clock time of a ``time.monotonic()`` reading."""
    return time.time() - (time.monotonic() - monotonic_at)


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


def component_health(state: dict[str, Any], probe: bool = True) -> list[dict[str, Any]]:
    """Per-component supervision state, pid liveness and (``probe``) health-check result."""
    rows = []
    for name, info in state.get("components", {}).items():
        pid = info.get("pid")
        alive = bool(pid) and psutil.pid_exists(int(pid))
        if not alive or info.get("state") == FAILED:
            alive = alive and info.get("state") != FAILED
            healthy = False
        elif not probe:
            healthy = info.get("state", RUNNING) == RUNNING
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
                "state": info.get("state", RUNNING if alive else STOPPED),
                "restarts": info.get("restarts", 0),
                "last_exit_code": info.get("last_exit_code"),
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
                embedded_broker_command(broker_port),
                port=broker_port,
                ready_timeout=max(20.0, start_timeout),  # a journaled broker replays first
                after_start=create_topics,
                start_first=True,
                critical=True,
            )
        )
    for index, (domain, web_port) in enumerate(domains.items()):
        components.append(
            Component(
                f"worker-{domain}",
                [*cli, "worker", "--domain", domain, "--web-port", str(web_port)],
                health_url=f"http://127.0.0.1:{web_port}/privmesh/health",
                ready_timeout=start_timeout,
                forkable=True,
                after_start=create_topics if index == 0 and not embedded_broker else None,
            )
        )
    components.append(
        Component(
            "api",
            [*cli, "api"],
            health_url=f"http://127.0.0.1:{api_port}/healthz",
            ready_timeout=start_timeout,
            forkable=True,
        )
    )
    if retention_every > 0:
        components.append(
            Component(
                "retention",
                [*cli, "retention", "run", *(a for d in domains for a in ("--domain", d)),
                 "--every", str(retention_every)],
                ready_timeout=start_timeout,
                forkable=True,
            )
        )  # fmt: skip
    if generated:
        components.append(
            Component(
                "generator",
                [*cli, "generate", *(arg for d in generated for arg in ("--domain", d))],
                ready_timeout=start_timeout,
                forkable=True,
            )
        )
    return components
