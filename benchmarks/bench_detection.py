"""Object detection benchmark (issue 8): labeling quality over seeds, pre-labeling scale-out, GPU throughput.

    .venv/bin/python benchmarks/bench_detection.py --part quality --seeds 0,1,2,3,4 --algorithms Fast,Precise
    .venv/bin/python benchmarks/bench_detection.py --part scaleout --shards 1,2,3,5 --pool 600
    .venv/bin/python benchmarks/bench_detection.py --part gpu
    .venv/bin/python benchmarks/bench_detection.py --part quality --seeds 0 --algorithms Fast \\
        --train-steps 20 --budget 60                                          # a smoke run (about 2 min)

Data: the digit-boxes sample (`autolabel_worker.detection_data.write_detection_dataset`): scikit-learn
digits "0", "1", "2" pasted on scikit-image photos and textures, 128 px, 1-4 objects per image, >= 6
labeled images per class, the others unlabeled with their boxes in `ground_truth.json` (never read by the
worker). Each seed writes a fresh dataset (the seed draws the scenes and the labeled images) into a
temporary folder and seeds training (`spec.activeLearning.seed`).

Quality: per seed and algorithm one ActiveLearning ObjectDetection job at targetPrecision 0.9, the real
worker (`run_job` on local files) in its own process, so wall time and peak RSS (the child's own
`ru_maxrss`, from `os.wait4`) are per run. Scores against the ground truth: mAP@0.5 of every prediction
(hard or not) with pycocotools' COCOeval (`stats[1]`: AP at IoU 0.5, all areas, 100 detections), the
accepted share (lines not flagged hard / lines) and the precision of the accepted images (an image is
right when its predicted boxes and its ground-truth objects match one to one at IoU >= 0.5 with the same
label: no object missed, no extra box). The run's own `estimatedPrecision` and `targetVerifiable` are
reported beside them. A run that fails is a row with its error; the benchmark goes on.

Scale-out: one model (a short ActiveLearning run, or `--model FOLDER`), then PreLabeling of a larger pool
with 1, 2, 3, 5 shards run as that many parallel worker processes (`run_job(..., shard_index=i,
shard_count=N)`, `AUTOLABEL_TORCH_THREADS=1` each): per-shard images/s (the shard's
`inferenceImagesPerSecond`), total wall time, and whether the merged `result.manifest` equals the 1-shard
one line for line after sorting (each line normalised to its source and its VOC boxes: label, corners,
confidence; the VOC file names differ per run and are ignored).

GPU: on a CUDA machine, the detector's training and inference images/s on the GPU with the PNG decode
ceiling (PIL decode alone) measured in the same run; elsewhere one line saying it was not measured.

Every run's output is also checked for what should never happen (boxes outside the image or empty,
confidences outside 0..1, summary counts that do not add up, hard lines without reasons, ...); findings are
printed under the tables and kept in the JSON rows (`anomalies`).

Tables go to stdout; the raw rows to `--json PATH` (default `.bench/results-detection-<part>.json`).
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from autolabel.api import AutoLabelJob

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
TARGET = 0.9
IOU = 0.5
TARGET_SHARE = {"Fast": 0.5, "Precise": 0.65}
RUN_LIMIT_S = 600


# --------------------------------------------------------------------------------------------- helpers


def make_job(
    manifest: str, name: str, mode: str = "ActiveLearning", algorithm: str = "Fast", seed: int = 0, **spec: Any
) -> AutoLabelJob:
    return AutoLabelJob.model_validate(
        {
            "metadata": {"name": name, "uid": f"bench-{name}-{time.time_ns()}"},
            "spec": {
                "task": "ObjectDetection",
                "mode": mode,
                "dataset": {"manifest": manifest},
                "activeLearning": {"algorithm": algorithm, "seed": seed, "targetPrecision": TARGET},
                **spec,
            },
        }
    )


def al_spec(algorithm: str, seed: int, budget: int | None) -> dict[str, Any]:
    al: dict[str, Any] = {"algorithm": algorithm, "seed": seed, "targetPrecision": TARGET}
    if budget is not None:
        al["timeBudgetSeconds"] = budget
    return {"activeLearning": al}


@dataclass
class Child:
    """A running child process of this script and the files its output goes to."""

    proc: subprocess.Popen[bytes]
    stdout: IO[bytes]
    stderr: IO[bytes]
    started: float


def child(args: list[str], env: dict[str, str] | None = None) -> Child:
    """Start this script in a new process with hidden arguments; its last stdout line is a JSON row."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "job_image") + os.pathsep + str(ROOT),
        **(env or {}),
    }
    out = tempfile.TemporaryFile()  # noqa: SIM115 -- closed by collect()
    err = tempfile.TemporaryFile()  # noqa: SIM115 -- closed by collect()
    return Child(subprocess.Popen(cmd, stdout=out, stderr=err, env=full_env), out, err, time.monotonic())


def collect(c: Child) -> dict[str, Any]:
    """Wait for a `child`: its JSON row plus processWallSeconds and peakRssMb (the child's own maximum
    resident set, from wait4), or {"error": ...} with the end of its stderr when it failed."""
    _, status, usage = os.wait4(c.proc.pid, 0)
    c.proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - c.started
    with c.stdout, c.stderr:
        c.stdout.seek(0)
        c.stderr.seek(0)
        stdout, stderr = c.stdout.read().decode(errors="replace"), c.stderr.read().decode(errors="replace")
    measured = {"processWallSeconds": round(wall, 1), "peakRssMb": round(usage.ru_maxrss / 1024.0)}
    if c.proc.returncode == 0:
        try:
            return {**json.loads(stdout.strip().splitlines()[-1]), **measured}
        except (IndexError, json.JSONDecodeError):
            stderr += "\n(no JSON row on stdout)"
    return {"error": error_line(stderr, c.proc.returncode), "stderrTail": stderr[-3000:], **measured}


def error_line(stderr: str, returncode: int | None) -> str:
    """The exception a child died of: its last "SomethingError: ..." line and the two lines after it (a
    pydantic error names the field on the next line), one line, no table separators."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    found = [i for i, ln in enumerate(lines) if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", ln)]
    if found:
        text = " ".join(ln.strip() for ln in lines[found[-1] : found[-1] + 3])
    else:
        text = lines[-1] if lines else f"exit {returncode}"
    if returncode is not None and returncode < 0:
        text = f"killed by signal {-returncode}: {text}"
    return text.replace("|", "/")[:300]


def run_child(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    return collect(child(args, env))


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


# --------------------------------------------------------------------------------------------- scoring


def iou(a: list[float], b: list[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def image_right(pred: list[tuple[str, list[float]]], truth: list[tuple[str, list[float]]]) -> bool:
    """Every ground-truth object matched one to one by a predicted box of the same label at IoU >= 0.5,
    and no extra box (an exact bipartite matching, not a greedy one)."""
    if len(pred) != len(truth):
        return False
    if not truth:
        return True
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    cost = np.ones((len(pred), len(truth)))
    for i, (pn, pb) in enumerate(pred):
        for j, (tn, tb) in enumerate(truth):
            if pn == tn and iou(pb, tb) >= IOU:
                cost[i, j] = 0.0
    rows, cols = linear_sum_assignment(cost)
    return bool(cost[rows, cols].sum() == 0)


def reason_list(value: Any) -> list[str]:
    """hard-reasons as a list: the manifest writes ModelArts' "0-1" string (a list is accepted too)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [r for r in value.split("-") if r]
    return [str(r) for r in value]


def read_results(out: Path, folder: Path) -> list[dict[str, Any]]:
    """result.manifest lines with their VOC boxes: {source (relative to the dataset folder), hard,
    coefficient, reasons, boxes [(name, [x0, y0, x1, y1], confidence)], raw (the XML's own numbers), size,
    warnings (read_voc's)}."""
    from autolabel.manifest import read_voc

    rows = []
    for text in (out / "result.manifest").read_text().splitlines():
        if not text.strip():
            continue
        doc = json.loads(text)
        ann = doc["annotation"][0]
        loc = ann["annotation-loc"]
        data = Path(loc).read_bytes()
        voc = read_voc(data, loc)
        root = ET.fromstring(data)
        raw = [
            [float(o.findtext(f"bndbox/{k}") or "nan") for k in ("xmin", "ymin", "xmax", "ymax")]
            for o in root.findall("object")
        ]
        rows.append(
            {
                "source": os.path.relpath(doc["source"], folder),
                "hard": doc["hard"],
                "coefficient": doc.get("hard-coefficient"),
                "reasons": reason_list(doc.get("hard-reasons")),
                "type": ann.get("type"),
                "boxes": [(b.name, [b.xmin, b.ymin, b.xmax, b.ymax], b.confidence) for b in voc.boxes],
                "raw": raw,
                "size": (voc.width, voc.height),
                "warnings": list(voc.warnings),
            }
        )
    return rows


def coco_map50(rows: list[dict[str, Any]], truth: dict[str, list[list[Any]]], unlabeled: list[str]) -> float:
    """AP at IoU 0.5 (COCOeval stats[1]) of every predicted box against the unlabeled images' ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted({str(b[0]) for boxes in truth.values() for b in boxes})
    cat = {n: i + 1 for i, n in enumerate(names)}
    img = {s: i + 1 for i, s in enumerate(unlabeled)}
    gt: dict[str, Any] = {
        "images": [{"id": i, "file_name": s, "width": 0, "height": 0} for s, i in img.items()],
        "categories": [{"id": i, "name": n} for n, i in cat.items()],
        "annotations": [],
    }
    for s in unlabeled:
        for name, x0, y0, x1, y1 in truth[s]:
            w, h = float(x1) - float(x0), float(y1) - float(y0)
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": img[s],
                    "category_id": cat[str(name)],
                    "bbox": [float(x0), float(y0), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    dets = [
        {
            "image_id": img[r["source"]],
            "category_id": cat[name],
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "score": 1.0 if conf is None else float(conf),
        }
        for r in rows
        if r["source"] in img
        for name, b, conf in r["boxes"]
        if name in cat
    ]
    if not dets:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(dets), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[1])


def anomalies(rows: list[dict[str, Any]], summary: dict[str, Any] | None, unlabeled: list[str]) -> list[str]:
    """What should never be in a run's output, each finding with the image it concerns (at most 3 examples
    per kind, plus a count)."""
    found: dict[str, list[str]] = {}

    def note(kind: str, detail: str) -> None:
        found.setdefault(kind, []).append(detail)

    seen: set[str] = set()
    for r in rows:
        s = r["source"]
        if s in seen:
            note("duplicate source", s)
        seen.add(s)
        if r["type"] != "modelarts/object_detection":
            note("annotation type", f"{s}: {r['type']}")
        w, h = r["size"]
        for (name, _box, conf), raw in zip(r["boxes"], r["raw"], strict=False):
            x0, y0, x1, y1 = raw
            if w and h and (x0 < 0 or y0 < 0 or x1 > w or y1 > h):
                note("box outside the image", f"{s}: {name} {[round(v, 2) for v in raw]} in {w}x{h}")
            if x1 - x0 < 1 or y1 - y0 < 1:
                note("box under 1 px", f"{s}: {name} {[round(v, 2) for v in raw]}")
            if conf is None or not 0 <= conf <= 1:
                note("confidence missing or outside 0..1", f"{s}: {name} {conf}")
        for warning in r["warnings"]:
            note("VOC warning", warning)
        reasons = r["reasons"]
        if r["hard"] and not reasons:
            note("hard without reasons", s)
        if not r["hard"] and reasons:
            note("not hard but with reasons", f"{s}: {reasons}")
        if not r["hard"] and not r["boxes"]:
            note("accepted with no box", s)
        c = r["coefficient"]
        if c is None or not 0 <= float(c) <= 1:
            note("hard-coefficient missing or outside 0..1", f"{s}: {c}")
    missing = sorted(set(unlabeled) - seen)
    if missing:
        note("unlabeled image without a result line", f"{len(missing)}, e.g. {missing[:3]}")
    extra = sorted(seen - set(unlabeled))
    if extra:
        note("result line for an image that is not unlabeled", f"{len(extra)}, e.g. {extra[:3]}")
    if summary is not None:
        hard = sum(1 for r in rows if r["hard"])
        checks = {
            "total": len(rows),
            "autoLabeled": len(rows) - hard,
        }
        for key, want in checks.items():
            if key in summary and summary[key] != want:
                note("summary count", f"{key} {summary[key]} but result.manifest says {want}")
        if "hardExamples" in summary and summary["hardExamples"] != hard:
            note("summary count", f"hardExamples {summary['hardExamples']} but result.manifest has {hard} hard lines")
        share = summary.get("acceptedShare")
        if share is not None and rows and abs(share - (len(rows) - hard) / len(rows)) > 1e-5:
            note(
                "summary count", f"acceptedShare {share} but result.manifest says {(len(rows) - hard) / len(rows):.6f}"
            )
        boxes_by_label: dict[str, int] = {}
        for r in rows:
            for name, _, _ in r["boxes"]:
                boxes_by_label[name] = boxes_by_label.get(name, 0) + 1
        for key in ("labelCounts", "boxesPerLabel", "boxCounts"):
            if isinstance(summary.get(key), dict) and summary[key] != boxes_by_label:
                note("summary count", f"{key} {summary[key]} but the VOC files hold {boxes_by_label}")
        reasons_seen: dict[str, int] = {}
        for r in rows:
            for reason in r["reasons"] or []:
                reasons_seen[str(reason)] = reasons_seen.get(str(reason), 0) + 1
        if isinstance(summary.get("hardReasons"), dict) and summary["hardReasons"] != reasons_seen:
            note("summary count", f"hardReasons {summary['hardReasons']} but result.manifest has {reasons_seen}")
    return [f"{kind} ({len(v)}): " + "; ".join(v[:3]) for kind, v in found.items()]


def score(out: Path, folder: Path) -> dict[str, Any]:
    truth = json.loads((folder / "ground_truth.json").read_text())
    unlabeled = [
        json.loads(t)["source"]
        for t in (folder / "boxes.manifest").read_text().splitlines()
        if t.strip() and not json.loads(t).get("annotation")
    ]
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    import numpy as np
    from autolabel_worker.calibrate import oracle_coverage
    from autolabel_worker.detection.run import LOW_CONFIDENCE

    rows = read_results(out, folder)
    right = [
        r["source"] in truth
        and image_right(
            [(n, b) for n, b, _ in r["boxes"]], [(str(t[0]), [float(v) for v in t[1:5]]) for t in truth[r["source"]]]
        )
        for r in rows
    ]
    accepted = [ok for r, ok in zip(rows, right, strict=True) if not r["hard"]]
    # The job's own ranking of the images (1 - hard coefficient), for the images that only their
    # confidence keeps back (reason 1); one hard for another reason (no box, unusual count, views) is
    # never accepted whatever the threshold.
    ranking = np.array(
        [1 - (r["coefficient"] or 1.0) if set(r["reasons"]) <= {str(LOW_CONFIDENCE)} else -1.0 for r in rows]
    )
    return {
        "images": len(rows),
        "map50": coco_map50(rows, truth, unlabeled),
        "acceptedShare": len(accepted) / len(rows) if rows else float("nan"),
        "accepted": len(accepted),
        "acceptedRight": sum(accepted),
        "precision": sum(accepted) / len(accepted) if accepted else float("nan"),
        "imagesRight": sum(right) / len(rows) if rows else float("nan"),
        "oracleShare": oracle_coverage(ranking, np.array(right), TARGET),
        "boxes": sum(len(r["boxes"]) for r in rows),
        "truthBoxes": sum(len(truth[s]) for s in unlabeled),
        "anomalies": anomalies(rows, summary, unlabeled),
    }


# --------------------------------------------------------------------------------------------- quality


def run_one(folder: str, algorithm: str, seed: int, budget: int | None, train_steps: int | None) -> dict[str, Any]:
    """One ActiveLearning run in this process (a child of `quality`); scoring happens in the parent."""
    from autolabel_worker.pipeline import run_job

    from autolabel.storage import Storage

    manifest = str(Path(folder) / "boxes.manifest")
    job = make_job(manifest, f"{algorithm.lower()}-s{seed}", **al_spec(algorithm, seed, budget))
    out = str(Path(folder) / f"out-{algorithm.lower()}") + "/"
    start = time.monotonic()
    summary = run_job(job, Storage(), out, train_steps=train_steps)
    wall = time.monotonic() - start
    training = summary.get("training") or {}
    return {
        "out": out,
        "wallSeconds": round(wall, 1),
        "estimatedPrecision": summary.get("estimatedPrecision"),
        "targetVerifiable": summary.get("targetVerifiable"),
        "summaryTotal": summary.get("total"),
        "summaryAutoLabeled": summary.get("autoLabeled"),
        "trainSeconds": training.get("seconds"),
        "truncated": training.get("truncatedByTimeBudget"),
        "detectorSteps": training.get("detectorSteps"),
        "classifierSteps": training.get("classifierSteps"),
        "semiSupervised": training.get("semiSupervised"),
        "hardReasons": summary.get("hardReasons"),
        "notes": summary.get("notes"),
    }


def quality(
    seeds: list[int],
    algorithms: list[str],
    budget: int | None,
    train_steps: int | None,
    unlabeled: int,
    keep: bool,
    labeled_per_class: int = 6,
) -> list[dict[str, Any]]:
    from autolabel_worker.detection_data import write_detection_dataset

    rows: list[dict[str, Any]] = []
    for seed in seeds:
        folder = Path(tempfile.mkdtemp(prefix=f"bench-detection-s{seed}-"))
        try:
            try:
                ds = write_detection_dataset(
                    folder, seed=seed, unlabeled=unlabeled, labeled_per_class=labeled_per_class
                )
            except Exception as exc:  # every run of this seed is a failed row; the other seeds go on
                for algorithm in algorithms:
                    rows.append(
                        {
                            "algorithm": algorithm,
                            "seed": seed,
                            "error": f"dataset: {type(exc).__name__}: {exc}",
                            "processWallSeconds": 0.0,
                            "peakRssMb": 0,
                        }
                    )
                    print_progress(rows[-1])
                continue
            for algorithm in algorithms:
                args = ["--one", str(folder), algorithm, str(seed)]
                args += [] if budget is None else ["--budget", str(budget)]
                args += [] if train_steps is None else ["--train-steps", str(train_steps)]
                row: dict[str, Any] = {"algorithm": algorithm, "seed": seed, "labeled": ds.labeled}
                row.update(run_child(args))
                if "error" not in row:
                    try:
                        row.update(score(Path(row["out"]), folder))
                    except Exception as exc:  # a result we cannot read is a finding, not a crash
                        row["error"] = f"scoring: {type(exc).__name__}: {exc}"
                rows.append(row)
                print_progress(row)
        finally:
            if keep:
                print(f"  kept {folder}", flush=True)
            else:
                shutil.rmtree(folder, ignore_errors=True)
    print_quality(rows)
    return rows


def print_progress(r: dict[str, Any]) -> None:
    head = f"  {r['algorithm']:8s} seed {r['seed']}:"
    if "error" in r:
        print(f"{head} FAILED after {r['processWallSeconds']}s: {r['error']}", flush=True)
        return
    print(
        f"{head} mAP@0.5 {fmt(r['map50'])} images right {fmt(r.get('imagesRight'))} oracle "
        f"{fmt(r.get('oracleShare'))} accepted {fmt(r['acceptedShare'])} precision {fmt(r['precision'])} "
        f"estimated {fmt(r['estimatedPrecision'])} verifiable {r['targetVerifiable']} "
        f"{r['wallSeconds']:.0f}s {r['peakRssMb']} MB",
        flush=True,
    )


def holds(r: dict[str, Any]) -> bool:
    p = r.get("precision")
    return p is not None and not math.isnan(p) and p >= TARGET


def print_quality(rows: list[dict[str, Any]]) -> None:
    print()
    print(
        "| algorithm | seed | mAP@0.5 | images right | oracle share | accepted share | precision of accepted "
        "(right/accepted) | estimatedPrecision | targetVerifiable | wall s | peak RSS MB | error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(
                f"| {r['algorithm']} | {r['seed']} | - | - | - | - | - | - | - | {r['processWallSeconds']:.0f} "
                f"| {r['peakRssMb']} | {r['error']} |"
            )
            continue
        print(
            f"| {r['algorithm']} | {r['seed']} | {fmt(r['map50'])} | {fmt(r.get('imagesRight'))} "
            f"| {fmt(r.get('oracleShare'))} | {fmt(r['acceptedShare'])} "
            f"| {fmt(r['precision'])} ({r['acceptedRight']}/{r['accepted']}) | {fmt(r['estimatedPrecision'])} "
            f"| {fmt(r['targetVerifiable'])} | {r['wallSeconds']:.0f} | {r['peakRssMb']} | |"
        )
    print()
    print(
        f"| algorithm | runs (failed) | mAP@0.5 mean | accepted share mean (min) | precision of accepted mean (min) "
        f"| seeds with precision >= {TARGET:.2f} | seeds with precision >= {TARGET:.2f} or targetVerifiable false "
        f"| accepted share >= target | wall s mean (max) | peak RSS MB (max) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for algorithm in dict.fromkeys(r["algorithm"] for r in rows):
        sel = [r for r in rows if r["algorithm"] == algorithm]
        ok = [r for r in sel if "error" not in r]
        failed = len(sel) - len(ok)
        if not ok:
            print(f"| {algorithm} | {len(sel)} ({failed}) | - | - | - | - | - | - | - | - |")
            continue
        share = [r["acceptedShare"] for r in ok]
        prec = [r["precision"] for r in ok if not math.isnan(r["precision"])]
        held = sum(holds(r) for r in ok)
        held_or = sum(holds(r) or r["targetVerifiable"] is False for r in ok)
        want = TARGET_SHARE.get(algorithm)
        share_ok = f"{statistics.mean(share) >= want}" if want is not None else "-"
        print(
            f"| {algorithm} | {len(sel)} ({failed}) | {statistics.mean(r['map50'] for r in ok):.3f} "
            f"| {statistics.mean(share):.3f} ({min(share):.3f}) "
            f"| {(f'{statistics.mean(prec):.3f} ({min(prec):.3f})' if prec else 'n/a')} "
            f"| {held}/{len(sel)} | {held_or}/{len(sel)} | {share_ok} (>= {want}) "
            f"| {statistics.mean(r['wallSeconds'] for r in ok):.0f} ({max(r['wallSeconds'] for r in ok):.0f}) "
            f"| {max(r['peakRssMb'] for r in ok)} |"
        )
    slow = [f"{r['algorithm']} seed {r['seed']}" for r in rows if r.get("wallSeconds", 0) > RUN_LIMIT_S]
    print(f"\nRuns over {RUN_LIMIT_S} s: {', '.join(slow) if slow else 'none'}")
    print_anomalies(rows, lambda r: f"{r['algorithm']} seed {r['seed']}")


def print_anomalies(rows: list[dict[str, Any]], label: Any) -> None:
    lines = [f"- {label(r)}: {a}" for r in rows for a in r.get("anomalies", [])]
    print("Output checks: " + ("no findings" if not lines else f"{len(lines)} finding(s)"))
    for line in lines:
        print(line)


# -------------------------------------------------------------------------------------------- scaleout


def train_model(folder: str, model_dir: str, budget: int | None, train_steps: int | None) -> dict[str, Any]:
    """A Fast run on the scale-out dataset; its exported model/ is copied to model_dir (in a child)."""
    from autolabel_worker.pipeline import run_job

    from autolabel.storage import Storage

    job = make_job(str(Path(folder) / "boxes.manifest"), "scaleout-model", **al_spec("Fast", 0, budget))
    out = str(Path(folder) / "out-model") + "/"
    start = time.monotonic()
    summary = run_job(job, Storage(), out, train_steps=train_steps)
    shutil.copytree(Path(out) / "model", model_dir, dirs_exist_ok=True)
    return {"model": model_dir, "wallSeconds": round(time.monotonic() - start, 1), "out": out, "summary": summary}


def run_shard(folder: str, model_dir: str, out: str, index: int, count: int) -> dict[str, Any]:
    """One PreLabeling shard in this process (one of `count` parallel children)."""
    from autolabel_worker.pipeline import run_job

    from autolabel.storage import Storage

    job = make_job(
        str(Path(folder) / "boxes.manifest"),
        f"scaleout-{count}",
        mode="PreLabeling",
        preLabeling={"model": {"uri": model_dir}},
        resources={"computeNodes": count},
    )
    start = time.monotonic()
    summary = run_job(job, Storage(), out, shard_index=index, shard_count=count)
    return {
        "shard": index,
        "wallSeconds": round(time.monotonic() - start, 1),
        "images": summary.get("total"),
        "inferenceImagesPerSecond": summary.get("inferenceImagesPerSecond"),
        "inferenceSeconds": summary.get("inferenceSeconds"),
    }


def normalised_lines(out: Path, folder: Path) -> list[str]:
    """result.manifest as sorted lines of source + its VOC boxes (label, corners, confidence) + hard."""
    lines = []
    for r in read_results(out, folder):
        boxes = sorted((n, [round(v, 3) for v in b], None if c is None else round(c, 6)) for n, b, c in r["boxes"])
        lines.append(json.dumps({"source": r["source"], "boxes": boxes}))
    return sorted(lines)


def hard_flags(out: Path, folder: Path) -> dict[str, bool]:
    return {r["source"]: bool(r["hard"]) for r in read_results(out, folder)}


def scaleout(
    shard_counts: list[int], pool: int, model: str | None, budget: int, train_steps: int | None, keep: bool
) -> dict[str, Any]:
    from autolabel_worker.detection_data import write_detection_dataset

    folder = Path(tempfile.mkdtemp(prefix="bench-detection-scaleout-"))
    result: dict[str, Any] = {"pool": pool, "rows": []}
    try:
        ds = write_detection_dataset(folder, seed=0, unlabeled=pool)
        print(f"  dataset: {ds.unlabeled} unlabeled + {ds.labeled} labeled images in {folder}", flush=True)
        if model is None:
            model = str(folder / "model")
            args = ["--train-model", str(folder), model, "--budget", str(budget)]
            args += [] if train_steps is None else ["--train-steps", str(train_steps)]
            trained = run_child(args)
            result["training"] = {k: v for k, v in trained.items() if k != "summary"}
            if "error" in trained:
                print(f"  model training FAILED: {trained['error']}")
                return result
            print(f"  model trained in {trained['wallSeconds']}s ({trained['peakRssMb']} MB)", flush=True)
        result["model"] = model
        reference: list[str] | None = None
        reference_hard: dict[str, bool] | None = None
        for count in shard_counts:
            out = folder / f"out-{count}"
            started = time.monotonic()
            procs = [
                child(
                    ["--shard", str(folder), model, str(out) + "/", str(i), str(count)],
                    {"AUTOLABEL_TORCH_THREADS": "1"},
                )
                for i in range(count)
            ]
            shards = [collect(p) for p in procs]
            wall = time.monotonic() - started
            row: dict[str, Any] = {"shards": count, "wallSeconds": round(wall, 1), "perShard": shards}
            errors = [f"shard {i}: {s['error']}" for i, s in enumerate(shards) if "error" in s]
            if errors:
                row["error"] = "; ".join(errors)
            elif not (out / "result.manifest").exists():
                row["error"] = "no merged result.manifest"
            else:
                try:
                    lines = normalised_lines(out, folder)
                    hard = hard_flags(out, folder)
                    scored = score(out, folder)
                    row.update(
                        images=len(lines),
                        map50=scored["map50"],
                        boxes=scored["boxes"],
                        acceptedShare=scored["acceptedShare"],
                        anomalies=scored["anomalies"],
                    )
                    if reference is None:
                        reference, reference_hard = lines, hard
                        row["linesDiffering"] = 0
                        row["equalTo1Shard"] = None if count != 1 else True
                    else:
                        differing = len(set(lines).symmetric_difference(reference))
                        row["linesDiffering"] = differing
                        row["equalTo1Shard"] = lines == reference
                        row["hardFlagsDiffering"] = sum(
                            hard.get(s) != h for s, h in (reference_hard or {}).items()
                        ) + len(set(hard) - set(reference_hard or {}))
                except Exception as exc:
                    row["error"] = f"reading the merged result: {type(exc).__name__}: {exc}"
            result["rows"].append(row)
            print(f"  {count} shard(s): {row['wallSeconds']}s {row.get('error', '')}", flush=True)
    finally:
        if keep:
            print(f"  kept {folder}", flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print_scaleout(result)
    return result


def print_scaleout(result: dict[str, Any]) -> None:
    print()
    print(
        "| shards | images | total wall s | per-shard inference images/s | per-shard images | "
        "per-shard wall s | peak RSS MB (max) | boxes | mAP@0.5 | accepted share | merged = 1-shard (lines differing) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        shards = r["perShard"]
        ips = " / ".join(fmt(s.get("inferenceImagesPerSecond"), 1) for s in shards)
        imgs = " / ".join(fmt(s.get("images")) for s in shards)
        walls = " / ".join(fmt(s.get("wallSeconds"), 1) for s in shards)
        rss = max(s["peakRssMb"] for s in shards)
        if "error" in r:
            same = f"error: {r['error']}"
        elif r["shards"] == 1 or r["equalTo1Shard"] is None:
            same = "(reference)" if r["equalTo1Shard"] is not False else "-"
        else:
            same = (
                f"{'yes' if r['equalTo1Shard'] else 'NO'} ({r['linesDiffering']}; hard flags {r['hardFlagsDiffering']})"
            )
        print(
            f"| {r['shards']} | {fmt(r.get('images'))} | {r['wallSeconds']:.1f} | {ips} | {imgs} | {walls} | {rss} "
            f"| {fmt(r.get('boxes'))} | {fmt(r.get('map50'))} | {fmt(r.get('acceptedShare'))} | {same} |"
        )
    if result["rows"] and result["rows"][0]["shards"] != 1:
        print("(no 1-shard run in this list: the first shard count is the reference)")
    if any(r.get("boxes") == 0 for r in result["rows"]):
        print("(no boxes in the merged results: the comparison only covers the hard flags; train a longer model)")
    print_anomalies(result["rows"], lambda r: f"{r['shards']} shard(s)")


# ------------------------------------------------------------------------------------------------- gpu


def gpu(images: int = 256, steps: int = 50) -> dict[str, Any]:
    """Detector training and inference images/s on the GPU, with PIL's decode of the same PNGs as the
    ceiling, all in this run; on a machine without CUDA, one line and nothing measured."""
    import numpy as np
    import torch
    from autolabel_worker.detection.model import build_detector, choose_detector_spec
    from autolabel_worker.detection.train import DetectorTrainConfig, Scene, SceneSampler
    from autolabel_worker.detection_data import write_detection_dataset
    from PIL import Image

    if not torch.cuda.is_available():
        print("\nGPU: not measured (no GPU: torch.cuda.is_available() is False on this machine)")
        return {"measured": False, "reason": "no GPU"}
    folder = Path(tempfile.mkdtemp(prefix="bench-detection-gpu-"))
    try:
        ds = write_detection_dataset(folder, seed=0, unlabeled=images)
        truth = json.loads(ds.ground_truth.read_text())
        files = [folder / s for s in truth]
        t = time.monotonic()
        decoded = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        decode_ips = len(files) / (time.monotonic() - t)
        tensors = [torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous() for a in decoded]
        dev = torch.device("cuda")
        spec = choose_detector_spec([(a.shape[1], a.shape[0]) for a in decoded])
        cfg = DetectorTrainConfig()
        scenes = [
            Scene(tensors[i], torch.tensor([b[1:5] for b in boxes], dtype=torch.float32).reshape(-1, 4))
            for i, boxes in enumerate(truth.values())
        ][:64]
        sampler = SceneSampler(scenes, spec.input_side, cfg, seed=0)
        batches = []
        for _ in range(10):  # augmentation (CPU) done up front: the table measures the GPU step
            pairs = [sampler.sample() for _ in range(cfg.batch_size)]
            batches.append(
                (
                    [x.to(dev) for x, _ in pairs],
                    [
                        {"boxes": b.to(dev), "labels": torch.ones(len(b), dtype=torch.int64, device=dev)}
                        for _, b in pairs
                    ],
                )
            )
        detector = build_detector(spec).to(dev).train()
        optimizer = torch.optim.AdamW(detector.parameters(), lr=cfg.lr)
        for n in range(steps + 5):
            if n == 5:  # warm-up steps are not timed
                torch.cuda.synchronize()
                t = time.monotonic()
            x, y = batches[n % len(batches)]
            loss = sum(detector(x, y).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        torch.cuda.synchronize()
        train_ips = steps * cfg.batch_size / (time.monotonic() - t)
        detector.eval()
        with torch.inference_mode():
            detector([tensors[0].to(dev).float() / 255.0])
            torch.cuda.synchronize()
            t = time.monotonic()
            for i in range(0, len(tensors), 64):
                detector([x.to(dev, non_blocking=True).float() / 255.0 for x in tensors[i : i + 64]])
            torch.cuda.synchronize()
            infer_ips = len(tensors) / (time.monotonic() - t)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = {
        "measured": True,
        "device": torch.cuda.get_device_name(0),
        "images": len(tensors),
        "decodeImagesPerSecond": decode_ips,
        "trainImagesPerSecond": train_ips,
        "inferenceImagesPerSecond": infer_ips,
    }
    print()
    print("| GPU | images | PNG decode img/s (PIL, 1 thread) | detector training img/s | detector inference img/s |")
    print("|---|---|---|---|---|")
    print(f"| {out['device']} | {len(tensors)} | {decode_ips:.0f} | {train_ips:.0f} | {infer_ips:.0f} |")
    return out


# ------------------------------------------------------------------------------------------------ main


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["quality", "scaleout", "gpu"], required=True)
    parser.add_argument("--seeds", type=ints, default=[0, 1, 2, 3, 4], help="comma-separated dataset seeds")
    parser.add_argument("--algorithms", default="Fast,Precise")
    parser.add_argument("--budget", type=int, default=480, help="spec.activeLearning.timeBudgetSeconds")
    parser.add_argument(
        "--train-steps", type=int, default=None, help="steps per model (default: the worker's; shorter for a smoke run)"
    )
    parser.add_argument("--unlabeled", type=int, default=300, help="quality: unlabeled images per dataset")
    parser.add_argument(
        "--labeled-per-class", type=int, default=6, help="quality: images labeled per class (the sample's is 6)"
    )
    parser.add_argument("--shards", type=ints, default=[1, 2, 3, 5], help="scaleout: comma-separated shard counts")
    parser.add_argument("--pool", type=int, default=600, help="scaleout: unlabeled images to pre-label")
    parser.add_argument("--model", default=None, help="scaleout: a model/ folder to reuse instead of training one")
    parser.add_argument("--model-budget", type=int, default=120, help="scaleout: time budget of the model's run")
    parser.add_argument("--json", default=None, help="raw rows (default .bench/results-detection-<part>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dataset folders")
    parser.add_argument("--one", nargs=3, metavar=("FOLDER", "ALGORITHM", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--train-model", nargs=2, metavar=("FOLDER", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--shard", nargs=5, metavar=("FOLDER", "MODEL", "OUT", "I", "N"), help=argparse.SUPPRESS)
    args = sys.argv[1:]
    hidden = any(a in ("--one", "--train-model", "--shard") for a in args)
    if hidden:  # a child: --part is not needed
        args = ["--part", "quality", *args]
    opts = parser.parse_args(args)
    import logging

    logging.basicConfig(level=logging.WARNING)
    if opts.one:
        print(json.dumps(run_one(opts.one[0], opts.one[1], int(opts.one[2]), opts.budget, opts.train_steps)))
        return
    if opts.train_model:
        folder, model = opts.train_model
        print(json.dumps(train_model(folder, model, opts.budget, opts.train_steps), default=str))
        return
    if opts.shard:
        f, m, o, i, n = opts.shard
        print(json.dumps(run_shard(f, m, o, int(i), int(n))))
        return

    import torch

    header: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "loadAverageAtStart": os.getloadavg(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "env": {k: v for k, v in os.environ.items() if k.startswith("AUTOLABEL_")},
        "argv": sys.argv[1:],
    }
    print(f"machine: {header}", flush=True)
    results: dict[str, Any] = {"machine": header}
    start = time.monotonic()
    if opts.part == "quality":
        results["quality"] = quality(
            opts.seeds,
            opts.algorithms.split(","),
            opts.budget,
            opts.train_steps,
            opts.unlabeled,
            opts.keep,
            opts.labeled_per_class,
        )
    elif opts.part == "scaleout":
        results["scaleout"] = scaleout(
            opts.shards, opts.pool, opts.model, opts.model_budget, opts.train_steps, opts.keep
        )
    else:
        results["gpu"] = gpu()
    header["loadAverageAtEnd"] = os.getloadavg()
    header["totalSeconds"] = round(time.monotonic() - start, 1)
    print(f"\ntotal {header['totalSeconds']} s; load average at the end {header['loadAverageAtEnd']}")
    path = Path(opts.json) if opts.json else BENCH / f"results-detection-{opts.part}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
