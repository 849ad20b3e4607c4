"""A warm ClientApp runner for one SuperNode (Flower's ``--isolation process`` mode).

``python -m federation.engine.runner --clientappio-api-address HOST:PORT``

Flower's default SuperExec polls its SuperNode every second and starts a fresh
``flwr-clientapp`` process per message, which imports torch and reloads the domain's
data every time: a SecAgg+ round of four messages then spends most of its time
starting processes. This runner is a long-lived process that claims the SuperNode's
ClientApp tasks every ``poll_seconds`` and runs them in-process with Flower's own
task protocol (token, heartbeat, pull input, push reply and context), so imports,
the model and the domain's loaded data stay warm between messages.

It runs the ClientApp installed on the domain's host (``federation.client_app``), the
privmesh version the domain reviewed, not code shipped in the FAB; a run whose FAB
names another ClientApp or another privmesh version is refused with an error reply.

``--kill-at STEP:ROUND`` (development only) SIGKILLs this runner's process group, the
domain's SuperNode included, when a message asks for that step of that round: how the
tests and ``bench.federation`` make a domain die at a chosen point of the protocol.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, cast

from federation.errors import EngineError

log = logging.getLogger("privmesh.federation.runner")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m federation.engine.runner")
    parser.add_argument("--clientappio-api-address", required=True)
    parser.add_argument("--root-certificates", default=None)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--kill-at", default=None, help="STEP:ROUND (development only)")
    return parser.parse_args(argv)


class Runner:
    """Claims and runs the ClientApp tasks of one SuperNode."""

    def __init__(
        self,
        address: str,
        root_certificates: bytes | None,
        poll_seconds: float,
        kill_at: tuple[str, int] | None,
    ) -> None:
        from flwr.proto.clientappio_pb2_grpc import ClientAppIoStub
        from flwr.supercore.grpc import create_channel
        from flwr.supercore.interceptors import RuntimeVersionClientInterceptor
        from flwr.supercore.retry import make_simple_grpc_retry_invoker, wrap_stub

        from federation.client_app import app
        from federation.registry import privmesh_version

        self.address = address
        self.root_certificates = root_certificates
        self.poll_seconds = poll_seconds
        self.kill_at = kill_at
        self.app = app
        self.version = privmesh_version()
        self.channel = create_channel(
            server_address=address,
            insecure=root_certificates is None,
            root_certificates=root_certificates,
            interceptors=[RuntimeVersionClientInterceptor(component_name="SuperExec")],
        )
        self.stub = ClientAppIoStub(self.channel)
        wrap_stub(self.stub, make_simple_grpc_retry_invoker())

    def serve(self) -> None:
        """Claim and run tasks until the process is stopped."""
        from flwr.proto.appio_pb2 import ClaimTaskRequest, PullPendingTasksRequest

        while True:
            pending = self.stub.PullPendingTasks(PullPendingTasksRequest())
            if not pending.tasks:
                time.sleep(self.poll_seconds)
                continue
            task = pending.tasks[0]
            claim = self.stub.ClaimTask(ClaimTaskRequest(task_id=task.task_id))
            if claim.token:
                self.run_task(claim.token)

    def run_task(self, token: str) -> None:
        """One ClientApp task, as ``flwr-clientapp`` would run it, in this process."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.proto.clientappio_pb2_grpc import ClientAppIoStub
        from flwr.supercore.grpc import create_channel
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_grpc
        from flwr.supercore.interceptors import (
            AppIoTokenClientInterceptor,
            RuntimeVersionClientInterceptor,
        )
        from flwr.supercore.retry import make_simple_grpc_retry_invoker, wrap_stub
        from flwr.supernode.runtime.run_clientapp import (
            pull_task_input,
            push_message,
            push_task_output,
        )

        channel = create_channel(
            server_address=self.address,
            insecure=self.root_certificates is None,
            root_certificates=self.root_certificates,
            interceptors=[
                RuntimeVersionClientInterceptor(component_name="flwr-clientapp"),
                AppIoTokenClientInterceptor(token),
            ],
        )
        stub = ClientAppIoStub(channel)
        wrap_stub(stub, make_simple_grpc_retry_invoker())
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_grpc(stub))
        heartbeat.start()
        context: Any = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            message, context, run, _fab = pull_task_input(stub)
            self._chaos(message)
            if run.fab_version != self.version:
                reply = Message(
                    Error(
                        ErrorCode.LOAD_CLIENT_APP_EXCEPTION,
                        f"this SuperNode runs privmesh {self.version}; the run's FAB is "
                        f"{run.fab_id} {run.fab_version}",
                    ),
                    reply_to=message,
                )
            else:
                try:
                    reply = self.app(message=message, context=context)
                    status, details = SubStatus.COMPLETED, ""
                except Exception as exc:  # the ClientApp's failure becomes an error reply
                    log.exception("ClientApp raised")
                    reason = f"{type(exc).__name__}: {exc}"
                    reply = Message(
                        Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message
                    )
                    details = reason
            push_message(stub, reply, context)
        finally:
            push_task_output(stub=stub, context=context, sub_status=status, details=details)
            heartbeat.stop()
            channel.close()

    def _chaos(self, message: Any) -> None:
        if self.kill_at is None:
            return
        from federation import wire

        step, round_ = self.kill_at
        if step not in wire.steps_of(message.content):
            return
        record = wire.params(message.content, step)
        if step == wire.CENSUS or int(cast(int, record.get("round", -1))) == round_:
            log.warning("chaos: killing this domain's processes at %s:%s", step, round_)
            os.killpg(os.getpgid(0), signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    from domains.runtime import get_runtime_settings
    from federation.engine.tuning import tune
    from federation.settings import get_federation_settings

    args = _parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_federation_settings()
    kill_at = None
    if args.kill_at:
        if get_runtime_settings().is_production:
            raise EngineError("--kill-at is a chaos-testing switch, refused in production")
        step, _, round_ = args.kill_at.partition(":")
        kill_at = (step, int(round_ or 0))
    if args.parent_pid:
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(args.parent_pid)
    tune(settings.poll_seconds)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    certificates = None
    if not args.insecure and args.root_certificates:
        certificates = Path(args.root_certificates).read_bytes()
    runner = Runner(args.clientappio_api_address, certificates, settings.poll_seconds, kill_at)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        runner.serve()


if __name__ == "__main__":
    main()
