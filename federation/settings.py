"""Settings of federated training: engine ports, security, registry, tasks.

The run's tunables (rounds, epochs, SecAgg+ and DP parameters) are Flower run config
(``[tool.flwr.app.config]`` in ``pyproject.toml``, overridable per run); these settings
are the deployment facts of the hosts that run the SuperLink and the SuperNodes.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Port = Annotated[int, Field(ge=1024, le=65535)]


class FederationSettings(BaseSettings):
    """Federation engine and registry (env prefix ``PRIVMESH_FEDERATION_``).

    Flower's defaults put the SuperLink's Fleet API on 9092, Kafka's port; privmesh
    moves the whole SuperLink to 939x.
    """

    model_config = SettingsConfigDict(env_prefix="PRIVMESH_FEDERATION_", extra="ignore")

    tasks_dir: Path | None = Field(
        default=None, description="Folder of task YAML files; the packaged tasks if unset."
    )
    superlink_host: str = Field(
        default="127.0.0.1", description="Address the SuperLink binds and SuperNodes dial."
    )
    serverappio_port: Port = 9391
    fleet_port: Port = 9392
    control_port: Port = 9393
    clientappio_base_port: Port = Field(
        default=9400, description="SuperNode i of a local federation serves its ClientApp on +i."
    )
    tls: bool = Field(
        default=True,
        description="TLS between SuperNodes, SuperLink and `flwr` (local runs generate a CA).",
    )
    supernode_auth: bool = Field(
        default=True,
        description="Only SuperNodes whose public keys are registered may connect (needs TLS).",
    )
    ca_certificate: Path | None = Field(
        default=None,
        description="CA certificate the SuperLink's certificate chains to (SuperNodes and "
        "`flwr` verify it); local runs generate one under the data directory.",
    )
    superlink_certificate: Path | None = Field(
        default=None, description="The SuperLink's TLS certificate (its host only)."
    )
    superlink_key: Path | None = Field(
        default=None, description="The SuperLink's TLS private key (its host only)."
    )
    supernode_key: Path | None = Field(
        default=None,
        description="A domain's SuperNode authentication key (EC, OpenSSH format), on the "
        "domain's host; its public key is registered with `flwr supernode register`.",
    )
    superlink_address: str | None = Field(
        default=None,
        description="Fleet API address SuperNodes dial (default superlink_host:fleet_port).",
    )
    poll_seconds: Annotated[float, Field(gt=0, le=3)] = Field(
        default=0.02,
        description=(
            "How often SuperNodes, ClientApp runners and the ServerApp look for messages "
            "(Flower's built-in waits are 0.5-3 s per hop)."
        ),
    )
    superlink_database: str = Field(
        default=":flwr-in-memory:",
        description="SuperLink state: in memory (a local run's SuperLink lives for one job), "
        "or a SQLite file path for a long-lived SuperLink.",
    )
    registry_url: str = Field(
        default="sqlite",
        description="Model registry: 'sqlite' (a file under the data directory) or a "
        "postgresql:// URL shared by several hosts.",
    )
    start_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 120.0
    torch_threads: Annotated[int, Field(ge=0, le=256)] = Field(
        default=0,
        description="Threads a ClientApp runner lets torch use (0: torch's default). A local "
        "federation shares this machine's cores among its domains.",
    )

    @property
    def fleet_address(self) -> str:
        """Where SuperNodes find the SuperLink's Fleet API."""
        return self.superlink_address or f"{self.superlink_host}:{self.fleet_port}"


@cache
def get_federation_settings() -> FederationSettings:
    """Process-wide federation settings (tests call ``cache_clear()``)."""
    return FederationSettings()
