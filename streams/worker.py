"""Run one domain's Faust processor as a worker process."""

from __future__ import annotations

import logging

import faust

from domains.errors import ContractNotFound
from domains.registry import load_contracts
from domains.runtime import RuntimeSettings
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from streams.keyring import load_domain_tokens
from streams.processor import build_app
from streams.settings import KafkaSettings, StreamSettings


def build_domain_app(
    domain: str,
    runtime: RuntimeSettings,
    kafka: KafkaSettings,
    streams: StreamSettings,
    features: FeatureStoreSettings,
) -> faust.App:
    """The Faust app of ``domain`` wired to its key, its Feast store and the broker."""
    contracts = load_contracts()
    contract = contracts.get(domain)
    if contract is None:
        raise ContractNotFound(f"unknown domain {domain!r} (known: {', '.join(sorted(contracts))})")
    tokens = load_domain_tokens(domain, runtime, streams)
    store = DomainFeatureStore(contract, runtime.data_dir, features)
    store.apply()
    return build_app(contract, tokens, store, kafka, streams, runtime.data_dir)


def run_worker(
    domain: str,
    runtime: RuntimeSettings,
    kafka: KafkaSettings,
    streams: StreamSettings,
    features: FeatureStoreSettings,
) -> None:
    """Run the domain's processor until SIGINT/SIGTERM."""
    app = build_domain_app(domain, runtime, kafka, streams, features)
    logging.getLogger("privmesh").setLevel(logging.INFO)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()
