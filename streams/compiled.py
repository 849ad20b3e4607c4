"""The contract's accept path compiled to one Python function per data product.

Why: the reference transform (``streams.transform``) walks a list of per-field closures
and decodes with the standard library's ``json``; on a shop order that is about 60 us,
of which the decoding is 9 us and the rest is Python call and loop overhead. This module
generates, once per product, the source of a single function with every field's checks
inlined in contract order (constants bound as globals) and decodes with ``msgspec``
(1.7 us for the same order). Measured: docs/streams-throughput.md.

It only ever *accepts*: whatever it cannot accept (a decoding error, a wrong type, a
value out of bounds, an event time out of the window, anything unexpected) makes it
return None, and the reference transform then decides, so every rejection keeps its
reference reason and detail. Its decoder never accepts what ``json.loads`` refuses
except very long integers (more digits than ``sys.get_int_max_str_digits``), which the
compiled checks refuse themselves. ``tests/streams/test_compiled.py`` checks that both
paths agree on random and hostile records.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

import msgspec

from domains.contract import DataProduct, FieldSpec, FieldType, PrivacyTag, Protection
from domains.contract import token_field_name as _token_field_name
from domains.pii_patterns import embedded_kind
from streams.pseudonymise import IPV4_PATTERN, TokenSource, age_band, generalise, normalise

if TYPE_CHECKING:
    from streams.transform import Accepted

FastAccept = Callable[[bytes, "float | None"], "Accepted | None"]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def compile_accept(
    product: DataProduct,
    tokens: TokenSource,
    accepted: type[Accepted],
    parse_timestamp: Callable[[str, object], Any],
) -> FastAccept:
    """The compiled accept function of ``product`` (None for anything it does not accept).

    ``accepted`` and ``parse_timestamp`` come from ``streams.transform`` (passed in, so
    this module does not import the module that imports it)."""
    source, namespace = accept_source(product, tokens, accepted, parse_timestamp)
    code = compile(source, f"<compiled accept of {product.name}>", "exec")
    exec(code, namespace)  # noqa: S102 - our own source, built from the validated contract
    function: FastAccept = namespace["accept"]
    return function


def accept_source(
    product: DataProduct,
    tokens: TokenSource,
    accepted: type[Accepted],
    parse_timestamp: Callable[[str, object], Any],
) -> tuple[str, dict[str, Any]]:
    """The generated source and its globals (exposed so a reader can print it)."""
    digits = sys.get_int_max_str_digits()
    ns: dict[str, Any] = {
        "decode": msgspec.json.Decoder().decode,
        "names": frozenset(f.name for f in product.fields),
        "tokens": tokens,
        "Accepted": accepted,
        "parse_ts": parse_timestamp,
        "embedded_kind": embedded_kind,
        "generalise": generalise,
        "age_band": age_band,
        "normalise": normalise,
        "ipv4_match": IPV4_PATTERN.fullmatch,
        "iso_date": date.fromisoformat,
        # json.loads refuses integers with more digits than this (0: no limit).
        "INT_LIMIT": 10**digits if digits else None,
    }
    body: list[str] = [
        "def accept(raw, now):",
        "    try:",
        "        p = decode(raw)",
        "    except Exception:",
        "        return None",
        "    if type(p) is not dict or not names.issuperset(p):",
        "        return None",
    ]
    index = {f.name: i for i, f in enumerate(product.fields)}
    for i, spec in enumerate(product.fields):
        body += _field_lines(i, spec, ns)
    t = index[product.event_time]
    window = product.event_time_window
    ns["MAX_AGE"] = product.max_event_age_seconds
    ns["MAX_FUTURE"] = window.max_future_seconds
    body += [
        f"    at = x{t}.timestamp()",
        "    if now is not None and (at < now - MAX_AGE or at > now + MAX_FUTURE):",
        "        return None",
        "    tok = tokens.at(at)",
        "    subject = ''",
        "    unit_key = b''",
        "    event = {}",
    ]
    for i, spec in enumerate(product.fields):
        body += _output_lines(i, spec, product, t, ns)
    measures = [
        i
        for i, f in enumerate(product.fields)
        if f.type in {FieldType.INT, FieldType.FLOAT} and f.bounds is not None
    ]
    body.append("    measures = {}")
    for i in measures:
        name = product.fields[i].name
        body += [f"    if x{i} is not None:", f"        measures[{name!r}] = float(x{i})"]
    body.append(
        "    return Accepted(key=subject.encode(), event=event, subject=subject, "
        "event_time=at, measures=measures, unit_key=unit_key)"
    )
    return "\n".join(body) + "\n", ns


def _field_lines(i: int, spec: FieldSpec, ns: dict[str, Any]) -> list[str]:
    """Decode-side checks of field ``i``: its value ends in ``x{i}`` (None when absent)."""
    checks = _checks(i, spec, ns)
    if spec.required:
        head = [f"    v = p.get({spec.name!r})", "    if v is None:", "        return None"]
        return head + ["    " + line for line in checks]
    head = [f"    v = p.get({spec.name!r})", f"    x{i} = None", "    if v is not None:"]
    return head + ["        " + line for line in checks]


def _checks(i: int, spec: FieldSpec, ns: dict[str, Any]) -> list[str]:  # noqa: PLR0912
    fail = "return None"
    lines: list[str] = []
    bounds = spec.bounds
    if bounds is not None:
        ns[f"LO{i}"], ns[f"HI{i}"] = bounds.min, bounds.max
    if spec.type is FieldType.INT:
        lines += [f"if type(v) is not int: {fail}"]
        if bounds is not None:
            lines += [f"if not LO{i} <= v <= HI{i}: {fail}"]
        else:
            lines += [f"if INT_LIMIT is not None and not -INT_LIMIT < v < INT_LIMIT: {fail}"]
        return [*lines, f"x{i} = v"]
    if spec.type is FieldType.FLOAT:
        lines += [
            f"if type(v) is not float and type(v) is not int: {fail}",
            f"if not -1e308 < v < 1e308: {fail}",
        ]
        if bounds is not None:
            lines += [f"if not LO{i} <= v <= HI{i}: {fail}"]
        return [*lines, f"x{i} = float(v)"]
    if spec.type is FieldType.TIMESTAMP:
        ns[f"NAME{i}"] = spec.name
        return ["try:", f"    x{i} = parse_ts(NAME{i}, v)", "except Exception:", f"    {fail}"]
    lines += [
        f"if type(v) is not str or len(v) > {int(spec.max_length)} or '\\x00' in v: {fail}",
        "if not v.isascii():",
        "    try:",
        "        v.encode()",
        "    except UnicodeEncodeError:",
        f"        {fail}",
    ]
    if spec.type is FieldType.EMAIL:
        lines += [
            "local, at_sign, host = v.strip().rpartition('@')",
            f"if not at_sign or not local or '.' not in host: {fail}",
        ]
    elif spec.type is FieldType.IPV4:
        lines += [f"if ipv4_match(v) is None: {fail}"]
    elif spec.type is FieldType.DATE:
        return [*lines, "try:", f"    x{i} = iso_date(v)", "except ValueError:", f"    {fail}"]
    else:
        lines += [f"if not v.strip(): {fail}"]
        if spec.allowed_values is not None:
            ns[f"ALLOWED{i}"] = frozenset(spec.allowed_values)
            lines += [f"if v not in ALLOWED{i}: {fail}"]
        scan = (
            spec.tag is PrivacyTag.NON_PERSONAL
            and spec.protection is Protection.KEEP
            and spec.allowed_values is None
            and (spec.format is None or spec.format.kind == "regex")
        )
        if scan:
            lines += [f"if embedded_kind(v) is not None: {fail}"]
        declared = spec.format
        if declared is not None:
            if declared.kind == "uuid":
                ns[f"FORMAT{i}"] = _UUID.fullmatch
                lines += [f"if FORMAT{i}(v) is None: {fail}"]
            elif declared.kind == "enum":
                ns[f"FORMAT{i}"] = frozenset(declared.values or ())
                lines += [f"if v not in FORMAT{i}: {fail}"]
            else:
                ns[f"FORMAT{i}"] = re.compile(declared.pattern or "").fullmatch
                lines += [f"if FORMAT{i}(v) is None: {fail}"]
    return [*lines, f"x{i} = v"]


def _output_lines(
    i: int, spec: FieldSpec, product: DataProduct, t: int, ns: dict[str, Any]
) -> list[str]:
    """Output of field ``i`` into ``event`` (in contract order, as the reference)."""
    protection = spec.protection
    if protection is Protection.DROP:
        return []
    lines: list[str]
    if protection is Protection.TOKENISE:
        ns[f"KIND{i}"] = spec.type
        lines = [
            f"token = tok.token(str(x{i}), KIND{i})",
            f"event[{_token_field_name(spec.name)!r}] = token",
        ]
        if spec.name == product.privacy_unit:
            lines += [
                "subject = token",
                f"unit_key = normalise(str(x{i}), KIND{i}).encode()",
            ]
    elif protection is Protection.GENERALISE:
        rule = spec.generalise
        assert rule is not None
        ns[f"RULE{i}"] = rule
        whole_octets = rule.method == "ipv4_prefix" and rule.bits % 8 == 0 and rule.bits
        if whole_octets and spec.type is FieldType.IPV4:  # validated: string work only
            kept = rule.bits // 8
            ns[f"SUFFIX{i}"] = ".0" * (4 - kept) + f"/{rule.bits}"
            value = f"'.'.join(x{i}.split('.', {kept})[:{kept}]) + SUFFIX{i}"
        elif rule.method == "prefix":
            value = f"str(x{i})[:{int(rule.length)}]"
        elif rule.method == "age_band":
            value = f"age_band(x{i}, x{t}.date(), {int(rule.width)})"
        else:
            value = f"generalise(x{i}, RULE{i}, x{t})"
        lines = [f"event[{spec.name!r}] = {value}"]
    elif spec.type in {FieldType.TIMESTAMP, FieldType.DATE}:
        lines = [f"event[{spec.name!r}] = x{i}.isoformat()"]
    else:
        lines = [f"event[{spec.name!r}] = x{i}"]
    if spec.required:
        return ["    " + line for line in lines]
    return [f"    if x{i} is not None:", *("        " + line for line in lines)]
