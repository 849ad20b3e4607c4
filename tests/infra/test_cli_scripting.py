"""The CLI in scripts: --version, --json that parses, whole rows when piped, bad values
refused before anything heavy is imported, clean stderr, empty states, tail --follow."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from domains.registry import get_contract
from governance.subjects import MAX_SUBJECT_CHARS, check_subject
from infra.broker import ensure_topics
from infra.errors import InvalidCliValue
from infra.inputs import entity_ref, one_of, text_option
from streams.producing import RawProducer
from streams.settings import KafkaSettings
from tests.infra.test_cli import run_cli
from tests.infra.test_cli_data import env_for, fresh_domain

HEAVY = ("feast", "opendp", "torch", "polars", "metadata", "pandas")


def run_bytes(*args: str | bytes, options: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """Run the CLI (after interpreter ``options``) with arguments that may be raw bytes (not
    UTF-8, as a shell passes them); exit code, stdout, stderr."""
    result = subprocess.run(
        [sys.executable, *options, "-m", "infra.cli", *args],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return (
        result.returncode,
        result.stdout.decode(errors="replace"),
        result.stderr.decode(errors="replace"),
    )


def imported(stderr: str) -> set[str]:
    """Top-level package names ``python -X importtime`` reports as imported."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_version_prints_the_package_version() -> None:
    """``--version`` prints the installed package's version and exits 0."""
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"privmesh {version('privmesh')}"


@pytest.mark.parametrize(
    ("args", "code", "check"),
    [
        (("ledger", "--json"), 0, lambda v: v == []),
        (("keys", "status", "--json"), 0, lambda v: {"domain", "version", "state"} <= set(v[0])),
        (("models", "list", "--json"), 0, lambda v: v == []),
        (("models", "serving", "--json"), 0, lambda v: v["changes"] == [] and v["served"] == {}),
        (("domains", "list", "--json"), 0, lambda v: {r["domain"] for r in v} >= {"shop", "ewr"}),
        (("domains", "show", "shop", "--json"), 0, lambda v: v["domain"] == "shop"),
        (("status", "--json"), 1, lambda v: v["running"] is False and v["components"] == []),
        (("catalog", "show", "--json"), 0, lambda v: len(v["products"]) >= 6),
    ],
)
def test_listing_commands_print_json(args: tuple[str, ...], code: int, check: Any) -> None:
    """Each listing command's --json output parses as JSON with its documented keys, no
    markup, and its exit status says what happened (status: 1 when no stack runs)."""
    result = run_cli(*args, timeout=180)
    assert result.returncode == code, result.stderr
    assert "[/" not in result.stdout and "\x1b[" not in result.stdout
    assert check(json.loads(result.stdout))


def test_piped_tables_keep_whole_rows() -> None:
    """Piped stdout is not cut at 80 columns: a table row longer than 300 characters (the
    ewr destination codes) comes out on one line."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "domains", "show", "ewr"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    dest = get_contract("ewr").products[0].field("dest")
    assert dest is not None and dest.allowed_values is not None
    codes = "{" + ", ".join(dest.allowed_values) + "}"
    assert len(codes) > 300
    assert any(codes in line for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("dsr", "access", "--subject", "   "), ("--subject: the subject is empty",)),
        (("dsr", "erase", "--subject", b"caf\xe9@example.org"), ("UTF-8",)),
        (("dsr", "access", "--subject", "a" * (MAX_SUBJECT_CHARS + 1)), ("characters long",)),
        (("erase", "--domain", "shop", "--subject", b"\xff\xfe"), ("UTF-8",)),
        (("catalog", "search", "--tag", "pii"), ("--tag 'pii' is not one of", "quasi_identifier")),
        (("catalog", "search", "--tag", "quasi_identifer"), ("did you mean quasi_identifier",)),
        (("catalog", "search", "--protection", "tokenize"), ("did you mean tokenise",)),
        (("catalog", "search", "--text", "a\nb"), ("control character",)),
        (("catalog", "search", "--domain", "shops"), ("did you mean shop",)),
        (("catalog", "show", "shop.orders"), ("not an entity id", "KIND:NAME")),
        (("catalog", "show", "feild:shop.orders.zip_code"), ("did you mean field",)),
        (("catalog", "lineage", "product:"), ("not an entity id",)),
        (("catalog", "lineage", "product:shop.orders", "--direction", "up"), ("upstream",)),
        (("models", "list", "--task", ""), ("--task is empty",)),
        (("models", "serving", "--task", "flight_dela"), ("did you mean flight_delay",)),
        (("catalog", "search", "--kind", "feild"), ("did you mean field",)),
        (("catalog", "search", "--budget-above", "nan"), ("from 0 to 1",)),
        (("catalog", "search", "--budget-above", "1e999"), ("from 0 to 1",)),
        (("ledger", "--limit", "9" * 50), ("not in the range", "privmesh ledger --help")),
        (("ledger", "--limit", "9" * 100_000), ("is not a valid integer", "…")),
        (("ledger", "--limt", "3"), ("Did you mean --limit",)),
        (("statu",), ("Did you mean 'status'",)),
        (("consent", "grant", "--domain", "shop", "--subject", "\t"), ("--subject: the",)),
        (
            (
                "consent",
                "withdraw",
                "--domain",
                "shop",
                "--subject",
                "a@b.org",
                "--purpose",
                "sales_analytic",
            ),
            ("did you mean sales_analytics",),
        ),
        (("tail",), ("Missing option '--domain'",)),
    ],
)
def test_bad_values_are_refused_before_heavy_imports(
    args: tuple[str | bytes, ...], needles: tuple[str, ...]
) -> None:
    """A value no command can use (click's usage errors included) is one short error line
    with the invalid_cli_value code, exit 2, no traceback, and neither Feast, OpenDP,
    PyTorch, Polars, pandas nor the OpenMetadata SDK was imported to find that out."""
    code, out, err = run_bytes(*args, options=("-X", "importtime"))
    lines = [line for line in err.splitlines() if line and not line.startswith("import time:")]
    assert code == 2, err[-2000:]
    assert out == "" and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("privmesh: error:"), lines
    assert len(lines[0]) < 600  # a pasted huge value is cut, not echoed
    assert lines[0].endswith("[invalid_cli_value]")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not imported(err) & set(HEAVY), imported(err) & set(HEAVY)


def test_subjects_never_appear_in_refusals() -> None:
    """Subject checks refuse NUL, lone surrogates, empty and huge values without quoting
    them; other values get the accepted ones and the closest match."""
    for bad in ("\x00", "ada\x00@example.org", "\udcff", " \t", "x" * 5_000):
        with pytest.raises(ValueError, match="subject") as refused:
            check_subject(bad)
        assert bad.strip() == "" or bad not in str(refused.value)
    check_subject("ada@example.org")
    with pytest.raises(InvalidCliValue, match="did you mean sensitive"):
        one_of("--tag", "sensitiv", ["sensitive", "non_personal"])
    with pytest.raises(InvalidCliValue, match="UTF-8"):
        text_option("--text", "\udcff")
    with pytest.raises(InvalidCliValue, match="at most"):
        text_option("--text", "9" * 10**6)
    assert entity_ref("ENTITY", "topic:shop.orders.v1#zip_code", ["topic"]).startswith("topic:")
    with pytest.raises(InvalidCliValue, match="not an entity id"):
        entity_ref("ENTITY", "topic:shop.orders.v1#", ["topic"])


def test_empty_states_say_what_to_do() -> None:
    """With no model, no release and no served version, the listings say what to run."""
    models = run_cli("models", "list")
    assert models.returncode == 0 and models.stdout == ""
    assert "no models yet" in models.stderr and "privmesh train" in models.stderr
    ledger = run_cli("ledger")
    assert ledger.returncode == 0 and "no releases in the ledger yet" in ledger.stderr


def test_dsr_access_stderr_is_clean(isolated_env: Path) -> None:
    """An access request that loads Feast and the Kafka client prints its export and nothing
    on stderr: no kafka-python DeprecationWarning."""
    result = run_cli("dsr", "access", "--subject", "ada@example.org", timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    export = json.loads(result.stdout)
    assert export["domains"] == {} and export["request_id"].startswith("dsr-access-")


def read_lines(proc: subprocess.Popen[bytes], count: int, deadline: float) -> list[str]:
    """``count`` lines of ``proc``'s stdout, failing the test at ``deadline``."""
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    lines: list[str] = []
    buffer = b""
    while len(lines) < count:
        assert time.monotonic() < deadline, f"tail printed only {len(lines)} of {count}"
        if not selector.select(timeout=1):
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        assert chunk, "tail exited early"
        buffer += chunk
        *done, buffer = buffer.split(b"\n")
        lines += [line.decode() for line in done]
    return lines


@pytest.mark.integration
def test_tail_follow_prints_records_produced_after_it_started(broker: str, tmp_path: Path) -> None:
    """tail --follow keeps printing past 20 records, including ones produced after it had
    printed the first ones, until Ctrl-C; then it reports the count and exits 0."""
    domain, env = fresh_domain(tmp_path)
    env.update(env_for(broker))
    topic = f"{domain}.orders.v1"
    ensure_topics(broker, [topic], 2, 1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "tail", "--domain", domain, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    try:
        deadline = time.monotonic() + 120
        with RawProducer(KafkaSettings(bootstrap_servers=broker), "test-tail") as producer:
            for n in range(5):
                producer.send(topic, json.dumps({"n": n}).encode(), key=b"k")
            producer.flush()
            first = read_lines(proc, 5, deadline)
            for n in range(5, 30):
                producer.send(topic, json.dumps({"n": n}).encode(), key=b"k")
            producer.flush()
            rest = read_lines(proc, 25, deadline)
        seen = sorted(json.loads(line)["event"]["n"] for line in first + rest)
        assert seen == list(range(30))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"30 record(s) from {topic}" in err.decode()


@pytest.mark.integration
def test_tail_of_an_empty_topic_says_what_to_run(broker: str, tmp_path: Path) -> None:
    """tail of a topic with no record exits 0 after the quiet period, prints nothing on
    stdout and says on stderr how records get there."""
    domain, env = fresh_domain(tmp_path)
    env.update(env_for(broker))
    ensure_topics(broker, [f"{domain}.orders.v1"], 2, 1)
    result = run_cli("tail", "--domain", domain, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "0 record(s)" in result.stderr and "privmesh produce" in result.stderr
