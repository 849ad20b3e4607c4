"""``privmesh models promote|rollback|serving``: bad input is one line, nothing applied."""

from __future__ import annotations

from tests.infra.test_cli import assert_one_line_error, run_cli


def test_serving_changes_refuse_bad_input() -> None:
    """A version that never existed, an unknown domain, a rollback with nothing served:
    one line each; the serving log stays empty."""
    assert_one_line_error(
        run_cli("models", "promote", "flight_delay-v42", "--domain", "ewr"),
        "no model version 'flight_delay-v42'", "[unknown_model_version]",
    )  # fmt: skip
    assert_one_line_error(
        run_cli("models", "rollback", "--domain", "nowhere"), "unknown domain 'nowhere'"
    )
    assert_one_line_error(
        run_cli("models", "rollback", "--domain", "ewr"),
        "nothing to roll back", "[invalid_serving_change]",
    )  # fmt: skip
    shown = run_cli("models", "serving", env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "served now: none" in shown.stdout
