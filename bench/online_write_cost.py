"""The cost of one online feature write by its size: what chose ``feature_flush_max_rows``.

``python -m bench.online_write_cost [online_store]`` times ``DomainFeatureStore.write_online``
of N shop subject rows (``subject_records`` included; each repetition half updates, half new
subjects), 5 repetitions per size, in-process, on a sqlite store in a temporary directory or
on ``online_store`` (e.g. ``redis://127.0.0.1:6379/13``; its rows are erased afterwards).
Prints one JSON line per size (median, min, max ms and us per row); writes no result file.
docs/streams-throughput.md records the run that chose the default bound.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from domains.registry import get_contract
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from streams.keys import derive_domain_key
from streams.pipeline import build_pipelines
from streams.pseudonymise import Tokeniser
from streams.settings import StreamSettings
from streams.windows import SubjectRow

SIZES = (250, 500, 1000, 2000, 4000, 8000)
REPEATS = 5
SUBJECTS = 20_000
WINDOW_START = 1_795_427_000


def main(online_store: str | None = None) -> None:
    contract = get_contract("shop")
    tokens = Tokeniser(derive_domain_key(b"b" * 32, "shop", 1), 1)
    [orders] = build_pipelines(contract, tokens, StreamSettings())
    settings = (
        FeatureStoreSettings()
        if online_store is None
        else FeatureStoreSettings(online_store=online_store)
    )
    with tempfile.TemporaryDirectory(prefix="privmesh-bench-write-") as tmp:
        store = DomainFeatureStore(contract, Path(tmp), settings)
        store.apply()
        view = store.product_features(orders.product).subject_view
        seq = 0
        try:
            for size in SIZES:
                times = []
                for _ in range(REPEATS):
                    rows = [
                        SubjectRow(f"s{(seq + i) % SUBJECTS}", WINDOW_START, 3, {}, i % 4)
                        for i in range(size)
                    ]
                    seq += size // 2  # the next repetition: half the same subjects
                    began = time.perf_counter()
                    store.write_online(view, orders.subject_records(rows))
                    times.append((time.perf_counter() - began) * 1000)
                median = statistics.median(times)
                line = {
                    "rows": size,
                    "median_ms": round(median, 1),
                    "min_ms": round(min(times), 1),
                    "max_ms": round(max(times), 1),
                    "us_per_row": round(median * 1000 / size, 1),
                }
                print(json.dumps(line), flush=True)
        finally:
            if online_store is not None:
                store.erase_subjects({f"s{i}" for i in range(SUBJECTS)})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
