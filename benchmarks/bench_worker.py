"""Worker benchmark: labeling quality over seeds, inference throughput against its ceilings, and scale.

    .venv/bin/python benchmarks/bench_worker.py                 # everything (about 30-60 min on 2 cores)
    .venv/bin/python benchmarks/bench_worker.py --part quality --seeds 3
    .venv/bin/python benchmarks/bench_worker.py --part throughput --throughput-sizes 10000,100000
    .venv/bin/python benchmarks/bench_worker.py --part scale --scale-sizes 10000,100000
    .venv/bin/python benchmarks/bench_worker.py --part quality --seeds 1 --train-steps 50   # a quick check

Quality: scikit-learn's digits written as PNG files + manifest, 5 labeled images per class, the other 1,747
unlabeled with ground truth kept apart. Each seed draws other labeled images and seeds training. Every run
is the real worker (`run_job` on local files) in its own process, so wall time and peak RSS are per run.
Baseline row: logistic regression on raw pixels with a threshold from 5-fold out-of-fold predictions (the
smallest threshold whose held-out precision is >= the target, no margin), as in threshold-based
auto-labeling (Vishwakarma et al., NeurIPS 2023).

Throughput: on the same images, images/s of (a) decode only (fetch + decode + resize, the loader the
worker uses), (b) model only (the worker's predictor on preloaded tensors: 5-model ensemble, test-time
views, features), (c) the worker's whole inference stage, interleaved round by round; per size the median
of the rounds. Target: (c) >= 0.9 x min(a, b). ``--throughput-source s3`` reads the images from a MinIO
started on loopback for the run (uploaded first), as the worker does in a cluster.

Scale: PreLabeling runs (manifest read, preflight of every image, inference, writing) over manifests of
growing length built by repeating the digits files; images/s and peak RSS per size.

Results go to stdout as tables and to .bench/results-<part>.json. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from autolabel.api import AutoLabelJob

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
TARGET = 0.95


# --------------------------------------------------------------------------------------------- helpers


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def digits_folder(seed: int) -> Path:
    return BENCH / f"digits-s{seed}"


def make_job(
    manifest: str, name: str, mode: str = "ActiveLearning", algorithm: str = "Fast", seed: int = 0, **spec: Any
) -> AutoLabelJob:
    return AutoLabelJob.model_validate(
        {
            "metadata": {"name": name, "uid": f"bench-{name}-{time.time_ns()}"},
            "spec": {
                "task": "ImageClassification",
                "mode": mode,
                "dataset": {"manifest": manifest},
                "output": str(BENCH / "out") + "/",
                "activeLearning": {"algorithm": algorithm, "seed": seed, "targetPrecision": TARGET},
                **spec,
            },
        }
    )


def score(result_manifest: Path, truth: dict[str, str], root: Path) -> dict[str, float]:
    total = correct = accepted = accepted_correct = 0
    for line in result_manifest.read_text().splitlines():
        doc = json.loads(line)
        source = os.path.relpath(doc["source"], root)
        ok = truth[source] == doc["annotation"][0]["name"]
        total += 1
        correct += ok
        if not doc["hard"]:
            accepted += 1
            accepted_correct += ok
    return {
        "coverage": accepted / total,
        "precision": accepted_correct / accepted if accepted else float("nan"),
        "accuracy": correct / total,
    }


# --------------------------------------------------------------------------------------------- quality


def steps_args(train_steps: int | None) -> list[str]:
    """The child's command-line arguments for a shortened training (None: the worker's defaults)."""
    return [] if train_steps is None else ["--train-steps", str(train_steps)]


def run_one(algorithm: str, seed: int, train_steps: int | None = None) -> dict[str, Any]:
    """One worker run in this process (called in a child process by `quality`)."""
    from autolabel_worker.data import write_digits_dataset
    from autolabel_worker.pipeline import run_job

    from autolabel.api import results_prefix
    from autolabel.storage import Storage

    ds = write_digits_dataset(digits_folder(seed), labeled_per_class=5, seed=seed)
    job = make_job(str(ds.manifest), f"{algorithm.lower()}-s{seed}", algorithm=algorithm, seed=seed)
    out = results_prefix(job)
    start = time.monotonic()
    summary = run_job(job, Storage(), out, train_steps=train_steps)
    wall = time.monotonic() - start
    truth = json.loads(ds.ground_truth.read_text())
    metrics = score(Path(out) / "result.manifest", truth, ds.folder)
    return {
        "algorithm": algorithm,
        "seed": seed,
        **metrics,
        "estimatedPrecision": summary["estimatedPrecision"],
        "trainSeconds": summary["training"]["seconds"],
        "truncated": summary["training"]["truncatedByTimeBudget"],
        "wallSeconds": wall,
        "peakRssMb": peak_rss_mb(),
    }


def logistic_baseline(seed: int) -> dict[str, Any]:
    import numpy as np
    from autolabel_worker.data import load_digits_arrays, split_labeled
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    start = time.monotonic()
    images, labels = load_digits_arrays()
    x = images.reshape(len(images), -1) / 255.0
    lab = split_labeled(labels, 5, seed)
    unl = np.setdiff1d(np.arange(len(labels)), lab)
    clf = LogisticRegression(max_iter=2000)
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    oof = cross_val_predict(clf, x[lab], labels[lab], cv=folds, method="predict_proba")
    conf, correct = oof.max(1), oof.argmax(1) == labels[lab]
    threshold = 1.01
    for t in np.sort(np.unique(conf)):  # smallest threshold whose held-out precision reaches the target
        sel = conf >= t
        if correct[sel].mean() >= TARGET:
            threshold = t
            break
    clf.fit(x[lab], labels[lab])
    p = clf.predict_proba(x[unl])
    pred, pconf = p.argmax(1), p.max(1)
    ok = pred == labels[unl]
    acc = pconf >= threshold
    return {
        "algorithm": "LogReg",
        "seed": seed,
        "coverage": float(acc.mean()),
        "precision": float(ok[acc].mean()) if acc.any() else float("nan"),
        "accuracy": float(ok.mean()),
        "estimatedPrecision": None,
        "wallSeconds": time.monotonic() - start,
        "peakRssMb": peak_rss_mb(),
    }


def child(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "job_image") + os.pathsep + str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def quality(seeds: int, algorithms: list[str], train_steps: int | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for seed in range(seeds):
        rows.append(logistic_baseline(seed))
        for algorithm in algorithms:
            row = child(["--one", algorithm, str(seed), *steps_args(train_steps)])
            rows.append(row)
            print(
                f"  {algorithm:8s} seed {seed}: coverage {row['coverage']:.3f} precision {row['precision']:.4f} "
                f"accuracy {row['accuracy']:.3f} estimated {row['estimatedPrecision']} "
                f"{row['wallSeconds']:.0f}s {row['peakRssMb']:.0f} MB",
                flush=True,
            )
    print_quality(rows)
    return rows


def print_quality(rows: list[dict[str, Any]]) -> None:
    print()
    print(
        "| algorithm | seeds | coverage mean (min-max) | precision of non-hard mean (min) "
        "| seeds with precision >= 0.95 | accuracy mean | wall s mean (max) | peak RSS MB (max) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for algorithm in ("LogReg", "Fast", "Precise"):
        sel = [r for r in rows if r["algorithm"] == algorithm]
        if not sel:
            continue
        cov = [r["coverage"] for r in sel]
        prec = [r["precision"] for r in sel]
        held = sum(p >= TARGET for p in prec)
        print(
            f"| {algorithm} | {len(sel)} | {statistics.mean(cov):.3f} ({min(cov):.3f}-{max(cov):.3f}) "
            f"| {statistics.mean(prec):.4f} ({min(prec):.4f}) | {held}/{len(sel)} "
            f"| {statistics.mean(r['accuracy'] for r in sel):.3f} "
            f"| {statistics.mean(r['wallSeconds'] for r in sel):.1f} ({max(r['wallSeconds'] for r in sel):.1f}) "
            f"| {max(r['peakRssMb'] for r in sel):.0f} |"
        )


# ------------------------------------------------------------------------------------------ throughput


def throughput(sizes: list[int] | None = None, rounds: int = 3, source: str = "local") -> list[dict[str, Any]]:
    """For each size: decode only, model only and the whole inference stage over the same images,
    interleaved round by round (so a burst of load from elsewhere on this shared machine hits all three
    alike); each is warmed up first on 2,560 images. Reported: the median of the rounds, and each round's
    ratio stage / min(decode, model). ``source`` "s3": the images are read from a local MinIO."""
    if source != "s3":
        return _throughput(sizes, rounds, None)
    import tempfile

    sys.path.insert(0, str(ROOT / "tools"))
    from devenv.s3 import MinioServer

    with tempfile.TemporaryDirectory() as tmp, MinioServer(Path(tmp) / "s3") as s3:
        s3.make_bucket("throughput")
        return _throughput(sizes, rounds, s3)


def _throughput(sizes: list[int] | None, rounds: int, s3: Any) -> list[dict[str, Any]]:
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch
    from autolabel_worker.augment import TTA_REASONS, AugmentPolicy, tta_views
    from autolabel_worker.data import write_digits_dataset
    from autolabel_worker.hard_examples import HardExampleRule
    from autolabel_worker.images import decode_image
    from autolabel_worker.models import CalibratedEnsemble, build_model, choose_model_spec
    from autolabel_worker.pipeline import RunContext, _infer
    from autolabel_worker.predict import Predictor, iter_batches
    from autolabel_worker.progress import ProgressReporter

    from autolabel.manifest import read_manifest
    from autolabel.storage import ScopedWriter, Storage, StorageConfig

    if os.environ.get("AUTOLABEL_TORCH_THREADS"):  # as the worker applies it (pipeline.run_job)
        torch.set_num_threads(int(os.environ["AUTOLABEL_TORCH_THREADS"]))
    storage = Storage()
    if s3 is not None:
        keys = {"access_key": s3.access_key, "secret_key": s3.secret_key, "region": s3.region}
        storage = Storage(StorageConfig(endpoint_url=s3.endpoint_url, **keys))
    spec = choose_model_spec([(8, 8)], 10)
    torch.manual_seed(0)
    model = CalibratedEnsemble([build_model(spec) for _ in range(5)], 1.0).eval()
    views = tta_views(AugmentPolicy(hflip=False))
    predictor = Predictor(model, spec.input_size, spec.mean, spec.std, views)
    ref = np.eye(10, model.forward_with_features(torch.zeros(1, 3, 8, 8))[1].shape[1])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    flags = HardExampleRule(np.zeros(10), TTA_REASONS, np.full(10, 0.5))

    def decode(data: bytes, source: str) -> Any:
        return decode_image(data, source)

    def decode_only(sources: list[str]) -> float:
        t = time.monotonic()
        n = sum(len(b.sources) for b in iter_batches(storage, sources, decode, spec.input_size))
        return n / (time.monotonic() - t)

    def model_only(sources: list[str]) -> float:
        batches = [b.x for b in iter_batches(storage, sources, decode, spec.input_size)]
        t = time.monotonic()
        for x in batches:
            predictor.predict(x)
        return len(sources) / (time.monotonic() - t)

    def stage(manifest: str, entries: list[Any]) -> float:
        job = make_job(manifest, "throughput")
        writer = ScopedWriter(storage, str(BENCH / "out" / "throughput") + "/")
        progress = ProgressReporter(None, tty=False)
        ctx = RunContext(job, storage, writer, progress, time.monotonic(), torch.device("cpu"), 0, 1)
        t = time.monotonic()
        scratch, _, _ = _infer(ctx, predictor, entries, 10, [], ref, np.arange(10), flags)
        rate = scratch.count / (time.monotonic() - t)
        scratch.close()
        return rate

    rows = []
    for size in sizes or [5241]:
        repeat = -(-size // 1747)
        ds = write_digits_dataset(BENCH / f"digits-tp{repeat}", labeled_per_class=5, seed=0, repeat=repeat)
        entries = [e for e in read_manifest(Storage(), str(ds.manifest)) if not e.is_labeled][:size]
        if s3 is not None:  # the same images, uploaded (16 at a time), read back from the store
            uri = {e.source: f"s3://throughput/{Path(e.source).relative_to(ds.folder)}" for e in entries}
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(storage.upload_file, uri.keys(), uri.values()))
            entries = [dataclasses.replace(e, source=uri[e.source]) for e in entries]
        sources = [e.source for e in entries]
        decode_only(sources[:2560]), model_only(sources[:2560]), stage(str(ds.manifest), entries[:2560])
        per_round = []
        for _ in range(rounds):
            d, m, p = decode_only(sources), model_only(sources), stage(str(ds.manifest), entries)
            per_round.append({"decodeOnly": d, "modelOnly": m, "pipeline": p, "ratio": p / min(d, m)})
            print(f"  {len(sources)} images: decode {d:.0f} model {m:.0f} stage {p:.0f} img/s, "
                  f"ratio {p / min(d, m):.3f} (load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
        row: dict[str, Any] = {"images": len(sources), "threads": torch.get_num_threads(), "rounds": per_round}
        for key in ("decodeOnly", "modelOnly", "pipeline", "ratio"):
            row[key] = statistics.median(r[key] for r in per_round)
        rows.append(row)
    print()
    print(
        "| images | decode only img/s | model only img/s | worker inference img/s | ratio to the lower ceiling "
        "(median) | ratio per round |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        each = ", ".join(f"{x['ratio']:.3f}" for x in r["rounds"])
        print(
            f"| {r['images']} | {r['decodeOnly']:.0f} | {r['modelOnly']:.0f} | {r['pipeline']:.0f} "
            f"| {r['ratio']:.3f} | {each} |"
        )
    return rows


# ----------------------------------------------------------------------------------------------- scale


def scale_one(size: int, model_dir: str) -> dict[str, Any]:
    from autolabel_worker.data import write_digits_dataset
    from autolabel_worker.pipeline import run_job

    from autolabel.api import results_prefix
    from autolabel.storage import Storage

    repeat = -(-size // 1747)
    folder = BENCH / "digits-scale"
    ds = write_digits_dataset(folder, labeled_per_class=5, seed=0, repeat=repeat)
    lines = ds.manifest.read_text().splitlines()
    unlabeled = [ln for ln in lines if '"annotation"' not in ln][:size]
    manifest = folder / f"scale-{size}.manifest"
    manifest.write_text("\n".join(unlabeled) + "\n")
    job = make_job(str(manifest), f"scale-{size}", mode="PreLabeling", preLabeling={"model": {"uri": model_dir}})
    start = time.monotonic()
    summary = run_job(job, Storage(), results_prefix(job))
    wall = time.monotonic() - start
    return {
        "images": summary["total"],
        "wallSeconds": wall,
        "imagesPerSecond": summary["total"] / wall,
        "inferenceImagesPerSecond": summary["total"] / summary["inferenceSeconds"],
        "peakRssMb": peak_rss_mb(),
    }


def scale(sizes: list[int], train_steps: int | None = None) -> list[dict[str, Any]]:
    model_dir = BENCH / "scale-model"
    if not (model_dir / "labels.json").exists():
        child(["--train-model", str(model_dir), *steps_args(train_steps)])
    rows = [child(["--scale-one", str(size), str(model_dir) + "/"]) for size in sizes]
    print()
    print("| unlabeled images | wall s | images/s (whole job) | images/s (inference stage) | peak RSS MB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['images']} | {r['wallSeconds']:.1f} | {r['imagesPerSecond']:.0f} "
            f"| {r['inferenceImagesPerSecond']:.0f} | {r['peakRssMb']:.0f} |"
        )
    return rows


def train_model(folder: str, train_steps: int | None = None) -> dict[str, Any]:
    """A Fast run on seed 0 whose exported model/ the scale runs pre-label with."""
    import shutil

    from autolabel_worker.data import write_digits_dataset
    from autolabel_worker.pipeline import run_job

    from autolabel.api import results_prefix
    from autolabel.storage import Storage

    ds = write_digits_dataset(digits_folder(0), labeled_per_class=5, seed=0)
    job = make_job(str(ds.manifest), "scale-model")
    out = results_prefix(job)
    run_job(job, Storage(), out, train_steps=train_steps)
    shutil.copytree(Path(out) / "model", folder, dirs_exist_ok=True)
    return {"model": folder}


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "quality", "throughput", "scale"], default="all")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--algorithms", default="Fast,Precise")
    parser.add_argument("--scale-sizes", default="10000,30000,100000")
    parser.add_argument("--throughput-sizes", default="5241,10000", help="images per throughput measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (median reported)")
    parser.add_argument("--throughput-source", choices=["local", "s3"], default="local", help="where images are read")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="optimizer steps per fold model for both algorithms (default: the worker's own; shorter for a quick run)",
    )
    parser.add_argument("--one", nargs=2, metavar=("ALGORITHM", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--scale-one", nargs=2, metavar=("SIZE", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--train-model", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.train_steps)))
        return
    if args.scale_one:
        print(json.dumps(scale_one(int(args.scale_one[0]), args.scale_one[1])))
        return
    if args.train_model:
        print(json.dumps(train_model(args.train_model, args.train_steps)))
        return

    BENCH.mkdir(exist_ok=True)
    import torch

    header = {
        "cpus": os.cpu_count(),
        "torchThreads": torch.get_num_threads(),
        "loadAverageAtStart": os.getloadavg(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "env": {k: v for k, v in os.environ.items() if k.startswith("AUTOLABEL_")},
        "trainSteps": args.train_steps,
    }
    print(f"machine: {header}")
    results: dict[str, Any] = {"machine": header}
    if args.part in ("all", "quality"):
        results["quality"] = quality(args.seeds, args.algorithms.split(","), args.train_steps)
    if args.part in ("all", "throughput"):
        sizes = [int(x) for x in args.throughput_sizes.split(",")]
        results["throughput"] = throughput(sizes, args.rounds, args.throughput_source)
    if args.part in ("all", "scale"):
        results["scale"] = scale([int(s) for s in args.scale_sizes.split(",")], args.train_steps)
    results["machine"]["loadAverageAtEnd"] = os.getloadavg()
    (BENCH / f"results-{args.part}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
