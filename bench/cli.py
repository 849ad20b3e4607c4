"""CLI timings: the wall time of each common ``privmesh`` command, as an operator types it.

One run (``python -m bench.cli``): every command below is started as its own process
(``python -m infra.cli ...``, a fresh data directory, no stack running) 5 times; the
median wall time and the median CPU time (user + system of the child) are reported, with
the target ``<= 2 s`` for every command that does not need the OpenMetadata SDK (issue
#23): none of them imports Feast or pandas any more (``tests/infra/test_cli_imports.py``).
Baselines measured in the same run, on the same machine and load:

- ``python -c pass``: the interpreter's start, the floor of any command;
- ``import infra.cli``: start plus the CLI's root (its sub-commands load when invoked);
- the heavy imports some commands need, the usual way and the way the CLI does it
  (``infra.imports``): ``import feast.feature_store`` vs ``preload_feast()`` (``dsr
  erase``, ``features apply``, a DSR access on a Redis or Postgres online store) and
  ``import opendp.prelude`` vs ``preload_opendp()`` (the ledger's module: ``ledger``,
  ``catalog``).

The load average is recorded before and after: on a shared 2-core host the wall times
move with it, the CPU times much less. Writes bench/results/cli.json; the last line
printed is ``RESULT {json}``. ``BENCH_CLI_QUICK=1``: one run each (a smoke run, no file).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

QUICK = os.environ.get("BENCH_CLI_QUICK") == "1"
RUNS = 1 if QUICK else 5
HEAVY_RUNS = 1 if QUICK else 3  # the Feast and OpenDP import baselines (10-60 s loaded)
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "cli.json"
TARGET_SECONDS = 2.0
CLI = ("-m", "infra.cli")

# (name, argv after ``privmesh``, expected exit status); all answer without a stack
COMMANDS: list[tuple[str, tuple[str, ...], int]] = [
    ("version", ("--version",), 0),
    ("help", ("--help",), 0),
    ("status --json", ("status", "--json"), 1),
    ("ledger --json", ("ledger", "--json"), 0),
    ("ledger (empty hint)", ("ledger",), 0),
    ("keys status --json", ("keys", "status", "--json"), 0),
    ("models list --json", ("models", "list", "--json"), 0),
    ("models serving --json", ("models", "serving", "--json"), 0),
    ("domains list --json", ("domains", "list", "--json"), 0),
    ("domains show shop --json", ("domains", "show", "shop", "--json"), 0),
    ("domains lint", ("domains", "lint"), 0),
    ("tail --help", ("tail", "--help"), 0),
    ("catalog search --tag pii (refused)", ("catalog", "search", "--tag", "pii"), 2),
    ("dsr access --subject '' (refused)", ("dsr", "access", "--subject", " "), 2),
    ("dsr access (a subject, empty stores)", ("dsr", "access", "--subject", "a@b.org"), 0),
    ("catalog show --json", ("catalog", "show", "--json"), 0),
    ("catalog search --tag quasi_identifier --json", ("catalog", "search", "--tag",
                                                      "quasi_identifier", "--json"), 0),
    ("catalog lineage product:shop.orders --json", ("catalog", "lineage",
                                                    "product:shop.orders", "--json"), 0),
]  # fmt: skip
# the OpenMetadata SDK commands (export, push) are not timed here

BASELINES: dict[str, str] = {
    "python -c pass": "pass",
    "import infra.cli": "import infra.cli",
    "import feast.feature_store": "import feast.feature_store",
    "preload_feast()": "from infra.imports import preload_feast; preload_feast()",
    "import opendp.prelude": "import opendp.prelude",
    "preload_opendp()": "from infra.imports import preload_opendp; preload_opendp()",
}


def timed(argv: list[str], env: dict[str, str], expected: int) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one run of ``argv``; fails on a surprise
    exit status (a timing of a crash is no timing)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, cwd=ROOT, timeout=600, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != expected:
        raise SystemExit(
            f"{argv[3:]} exited {done.returncode}, expected {expected}: {done.stderr[-800:]!r}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(argv: list[str], env: dict[str, str], expected: int, runs: int) -> dict[str, Any]:
    """Median wall and CPU seconds over ``runs`` runs (plus the spread of the walls)."""
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = timed(argv, env, expected)
        walls.append(wall)
        cpus.append(cpu)
    return {
        "median_seconds": round(statistics.median(walls), 3),
        "min_seconds": round(min(walls), 3),
        "max_seconds": round(max(walls), 3),
        "median_cpu_seconds": round(statistics.median(cpus), 3),
        "runs": runs,
    }


def main() -> None:
    """Time the baselines and every command; write the results file; print RESULT."""
    work = Path(tempfile.mkdtemp(prefix="privmesh-bench-cli-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVMESH_")}
    env |= {"PRIVMESH_DATA_DIR": str(work / "data"), "PYTHONWARNINGS": "ignore"}
    env.pop("COLUMNS", None)
    load_before = os.getloadavg()
    try:
        baselines = {}
        for name, code in BASELINES.items():
            runs = RUNS if name in ("python -c pass", "import infra.cli") else HEAVY_RUNS
            baselines[name] = measure([sys.executable, "-c", code], env, 0, runs)
            print(f"{name:48} {baselines[name]['median_seconds']:6.2f} s", flush=True)
        commands: dict[str, Any] = {}
        for name, args, expected in COMMANDS:
            row = measure([sys.executable, *CLI, *args], env, expected, RUNS)
            row["argv"] = ["privmesh", *args]
            row["within_target"] = row["median_seconds"] <= TARGET_SECONDS
            row["cpu_within_target"] = row["median_cpu_seconds"] <= TARGET_SECONDS
            commands[name] = row
            print(
                f"{name:48} {row['median_seconds']:6.2f} s  cpu {row['median_cpu_seconds']:5.2f} s"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    common = list(commands.values())
    result: dict[str, Any] = {
        "benchmark": "cli",
        "quick": QUICK,
        "cpus": os.cpu_count(),
        "load_average_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "target_seconds": TARGET_SECONDS,
        "baselines": baselines,
        "commands": commands,
    }
    summary = {
        "common_commands": len(common),
        "common_within_target": sum(r["within_target"] for r in common),
        "common_max_median_seconds": max(r["median_seconds"] for r in common),
        "common_cpu_within_target": sum(r["cpu_within_target"] for r in common),
        "common_max_median_cpu_seconds": max(r["median_cpu_seconds"] for r in common),
        "import_cli_cpu_seconds": baselines["import infra.cli"]["median_cpu_seconds"],
        "feast_import_cpu_seconds": baselines["import feast.feature_store"]["median_cpu_seconds"],
        "feast_preload_cpu_seconds": baselines["preload_feast()"]["median_cpu_seconds"],
        "opendp_import_cpu_seconds": baselines["import opendp.prelude"]["median_cpu_seconds"],
        "opendp_preload_cpu_seconds": baselines["preload_opendp()"]["median_cpu_seconds"],
        "python_start_seconds": baselines["python -c pass"]["median_seconds"],
        "import_cli_seconds": baselines["import infra.cli"]["median_seconds"],
        "feast_import_seconds": baselines["import feast.feature_store"]["median_seconds"],
        "feast_preload_seconds": baselines["preload_feast()"]["median_seconds"],
        "opendp_import_seconds": baselines["import opendp.prelude"]["median_seconds"],
        "opendp_preload_seconds": baselines["preload_opendp()"]["median_seconds"],
        **{
            f"{name} seconds": commands[name]["median_seconds"]
            for name in (
                "version",
                "status --json",
                "dsr access (a subject, empty stores)",
                "catalog show --json",
            )
        },
        "load_average_1m_before_after": result["load_average_1m_before_after"],
    }
    result["summary"] = summary
    if not QUICK:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
