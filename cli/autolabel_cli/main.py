"""``autolabel`` (also installed as ``kubectl-autolabel``): the command line.

``autolabel run JOB.yaml --local [--output URI] [--time-budget S]`` runs an AutoLabelJob manifest on this
machine through exactly the code path of the worker pod (:func:`autolabel_worker.entrypoint.execute`).
``spec.dataset.manifest`` and ``spec.output`` may be local paths (relative ones are resolved against the
folder of JOB.yaml, as Docker Compose and kustomize do) or ``s3://`` URIs (the store comes from
``spec.storage`` and the usual ``AWS_*`` environment variables).

Sample datasets: a job carrying the annotation ``autolabel.dev/sample-dataset: digits`` whose local
manifest does not exist yet gets the bundled digits dataset written there first (what
``examples/digits-local.yaml`` relies on).

Only ``run`` exists for now; ``status``, ``results``, ``confirm`` and ``export`` (talking to a cluster) are
planned as further sub-commands of the same parser. Torch is imported only when ``run`` runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import ValidationError

from autolabel.api import KIND, AutoLabelJob, results_prefix
from autolabel.contract import ExitCode
from autolabel.storage import is_absolute_uri

log = logging.getLogger("autolabel_cli")

SAMPLE_DATASET_ANNOTATION = "autolabel.dev/sample-dataset"
EXIT_USAGE = 2


class JobFileError(ValueError):
    """A job file cannot be used; ``str()`` names the file, and the line and field where known."""


# ----------------------------------------------------------------------------------- loading YAML


def _node_at(root: yaml.Node | None, loc: Sequence[str | int]) -> yaml.Node | None:
    """The deepest YAML node along a pydantic error location (for its line number)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
            if match is None:
                return node
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


def _format_validation_error(path: str, exc: ValidationError, root: yaml.Node | None) -> str:
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        field = ".".join(str(p) for p in loc) or "(document)"
        node = _node_at(root, loc)
        where = f"{path} line {node.start_mark.line + 1}" if node is not None else path
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; fields are camelCase)"
        lines.append(f"{where}: {field}: {msg}")
    return "\n".join(lines)


def load_job_file(path: str) -> AutoLabelJob:
    """Read and validate an AutoLabelJob from a YAML (or JSON) file; errors name file, line and field."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise JobFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        nodes = list(yaml.compose_all(text))
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark is not None else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise JobFileError(f"{where}: invalid YAML: {problem}") from exc
    candidates = [(d, n) for d, n in zip(docs, nodes, strict=True) if d is not None]
    jobs = [(d, n) for d, n in candidates if isinstance(d, dict) and d.get("kind") == KIND]
    if not jobs:
        if len(candidates) == 1 and isinstance(candidates[0][0], dict):
            jobs = candidates  # let validation say what is wrong with the one document there is
        else:
            raise JobFileError(f"{path}: no document with kind: {KIND}")
    if len(jobs) > 1:
        raise JobFileError(f"{path}: {len(jobs)} AutoLabelJob documents; run one at a time")
    doc, node = jobs[0]
    if not isinstance(doc, dict):
        raise JobFileError(f"{path}: expected a mapping (an AutoLabelJob), got {type(doc).__name__}")
    try:
        return AutoLabelJob.model_validate(doc)
    except ValidationError as exc:
        raise JobFileError(_format_validation_error(path, exc, node)) from exc


def localize(job: AutoLabelJob, job_file: str, output: str | None) -> AutoLabelJob:
    """Resolve relative local paths against the job file's folder; apply ``--output``; give the run a uid.

    Like the API server on create, every run gets a fresh uid (unless the file names one), so each run
    writes its own ``<name>-<short uid>/`` folder and never replaces an earlier run's results.
    """
    base = os.path.dirname(os.path.abspath(job_file))

    def resolve(uri: str) -> str:
        return uri if is_absolute_uri(uri) else os.path.normpath(os.path.join(base, uri))

    doc: dict[str, Any] = job.model_dump(by_alias=True, exclude_none=True, mode="json")
    doc["metadata"].setdefault("uid", str(uuid.uuid4()))
    spec = doc["spec"]
    spec["dataset"]["manifest"] = resolve(spec["dataset"]["manifest"])
    if output is not None:
        spec["output"] = output if is_absolute_uri(output) else os.path.abspath(output)
    elif spec.get("output"):
        spec["output"] = resolve(spec["output"])
    if spec.get("preLabeling"):
        spec["preLabeling"]["model"]["uri"] = resolve(spec["preLabeling"]["model"]["uri"])
    return AutoLabelJob.model_validate(doc)


def ensure_sample_dataset(job: AutoLabelJob) -> None:
    """Write a bundled sample dataset where the job expects it, when the job asks for one."""
    sample = job.metadata.annotations.get(SAMPLE_DATASET_ANNOTATION)
    manifest = job.spec.dataset.manifest
    if not sample or manifest.startswith("s3://") or os.path.exists(manifest):
        return
    if sample != "digits":
        raise JobFileError(f'annotation {SAMPLE_DATASET_ANNOTATION}: unknown sample dataset "{sample}" (known: digits)')
    from autolabel_worker.data import MANIFEST_NAME, ensure_digits_dataset

    if os.path.basename(manifest) != MANIFEST_NAME:
        raise JobFileError(
            f"spec.dataset.manifest {manifest} does not exist, and the digits sample is written as {MANIFEST_NAME}"
        )
    log.info("writing the digits sample dataset to %s", os.path.dirname(manifest))
    ensure_digits_dataset(os.path.dirname(manifest))


# ------------------------------------------------------------------------------------------ commands


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        print(
            "autolabel run: only --local is supported; on a cluster, `kubectl apply -f` the job instead",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from autolabel_worker.entrypoint import configure_logging, execute, storage_for, with_time_budget

    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        job = localize(load_job_file(args.job_file), args.job_file, args.output)
        job = with_time_budget(job, args.time_budget)
        ensure_sample_dataset(job)
    except (JobFileError, ValidationError) as exc:
        print(f"autolabel run: {exc}", file=sys.stderr)
        return ExitCode.BAD_JOB
    storage = storage_for(job)
    return execute(job, storage, results_prefix(job))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autolabel", description="Auto labeling for image datasets (AutoLabelJob tools)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser(
        "run",
        help="run an AutoLabelJob manifest",
        description="Run an AutoLabelJob manifest on this machine (--local), with local paths or s3:// URIs.",
    )
    run.add_argument("job_file", metavar="JOB.yaml", help="the AutoLabelJob manifest")
    run.add_argument("--local", action="store_true", help="run here, without a cluster (required for now)")
    run.add_argument("--output", metavar="URI", help="results prefix (overrides spec.output)")
    run.add_argument(
        "--time-budget",
        metavar="S",
        type=int,
        help="training time budget in seconds (overrides spec.activeLearning.timeBudgetSeconds; >= 10)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
