"""Open Data Contract Standard (ODCS v3) documents to and from privmesh contracts.

A privmesh domain contract becomes one ODCS document: each data product is a schema
object, each field a schema property. Facts ODCS has a field for travel in it (type and
format in ``logicalType``/``logicalTypeOptions``, bounds as ``minimum``/``maximum``, the
privacy tag as ``classification``, public categories as ``enum``, the owner in ``team``,
retention as a ``retention`` SLA property per product); the rest (protection, privacy
unit, event time, consent mode, contribution bounds, ...) in ``customProperties`` of
vendor ``privmesh``. docs/odcs.md has the table.

Imported documents are hostile: a file that is not YAML, not an ODCS document, or lacks a
fact a privmesh contract needs raises an ``OdcsError`` with a stable code, never another
exception. Nothing is guessed that weakens protection: a field without a privacy tag is
refused; a direct identifier without a declared protection is tokenised, a
quasi-identifier without one is dropped unless its public ``enum`` values are declared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from open_data_contract_standard.model import (
    CustomProperty,
    Description,
    EnumValue,
    OpenDataContractStandard,
    SchemaObject,
    SchemaProperty,
    ServiceLevelAgreementProperty,
    Team,
    TeamMember,
)
from pydantic import ValidationError

from domains.contract import (
    DataProduct,
    DomainContract,
    FieldSpec,
    FieldType,
    PrivacyTag,
    Protection,
    token_field_name,
)
from domains.errors import OdcsInvalid, OdcsUnmappable, OdcsUnreadable
from domains.yaml_files import validation_problems

API_VERSION = "v3.1.0"
VENDOR = "privmesh"
OWNER_ROLE = "owner"
RETENTION = "retention"
MAX_DOCUMENT_BYTES = 5 * 1024 * 1024  # an ODCS document of a domain is a few kilobytes

# privmesh wire type -> (ODCS logicalType, logicalTypeOptions.format)
_LOGICAL: dict[FieldType, tuple[str, str | None]] = {
    FieldType.STRING: ("string", None),
    FieldType.INT: ("integer", None),
    FieldType.FLOAT: ("number", None),
    FieldType.DATE: ("date", None),
    FieldType.TIMESTAMP: ("timestamp", None),
    FieldType.EMAIL: ("string", "email"),
    FieldType.IPV4: ("string", "ipv4"),
}
_FROM_LOGICAL = {value: kind for kind, value in _LOGICAL.items()}
_DAYS_PER_UNIT = {
    **dict.fromkeys(("d", "day", "days"), 1),
    **dict.fromkeys(("w", "week", "weeks"), 7),
    **dict.fromkeys(("m", "month", "months"), 30),
    **dict.fromkeys(("y", "yr", "year", "years"), 365),
}
_DEFAULT_MAX_LENGTH = FieldSpec.model_fields["max_length"].default


# ----------------------------------------------------------------------------- export
def to_odcs(contract: DomainContract) -> OpenDataContractStandard:
    """The ODCS v3 document of ``contract`` (every product a schema object)."""
    members = [TeamMember(username=contract.owner, role=OWNER_ROLE)]
    for owner in dict.fromkeys(p.owner for p in contract.products):
        if owner != contract.owner:
            members.append(TeamMember(username=owner, role="productOwner"))
    custom = _custom({"reviewed": contract.reviewed.isoformat() if contract.reviewed else None})
    return OpenDataContractStandard(
        apiVersion=API_VERSION,
        kind="DataContract",
        id=f"privmesh-{contract.domain}",
        name=contract.domain,
        version=f"{max(p.version for p in contract.products)}.0.0",
        status="active",
        domain=contract.domain,
        description=Description(usage=contract.description),
        team=Team(name=contract.domain, members=members),
        schema=[_schema_object(p) for p in contract.products],
        slaProperties=[
            ServiceLevelAgreementProperty(
                property=RETENTION, value=p.retention_days, unit="d", element=p.name
            )
            for p in contract.products
        ],
        customProperties=custom or None,
    )


def odcs_yaml(contract: DomainContract) -> str:
    """``contract`` as an ODCS YAML document."""
    return to_odcs(contract).to_yaml()


def _schema_object(product: DataProduct) -> SchemaObject:
    return SchemaObject(
        name=product.name,
        logicalType="object",
        physicalType="topic",
        description=product.description,
        properties=[_schema_property(f) for f in product.fields],
        customProperties=_custom(
            {
                "version": product.version,
                "owner": product.owner,
                "purpose": product.purpose,
                "consent": product.consent.value,
                "privacyUnit": product.privacy_unit,
                "eventTime": product.event_time,
                "eventTimeWindow": product.event_time_window.model_dump(mode="json"),
                "maxEventBytes": product.max_event_bytes,
                "upstream": list(product.upstream) or None,
                "contribution": product.contribution.model_dump(mode="json"),
            }
        ),
    )


def _schema_property(spec: FieldSpec) -> SchemaProperty:
    logical, fmt = _LOGICAL[spec.type]
    options: dict[str, Any] = {}
    if fmt is not None:
        options["format"] = fmt
    if logical == "string":
        options["maxLength"] = spec.max_length
    if spec.bounds is not None:
        options["minimum"] = _number(spec.bounds.min, spec.type)
        options["maximum"] = _number(spec.bounds.max, spec.type)
    if spec.type is FieldType.TIMESTAMP:
        options["timezone"] = True
    declared = spec.format
    custom_format = None
    if declared is not None and declared.kind == "regex":
        options["pattern"] = declared.pattern
    elif declared is not None and declared.kind == "uuid":
        options["format"] = "uuid"
    elif declared is not None:
        custom_format = declared.model_dump(mode="json", exclude_none=True)
    custom = {
        "protection": spec.protection.value,
        "generalise": spec.generalise.model_dump(mode="json", exclude_defaults=True)
        if spec.generalise
        else None,
        "format": custom_format,
        "maxLength": spec.max_length
        if logical != "string" and spec.max_length != _DEFAULT_MAX_LENGTH
        else None,
    }
    return SchemaProperty(
        name=spec.name,
        logicalType=logical,
        logicalTypeOptions=options or None,
        description=spec.description,
        required=spec.required,
        classification=spec.tag.value,
        encryptedName=token_field_name(spec.name)
        if spec.protection is Protection.TOKENISE
        else None,
        enum=[EnumValue(value=v) for v in spec.allowed_values] if spec.allowed_values else None,
        examples=list(spec.examples) or None,
        customProperties=_custom(custom),
    )


def _number(value: float, kind: FieldType) -> float | int:
    """A bound as the document shows it: a whole number for an int field."""
    return int(value) if kind is FieldType.INT and value.is_integer() else value


def _custom(values: dict[str, Any]) -> list[CustomProperty]:
    return [
        CustomProperty(property=name, value=value, vendor=VENDOR)
        for name, value in values.items()
        if value is not None
    ]


# ----------------------------------------------------------------------------- import
class _NoAliasLoader(yaml.SafeLoader):
    """A safe loader that refuses YAML aliases (an alias bomb expands exponentially)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases (*name) are not accepted in an ODCS document")
        return super().compose_node(parent, index)


def read_odcs(path: Path) -> OpenDataContractStandard:
    """The ODCS document in ``path``: OdcsUnreadable if it cannot be read as YAML,
    OdcsInvalid if it is not an ODCS document."""
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise OdcsUnreadable(
                f"{path}: {size} bytes; an ODCS document is at most {MAX_DOCUMENT_BYTES}"
            )
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise OdcsUnreadable(f"{path}: cannot read ODCS document: {reason}") from None
    return parse_odcs(text, str(path))


def parse_odcs(text: str, source: str = "<odcs>") -> OpenDataContractStandard:
    """``text`` parsed as an ODCS document (see ``read_odcs`` for the errors)."""
    try:
        raw = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OdcsUnreadable(f"{source}: not YAML: {first}") from None
    if not isinstance(raw, dict):
        kind = type(raw).__name__ if raw is not None else "an empty file"
        raise OdcsInvalid(f"{source}: an ODCS document is a YAML mapping, got {kind}")
    if raw.get("kind", "DataContract") != "DataContract" or not str(
        raw.get("apiVersion", "v3")
    ).startswith("v3"):
        raise OdcsInvalid(
            f"{source}: not an ODCS v3 data contract (kind {raw.get('kind')!r}, "
            f"apiVersion {raw.get('apiVersion')!r}); privmesh reads apiVersion v3.x"
        )
    try:
        return OpenDataContractStandard.model_validate(raw)
    except (ValidationError, RecursionError) as exc:
        problems = validation_problems(exc) if isinstance(exc, ValidationError) else "too deep"
        raise OdcsInvalid(f"{source}: not a valid ODCS document: {problems}") from None


def from_odcs(document: OpenDataContractStandard, source: str = "<odcs>") -> DomainContract:
    """The privmesh contract described by ``document``; OdcsUnmappable names what is
    missing or contradictory (a field without a privacy tag, a product without retention)."""
    return _Importer(document, source).contract()


class _Importer:
    def __init__(self, document: OpenDataContractStandard, source: str) -> None:
        self.doc = document
        self.source = source

    def fail(self, where: str, message: str) -> OdcsUnmappable:
        return OdcsUnmappable(f"{self.source}: {where}: {message}")

    def contract(self) -> DomainContract:
        doc = self.doc
        domain = doc.domain or doc.name
        if not domain:
            raise self.fail("domain", "the document names no domain (set 'domain')")
        owner = self.owner()
        description = (
            (doc.description.usage or doc.description.purpose) if doc.description else None
        )
        custom = _custom_values(doc.customProperties, self.source, "customProperties")
        if not doc.schema_:
            raise self.fail("schema", "the document declares no schema object (data product)")
        raw = {
            "domain": domain,
            "description": description or f"Domain {domain} (imported from ODCS).",
            "owner": owner,
            "reviewed": custom.get("reviewed"),
            "products": [self.product(i, obj, owner) for i, obj in enumerate(doc.schema_)],
        }
        try:
            return DomainContract.model_validate(raw)
        except ValidationError as exc:
            raise self.fail("contract", validation_problems(exc)) from None

    def owner(self) -> str:
        team = self.doc.team
        members = team.members if isinstance(team, Team) else team
        members = members or []
        for member in members:
            if (member.role or "").lower() == OWNER_ROLE and member.username:
                return member.username
        named = [m.username for m in members if m.username]
        if named:
            return named[0]
        raise self.fail("team", "no team member is named; add one with role 'owner'")

    def product(self, index: int, obj: SchemaObject, owner: str) -> dict[str, Any]:
        where = f"schema.{index}"
        custom = _custom_values(obj.customProperties, self.source, f"{where}.customProperties")
        if not obj.name:
            raise self.fail(where, "a schema object needs a name")
        if not obj.properties:
            raise self.fail(where, f"schema object {obj.name!r} declares no properties")
        fields = [
            self.field(f"{where}.properties.{i}", prop) for i, prop in enumerate(obj.properties)
        ]
        purpose = custom.get("purpose") or (
            self.doc.description.purpose if self.doc.description else None
        )
        if not purpose:
            raise self.fail(where, f"product {obj.name!r} states no purpose (description.purpose)")
        raw: dict[str, Any] = {
            "name": obj.name,
            "description": obj.description or obj.businessName or "",
            "owner": custom.get("owner") or owner,
            "purpose": purpose,
            "retention_days": self.retention(obj.name, where),
            "privacy_unit": custom.get("privacyUnit")
            or self.infer(
                obj.name, fields, "privacyUnit", "privacy unit", PrivacyTag.DIRECT_IDENTIFIER
            ),
            "event_time": custom.get("eventTime")
            or self.infer(obj.name, fields, "eventTime", "event time", None),
            "fields": fields,
        }
        for key, name in (
            ("version", "version"),
            ("consent", "consent"),
            ("eventTimeWindow", "event_time_window"),
            ("maxEventBytes", "max_event_bytes"),
            ("upstream", "upstream"),
            ("contribution", "contribution"),
        ):
            if key in custom:
                raw[name] = custom[key]
        return raw

    def field(self, where: str, prop: SchemaProperty) -> dict[str, Any]:
        name = prop.name
        if not name:
            raise self.fail(where, "a property needs a name")
        custom = _custom_values(prop.customProperties, self.source, f"{where}.customProperties")
        options = dict(prop.logicalTypeOptions or {})
        kind = self.field_type(where, prop, options)
        tag = prop.classification
        if tag not in {t.value for t in PrivacyTag}:
            choices = ", ".join(t.value for t in PrivacyTag)
            raise self.fail(
                where,
                f"property {name!r} has classification {tag!r}; privmesh needs a privacy tag "
                f"there, one of {choices}",
            )
        raw: dict[str, Any] = {
            "name": name,
            "type": kind.value,
            "description": prop.description or prop.businessName or "",
            "tag": tag,
            "required": bool(prop.required),
        }
        if prop.examples:
            raw["examples"] = prop.examples
        if prop.enum:
            raw["allowed_values"] = [e.value for e in prop.enum]
        raw.update(self.constraints(where, name, kind, options, custom))
        if "generalise" in custom:
            raw["generalise"] = custom["generalise"]
        raw["protection"] = custom.get("protection") or _default_protection(
            tag, prop, "generalise" in custom
        )
        return raw

    def constraints(
        self,
        where: str,
        name: str,
        kind: FieldType,
        options: dict[str, Any],
        custom: dict[str, Any],
    ) -> dict[str, Any]:
        """Length, bounds and format of a property, from its logicalTypeOptions."""
        raw: dict[str, Any] = {}
        length = options.get("maxLength", custom.get("maxLength"))
        if length is not None:
            raw["max_length"] = length
        for bad in ("exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
            if bad in options:
                raise self.fail(
                    where,
                    f"property {name!r}: {bad} has no privmesh meaning; bounds are the "
                    "inclusive minimum and maximum",
                )
        if kind in {FieldType.INT, FieldType.FLOAT} and (
            "minimum" in options or "maximum" in options
        ):
            if "minimum" not in options or "maximum" not in options:
                raise self.fail(
                    where, f"property {name!r}: declare both minimum and maximum (privmesh bounds)"
                )
            raw["bounds"] = {"min": options["minimum"], "max": options["maximum"]}
        if "format" in custom:
            raw["format"] = custom["format"]
        elif "pattern" in options:
            raw["format"] = {"kind": "regex", "pattern": options["pattern"]}
        elif options.get("format") == "uuid":
            raw["format"] = {"kind": "uuid"}
        return raw

    def field_type(self, where: str, prop: SchemaProperty, options: dict[str, Any]) -> FieldType:
        fmt = options.get("format") if prop.logicalType == "string" else None
        found = _FROM_LOGICAL.get(
            (prop.logicalType or "", fmt if fmt in {"email", "ipv4"} else None)
        )
        if found is not None:
            return found
        if prop.logicalType is None and prop.physicalType in {t.value for t in FieldType}:
            return FieldType(prop.physicalType)
        known = sorted({logical for logical, _ in _LOGICAL.values()})
        raise self.fail(
            where,
            f"property {prop.name!r} has logicalType {prop.logicalType!r}; privmesh events "
            f"carry {', '.join(known)} (string formats email and ipv4)",
        )

    def retention(self, product: str, where: str) -> int:
        general: ServiceLevelAgreementProperty | None = None
        for sla in self.doc.slaProperties or []:
            if (sla.property or "").lower() != RETENTION:
                continue
            elements = [e.strip().split(".")[0] for e in (sla.element or "").split(",")]
            if product in elements:
                return self.days(sla, where)
            if not sla.element:
                general = sla
        if general is not None:
            return self.days(general, where)
        raise self.fail(
            where, f"product {product!r} has no retention (slaProperties: property retention)"
        )

    def days(self, sla: ServiceLevelAgreementProperty, where: str) -> int:
        per_unit = _DAYS_PER_UNIT.get((sla.unit or "d").lower())
        value = sla.value
        if per_unit is None or isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(
                where,
                f"retention {value!r} {sla.unit!r} is not a number of days, weeks, months or years",
            )
        if not 1 <= value * per_unit < 1_000_000:
            raise self.fail(where, f"retention of {value!r} {sla.unit} is out of range")
        return int(value * per_unit)

    def infer(
        self, product: str, fields: list[dict[str, Any]], key: str, what: str, tag: str | None
    ) -> str:
        """The only required field of ``tag`` (or of type timestamp when None): the
        product's ``what`` when the document does not name it in custom property ``key``."""
        found = [
            f["name"]
            for f in fields
            if f["required"] and (f["tag"] == tag if tag else f["type"] == FieldType.TIMESTAMP)
        ]
        if len(found) == 1:
            return str(found[0])
        kind = f"{tag} fields" if tag else "timestamps"
        raise self.fail(
            product,
            f"product {product!r}: name its {what} (customProperties {key}); "
            f"{len(found)} required {kind} could be it",
        )


def _default_protection(tag: str, prop: SchemaProperty, generalised: bool) -> str:
    """The protection of a field whose document declares none: never weaker than needed."""
    if generalised:
        return Protection.GENERALISE.value
    if tag == PrivacyTag.DIRECT_IDENTIFIER:
        return Protection.TOKENISE.value
    if tag == PrivacyTag.QUASI_IDENTIFIER and not prop.enum:
        return Protection.DROP.value
    return Protection.KEEP.value


def _custom_values(
    properties: list[CustomProperty] | None, source: str, where: str
) -> dict[str, Any]:
    """privmesh's custom properties by name (other vendors' are left alone)."""
    values: dict[str, Any] = {}
    for prop in properties or []:
        if prop.vendor not in (None, VENDOR) or not prop.property:
            continue
        if prop.property in values:
            raise OdcsUnmappable(f"{source}: {where}: {prop.property!r} is given twice")
        values[prop.property] = prop.value
    return values
