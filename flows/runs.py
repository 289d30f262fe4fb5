"""`annostyle runs`: recent pipeline and reprocess runs from MLflow, or what changed between two of them."""

from __future__ import annotations

import argparse
import os
from typing import Any

from mlflow.exceptions import MlflowException

from errors import InputError
from storage.tracking import tracking_uri
from storage.tracking.runs import diff_runs, list_runs


def cli_run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(args.root)
    if args.diff:
        try:
            return {"tracking_uri": uri, "diff": diff_runs(uri, *args.diff)}
        except MlflowException as err:
            raise InputError(uri, "--diff", args.diff, f"no such run: {err.message}") from err
    return {"tracking_uri": uri, "runs": list_runs(uri, limit=args.limit, dataset=args.dataset)}


def _clusters(assignment: dict[str, Any]) -> str:
    groups: dict[int, list[str]] = {}
    for annotator, c in assignment.items():
        groups.setdefault(int(c), []).append(annotator)
    return " | ".join(", ".join(m) for _, m in sorted(groups.items()))


def _print_list(runs: list[dict[str, Any]], uri: str) -> None:
    if not runs:
        print(f"no pipeline runs in {uri}")
        return
    for r in runs:
        print(f"{r['start_time']}  {r['kind']:<9} {r['run_id']}  {r['status'].lower()}  trigger: {r['trigger']}")
        print(f"  dataset {r['dataset']} version {r['version']}; model run {r['model_run_id'] or '-'}")
        print("  stages: " + ", ".join(f"{s} {info.get('status')}" for s, info in r["stages"].items()))
        if r.get("clusters"):
            k = sorted(r["clusters"], key=int)[0]
            ari = (r.get("ari_vs_truth") or {}).get("at_true_k")
            note = f"; ARI vs truth {ari:.3f}" if ari is not None else ""
            print(f"  clusters ({r['method']}, k={k}{note}): {_clusters(r['clusters'][k])}")


def _print_diff(d: dict[str, Any]) -> None:
    print(f"from run {d['a']} to run {d['b']}:")
    for key in ("dataset", "version", "trigger", "code_version", "model_run_id", "method"):
        change = d[key]
        print(f"  {key:<13} " + (f"{change['a']} -> {change['b']}" if change else "same"))
    added, removed = d["annotators"]["added"], d["annotators"]["removed"]
    print("  annotators    " + ("same" if not added and not removed
                                  else f"added {added or 'none'}, removed {removed or 'none'}"))
    for k, c in d["clusters"].items():
        if c["same"]:
            print(f"  clusters k={k} same")
        else:
            moved = c.get("moved")
            print(f"  clusters k={k} changed" + (f"; regrouped: {', '.join(moved)}" if moved else ""))
    for name, m in d["metrics"].items():
        delta = f" ({m['delta']:+.4g})" if m["delta"] is not None else ""
        print(f"  metric {name}: {m['a']} -> {m['b']}{delta}")
    if d["params"]:
        print(f"  params changed ({len(d['params'])}):")
        for name, p in d["params"].items():
            print(f"    {name}: {p['a']} -> {p['b']}")
    else:
        print("  params        same")
    print("  stages: " + ", ".join(f"{s} {v['a']} -> {v['b']}" for s, v in d["stages"].items()))


def cli_print(summary: dict[str, Any]) -> None:
    if "diff" in summary:
        _print_diff(summary["diff"])
    else:
        _print_list(summary["runs"], summary["tracking_uri"])
