"""The contract linter: errors for contradictions, warnings for likely mistakes.

Errors are what the contract models refuse (a direct identifier kept in clear, a
numeric field reaching the product without bounds, a product without a privacy
unit, ...), reported with a stable ``code`` and the location in the file rather than
as one exception. Warnings flag fields tagged ``non_personal`` whose names or sample
values look personal, free text tagged sensitive but kept, long retention, and a
per-day sum cap that never binds (``max_sum_per_period`` at or above
``max_records_per_period`` x the clamp: accepted, it only fails to lower the sum's
sensitivity; a cap that contradicts the clamp is an error): a human decides.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from domains.contract import (
    DataProduct,
    DomainContract,
    FieldSpec,
    FieldType,
    PrivacyTag,
    Protection,
)
from domains.pii_patterns import PHONE_KIND, value_kind
from domains.yaml_files import Location, key_lines, line_of

LONG_RETENTION_DAYS = 730
DAY_SECONDS = 86_400
HOUR_SECONDS = 3_600


class Severity(StrEnum):
    """How a finding affects ``privmesh domains lint``'s exit status."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: a stable ``code``, where it is (file, key path, line), and what to do."""

    severity: Severity
    code: str
    source: str
    location: str
    message: str
    line: int | None = None

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form (``line`` only when known)."""
        return {k: str(v) for k, v in asdict(self).items() if v is not None}

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        where = f"{where}:{self.location}" if self.location else where
        return f"{where}: {self.severity.value} [{self.code}] {self.message}"


# Pydantic's own error types, renamed to codes a contract author understands.
_SCHEMA_CODES = {
    "missing": "missing_key",
    "extra_forbidden": "unknown_key",
    "enum": "invalid_choice",
    "literal_error": "invalid_choice",
    "string_pattern_mismatch": "invalid_name",
}
_REQUIRED_KEYS = {"privacy_unit": "no_privacy_unit", "event_time": "no_event_time"}

# Words in a field name that suggest personal data (matched against its _-separated parts).
_PERSONAL_WORDS = frozenset(
    {
        "email", "mail", "name", "firstname", "lastname", "surname", "fullname", "phone",
        "mobile", "msisdn", "ip", "ipv4", "ipv6", "address", "street", "postcode", "zip",
        "postal", "birth", "birthday", "dob", "ssn", "passport", "iban", "card", "pan",
        "account", "user", "username", "login", "customer", "patient", "member", "employee",
        "device", "cookie", "imei", "latitude", "longitude", "lat", "lon", "gps", "gender",
        "salary", "income", "religion", "ethnicity", "diagnosis", "national", "tax", "license",
        "plate", "vin", "visitor",
    }
)  # fmt: skip

_PHONE = re.compile(r"^\+?[\d\s().-]{9,20}$")
_ISO_DATE = re.compile(r"^(19|20)\d\d-[01]\d-[0-3]\d$")


def lint_contract_file(path: Path, window_seconds: int | None = None) -> list[Finding]:
    """Lint one contract file (``window_seconds``: see ``lint_contract``)."""
    read = read_yaml(path)
    if isinstance(read, Finding):
        return [read]
    raw, lines = read
    return lint_contract(raw, str(path), window_seconds, lines)


def read_yaml(path: Path) -> tuple[object, dict[Location, int]] | Finding:
    """``path`` parsed, with the line of every key; an ``unreadable`` finding if it fails."""
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.safe_load(text), key_lines(text)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        return Finding(
            Severity.ERROR, "unreadable", str(path), "", message, None if line is None else line + 1
        )


def lint_contract(
    raw: object,
    source: str = "<contract>",
    window_seconds: int | None = None,
    lines: dict[Location, int] | None = None,
) -> list[Finding]:
    """Errors from validating ``raw``; if it is valid, the checks against the stream
    processor's ``window_seconds`` (None: skipped) and the warnings of the heuristics.
    ``lines`` (``domains.yaml_files.key_lines`` of the file) adds line numbers."""
    try:
        contract = DomainContract.model_validate(raw)
    except ValidationError as exc:
        keys = known_keys(DomainContract)
        return [schema_finding(error, source, lines, (), keys) for error in exc.errors()]
    findings: list[Finding] = []
    if window_seconds is not None:
        for index, product in enumerate(contract.products):
            findings.extend(_window_findings(product, window_seconds, source, f"products.{index}"))
    findings.extend(_warnings(contract, source))
    return [_with_line(f, lines) for f in findings]


def lint_paths(paths: Iterable[Path], window_seconds: int | None = None) -> list[Finding]:
    """Lint contract files and directories of ``*.yaml`` files; duplicate domains are errors.
    ``window_seconds``: the stream processor's window length (see ``lint_contract``)."""
    findings: list[Finding] = []
    seen: dict[str, str] = {}
    for path in paths:
        files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        for file in files:
            file_findings = lint_contract_file(file, window_seconds)
            findings.extend(file_findings)
            if any(f.severity is Severity.ERROR for f in file_findings):
                continue
            domain = DomainContract.model_validate(
                yaml.safe_load(file.read_text(encoding="utf-8"))
            ).domain
            if domain in seen:
                findings.append(
                    Finding(
                        Severity.ERROR,
                        "duplicate_domain",
                        str(file),
                        "domain",
                        f"domain {domain!r} is already declared in {seen[domain]}",
                    )
                )
            seen[domain] = str(file)
    return findings


def schema_finding(
    error: Any,
    source: str,
    lines: dict[Location, int] | None = None,
    prefix: Location = (),
    keys: Iterable[str] = (),
) -> Finding:
    """A pydantic error as a finding; ``prefix`` is where the validated value sits in its
    file, ``keys`` the keys the model knows (to suggest one for a misspelt key)."""
    at = (error.get("ctx") or {}).get("at")  # a model's refusal about one of its keys
    keys_at = tuple(int(p) if p.isdigit() else p for p in str(at).split(".")) if at else ()
    loc = (*prefix, *error["loc"], *keys_at)
    kind = str(error["type"])
    code = _SCHEMA_CODES.get(kind, kind)
    if kind == "missing" and loc and str(loc[-1]) in _REQUIRED_KEYS:
        code = _REQUIRED_KEYS[str(loc[-1])]
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        message = f"required key {loc[-1]!r} is missing" if loc else message
    elif kind == "extra_forbidden" and loc:
        message = f"unknown key {loc[-1]!r}{did_you_mean(str(loc[-1]), keys)}"
    elif kind in ("enum", "literal_error"):
        choices = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        message += did_you_mean(str(error.get("input", "")), choices)
    location = ".".join(str(part) for part in loc)
    line = None if lines is None else line_of(lines, loc)
    return Finding(Severity.ERROR, code, source, location, message, line)


def _with_line(finding: Finding, lines: dict[Location, int] | None) -> Finding:
    """``finding`` with the line of its location (a dotted key path) in its file."""
    if lines is None or finding.line is not None:
        return finding
    where = tuple(int(p) if p.isdigit() else p for p in finding.location.split(".") if p)
    return replace(finding, line=line_of(lines, where))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def known_keys(model: type[BaseModel]) -> frozenset[str]:
    """Every key ``model`` and the models nested in it accept (from its JSON schema)."""
    found: set[str] = set()
    stack: list[object] = [model.model_json_schema()]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict):
                found.update(properties)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(found)


def _window_findings(
    product: DataProduct, window_seconds: int, source: str, where: str
) -> Iterable[Finding]:
    """Contradictions between ``product``'s per-day bounds and the window length."""
    if window_seconds < 1:
        yield Finding(
            Severity.ERROR,
            "invalid_window_seconds",
            source,
            "",
            f"the stream processor's window_seconds is {window_seconds}; it must be >= 1",
        )
        return
    bounds = product.contribution
    per_day = math.ceil(DAY_SECONDS / window_seconds)
    if bounds.max_windows_per_period > per_day:
        yield Finding(
            Severity.ERROR,
            "windows_exceed_windows_per_day",
            source,
            f"{where}.contribution.max_windows_per_period",
            f"product {product.name!r}: max_windows_per_period {bounds.max_windows_per_period} "
            f"exceeds the {per_day} windows of {window_seconds} s in a UTC day; the bound "
            f"never binds: set it to at most {per_day}",
        )
    if DAY_SECONDS % window_seconds:
        yield Finding(
            Severity.WARNING,
            "window_straddles_day",
            source,
            f"{where}.contribution.privacy_period",
            f"windows of {window_seconds} s do not tile the UTC day: one window a day straddles "
            "midnight and counts towards the day it starts in; pick a divisor of 86400",
        )
    elif window_seconds < HOUR_SECONDS and HOUR_SECONDS % window_seconds:
        yield Finding(
            Severity.WARNING,
            "window_straddles_hour",
            source,
            f"{where}.contribution.privacy_period",
            f"windows of {window_seconds} s do not tile the UTC hour: hourly values are not "
            "exact sums of windows; pick a divisor of 3600",
        )


def _warnings(contract: DomainContract, source: str) -> Iterable[Finding]:
    for p_index, product in enumerate(contract.products):
        where = f"products.{p_index}"
        if product.retention_days > LONG_RETENTION_DAYS:
            yield Finding(
                Severity.WARNING,
                "long_retention",
                source,
                f"{where}.retention_days",
                f"product {product.name!r} keeps data {product.retention_days} days; "
                f"justify more than {LONG_RETENTION_DAYS} in its purpose",
            )
        for f_index, spec in enumerate(product.fields):
            yield from _field_warnings(spec, source, f"{where}.fields.{f_index}")
        yield from _sum_cap_warnings(product, source, f"{where}.contribution.max_sum_per_period")


def _sum_cap_warnings(product: DataProduct, source: str, where: str) -> Iterable[Finding]:
    """A per-day sum cap at or above ``max_records_per_period`` x the clamp's largest value
    never binds (the records and the clamp already bound the day's total): accepted, since it
    is no contradiction and harms no one, but said, because its author expected it to lower
    the sum's sensitivity and it does not."""
    records = product.contribution.max_records_per_period
    for name, cap in product.contribution.max_sum_per_period.items():
        clamp = product.clamp_of(name)
        bound = records * max(abs(clamp.min), abs(clamp.max))
        if cap >= bound:
            yield Finding(
                Severity.WARNING,
                "sum_cap_never_binds",
                source,
                f"{where}.{name}",
                f"product {product.name!r}: max_sum_per_period of {name!r} ({cap:g}) is at "
                f"least max_records_per_period x its clamp ({records} x "
                f"{max(abs(clamp.min), abs(clamp.max)):g} = {bound:g}), so it never cuts "
                f"anything and the sum's bound stays {bound:g}; lower it below {bound:g} or "
                "remove it",
            )


def _field_warnings(spec: FieldSpec, source: str, where: str) -> Iterable[Finding]:
    if spec.tag is PrivacyTag.NON_PERSONAL:
        words = set(spec.name.split("_"))
        hits = sorted(words & _PERSONAL_WORDS)
        if hits and spec.allowed_values is None:
            yield Finding(
                Severity.WARNING,
                "personal_name_tagged_non_personal",
                source,
                f"{where}.name",
                f"field {spec.name!r} is tagged non_personal but its name suggests personal "
                f"data ({', '.join(hits)}); tag it, or declare its public allowed_values",
            )
        if spec.type in {FieldType.EMAIL, FieldType.IPV4, FieldType.DATE}:
            yield Finding(
                Severity.WARNING,
                "personal_type_tagged_non_personal",
                source,
                f"{where}.type",
                f"field {spec.name!r} has type {spec.type.value!r} but is tagged non_personal",
            )
        for index, example in enumerate(spec.examples):
            kind = looks_personal(example)
            if kind:
                yield Finding(
                    Severity.WARNING,
                    "personal_value_tagged_non_personal",
                    source,
                    f"{where}.examples.{index}",
                    f"field {spec.name!r} is tagged non_personal but a sample value looks "
                    f"like {kind}",
                )
    if (
        spec.tag is PrivacyTag.SENSITIVE
        and spec.type is FieldType.STRING
        and spec.protection is Protection.KEEP
        and spec.allowed_values is None
    ):
        yield Finding(
            Severity.WARNING,
            "sensitive_free_text_kept",
            source,
            f"{where}.protection",
            f"sensitive free-text field {spec.name!r} is kept in clear; free text carries "
            "identifiers: drop it or declare its allowed_values",
        )


def looks_personal(value: str | int | float) -> str | None:
    """What kind of personal value ``value`` looks like, or None (the shared detectors of
    ``domains.pii_patterns``, plus calendar dates that could be birth dates)."""
    text = str(value).strip()
    kind = value_kind(text)
    if kind is None and _PHONE.match(text) and sum(c.isdigit() for c in text) >= 9:
        kind = PHONE_KIND  # the linter also flags bare digit runs a human should look at
    if kind is None and _ISO_DATE.match(text):
        kind = "a date (birth date?)"
    return kind
