"""`annostyle runs`: recent pipeline and reprocess runs from MLflow, or what changed between two of them."""

from __future__ import annotations

import argparse
import os

from storage.layout import RootLayout
from storage.results.runs import RunDiff, RunRecord, RunsDiffResult, RunsResult
from storage.tracking import tracking_uri
from storage.tracking.runs import diff_runs, list_runs


def cli_run(args: argparse.Namespace) -> RunsResult | RunsDiffResult:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(RootLayout(args.root))
    if args.diff:
        return RunsDiffResult(tracking_uri=uri, diff=diff_runs(uri, *args.diff))
    return RunsResult(tracking_uri=uri, runs=list_runs(uri, limit=args.limit, dataset=args.dataset))


def _clusters(assignment: dict[str, int]) -> str:
    groups: dict[int, list[str]] = {}
    for annotator, c in assignment.items():
        groups.setdefault(int(c), []).append(annotator)
    return " | ".join(", ".join(m) for _, m in sorted(groups.items()))


def _print_list(runs: list[RunRecord], uri: str) -> None:
    if not runs:
        print(f"no pipeline runs in {uri}")
        return
    for r in runs:
        print(f"{r.start_time}  {r.kind or '':<9} {r.run_id}  {r.status.lower()}  trigger: {r.trigger}")
        print(f"  dataset {r.dataset} version {r.version}; model run {r.model_run_id or '-'}")
        print("  stages: " + ", ".join(f"{s} {info.get('status')}" for s, info in r.stages.items()))
        if r.clusters:
            k = sorted(r.clusters, key=int)[0]
            ari = r.ari_vs_truth.at_true_k if r.ari_vs_truth else None
            note = f"; ARI vs truth {ari:.3f}" if ari is not None else ""
            print(f"  clusters ({r.method}, k={k}{note}): {_clusters(r.clusters[k])}")


def _print_diff(d: RunDiff) -> None:
    print(f"from run {d.a} to run {d.b}:")
    for key in ("dataset", "version", "trigger", "code_version", "model_run_id", "method"):
        change = getattr(d, key)
        print(f"  {key:<13} " + (f"{change.a} -> {change.b}" if change else "same"))
    added, removed = d.annotators.added, d.annotators.removed
    print("  annotators    " + ("same" if not added and not removed
                                  else f"added {added or 'none'}, removed {removed or 'none'}"))
    for k, c in d.clusters.items():
        if c.same:
            print(f"  clusters k={k} same")
        else:
            print(f"  clusters k={k} changed" + (f"; regrouped: {', '.join(c.moved)}" if c.moved else ""))
    for name, m in d.metrics.items():
        delta = f" ({m.delta:+.4g})" if m.delta is not None else ""
        print(f"  metric {name}: {m.a} -> {m.b}{delta}")
    if d.params:
        print(f"  params changed ({len(d.params)}):")
        for name, p in d.params.items():
            print(f"    {name}: {p.a} -> {p.b}")
    else:
        print("  params        same")
    print("  stages: " + ", ".join(f"{s} {v.a} -> {v.b}" for s, v in d.stages.items()))


def cli_print(result: RunsResult | RunsDiffResult) -> None:
    if isinstance(result, RunsDiffResult):
        _print_diff(result.diff)
    else:
        _print_list(result.runs, result.tracking_uri)
