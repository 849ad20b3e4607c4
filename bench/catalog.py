"""The governance catalog: PII lint quality against OpenMetadata's scanner, and speed.

1. **PII lint** on a labelled set (``bench/data/pii_fields.tsv``: 246 field names with
   made-up sample values, each labelled personal or not): precision, recall and F1 of
   ``catalog.pii_lint.classify`` (names and values), of its name-only half, and of the
   baseline measured in the same run, OpenMetadata's own ``ColumnNameScanner`` (column
   name regexes; a field counts as flagged when it returns any PII tag).
2. **Speed** on the demo contracts: assembling the catalog (median of 5), a tag search
   and a field's lineage query (median of 200), building the OpenMetadata export (the
   SDK's import measured apart), as ``privmesh catalog`` and the API do them.

Writes bench/results/catalog.json; the last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LABELLED = ROOT / "bench" / "data" / "pii_fields.tsv"
RESULTS = ROOT / "bench" / "results" / "catalog.json"


def labelled() -> list[tuple[str, list[str], bool]]:
    """(name, samples, personal) rows of the labelled set."""
    rows = []
    for line in LABELLED.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, samples, label = line.split("\t")
        rows.append((name, [s for s in samples.split("|") if s], label == "personal"))
    return rows


def score(
    rows: list[tuple[str, list[str], bool]], flags: Callable[[str, list[str]], bool]
) -> dict[str, Any]:
    """Precision, recall, F1 and the misses of ``flags`` on ``rows``."""
    tp = fp = fn = 0
    false_pos, false_neg = [], []
    for name, samples, personal in rows:
        flagged = flags(name, samples)
        if flagged and personal:
            tp += 1
        elif flagged:
            fp += 1
            false_pos.append(name)
        elif personal:
            fn += 1
            false_neg.append(name)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "true_positives": tp,
        "false_positives": false_pos,
        "false_negatives": false_neg,
    }


def lint_quality() -> dict[str, Any]:
    """privmesh's PII lint against OpenMetadata's ColumnNameScanner."""
    from catalog.pii_lint import classify, classify_name

    rows = labelled()
    from catalog.openmetadata import quiet_sdk_import

    began = time.monotonic()
    with quiet_sdk_import():
        from metadata.pii.scanners.column_name_scanner import ColumnNameScanner

    sdk_import = time.monotonic() - began
    scanner = ColumnNameScanner()
    return {
        "fields": len(rows),
        "personal": sum(p for *_, p in rows),
        "privmesh": score(rows, lambda n, s: classify(n, s).personal),
        "privmesh_names_only": score(rows, lambda n, _: classify_name(n).personal),
        "baseline_openmetadata_column_name_scanner": score(
            rows, lambda n, _: scanner.scan(n) is not None
        ),
        "sdk_import_seconds": round(sdk_import, 1),
    }


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def speed() -> dict[str, Any]:
    """Assembly, search, lineage and export on the demo contracts."""
    import os

    with tempfile.TemporaryDirectory(prefix="privmesh-bench-catalog-") as tmp:
        os.environ["PRIVMESH_DATA_DIR"] = tmp
        from catalog.openmetadata import build_requests
        from catalog.sources import system_catalog

        catalog = system_catalog()
        assemble_s = timed(system_catalog, 5)
        search_s = timed(lambda: catalog.search(kind="field", tag="quasi_identifier"), 200)
        lineage_s = timed(
            lambda: catalog.lineage("field:shop.orders.amount_cents", "downstream"), 200
        )
        build_requests(catalog)  # the first call pays the SDK's import
        export_s = timed(lambda: build_requests(catalog), 3)
        requests = build_requests(catalog)
    return {
        "entities": catalog.summary()["entities"],
        "lineage_edges": len(catalog.edges),
        "assemble_seconds": round(assemble_s, 4),
        "search_ms": round(search_s * 1000, 3),
        "lineage_query_ms": round(lineage_s * 1000, 3),
        "export_requests": len(requests),
        "export_build_seconds": round(export_s, 4),
    }


def main() -> None:
    """Run both parts; write the results; print RESULT."""
    quality = lint_quality()
    result = {"benchmark": "catalog", "pii_lint": quality, "speed": speed()}
    ours = quality["privmesh"]
    base = quality["baseline_openmetadata_column_name_scanner"]
    summary = {
        "lint_precision": ours["precision"],
        "lint_recall": ours["recall"],
        "lint_f1": ours["f1"],
        "baseline_precision": base["precision"],
        "baseline_recall": base["recall"],
        "baseline_f1": base["f1"],
        "beats_baseline": ours["f1"] > base["f1"] and ours["precision"] >= base["precision"] - 0.01,
        "labelled_fields": quality["fields"],
        "assemble_seconds": result["speed"]["assemble_seconds"],
        "export_build_seconds": result["speed"]["export_build_seconds"],
    }
    result["summary"] = summary
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("RESULT " + json.dumps(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
