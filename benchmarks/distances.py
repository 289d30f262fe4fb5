"""Benchmark: annotator distances from a prediction store, ours against the MABe notebook's method.

In one run, on the same prediction store (synthetic logits with planted style groups):
1. the notebook's method, end to end: per sequence, per annotator, load the compressed npz
   bytes (the store's `export_npz` layout), `scipy.special.softmax`, then `pdist` with a Python
   lambda metric, summed over sequences, then the square root;
2. ours, end to end: open the store, one Dask pass over the logits (threads), distances;
3. a plain chunked read of the same logits array through Zarr (a loop over its chunks, and
   the same Dask chunking with nothing computed), the ceiling for a method that reads the data
   once; and, for information, our own pass with nothing computed (the same tasks and
   `ChunkReader`, which decompresses into a reused buffer), the ceiling of our reader;
4. peak memory of ours at 1x and 10x the frames, each in a fresh subprocess: peak RSS
   (ru_maxrss), its rise over the RSS just before the computation, and the peak of what
   tracemalloc sees (NumPy buffers included);
5. `PredictionStore.verify`, the whole-store check of `annostyle verify` (every chunk file's
   CRC32C, nothing decoded).

Every read in 2 and 3 goes through the store's checks (each chunk's CRC32C once, the
attributes' digest on open), so the ratios include their cost.

Prints the ratios: ours / notebook speed (target >= 15, goal 20), ours / plain read throughput
(target >= 0.7, goal 0.8; the plain read is the faster of the two Zarr reads), peak memory
10x / 1x (target: flat, about 1).

    .venv/bin/python benchmarks/distances.py                      # about 75 s here
    .venv/bin/python benchmarks/distances.py --sequences 1000 --frames 10000 --memory-frames 1000000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

import numpy as np  # noqa: E402

from configs.analyze import PredictConfig  # noqa: E402
from configs.base import CodecConfig  # noqa: E402
from storage.prediction_store import PredictionStore  # noqa: E402


def build_store(uri: Path, n_sequences: int, frames: int, n_ann: int, n_cls: int, dtype: str,
                chunk_frames: int | None, codec: str, seed: int = 0) -> PredictionStore:
    """Synthetic logits: a slowly varying shared signal + a per-group bias + annotator noise."""
    n = n_sequences * frames
    config = PredictConfig(dtype=dtype, chunk_frames=chunk_frames, codec=CodecConfig(cname=codec))
    annotators = [f"ann{i}" for i in range(n_ann)]
    store = PredictionStore.create(uri, n, annotators, [f"c{i}" for i in range(n_cls)], 4, 4, config,
                                   {"dataset_store": "synthetic", "dataset_version": "bench", "model_run_id": "bench"},
                                   overwrite=True)
    rng = np.random.default_rng(seed)
    groups = np.arange(n_ann) % 3
    bias = rng.normal(size=(3, n_cls))[groups] + 0.2 * rng.normal(size=(n_ann, n_cls))
    for start, stop in store.pending_chunks():
        m = stop - start
        # bouts of about 50 frames: the shared signal is piecewise constant with noise
        bouts = rng.normal(size=(m // 50 + 2, 1, n_cls)) * 2.0
        shared = np.repeat(bouts, 50, axis=0)[:m] + 0.3 * rng.normal(size=(m, 1, n_cls))
        logits = (shared + bias[None] + 0.1 * rng.normal(size=(m, n_ann, n_cls))).astype(np.float32)
        store.write_chunk(start, logits, np.zeros((m, 4), np.float32), np.zeros((m, n_cls), np.float32))
    store.set_annotator_embeddings(np.eye(n_ann, 4, dtype=np.float32))
    return store


def notebook_distances(folder: Path, sequences: list[str], annotators: list[str]) -> np.ndarray:
    """The MABe notebook's method on the npz export (per sequence: load, softmax, pdist, sum; sqrt)."""
    from scipy.spatial.distance import pdist, squareform
    from scipy.special import softmax

    total = None
    for seq in sequences:
        probs = []
        for annotator in annotators:
            payload = (folder / seq / f"{annotator}.npz").read_bytes()
            logits = np.load(io.BytesIO(payload))["arr_0"]
            probs.append(softmax(logits, axis=-1).ravel())
        d = pdist(np.stack(probs), lambda u, v: ((u - v) ** 2).sum())
        total = d if total is None else total + d
    return squareform(np.sqrt(total))


def plain_loop_read(store: PredictionStore) -> int:
    arr, chunk, n = store.logits, store.chunk_frames, store.n_frames
    total = 0
    for start in range(0, n, chunk):
        total += arr[start: min(start + chunk, n)].shape[0]
    return total


def plain_dask_read(store: PredictionStore) -> None:
    from tasks.distances import store_logits

    x = store_logits(store)
    x.map_blocks(lambda b: np.zeros((1, 1, 1)), dtype=float, chunks=((1,) * x.numblocks[0], (1,), (1,))).sum() \
        .compute(scheduler="threads")


def reader_dask_read(store: PredictionStore) -> None:
    """Our pass (the same tasks, `ChunkReader`, the tree of additions) with nothing computed."""
    from tasks.distances import Statistic, compute_store_range_sums

    n_ann = store.n_annotators
    compute_store_range_sums(store, [(0, store.n_frames)], Statistic("nothing", lambda b: np.zeros((n_ann, n_ann))))


def ours(uri: str) -> np.ndarray:
    from tasks.distances import store_distances

    return store_distances(PredictionStore.open(uri), "euclidean", keep_partials=False).matrix


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


MEMORY_CHILD = """
import json, resource, sys, time, tracemalloc
sys.path.insert(0, sys.argv[2])
import numpy as np
import psutil
from storage.prediction_store import PredictionStore
from tasks.distances import annotator_distances, store_distances
annotator_distances(np.zeros((64, 2, 2), np.float16))  # load the compiled kernels
before = psutil.Process().memory_info().rss / 1024  # KiB, like ru_maxrss on Linux
tracemalloc.start()
t0 = time.perf_counter()
store_distances(PredictionStore.open(sys.argv[1]), "euclidean", keep_partials=False)
seconds = time.perf_counter() - t0
_, traced = tracemalloc.get_traced_memory()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_mb": after / 1024, "rise_mb": max(after - before, 0) / 1024,
                  "traced_peak_mb": traced / 2**20, "seconds": seconds}))
"""


def memory_at(uri: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(uri), str(PROJECT)], capture_output=True,
                         text=True, check=True, cwd=PROJECT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=200)
    parser.add_argument("--frames", type=int, default=10_000, help="frames per sequence")
    parser.add_argument("--annotators", type=int, default=6)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--chunk-frames", type=int, default=None, help="store chunk (default: the config's)")
    parser.add_argument("--codec", default=CodecConfig().cname)
    parser.add_argument("--memory-frames", type=int, default=None,
                        help="frames of the 1x memory store (default: the main store's); 10x is built too")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="annostyle-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    n = args.sequences * args.frames
    print(f"prediction store: {args.sequences} sequences x {args.frames} frames = {n:,} frames, "
          f"{args.annotators} annotators, {args.classes} classes, {args.dtype}, codec {args.codec}")
    try:
        t0 = time.perf_counter()
        store = build_store(work / "p.zarr", args.sequences, args.frames, args.annotators, args.classes,
                            args.dtype, args.chunk_frames, args.codec)
        info = store.summary()
        print(f"  built in {time.perf_counter() - t0:.1f} s: chunk {store.chunk_frames:,} frames, logits "
              f"{info['logits_bytes'] / 2**20:.0f} MiB stored (compression {info['compression_ratio']:.2f}x)")
        offsets = np.arange(args.sequences + 1) * args.frames
        names = [f"seq{i:05d}" for i in range(args.sequences)]
        t0 = time.perf_counter()
        store.export_npz(work / "npz", offsets, names)
        print(f"  npz export (the notebook's input) in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        from tasks.distances import annotator_distances

        annotator_distances(np.zeros((64, 2, 2), np.float16))
        print(f"  kernels loaded (Numba cache) in {time.perf_counter() - t0:.2f} s")

        plain_loop_read(store)  # warm the page cache
        t_loop, _ = best_of(lambda: plain_loop_read(store), args.repeat)
        t_dask, _ = best_of(lambda: plain_dask_read(store), args.repeat)
        t_reader, _ = best_of(lambda: reader_dask_read(store), args.repeat)
        t_ours, d_ours = best_of(lambda: ours(store.uri), args.repeat)
        t_nb, d_nb = best_of(lambda: notebook_distances(work / "npz", names, store.annotators), max(1, args.repeat - 1))
        t_verify, report = best_of(lambda: PredictionStore.verify(store.uri), args.repeat)
        off = ~np.eye(args.annotators, dtype=bool)
        agree = float(np.max(np.abs(d_ours - d_nb)[off] / d_nb[off]))
        t_plain = min(t_loop, t_dask)
        print("\ntimes (best of runs), throughput in frames/s:")
        for label, t in (("MABe notebook method", t_nb), ("ours (Dask threads)", t_ours),
                         ("plain read, chunk loop", t_loop), ("plain read, Dask", t_dask),
                         ("our reader, nothing done", t_reader),
                         ("verify (CRC32C, no decode)", t_verify)):
            print(f"  {label:26s} {t:8.3f} s  {n / t / 1e6:7.2f} M")
        if not report.ok:
            raise SystemExit(f"the benchmark store fails verify: {report}")
        print(f"  ours vs notebook: max relative difference of the distances {agree:.1e} "
              f"(the notebook computes softmax in float32)")

        base = args.memory_frames or n
        mem = {}
        for scale in (1, 10):
            frames = base * scale
            seqs = max(1, frames // args.frames)
            uri = work / f"mem{scale}.zarr"
            if scale == 1 and base == n:
                uri = work / "p.zarr"
            else:
                build_store(uri, seqs, frames // seqs, args.annotators, args.classes, args.dtype,
                            args.chunk_frames, args.codec, seed=scale)
            mem[scale] = memory_at(uri)
            m = mem[scale]
            print(f"  memory at {scale:2d}x ({frames:,} frames): peak RSS {m['peak_rss_mb']:.0f} MiB, rise during "
                  f"the computation {m['rise_mb']:.0f} MiB, traced peak {m['traced_peak_mb']:.0f} MiB, "
                  f"{m['seconds']:.2f} s")
            if scale == 10:
                shutil.rmtree(uri, ignore_errors=True)

        print("\nratios:")
        print(f"  speed, ours / MABe notebook method:    {t_nb / t_ours:6.1f}x   (target >= 15, goal 20)")
        print(f"  throughput, ours / plain chunked read: {t_plain / t_ours:6.2f}    (target >= 0.7, goal 0.8; vs the "
              f"chunk loop {t_loop / t_ours:.2f}, vs Dask read {t_dask / t_ours:.2f}; vs our own reader doing "
              f"nothing {t_reader / t_ours:.2f})")
        print(f"  peak memory, 10x / 1x data:            {mem[10]['peak_rss_mb'] / mem[1]['peak_rss_mb']:6.2f}   "
              f"(target: flat; rise during the computation {mem[10]['rise_mb'] / max(mem[1]['rise_mb'], 1e-9):.2f}, "
              f"traced peak {mem[10]['traced_peak_mb'] / max(mem[1]['traced_peak_mb'], 1e-9):.2f})")
        print(f"  (this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
