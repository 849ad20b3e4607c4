"""The federation's processes: a SuperLink, and per domain a SuperNode with its runner.

``privmesh train`` runs a real Flower deployment on loopback for one job: it starts (or,
with ``--connect``, uses) a SuperLink and, per domain of the task, a SuperNode with its
warm ClientApp runner, as separate processes, with TLS and SuperNode authentication by
default; submits the job with ``flwr run``; follows its ``privmesh-event`` lines; and
stops every process afterwards (they also die with the launcher). Logs go to
``<data_dir>/logs/federation/``.

On real clusters the same commands run apart: ``privmesh superlink`` on the
coordinator's host, ``privmesh supernode --domain D`` on each domain's host (see
``infra/manifests`` and docs/federation.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import tomli_w

from federation.coordinator import EVENT_PREFIX
from federation.engine.pki import NodeKeys, ServerPki, node_keys, server_pki
from federation.errors import EngineError
from federation.settings import FederationSettings
from infra.ports import require_free, wait_for_port
from infra.stack import die_with_parent, terminate_tree

CONNECTION = "privmesh"
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # Flower splits arrays into 5 MiB objects, each its own round trip: a 1M-parameter
    # update travels as one object instead of two.
    "FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE": str(64 * 2**20),
}


def app_dir() -> Path:
    """The privmesh source tree, which is the Flower app ``flwr run`` builds."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / "federation").is_dir():
        raise EngineError(
            f"{root} is not a privmesh source tree: `privmesh train` builds the Flower app "
            "from the checkout (clone the repository and install it with `make install`)"
        )
    return root


def code_version(root: Path) -> str:
    """``git describe`` of the source tree, or empty outside a git checkout."""
    git = shutil.which("git")
    if git is None:
        return ""
    try:
        out = subprocess.run(
            [git, "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def tool(name: str) -> str:
    """A console script of this environment (flwr, flower-superlink)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise EngineError(f"{name} is not installed in this environment (pip install flwr)")
    return found


# ---------------------------------------------------------------------- commands
def superlink_command(
    settings: FederationSettings, pki: ServerPki | None, host: str | None = None
) -> list[str]:
    """``flower-superlink`` on privmesh's ports: TLS with ``pki``, else ``--insecure``."""
    s = settings
    bind = host or s.superlink_host
    command = [
        tool("flower-superlink"),
        "--disable-runtime-dependency-installation",
        "--serverappio-api-address",
        f"127.0.0.1:{s.serverappio_port}",
        "--fleet-api-address",
        f"{bind}:{s.fleet_port}",
        "--control-api-address",
        f"{bind}:{s.control_port}",
        "--database",
        s.superlink_database,
    ]
    if pki is None:
        return [*command, "--insecure"]
    command += [
        "--ssl-ca-certfile",
        str(pki.ca_certificate),
        "--ssl-certfile",
        str(pki.certificate),
        "--ssl-keyfile",
        str(pki.key),
    ]
    if s.supernode_auth:
        command.append("--enable-supernode-auth")
    return command


def supernode_command(
    settings: FederationSettings,
    domain: str,
    appio_port: int,
    ca_certificate: Path | None,
    key: Path | None,
) -> list[str]:
    """The tuned ``flower-supernode`` of ``domain`` (process isolation: a runner serves it)."""
    command = [
        sys.executable,
        "-m",
        "federation.engine.supernode",
        "--superlink",
        settings.fleet_address,
        "--isolation",
        "process",
        "--clientappio-api-address",
        f"127.0.0.1:{appio_port}",
        "--node-config",
        f'domain="{domain}"',
        "--max-retries",
        "20",
    ]
    if ca_certificate is None:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(ca_certificate)]
    if key is not None:
        command += ["--auth-supernode-private-key", str(key)]
    return command


def runner_command(appio_port: int, kill_at: str | None = None) -> list[str]:
    """The warm ClientApp runner serving the SuperNode on ``appio_port``."""
    command = [
        sys.executable,
        "-m",
        "federation.engine.runner",
        "--clientappio-api-address",
        f"127.0.0.1:{appio_port}",
    ]
    return [*command, "--kill-at", kill_at] if kill_at else command


def flower_env(data_dir: Path, home: Path, threads: int | None = None) -> dict[str, str]:
    """Environment of the federation's processes: privmesh settings, Flower's home, the
    environment's own tools first on PATH, no Flower telemetry or update checks."""
    bin_dir = str(Path(sys.executable).parent)
    defaults = {"PRIVMESH_FEDERATION_TORCH_THREADS": str(threads)} if threads else {}
    return {
        **defaults,
        **os.environ,
        **FLOWER_ENV,
        "FLWR_HOME": str(home),
        "PRIVMESH_DATA_DIR": str(data_dir),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }


def write_flower_config(home: Path, settings: FederationSettings, ca: Path | None) -> None:
    """Flower's CLI configuration: one SuperLink connection named ``privmesh``."""
    connection: dict[str, Any] = {"address": f"{settings.superlink_host}:{settings.control_port}"}
    if ca is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(ca)
    home.mkdir(parents=True, exist_ok=True)
    config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    (home / "config.toml").write_bytes(tomli_w.dumps(config).encode())


# ---------------------------------------------------------------------- processes
@dataclass
class _Process:
    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes] | None


@dataclass
class Processes:
    """Children in their own process groups, dying with the parent, logging to
    ``log_dir/<name>.log`` (or to this process's output when ``log_dir`` is None)."""

    log_dir: Path | None
    env: dict[str, str]
    running: list[_Process] = field(default_factory=list)

    def spawn(
        self, name: str, command: list[str], group: int | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``command``; ``group``: join that process group (a runner, its SuperNode's)."""
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
            env=self.env,
            # A process group of its own (the terminal's Ctrl-C reaches only the launcher);
            # a runner joins its SuperNode's group, so the pair dies together.
            process_group=0 if group is None else group,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, async-signal-safe
        )
        self.running.append(_Process(name, process, log))
        return process

    def alive(self) -> dict[str, bool]:
        """Which processes still run."""
        return {p.name: p.process.poll() is None for p in self.running}

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process, the last started first."""
        for entry in reversed(self.running):
            if entry.process.poll() is None:
                terminate_tree(entry.process.pid, timeout)
            with contextlib.suppress(subprocess.TimeoutExpired):
                entry.process.wait(timeout=1)
            if entry.log is not None:
                entry.log.close()
        self.running.clear()


def start_domain(
    processes: Processes,
    settings: FederationSettings,
    domain: str,
    appio_port: int,
    ca_certificate: Path | None,
    key: Path | None,
    kill_at: str | None = None,
) -> None:
    """A domain's SuperNode and its warm runner, in one process group."""
    supernode = processes.spawn(
        f"supernode-{domain}", supernode_command(settings, domain, appio_port, ca_certificate, key)
    )
    if not wait_for_port(appio_port, settings.start_timeout_seconds):
        raise EngineError(
            f"the {domain} SuperNode did not open its ClientAppIo API on {appio_port}"
        )
    processes.spawn(f"runner-{domain}", runner_command(appio_port, kill_at), group=supernode.pid)


@dataclass
class LocalFederation:
    """The processes of one training job on this machine."""

    domains: list[str]
    data_dir: Path
    settings: FederationSettings
    say: Callable[[str], None]
    chaos: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        threads = max(1, (os.cpu_count() or 1) // max(1, len(self.domains)))
        self.processes = Processes(self.log_dir, flower_env(self.data_dir, self.home, threads))

    @property
    def home(self) -> Path:
        """FLWR_HOME of this federation (Flower's CLI configuration)."""
        return self.data_dir / "federation" / "flwr-home"

    @property
    def log_dir(self) -> Path:
        """Where every process logs."""
        return self.data_dir / "logs" / "federation"

    def env(self) -> dict[str, str]:
        """The environment every process of the federation runs with."""
        return self.processes.env

    def preflight(self) -> None:
        """Refuse to start on occupied ports, naming the setting that moves each."""
        s = self.settings
        ports = {
            s.serverappio_port: (
                "SuperLink ServerAppIo API",
                "PRIVMESH_FEDERATION_SERVERAPPIO_PORT",
            ),
            s.fleet_port: ("SuperLink Fleet API", "PRIVMESH_FEDERATION_FLEET_PORT"),
            s.control_port: ("SuperLink Control API", "PRIVMESH_FEDERATION_CONTROL_PORT"),
        }
        for i, domain in enumerate(self.domains):
            ports[s.clientappio_base_port + i] = (
                f"{domain} SuperNode ClientAppIo API",
                "PRIVMESH_FEDERATION_CLIENTAPPIO_BASE_PORT",
            )
        for port, (what, setting) in ports.items():
            require_free(port, what, setting)

    def start(self) -> None:
        """SuperLink, key registration, then each domain's SuperNode and runner."""
        s = self.settings
        self.preflight()
        pki_dir = self.data_dir / "federation" / "pki"
        pki = (
            server_pki(pki_dir, sorted({s.superlink_host, "127.0.0.1", "localhost"}))
            if s.tls
            else None
        )
        ca = pki.ca_certificate if pki else None
        write_flower_config(self.home, s, ca)
        began = time.monotonic()
        self.processes.spawn("superlink", superlink_command(s, pki))
        for port in (s.control_port, s.fleet_port):
            if not wait_for_port(port, s.start_timeout_seconds):
                raise EngineError(
                    f"the SuperLink did not start; see {self.log_dir / 'superlink.log'}"
                )
        keys: dict[str, NodeKeys] = {}
        if pki is not None and s.supernode_auth:
            keys = {d: node_keys(pki_dir / "supernodes", d) for d in self.domains}
            register_supernodes(self.env(), keys, s.start_timeout_seconds)
        for i, domain in enumerate(self.domains):
            key = keys[domain].private_key if domain in keys else None
            start_domain(
                self.processes,
                s,
                domain,
                s.clientappio_base_port + i,
                ca,
                key,
                self.chaos.get(domain),
            )
        self.say(
            f"[green]ok[/] SuperLink + {len(self.domains)} SuperNodes started in "
            f"{time.monotonic() - began:.1f}s (TLS {'on' if pki else 'off'}, SuperNode auth "
            f"{'on' if keys else 'off'})"
        )

    def submit(
        self, overrides: dict[str, Any], on_event: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """``flwr run`` the job and follow it; the ``registered`` (or ``failed``) event."""
        return run_job(app_dir(), self.env(), self.log_dir, overrides, on_event)

    def stop(self) -> None:
        """Stop every process of the federation."""
        self.processes.stop()


def register_supernodes(env: dict[str, str], keys: dict[str, NodeKeys], timeout: float) -> None:
    """``flwr supernode register`` every domain's public key (in parallel)."""
    jobs = {
        d: subprocess.Popen(
            [
                tool("flwr"),
                "supernode",
                "register",
                str(k.public_key),
                CONNECTION,
                "--format",
                "json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for d, k in keys.items()
    }
    for domain, job in jobs.items():
        out, _ = job.communicate(timeout=timeout)
        text = out.decode(errors="replace")
        if job.returncode != 0 and "already" not in text.lower():
            raise EngineError(f"registering the {domain} SuperNode failed: {text.strip()[-400:]}")


def run_job(
    root: Path,
    env: dict[str, str],
    log_dir: Path,
    overrides: dict[str, Any],
    on_event: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Submit the Flower app in ``root`` with ``flwr run --stream`` and follow its events."""
    log_dir.mkdir(parents=True, exist_ok=True)
    config_file = log_dir / "run-config.toml"
    config_file.write_bytes(tomli_w.dumps(overrides).encode())
    command = [
        tool("flwr"),
        "run",
        str(root),
        CONNECTION,
        "--stream",
        "--run-config",
        str(config_file),
    ]
    result: dict[str, Any] = {}
    with (log_dir / "flwr-run.log").open("ab") as log:
        job = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=root
        )
        assert job.stdout is not None
        try:
            for event in _events(job.stdout, log):
                on_event(event)
                if event["event"] in {"registered", "failed"}:
                    result = event
                    break
        finally:
            with contextlib.suppress(ProcessLookupError):
                job.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                job.wait(timeout=10)
            if job.poll() is None:
                job.kill()
    if not result:
        raise EngineError(
            f"the training job ended without a result; see {log_dir / 'flwr-run.log'}"
        )
    return result


def _events(stream: IO[bytes], log: IO[bytes]) -> Iterator[dict[str, Any]]:
    for raw in iter(stream.readline, b""):
        log.write(raw)
        log.flush()
        line = raw.decode(errors="replace")
        at = line.find(EVENT_PREFIX)
        if at < 0:
            continue
        with contextlib.suppress(ValueError):
            yield json.loads(line[at + len(EVENT_PREFIX) :])


# ---------------------------------------------------------------------- one host
def serve(processes: Processes, names: list[str], say: Callable[[str], None]) -> int:
    """Wait until one of ``names`` exits (or a signal); stop all; the exit code."""
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        while not stopping:
            dead = [
                p for p in processes.running if p.name in names and p.process.poll() is not None
            ]
            if dead:
                code = dead[0].process.returncode or 1
                say(f"{dead[0].name} exited with code {code}; stopping")
                break
            time.sleep(0.5)
    finally:
        processes.stop()
    return code
