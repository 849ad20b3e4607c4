"""One domain's failure is that domain's alone: a crash-looping worker on a real stack."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.chaos import LocalStack, stack_env
from infra.broker import tansu_binary
from infra.errors import BrokerBinaryMissing

ALIVE = ("shop.orders.distinct_customers", "web.page_views.distinct_visitors")


@pytest.mark.integration
def test_a_crash_looping_worker_leaves_the_rest_answering(tmp_path: Path) -> None:
    """The support worker, given an invalid setting, exits at every start: it is restarted
    with backoff, then marked failed (status, /posture finding, metric) while the shop and
    web domains keep answering DP queries, the broker keeps its pid, and `up` runs on
    until `privmesh down`."""
    try:
        tansu_binary()
    except BrokerBinaryMissing as exc:
        pytest.skip(f"embedded broker unavailable: {exc}")
    env = stack_env(
        tmp_path,
        {
            "PRIVMESH_STACK_DOMAINS": json.dumps(["shop", "support", "web"]),
            "PRIVMESH_STACK_GENERATOR": "true",
            "PRIVMESH_GENERATOR_RATE": "150",
            "PRIVMESH_GENERATOR_PEOPLE": "200",
            "PRIVMESH_STACK_MAX_RESTARTS": "2",
            "PRIVMESH_STACK_BACKOFF_INITIAL_SECONDS": "0.2",
            # a deliberately broken setting of one component only
            "PRIVMESH_STACK_COMPONENT_ENV": json.dumps(
                {"worker-support": {"PRIVMESH_STREAMS_BATCH_SIZE": "0"}}
            ),
        },
    )
    stack = LocalStack(tmp_path, env)
    stack.start()
    try:
        deadline = time.monotonic() + 180
        failed = False
        while time.monotonic() < deadline and not failed:
            comps = stack.state().get("components", {})
            failed = comps.get("worker-support", {}).get("state") == "failed"
            assert stack.up is not None and stack.up.poll() is None, stack.log()[-3000:]
            time.sleep(0.5)
        assert failed, stack.log()[-3000:]
        broker_pid = stack.pid_of("broker")
        assert stack.wait_answers(ALIVE, 120) is not None, stack.log()[-3000:]

        comps = stack.state()["components"]
        assert comps["worker-support"]["restarts"] == 2
        assert comps["worker-support"]["last_exit_code"] == 2  # the CLI's expected-error exit
        others = {n: c["state"] for n, c in comps.items() if n != "worker-support"}
        assert set(others.values()) == {"running"}, others

        status = stack.cli("status")
        assert status.returncode == 1
        assert "failed" in status.stdout and "worker-support" in status.stdout

        posture = httpx.get(f"{stack.api}/v1/posture", timeout=10).json()
        found = {(f["code"], f["subject"]) for f in posture["findings"]}
        assert ("component_failed", "worker-support") in found
        assert posture["streams"]["shop"]["reachable"] and posture["streams"]["web"]["reachable"]

        metrics = httpx.get(f"{stack.api}/metrics", timeout=10).text
        states = {
            (s.labels["component"], s.labels["state"]): s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
            if s.name == "privmesh_component_state"
        }
        assert states[("worker-support", "failed")] == 1
        assert states[("worker-shop", "running")] == 1

        time.sleep(5)  # later: still answering, nothing else restarted, broker untouched
        assert all(stack.answer(c) is not None for c in ALIVE)
        assert stack.pid_of("broker") == broker_pid
        assert stack.up is not None and stack.up.poll() is None
    finally:
        stack.stop()
    assert stack.up is not None and stack.up.returncode == 0, stack.log()[-3000:]
