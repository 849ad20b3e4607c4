"""Run one domain's Faust processor as a worker process."""

from __future__ import annotations

import logging
from typing import Any

import faust

from domains.errors import ContractNotFound
from domains.registry import load_contracts
from domains.runtime import RuntimeSettings
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from streams.keyring import load_domain_tokens
from streams.processor import Processor, build_processor
from streams.settings import KafkaSettings, StreamSettings


def build_domain_processor(
    domain: str,
    runtime: RuntimeSettings,
    kafka: KafkaSettings,
    streams: StreamSettings,
    features: FeatureStoreSettings,
) -> Processor:
    """The processor of ``domain`` wired to its key, its Feast store and the broker."""
    contracts = load_contracts()
    contract = contracts.get(domain)
    if contract is None:
        raise ContractNotFound(f"unknown domain {domain!r} (known: {', '.join(sorted(contracts))})")
    tokens = load_domain_tokens(domain, runtime, streams)
    store = DomainFeatureStore(contract, runtime.data_dir, features)
    store.apply()
    return build_processor(contract, tokens, store, kafka, streams, runtime.data_dir)


def run_worker(
    domain: str,
    runtime: RuntimeSettings,
    kafka: KafkaSettings,
    streams: StreamSettings,
    features: FeatureStoreSettings,
    logging_config: dict[str, Any] | None = None,
) -> None:
    """Run the domain's processor until SIGINT/SIGTERM (``logging_config``: a dictConfig
    for every logger of the worker, such as the composition root's JSON lines)."""
    processor = build_domain_processor(domain, runtime, kafka, streams, features)
    # INFO, not WARNING: at WARNING and above Faust's spinner turns on DEBUG logging
    # everywhere, which costs about a tenth of the processor's CPU.
    worker = faust.Worker(processor.app, loglevel="INFO", quiet=True, logging_config=logging_config)
    worker.spinner = None
    for noisy in ("faust", "mode", "aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    worker.execute_from_commandline()
