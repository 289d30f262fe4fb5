"""`annostyle verify CONFIG`: check every file of a dataset's stores and list what is damaged.

A plain command, not a Prefect flow: it only reads. It checks the dataset store (the manifest's
digest, each array's zarr.json against its digest and the manifest's counts, every chunk file's
existence and CRC32C) and, when one exists, the prediction store (its own `verify`). Exit 0 when
nothing is damaged; exit 2, after the report is printed, when anything is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from configs.schema import load_config
from errors import DamagedStore
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from storage.results.verify import StoreReport, VerifyResult


def _verify_predictions(uri: str) -> StoreReport | None:
    """The prediction store's report (its `verify`), or None when there is no prediction store."""
    from storage.prediction_store import PredictionStore

    if not PredictionStore.exists(uri):
        return None
    return PredictionStore.verify(uri)


def verify(config_path: str | Path, root: str | Path) -> VerifyResult:
    """Check the dataset store and, when present, the prediction store of a config's dataset."""
    config = load_config(config_path)
    layout = RootLayout(Path(root), config.store.uri_prefix)
    stores = [DatasetStore.verify(layout.dataset_uri(config.name))]
    predictions = _verify_predictions(layout.prediction_uri(config.name))
    if predictions is not None:
        stores.append(predictions)
    return VerifyResult(dataset=config.name, stores=stores)


def report_lines(result: VerifyResult) -> list[str]:
    lines = []
    for store in result.stores:
        if not store.exists:
            lines.append(f"{store.kind} store {store.uri}: not there")
            continue
        chunks = sum(a.chunks for a in store.arrays)
        state = "ok" if store.ok else f"DAMAGED ({store.n_damaged} files)"
        lines.append(f"{store.kind} store {store.uri}: {len(store.arrays)} arrays, {chunks:,} chunks checked: {state}")
        for damaged in store.damaged + [d for a in store.arrays for d in a.damaged]:
            lines.append(f"  {damaged.file}: {damaged.array}: {damaged.problem}")
    return lines


def cli_run(args: argparse.Namespace) -> VerifyResult:
    result = verify(Path(args.config).resolve(), args.root.resolve())
    if result.ok:
        return result
    # damaged: print the report here, then exit 2 through the command line's error path
    print(json.dumps(result.to_json()) if args.json else "\n".join(report_lines(result)))
    first = next(d for s in result.stores for d in s.damaged + [d for a in s.arrays for d in a.damaged])
    n = sum(s.n_damaged for s in result.stores)
    raise DamagedStore(first.file, first.array, f"{n} damaged files",
                       f"the stores of {result.dataset!r} are damaged (first: {first.problem})")


def cli_print(result: VerifyResult) -> None:
    print("\n".join(report_lines(result)))
