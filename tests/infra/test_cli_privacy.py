"""Bad input to ``privmesh produce``, ``erase`` and ``keys``: one-line errors, no traceback."""

from __future__ import annotations

from pathlib import Path

from tests.infra.test_cli import run_cli


def test_produce_missing_file(tmp_path: Path) -> None:
    result = run_cli("produce", "--domain", "shop", "--file", str(tmp_path / "none.jsonl"))
    assert result.returncode == 2
    assert "no such file" in result.stderr and "Traceback" not in result.stderr


def test_erase_empty_subject() -> None:
    """A blank --subject is refused with the invalid_cli_value code, no traceback."""
    result = run_cli("erase", "--domain", "shop", "--subject", "  ")
    assert result.returncode == 2
    assert "--subject: the subject is empty" in result.stderr
    assert "[invalid_cli_value]" in result.stderr
    assert "Traceback" not in result.stderr


def test_keys_rotate_unknown_domain() -> None:
    result = run_cli("keys", "rotate", "--domain", "nope")
    assert result.returncode == 2
    assert "unknown domain 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_keys_rotate_twice_is_refused_until_the_first_applies(isolated_env: Path) -> None:
    first = run_cli("keys", "rotate", "--domain", "web")
    assert first.returncode == 0, first.stderr
    assert "key version k2 applies to events from" in first.stdout
    second = run_cli("keys", "rotate", "--domain", "web")
    assert second.returncode == 2
    assert "already has version 2 scheduled" in second.stderr
    assert "Traceback" not in second.stderr
    status = run_cli("keys", "status", env={"COLUMNS": "200"})
    assert "scheduled" in status.stdout and "k2" in status.stdout
