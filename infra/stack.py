"""The local stack launcher: start, supervise and stop privmesh's processes.

Children run in their own sessions (Ctrl-C reaches only the launcher, which then
stops them in reverse order). They outlive a launcher that is killed outright
(``kill -9``, OOM): the mesh keeps serving, and the next ``privmesh up`` on the same
data dir *adopts* each component that is still the process the dead launcher started
(pid and creation time), runs the same command with the same settings (a fingerprint)
and answers its health check, then supervises it as its own; anything else it stops
and starts afresh. So a launcher run under a restart policy (systemd ``Restart=always``
with ``KillMode=process``) recovers in the time ``up`` takes to start, not the components'.
``privmesh down`` stops the components whether or not their launcher is alive. State
for ``privmesh status``, ``privmesh down`` and the posture view is kept in
``<data_dir>/run/stack.json`` (pids, creation times, fingerprints; never a setting's value).

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
import hashlib
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
from urllib.parse import urlsplit

import psutil

# infra.broker (Kafka clients, the broker journal) and httpx are imported where used: the
# CLI's `status` and `down` read the state file and probe pages without them.
from infra.errors import ComponentFailed, InfraError, StackAlreadyRunning, StackNotRunning
from infra.ports import port_is_free, require_free, wait_for_port
from infra.zygote import PRELOAD, PolledProcess, Zygote, ZygoteChild

_PR_SET_PDEATHSIG = 1
ZYGOTE_MAX_STARTS = 3  # then restarts stay cold spawns, as without the zygote
ZYGOTE_READY_WAIT = 90.0  # seconds `start` waits for the zygote's imports, then starts cold

STARTING, RUNNING, BACKOFF, FAILED, STOPPED = "starting", "running", "backoff", "failed", "stopped"
STATES = (STARTING, RUNNING, BACKOFF, FAILED, STOPPED)


def die_with_parent() -> None:  # runs in the zygote between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers 200."""
    import httpx

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


EXIT_UNKNOWN = 255  # an adopted component's exit code: not its parent, nobody can tell


class AdoptedProcess(PolledProcess):
    """A component a previous launcher started, adopted by this one (not its child: its
    exit code is unknown, its end is seen by polling, a zombie counts as ended)."""

    def __init__(self, proc: psutil.Process) -> None:
        super().__init__(proc.pid)
        self._proc = proc

    def poll(self) -> int | None:
        """``EXIT_UNKNOWN`` once the process has ended, else None."""
        if self.returncode is None:
            try:
                ended = not self._proc.is_running() or self._proc.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                ended = True
            if ended:
                self.returncode = EXIT_UNKNOWN
        return self.returncode


def fingerprint(command: list[str], env: dict[str, str]) -> str:
    """What a component runs: its command and privmesh settings, hashed (the state file
    never holds a setting's value, some are secrets)."""
    settings = sorted((k, v) for k, v in env.items() if k.startswith("PRIVMESH_"))
    return hashlib.sha256(json.dumps([command, settings]).encode()).hexdigest()[:32]


@dataclass
class Component:
    """One supervised child process and its supervision state."""

    name: str
    command: list[str]
    health_url: str | None = None
    port: int | None = None
    ready_timeout: float = 60.0
    after_start: Callable[[], object] | None = None
    process: subprocess.Popen[bytes] | PolledProcess | None = None
    start_first: bool = False
    forkable: bool = False  # a `python -m infra.cli` command the zygote can fork on restart
    critical: bool = False  # never marked failed: restarted at the capped backoff forever
    env: dict[str, str] = field(default_factory=dict)  # on top of the stack's environment
    restarts: int = 0
    state: str = STOPPED
    adopted: bool = False  # the running process was started by a previous launcher
    created: float | None = None  # the process's creation time (wall), for adoption
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


def recorded_state(data_dir: Path) -> dict[str, Any] | None:
    """The state a launcher recorded under ``data_dir``, alive or not (None: none readable)."""
    try:
        state = json.loads(state_path(data_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _launcher_alive(state: dict[str, Any]) -> bool:
    return psutil.pid_exists(int(state.get("launcher_pid", -1)))


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """The recorded state if its launcher is still alive, else None."""
    state = recorded_state(data_dir)
    return state if state is not None and _launcher_alive(state) else None


def orphaned_state(data_dir: Path) -> dict[str, Any] | None:
    """The recorded state of a launcher that died without stopping (``kill -9``), else None:
    what it started may still run."""
    state = recorded_state(data_dir)
    return state if state is not None and not _launcher_alive(state) else None


def reap_stale(data_dir: Path, timeout: float) -> list[str]:
    """Stop what a launcher that died without stopping (``kill -9``) left behind.

    Its children get SIGTERM from the kernel; this waits for them (SIGKILL after
    ``timeout``) so that a new ``up`` finds the ports free. A recorded pid counts only
    if that process started before the state was written (not a reused pid). Returns the
    components that were still running.
    """
    state = orphaned_state(data_dir)
    if state is None:
        return []
    _stop_recorded_zygote(state, timeout)
    left = []
    for name, info in state.get("components", {}).items():
        proc = _recorded_process(info)
        if proc is not None:
            left.append(name)
            terminate_tree(proc.pid, timeout)
    with contextlib.suppress(FileNotFoundError):
        state_path(data_dir).unlink()
    return left


def _stop_recorded_zygote(state: dict[str, Any], timeout: float) -> None:
    """Stop a dead launcher's zygote (it dies with its launcher; this is for one that did
    not), unless its pid now names a later process."""
    zygote, recorded = state.get("zygote_pid"), state.get("updated_at")
    with contextlib.suppress(psutil.NoSuchProcess):
        if zygote and (
            recorded is None or psutil.Process(int(zygote)).create_time() <= float(recorded) + 1
        ):
            terminate_tree(int(zygote), timeout)


def _recorded_process(info: dict[str, Any]) -> psutil.Process | None:
    """The process a state record names, if it is still that process (not a reused pid:
    its creation time is the recorded one, or it started before the recorded spawn)."""
    pid, created, since = info.get("pid"), info.get("created"), info.get("spawned_at")
    if not pid:
        return None
    try:
        proc = psutil.Process(int(pid))
        if created is not None:
            return proc if abs(proc.create_time() - float(created)) < 0.05 else None
        if since is not None and proc.create_time() > float(since) + 1:
            return None
    except psutil.NoSuchProcess:
        return None
    return proc


def _ports_of(comp: Component) -> set[int]:
    """The ports a component listens on (its own and its health page's)."""
    ports = {comp.port} if comp.port else set()
    if comp.health_url:
        port = urlsplit(comp.health_url).port
        if port:
            ports.add(port)
    return ports


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

        What a killed launcher left behind is adopted where it can be (``adopt``) and
        stopped otherwise (its ports come free); an adopted component's ports are its own.
        """
        state = read_state(self.data_dir)
        if state is not None:
            raise StackAlreadyRunning(
                f"a stack is already running from {self.data_dir} (launcher pid "
                f"{state['launcher_pid']}); stop it with `privmesh down`"
            )
        adopted, stopped = self.adopt()
        if adopted:
            self.say(f"[green]adopted[/] what a killed launcher left running: {', '.join(adopted)}")
        if stopped:
            self.say(
                f"[yellow]stopped what a killed launcher left running: {', '.join(stopped)}[/]"
            )
        owned = {p for c in self.components if c.adopted for p in _ports_of(c)}
        wanted = [p for p in ports if p not in owned]
        if stopped:
            deadline = time.monotonic() + self.stop_timeout
            while time.monotonic() < deadline and not all(port_is_free(p) for p in wanted):
                time.sleep(0.2)
        for port in wanted:
            require_free(port, *ports[port])
        if adopted:
            self.write_state()  # `status` and `down` see this launcher from now on

    def adopt(self) -> tuple[list[str], list[str]]:
        """Take over the components a killed launcher left running; stop the rest of them.

        A recorded component is adopted when its process is the one the dead launcher
        started (pid and creation time), this stack has a component of that name running
        the same command with the same settings (``fingerprint``), and it is alive. It
        then counts as starting: healthy within its start timeout, it is running, else it
        is restarted as any component would be. Returns (adopted, stopped) names.
        """
        state = orphaned_state(self.data_dir)
        if state is None:
            return [], []
        _stop_recorded_zygote(state, self.stop_timeout)
        mine = {c.name: c for c in self.components}
        adopted, stopped = [], []
        for name, info in state.get("components", {}).items():
            proc = _recorded_process(info)
            if proc is None:
                continue
            comp = mine.get(name)
            if (
                comp is None
                or info.get("fingerprint") != self._fingerprint(comp)
                or AdoptedProcess(proc).poll() is not None
            ):
                stopped.append(name)
                stop_component(name, proc.pid, self.stop_timeout)
                continue
            comp.process = AdoptedProcess(proc)
            comp.adopted, comp.created = True, proc.create_time()
            comp.state, comp.spawned_at = STARTING, time.monotonic()
            comp.restarts = int(info.get("restarts", 0))
            adopted.append(name)
        with contextlib.suppress(FileNotFoundError):
            state_path(self.data_dir).unlink()
        return adopted, stopped

    def _fingerprint(self, comp: Component) -> str:
        return fingerprint(comp.command, {**self.env, **comp.env})

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
        """Start ``comp`` (forked from the zygote or cold) in a session of its own; it
        outlives a killed launcher, for the next one to adopt."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if comp.log is None:
            comp.log = (self.log_dir / f"{comp.name}.log").open("ab")
        comp.state = STARTING
        comp.spawned_at = time.monotonic()
        comp.adopted = False
        forked = self._fork(comp)
        if forked is not None:
            comp.process = forked
        else:
            comp.process = subprocess.Popen(
                comp.command,
                stdin=subprocess.DEVNULL,
                stdout=comp.log,
                stderr=subprocess.STDOUT,
                env={**self.env, **comp.env},
                start_new_session=True,
            )
        try:
            comp.created = psutil.Process(comp.process.pid).create_time()
        except psutil.NoSuchProcess:
            comp.created = None

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
            if not comp.adopted:
                self.say(f"starting {comp.name} ...")
                self._spawn(comp)
            self._wait_ready(comp)
            self._became_ready(comp, began)
        to_start = [c for c in together if not c.adopted]
        if self.zygote is not None and any(c.forkable for c in to_start):
            deadline = time.monotonic() + ZYGOTE_READY_WAIT
            while not self.stop_requested and time.monotonic() < deadline:
                if self.zygote.wait_ready(0.2) or self.zygote.gone:
                    break
        for comp in to_start:
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
        if comp.adopted:
            took = time.monotonic() - comp.spawned_at
            self.say(f"[green]ok[/] {comp.name} adopted, healthy in {took:.1f}s")
        elif comp.restarts:
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
                    "created": c.created if c.process and c.state != FAILED else None,
                    "fingerprint": self._fingerprint(c),
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
            stop_component(comp.name, proc.pid, self.stop_timeout)
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


def stop_component(name: str, pid: int, timeout: float) -> None:
    """Stop one component's process tree; the journaled broker drains into its journal
    first (SIGTERM to its own process only)."""
    if name == "broker":
        from infra.broker import stop_embedded_broker

        stop_embedded_broker(pid, timeout)
    terminate_tree(pid, timeout)


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
    state = recorded_state(data_dir)
    if state is None:
        raise StackNotRunning(f"no stack is running from {data_dir} (no {state_path(data_dir)})")
    launcher = int(state.get("launcher_pid", -1))
    names = list(state.get("components", {}))
    if psutil.pid_exists(launcher):
        with contextlib.suppress(ProcessLookupError):
            os.kill(launcher, signal.SIGTERM)
        _wait_gone(launcher, timeout + 10)
    # what a launcher killed outright left running, in reverse start order; the broker
    # last and through its own shutdown (it drains into its journal first)
    for name, info in reversed(state.get("components", {}).items()):
        proc = _recorded_process(info)
        if proc is not None:
            stop_component(name, proc.pid, timeout)
    with contextlib.suppress(FileNotFoundError):
        state_path(data_dir).unlink()
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


@dataclass(frozen=True)
class LauncherView:
    """The stack ``privmesh up`` runs from ``data_dir`` as the posture reads it
    (``governance.posture.Launcher``)."""

    data_dir: Path
    states: tuple[str, ...] = STATES

    def components(self) -> list[dict[str, Any]]:
        """Each component's supervision state (running, starting, backoff, failed),
        restarts and last exit code; empty when no launcher is running there."""
        state = read_state(self.data_dir)
        if state is None:
            return []
        return [
            {k: row[k] for k in ("name", "state", "restarts", "last_exit_code")}
            for row in component_health(state, probe=False)
        ]

    def worker_urls(self) -> dict[str, str]:
        """Health URL per domain of the workers the launcher recorded."""
        state = read_state(self.data_dir) or {}
        return {
            name.removeprefix("worker-"): str(c["health_url"])
            for name, c in state.get("components", {}).items()
            if name.startswith("worker-") and c.get("health_url")
        }


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
    web_host: str = "127.0.0.1",
    api_host: str = "127.0.0.1",
) -> list[Component]:
    """The components of the demo stack, in start order.

    ``domains`` maps each domain to its worker's health-page port; ``generated`` lists
    the domains the synthetic generator feeds (one generator process for all).
    ``web_host`` and ``api_host`` are where the health probes (and the posture page)
    reach the workers and the API (``connect_host`` of their bind addresses).
    """
    from infra.broker import embedded_broker_command, ensure_topics

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
                health_url=f"http://{web_host}:{web_port}/privmesh/health",
                ready_timeout=start_timeout,
                forkable=True,
                after_start=create_topics if index == 0 and not embedded_broker else None,
            )
        )
    components.append(
        Component(
            "api",
            [*cli, "api"],
            health_url=f"http://{api_host}:{api_port}/healthz",
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
