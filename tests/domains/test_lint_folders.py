"""Linting domain folders as a whole: every file's problems and every broken reference
between files is a finding with its code, file, line and, for a misspelling, a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from domains.lint import Finding, Severity
from domains.lint_folders import lint_domains
from domains.runtime import DEMO_DOMAINS_DIR
from domains.scaffold import scaffold_domain
from infra.commands.domains import lint_models

EXTRA_CLASS = """\
  - id: a.visits.minutes
    title: Minutes of visits
    domain: a
    product: visits
    aggregate: bounded_sum
    measure: duration
    release: daily
    privacy_unit: subject_day
    epsilon_per_release: "0.25"
    budget_per_day: "0.25"
"""


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    """Domains ``a`` and ``b`` (``b``'s task trains on both), clean as scaffolded."""
    scaffold_domain(tmp_path, "a")
    scaffold_domain(tmp_path, "b", ("a",))
    return tmp_path


def lint(folder: Path) -> list[Finding]:
    return lint_domains([folder], window_seconds=10, models=lint_models())


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first line of ``path`` containing ``text``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, [str(f) for f in findings]
    return findings[0]


def test_the_demo_domains_and_a_scaffold_lint_clean(mesh: Path) -> None:
    """The packaged demo folder and a fresh scaffold have no finding at all."""
    assert lint(DEMO_DOMAINS_DIR) == []
    assert lint(mesh) == []


def test_a_class_naming_a_missing_product(mesh: Path) -> None:
    """A class's product that its domain lacks: unknown_product at its line, with a hint."""
    path = mesh / "b" / "query_classes.yaml"
    edit(path, "    product: visits", "    product: visit")
    finding = only(lint(mesh))
    assert (finding.code, finding.source) == ("unknown_product", str(path))
    assert finding.line == line_of(path, "product: visit")
    assert "did you mean 'visits'?" in finding.message
    assert str(finding).startswith(f"{path}:{finding.line}:classes.0.product: error")


@pytest.mark.parametrize(
    ("role", "old", "new", "hint"),
    [
        ("measure", "", "", "duration_min"),
        ("group_by", "aggregate: bounded_sum\n    measure: duration\n    release: daily",
         "aggregate: histogram\n    group_by: knd\n    window: 1d", "kind"),
    ],
)  # fmt: skip
def test_a_class_naming_a_missing_field(
    mesh: Path, role: str, old: str, new: str, hint: str
) -> None:
    """A class measuring or grouping by a field its product lacks: unknown_field."""
    path = mesh / "a" / "query_classes.yaml"
    path.write_text(path.read_text() + EXTRA_CLASS.replace(old, new), encoding="utf-8")
    finding = only(lint(mesh))
    assert finding.code == "unknown_field" and finding.location == f"classes.1.{role}"
    assert finding.line == line_of(path, f"{role}:")
    assert f"did you mean {hint!r}?" in finding.message


def test_a_task_naming_missing_fields_products_and_domains(mesh: Path) -> None:
    """A task's label or feature field, its product, or a domain that is not loaded."""
    path = next((mesh / "b" / "tasks").glob("*.yaml"))
    edit(path, "field: kind", "field: knd")
    finding = only(lint(mesh))
    assert (finding.code, finding.location) == ("unknown_field", "features.0.field")
    assert finding.line == line_of(path, "field: knd") and "'kind'" in finding.message
    edit(path, "field: knd", "field: kind")
    edit(path, "domains: [b, a]", "domains: [b, c]")
    finding = only(lint(mesh))
    assert (finding.code, finding.location) == ("unknown_domain", "domains.1")
    edit(path, "domains: [b, c]", "domains: [b, a]")
    edit(path, "product: visits", "product: vists")
    assert {f.code for f in lint(mesh)} == {"unknown_product"}


def test_an_unknown_owner(mesh: Path) -> None:
    """A contract naming a team that no loaded owners.yaml lists: unknown_owner, a hint."""
    path = mesh / "a" / "contract.yaml"
    edit(path, "owner: a-team@example.com", "owner: a-teem@example.com")
    finding = only(lint(mesh))
    assert (finding.code, finding.location) == ("unknown_owner", "owner")
    assert finding.line == line_of(path, "owner: a-teem")
    assert "did you mean 'a-team@example.com'?" in finding.message


def test_a_misspelt_key_suggests_the_right_one(mesh: Path) -> None:
    """Misspelt keys in a contract, a class file, a class and a task: unknown_key + hint."""
    contract = mesh / "a" / "contract.yaml"
    edit(contract, "    retention_days: 90", "    retension_days: 90")
    classes = mesh / "a" / "query_classes.yaml"
    edit(classes, "classes:", "clases:")
    task = next((mesh / "b" / "tasks").glob("*.yaml"))
    edit(task, "label:", "labl:")
    found = {(f.source, f.code): f for f in lint(mesh)}
    misspelt = [
        (contract, "retension_days", "retention_days"),
        (classes, "clases", "classes"),
        (task, "labl", "label"),
    ]
    for path, wrong, right in misspelt:
        finding = found[(str(path), "unknown_key")]
        assert f"did you mean {right!r}?" in finding.message
        assert finding.line == line_of(path, f"{wrong}:")
    assert (str(contract), "missing_key") in found  # and the right key is missing


def test_a_misspelt_choice_suggests_the_right_one(mesh: Path) -> None:
    """A misspelt privacy tag in a contract: invalid_choice with the closest choice."""
    edit(mesh / "a" / "contract.yaml", "tag: direct_identifier", "tag: direct_identifer")
    finding = only(lint(mesh))
    assert finding.code == "invalid_choice"
    assert "did you mean 'direct_identifier'?" in finding.message


def test_files_filed_under_the_wrong_domain(mesh: Path) -> None:
    """A class or task filed in a domain it does not belong to, a contract in another
    domain's folder."""
    edit(mesh / "b" / "query_classes.yaml", "domain: b\nproducts", "domain: a\nproducts")
    edit(mesh / "b" / "tasks" / "b_long_visits.yaml", "domains: [b, a]", "domains: [a, b]")
    assert [f.code for f in lint(mesh)] == ["class_domain_mismatch"]
    edit(mesh / "b" / "query_classes.yaml", "domain: a\nproducts", "domain: b\nproducts")
    (mesh / "b" / "tasks" / "b_long_visits.yaml").rename(mesh / "a" / "tasks" / "x.yaml")
    edit(mesh / "a" / "tasks" / "x.yaml", "domains: [a, b]", "domains: [b, a]")
    assert lint(mesh) == []  # a task may live in any of its domains' folders
    edit(mesh / "a" / "tasks" / "x.yaml", "domains: [b, a]", "domains: [b, b2]")
    scaffold_domain(mesh, "b2", ("b",))
    codes = [f.code for f in lint(mesh)]
    assert "task_domain_mismatch" in codes
    edit(mesh / "b2" / "contract.yaml", "domain: b2", "domain: b3")
    assert "domain_folder_mismatch" in [f.code for f in lint(mesh)]


def test_names_declared_twice(mesh: Path) -> None:
    """A class id or a task name declared twice, and a team listed differently twice."""
    classes = mesh / "a" / "query_classes.yaml"
    text = classes.read_text()
    classes.write_text(text + text[text.index("  - id:") :], encoding="utf-8")
    task = mesh / "b" / "tasks" / "b_long_visits.yaml"
    (mesh / "a" / "tasks" / "again.yaml").write_text(
        task.read_text().replace("domains: [b, a]", "domains: [a, b]"), encoding="utf-8"
    )
    edit(mesh / "b" / "owners.yaml", "  - email: b-team", "  - email: a-team@example.com\n"
         "    name: a-team\n    display_name: Someone else\n  - email: b-team")  # fmt: skip
    codes = sorted(f.code for f in lint(mesh) if f.severity is Severity.ERROR)
    assert codes == ["duplicate_class", "duplicate_task", "owner_conflict"]


def test_duplicate_domains_and_unreadable_files(tmp_path: Path) -> None:
    """Two folders with one domain: one duplicate_domain finding; broken YAML: its line."""
    scaffold_domain(tmp_path / "one", "a")
    scaffold_domain(tmp_path / "two", "a")
    [finding] = lint_domains([tmp_path / "one", tmp_path / "two"], models=lint_models())
    assert finding.code == "duplicate_domain"
    path = tmp_path / "one" / "a" / "query_classes.yaml"
    path.write_text("domain: a\nclasses: [\n  - oops: [\n", encoding="utf-8")
    finding = only(lint(tmp_path / "one"))
    assert finding.code == "unreadable" and finding.source == str(path)
    assert finding.line is not None and finding.line >= 3


def test_a_broken_contract_hides_the_references_to_it(mesh: Path) -> None:
    """A contract with errors is reported once; its classes are not also 'unknown'."""
    edit(mesh / "a" / "contract.yaml", "privacy_unit: subject_id", "privacy_unit: nobody")
    assert {f.source for f in lint(mesh)} == {str(mesh / "a" / "contract.yaml")}


def test_what_the_api_and_training_refuse_is_a_finding(mesh: Path) -> None:
    """A class measuring an unbounded field and a task one-hot encoding a field with no
    public values lint as the API's and training's own refusals, at their lines."""
    classes = mesh / "a" / "query_classes.yaml"
    classes.write_text(classes.read_text() + EXTRA_CLASS.replace("duration", "kind"))
    task = mesh / "b" / "tasks" / "b_long_visits.yaml"
    edit(task, "{field: kind, encode: onehot}", "{field: duration_min, encode: onehot}")
    edit(task, "label: {field: duration_min, above: 60}", "label: {field: kind, equals: urgent}")
    found = {f.code: f for f in lint(mesh)}
    assert set(found) == {"invalid_query_classes", "schema_mismatch"}
    assert found["invalid_query_classes"].line == line_of(classes, "id: a.visits.minutes")
    assert "not a bounded numeric field" in found["invalid_query_classes"].message
    assert found["schema_mismatch"].source == str(task)
