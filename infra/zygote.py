"""A pre-forked "zygote" that restarts the stack's Python components without a cold start.

A cold ``python -m infra.cli worker`` spends 10-20 s importing Feast, Faust, torch and
the rest before it does anything, so a component that dies would miss the 30 s recovery
target under load. The launcher therefore starts one helper process that imports those
settings-free modules once and then, on request, forks a child that takes its own
environment, session and log file and runs exactly what the cold start runs
(``runpy.run_module("infra.cli", run_name="__main__")`` with ``sys.argv``). The zygote
dies with the launcher (``PR_SET_PDEATHSIG``); its children do not, as a cold-started
component does not: the next launcher adopts them (``infra.stack``).

The zygote reaps its children and reports each exit to the launcher, which supervises a
forked child as it does a spawned one (pid, exit code, ``kill -9``, ``terminate_tree``).
Protocol, one line each way: the launcher writes a JSON request ``{"id", "argv", "env",
"log", "cwd"}``; the zygote answers ``ready <os-threads>`` once after its imports,
``spawned <id> <pid>`` or ``error <id> <reason>`` per request, and ``exit <pid> <code>``
per reaped child (``code`` as ``Popen.returncode``: negative for a signal). Importing
the preloaded modules must read no settings and start no Python thread: the zygote
checks the latter and refuses to serve (the launcher then spawns cold, as without it).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
ENTRY_MODULE = "infra.cli"

# What `privmesh worker`, `api`, `retention` and `generate` import: none reads settings or
# starts a thread at import (checked in tests/infra/test_zygote.py).
PRELOAD = (
    "infra.cli",
    "infra.logs",
    "feature_repo.settings",
    "streams.worker",
    "streams.generator",
    "streams.producing",
    "uvicorn",
    "dashboards_api.settings",
    "infra.api_app",
)


def _set_pdeathsig(sig: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def _set_name(component: str) -> None:
    """Name the forked process after its component in ``ps -o comm``/``top`` (its
    command line stays the zygote's)."""
    name = f"pm-{component}".encode()[:15]
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name))


def _exit_code(status: int) -> int:
    """A ``waitpid`` status as ``Popen.returncode`` (``-N`` for signal ``N``)."""
    return os.waitstatus_to_exitcode(status)


def _write(fd: int, line: str) -> None:
    data = (line + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


def _reseed() -> None:
    """Give the child random state of its own (``random`` reseeds itself at fork)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        with contextlib.suppress(Exception):
            numpy.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            torch.seed()


def _clear_settings_caches() -> None:
    """Empty the project's cached ``get_*settings`` (they must be read from the child's env)."""
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] not in _PROJECT_PACKAGES or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if "settings" in attr and callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


_PROJECT_PACKAGES = frozenset(
    {
        "infra", "streams", "dashboards_api", "domains", "feature_repo", "catalog", "federation",
        "governance",
    }
)  # fmt: skip


def child_environ(
    requested: Mapping[str, str], before: Mapping[str, str], imported: Mapping[str, str]
) -> dict[str, str]:
    """The child's environment: the requested one plus what the preloaded imports set.

    Some imports write the environment (Feast points ``PROMETHEUS_MULTIPROC_DIR`` at a
    directory it creates, and ``prometheus_client`` then keeps per-process value files
    there); a cold start's imports would have done the same, so each variable the imports
    added or changed is kept unless the request sets it differently from the zygote's own
    environment before its imports.
    """
    env = dict(requested)
    for key, value in imported.items():
        if before.get(key) != value and requested.get(key) == before.get(key):
            env[key] = value
    return env


def _become(
    request: Mapping[str, object], private_fds: list[int], env_before: Mapping[str, str]
) -> None:
    """Take the component's signals, stdio (its log), environment and working directory."""
    for fd in private_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log_fd = os.open(str(request["log"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.close(null_fd)
    env = request["env"]
    assert isinstance(env, dict)
    wanted = child_environ({str(k): str(v) for k, v in env.items()}, env_before, dict(os.environ))
    os.environ.clear()
    os.environ.update(wanted)
    os.chdir(str(request["cwd"]))
    _clear_settings_caches()
    _reseed()


def _run_module(module: str, argv: list[str]) -> int:
    """Run ``module`` as ``__main__`` with ``argv``, as ``python -m`` does; its exit code."""
    sys.argv = argv
    sys.modules.pop(module, None)  # run afresh as __main__, as `python -m` does
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            sys.stderr.write(f"{exc.code}\n")
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # report it as the interpreter would, then exit
        traceback.print_exc()
        code = 1
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    return code


def _run_child(
    request: Mapping[str, object],
    zygote_pid: int,
    private_fds: list[int],
    env_before: Mapping[str, str],
) -> None:
    """In the forked child: become the component, run it, never return."""
    code = 1
    try:
        os.setsid()
        if os.getppid() != zygote_pid:  # the zygote died while forking: its launcher is gone
            os._exit(1)
        _become(request, private_fds, env_before)
        _set_name(Path(str(request["log"])).stem)
        argv = request["argv"]
        assert isinstance(argv, list)
        code = _run_module(str(request.get("module", ENTRY_MODULE)), [str(a) for a in argv])
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _preload(names: tuple[str, ...]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # a module that fails here is imported (and fails) in the child
            sys.stderr.write(f"zygote: could not preload {name}\n")
            traceback.print_exc()


def _reap(children: set[int], rep_fd: int) -> None:
    """Report every child that has exited."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _write(rep_fd, f"exit {pid} {_exit_code(status)}")


def serve(preload: tuple[str, ...] = PRELOAD) -> int:
    """The zygote's main loop: requests on fd 0, reports on fd 1, until fd 0 closes."""
    _set_pdeathsig(signal.SIGTERM)
    req_fd, rep_fd = os.dup(0), os.dup(1)  # not inherited by what the children exec
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.close(null_fd)
    os.dup2(2, 1)  # the preloaded modules' prints go to the zygote's log
    env_before = dict(os.environ)
    _preload(preload)
    if threading.active_count() > 1:
        sys.stderr.write("zygote: a preloaded module started a thread; not serving\n")
        return 3
    os_threads = sum(1 for _ in Path("/proc/self/task").iterdir())
    _write(rep_fd, f"ready {os_threads}")
    me = os.getpid()
    children: set[int] = set()
    buffer = b""
    while True:
        readable, _, _ = select.select([req_fd], [], [], 0.1)
        _reap(children, rep_fd)
        if not readable:
            continue
        chunk = os.read(req_fd, 65536)
        if not chunk:
            return 0  # the launcher is gone or closed us; the children live on
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                request = json.loads(line)
                ident = int(request["id"])
            except (ValueError, KeyError, TypeError):
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as exc:
                _write(rep_fd, f"error {ident} fork failed ({exc.errno})")
                continue
            if pid == 0:
                _run_child(request, me, [req_fd, rep_fd], env_before)
            children.add(pid)
            _write(rep_fd, f"spawned {ident} {pid}")


class PolledProcess:
    """A process the launcher did not ``Popen``, with the part of ``Popen``'s API the
    launcher uses; subclasses say how ``poll`` learns that it ended."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code once the process has ended, else None."""
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL the process, unless it has ended."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code; ``subprocess.TimeoutExpired`` after ``timeout``."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(["zygote-child", str(self.pid)], timeout or 0.0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode


class ZygoteChild(PolledProcess):
    """A component forked by the zygote."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        super().__init__(pid)
        self._zygote = zygote

    def poll(self) -> int | None:
        """The exit code once the zygote reported it (``-SIGTERM`` if the zygote died and
        the child is gone)."""
        if self.returncode is None:
            self.returncode = self._zygote.exit_code(self.pid)
        return self.returncode


@dataclass
class _Pending:
    event: threading.Event
    pid: int | None = None
    error: str | None = None


class Zygote:
    """The launcher's side: starts the zygote, forks children through it, tracks exits."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        spawn_timeout: float = 5.0,
        preload: tuple[str, ...] = PRELOAD,
    ) -> None:
        self.env = dict(env)
        self.preload = preload
        self.log_path = log_path
        self.spawn_timeout = spawn_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.os_threads: int | None = None
        self._ready = threading.Event()
        self._gone = threading.Event()
        self._lock = threading.Lock()
        self._exits: dict[int, int] = {}
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        """Start the zygote; it is usable once its imports are done (``ready``)."""
        from infra.stack import die_with_parent

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infra.zygote", *self.preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=self.env,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, async-signal-safe
        )
        threading.Thread(target=self._read, name="zygote-reader", daemon=True).start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            parts = raw.decode(errors="replace").split()
            if not parts:
                continue
            with self._lock:
                if parts[0] == "ready":
                    self.os_threads = int(parts[1])
                    self._ready.set()
                elif parts[0] == "exit" and len(parts) == 3:
                    self._exits[int(parts[1])] = int(parts[2])
                elif parts[0] in ("spawned", "error") and len(parts) >= 3:
                    pending = self._pending.pop(int(parts[1]), None)
                    if pending is not None:
                        if parts[0] == "spawned":
                            pending.pid = int(parts[2])
                        else:
                            pending.error = " ".join(parts[2:])
                        pending.event.set()
        with self._lock:
            self._gone.set()
            for pending in self._pending.values():
                pending.error = "zygote exited"
                pending.event.set()
            self._pending.clear()

    @property
    def process_pid(self) -> int | None:
        """The zygote's pid (None before ``start``)."""
        return None if self.process is None else self.process.pid

    @property
    def ready(self) -> bool:
        """Imports done and still running: requests are served."""
        return self._ready.is_set() and not self._gone.is_set()

    @property
    def gone(self) -> bool:
        """The zygote has exited (or closed its report pipe)."""
        return self._gone.is_set()

    def wait_ready(self, timeout: float) -> bool:
        """Block until the zygote is ready or gone; True when ready."""
        deadline_hit = not self._ready.wait(timeout)
        return not deadline_hit and self.ready

    def spawn(
        self,
        argv: list[str],
        env: Mapping[str, str],
        log: Path,
        module: str = ENTRY_MODULE,
    ) -> ZygoteChild | None:
        """Fork a child running ``python -m <module> argv[1:]``; None when that failed."""
        if not self.ready or self.process is None or self.process.stdin is None:
            return None
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            pending = self._pending[ident] = _Pending(threading.Event())
        request = {
            "id": ident,
            "argv": argv,
            "env": dict(env),
            "log": str(log),
            "cwd": str(Path.cwd()),
            "module": module,
        }
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except (OSError, ValueError):
            with self._lock:
                self._pending.pop(ident, None)
            return None
        if not pending.event.wait(self.spawn_timeout) or pending.pid is None:
            with self._lock:
                self._pending.pop(ident, None)
            return None
        return ZygoteChild(self, pending.pid)

    def exit_code(self, pid: int) -> int | None:
        """``pid``'s exit code once reported; after the zygote died, ``-SIGTERM`` once gone."""
        with self._lock:
            if pid in self._exits:
                return self._exits.pop(pid)
        if not self._gone.is_set():
            return None
        # The zygote died (its children live on) and nobody we can ask reaps them; the code
        # is unknown, the process being gone is what counts.
        if _pid_alive(pid):
            return None
        return -signal.SIGTERM

    def close(self, timeout: float) -> None:
        """Stop the zygote (children it forked live on: the launcher stops them first)."""
        from infra.stack import terminate_tree

        if self.process is not None:
            with contextlib.suppress(OSError, ValueError):
                if self.process.stdin is not None:
                    self.process.stdin.close()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                terminate_tree(self.process.pid, timeout)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=1)
            if self.process.stdout is not None and self._gone.wait(1):
                self.process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    sys.exit(serve(tuple(sys.argv[1:]) or PRELOAD))
