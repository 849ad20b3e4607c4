"""The owners directory: the teams that contracts name as owners.

Each domain folder lists its teams in its ``owners.yaml``; the directory is their union
(the same team listed identically by two domains is one entry).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domains.errors import InvalidContract
from domains.folders import domain_set
from domains.yaml_files import load_yaml_model


class Owner(BaseModel):
    """A team that owns domains and data products, addressed by its e-mail in contracts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")]
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$", max_length=64)]
    display_name: Annotated[str, Field(min_length=1)]
    description: str = ""


class OwnersDirectory(BaseModel):
    """Every known owner; e-mails and names are unique."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    owners: list[Owner]

    @model_validator(mode="after")
    def _unique(self) -> OwnersDirectory:
        for key in ("email", "name"):
            values = [getattr(o, key) for o in self.owners]
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"owners listed twice by {key}: {twice}")
        return self

    def get(self, email: str) -> Owner | None:
        """The owner with ``email``, or None."""
        return next((o for o in self.owners if o.email == email), None)


def owners_files() -> tuple[Path, ...]:
    """The owners files of the configured domain folders."""
    return domain_set().owners_files


def load_owners(path: Path | None = None) -> OwnersDirectory:
    """The owners listed in ``path``, or the union of the configured domains' owners files;
    errors name the file and the problem."""
    paths = (path,) if path is not None else owners_files()
    return _load(tuple(p.resolve() for p in paths))


@cache
def _load(paths: tuple[Path, ...]) -> OwnersDirectory:
    owners: dict[str, tuple[Owner, Path]] = {}
    for path in paths:
        for owner in load_yaml_model(path, OwnersDirectory, "owners", InvalidContract).owners:
            seen = owners.get(owner.email)
            if seen is not None and seen[0] != owner:
                raise InvalidContract(
                    f"{path}: owner {owner.email!r} is listed differently in {seen[1]}; "
                    "list a team the same way everywhere"
                )
            owners.setdefault(owner.email, (owner, path))
    try:
        return OwnersDirectory(owners=[o for o, _ in owners.values()])
    except ValueError as exc:
        raise InvalidContract(f"owners of {', '.join(map(str, paths))}: {exc}") from exc
