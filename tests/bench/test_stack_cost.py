"""bench.stack_cost's attribution of CPU time: every process under the launcher counts
for the component it descends from, the rest for the launcher."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from bench.stack_cost import cpu_by_kind, kind_of

BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 30: pass"


def test_a_components_children_count_for_its_kind() -> None:
    """A busy grandchild under a 'worker-shop' child is the worker's CPU, not the launcher's
    (this process plays the launcher)."""
    spawn = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BUSY!r}])"
    child = subprocess.Popen([sys.executable, "-c", spawn])
    try:
        parent = psutil.Process(child.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            grand = parent.children()
            if grand and grand[0].cpu_times().user > 0.5:
                break
            time.sleep(0.1)
        totals = cpu_by_kind(psutil.Process(), {child.pid: "worker-shop"})
        assert totals.get("worker", 0.0) > 0.5
        assert "launcher" in totals  # this process: its own CPU, apart from the worker's
    finally:
        for proc in psutil.Process(child.pid).children(recursive=True):
            proc.kill()
        child.kill()
        child.wait(10)


def test_kinds_are_the_names_before_the_domain() -> None:
    assert [kind_of(n) for n in ("worker-shop", "api", "worker-web")] == ["worker", "api", "worker"]
