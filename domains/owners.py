"""The owners directory: the teams that contracts name as owners (``owners.yaml``)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domains.errors import InvalidContract
from domains.yaml_files import load_yaml_model

OWNERS_FILE = Path(__file__).with_name("owners.yaml")


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


def owners_file(contracts_dir: Path | None = None) -> Path:
    """``owners.yaml`` beside the contracts folder in use, else the packaged one."""
    if contracts_dir is not None and (contracts_dir.parent / "owners.yaml").is_file():
        return contracts_dir.parent / "owners.yaml"
    return OWNERS_FILE


def load_owners(path: Path | None = None) -> OwnersDirectory:
    """Parse and validate the owners directory; errors name the file and the problem."""
    return _load((path or OWNERS_FILE).resolve())


@cache
def _load(path: Path) -> OwnersDirectory:
    return load_yaml_model(path, OwnersDirectory, "the owners directory", InvalidContract)
