"""How each contract field is protected before it leaves ingestion, in words."""

from __future__ import annotations

from domains.contract import FieldSpec, Protection, token_field_name


def published_name(spec: FieldSpec) -> str | None:
    """The field's column in the product topic (None: dropped at ingestion)."""
    if spec.protection is Protection.DROP:
        return None
    if spec.protection is Protection.TOKENISE:
        return token_field_name(spec.name)
    return spec.name


def describe_protection(spec: FieldSpec) -> str:
    """One sentence a governance reviewer reads: what happens to the field's values."""
    if spec.protection is Protection.DROP:
        return "dropped at ingestion: never leaves the domain's ingest topic"
    if spec.protection is Protection.TOKENISE:
        return (
            f"replaced by a keyed HMAC-SHA256 token under the domain's versioned key, "
            f"published as {token_field_name(spec.name)}"
        )
    if spec.protection is Protection.GENERALISE:
        rule = spec.generalise
        assert rule is not None  # the contract requires it
        coarse = {
            "ipv4_prefix": f"IPv4 address cut to its /{rule.bits} network prefix",
            "prefix": f"cut to its first {rule.length} characters",
            "age_band": f"birth date turned into a {rule.width}-year age band",
            "truncate_time": f"time floored to {rule.seconds} s",
        }[rule.method]
        return f"generalised: {coarse}"
    if spec.allowed_values is not None:
        return f"kept: one of {len(spec.allowed_values)} declared public values"
    if spec.bounds is not None:
        return f"kept: values outside [{spec.bounds.min:g}, {spec.bounds.max:g}] are rejected"
    return "kept as sent"
