"""``autolabel`` (also installed as ``kubectl-autolabel``): the command line.

``autolabel run JOB.yaml --local [--output URI] [--time-budget S]`` runs an AutoLabelJob manifest on this
machine through exactly the code path of the worker pod (:func:`autolabel_worker.entrypoint.execute`).
``spec.dataset.manifest`` and ``spec.output`` may be local paths (relative ones are resolved against the
folder of JOB.yaml, as Docker Compose and kustomize do) or ``s3://`` URIs (the store comes from
``spec.storage`` and the usual ``AWS_*`` environment variables).

Sample datasets: a job carrying the annotation ``autolabel.dev/sample-dataset: digits`` whose local
manifest does not exist yet gets the bundled digits dataset written there first (what
``examples/digits-local.yaml`` relies on).

``autolabel status [JOB] [-o json|yaml] [--watch]`` and ``autolabel results JOB [-o json|yaml] [--top N]``
talk to a cluster (kubectl's ``--kubeconfig``, ``--context``, ``-n``, ``-A``; see :mod:`autolabel_cli.kube`)
and, for ``results``, to the object store (:mod:`autolabel_cli.results`). docs/cli.md describes them all.

Built with typer (click underneath) and rich. Torch is imported only when ``run`` runs, the ``kubernetes``
client only when a cluster command runs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live

from autolabel.api import KIND, AutoLabelJob, Mode, results_prefix
from autolabel.contract import (
    PROGRESS_FILE,
    RESULT_FILE,
    SUMMARY_FILE,
    Env,
    ExitCode,
    run_prefix,
    shard_count,
    storage_endpoint,
    storage_region,
)
from autolabel.storage import Storage, StorageConfig, StorageError, is_absolute_uri

from . import kube, results, view
from .kube import CliError, KubeOptions
from .review.common import run_name
from .review.confirm import confirm as review_confirm
from .review.confirm import load_corrections, load_image_list
from .review.dataset_import import import_dataset
from .review.errors import ReviewError
from .review.export import FORMATS as EXPORT_FORMATS
from .review.export import export as review_export
from .review.labelstudio import LabelStudio, project_title
from .review.labelstudio import pull as ls_pull
from .review.labelstudio import push as ls_push

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


def localize(job: AutoLabelJob, job_file: str, output: str | None, model: str | None = None) -> AutoLabelJob:
    """Resolve relative local paths against the job file's folder; apply ``--output`` and ``--model``
    (relative paths given on the command line resolve against the current directory); give the run a uid.

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
    if model is not None:
        if not spec.get("preLabeling"):
            raise JobFileError(f"{job_file}: --model is for PreLabeling jobs (this one is {spec['mode']})")
        spec["preLabeling"]["model"]["uri"] = model if is_absolute_uri(model) else _local_dir_uri(model)
    elif spec.get("preLabeling"):
        spec["preLabeling"]["model"]["uri"] = resolve(spec["preLabeling"]["model"]["uri"])
    weights = (spec.get("activeLearning") or {}).get("pretrainedWeights")
    if weights:
        spec["activeLearning"]["pretrainedWeights"] = resolve(weights)
    return AutoLabelJob.model_validate(doc)


def _local_dir_uri(path: str) -> str:
    """An absolute path; a folder keeps its trailing slash (a model folder is named as ``.../model/``)."""
    absolute = os.path.abspath(path)
    return absolute + "/" if path.endswith("/") or os.path.isdir(absolute) else absolute


def ensure_sample_dataset(job: AutoLabelJob) -> None:
    """Write a bundled sample dataset where the job expects it, when the job asks for one."""
    sample = job.metadata.annotations.get(SAMPLE_DATASET_ANNOTATION)
    manifest = job.spec.dataset.manifest
    if not sample or manifest.startswith("s3://") or os.path.exists(manifest):
        return
    samples = ("digits", "digit-boxes")
    if sample not in samples:
        raise JobFileError(
            f'annotation {SAMPLE_DATASET_ANNOTATION}: unknown sample dataset "{sample}" (known: {", ".join(samples)})'
        )
    from autolabel_worker import data, detection_data

    name = data.MANIFEST_NAME if sample == "digits" else detection_data.MANIFEST_NAME
    if os.path.basename(manifest) != name:
        raise JobFileError(
            f"spec.dataset.manifest {manifest} does not exist, and the {sample} sample is written as {name}"
        )
    log.info("writing the %s sample dataset to %s", sample, os.path.dirname(manifest))
    if sample == "digits":
        data.ensure_digits_dataset(os.path.dirname(manifest))
    else:
        detection_data.ensure_detection_dataset(os.path.dirname(manifest))


# ------------------------------------------------------------------------------------------ the app

HELP = "Auto labeling for image datasets: run AutoLabelJobs locally, follow them and read their results on a cluster."
WATCH_INTERVAL = 2.0
WATCH_TIMEOUT = 3600.0
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="autolabel",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Output(StrEnum):
    json = "json"
    yaml = "yaml"


KubeconfigOpt = Annotated[
    str | None,
    typer.Option("--kubeconfig", metavar="PATH", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)"),
]
ContextOpt = Annotated[str | None, typer.Option("--context", metavar="NAME", help="kubeconfig context to use")]
NamespaceOpt = Annotated[
    str | None, typer.Option("-n", "--namespace", metavar="NS", help="namespace (default: the context's, else default)")
]
AllNamespacesOpt = Annotated[bool, typer.Option("-A", "--all-namespaces", help="jobs of every namespace")]
OutputOpt = Annotated[
    Output | None, typer.Option("-o", "--output", help="print a document for scripts instead of tables")
]


def _stdout() -> Console:
    """rich output; when piped (not a terminal) wide enough that tables do not wrap, unless $COLUMNS says."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=200)
    return console


def _fail(command: str, message: str, code: int = 1) -> typer.Exit:
    print(f"autolabel {command}: {message}", file=sys.stderr)
    return typer.Exit(code)


def _options(
    ctx: typer.Context, kubeconfig: str | None, context: str | None, namespace: str | None, all_ns: bool
) -> KubeOptions:
    base = ctx.obj if isinstance(ctx.obj, KubeOptions) else KubeOptions()
    return base.merged(KubeOptions(kubeconfig, context, namespace, all_ns))


@app.callback()
def _global(
    ctx: typer.Context,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
    all_namespaces: AllNamespacesOpt = False,
) -> None:
    """Auto labeling for image datasets (AutoLabelJob tools); also `kubectl autolabel` as a kubectl plugin.

    The cluster options work before or after the command, like kubectl's.
    """
    ctx.obj = KubeOptions(kubeconfig, context, namespace, all_namespaces)


# -------------------------------------------------------------------------------------------- run


@app.command(no_args_is_help=True)
def run(
    job_file: Annotated[str, typer.Argument(metavar="JOB.yaml", help="the AutoLabelJob manifest", show_default=False)],
    local: Annotated[bool, typer.Option("--local", help="run here, without a cluster (required for now)")] = False,
    output: Annotated[
        str | None, typer.Option("--output", metavar="URI", help="results prefix (overrides spec.output)")
    ] = None,
    time_budget: Annotated[
        int | None,
        typer.Option(
            "--time-budget",
            metavar="S",
            help="training time budget in seconds (overrides spec.activeLearning.timeBudgetSeconds; >= 10)",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="URI",
            help="PreLabeling model: a model/ folder or TorchScript file, local or s3:// "
            "(overrides spec.preLabeling.model.uri; a relative path is resolved against the current directory)",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="debug logging")] = False,
) -> None:
    """Run an AutoLabelJob manifest on this machine (--local), with local paths or s3:// URIs.

    A PreLabeling job with spec.resources.computeNodes N > 1 runs as N worker processes in parallel, one
    per shard, as the operator's Indexed Job runs N pods; the last shard to finish merges the results.
    """
    if not local:
        raise _fail("run", "only --local is supported; on a cluster, `kubectl apply -f` the job instead", EXIT_USAGE)
    from autolabel_worker.entrypoint import configure_logging, execute, storage_for, with_time_budget

    configure_logging(logging.DEBUG if verbose else logging.INFO)
    try:
        job = localize(load_job_file(job_file), job_file, output, model)
        job = with_time_budget(job, time_budget)
        ensure_sample_dataset(job)
    except (JobFileError, ValidationError) as exc:
        raise _fail("run", str(exc), ExitCode.BAD_JOB) from None
    prefix = results_prefix(job)
    shards = shard_count(job)
    code: int
    if shards > 1:
        failed = run_shards(job, prefix, shards, debug=verbose)
        if failed:
            listed = ", ".join(f"{i} (exit code {code})" for i, code in failed)
            where = ", ".join(run_prefix(prefix, i, shards) + PROGRESS_FILE for i, _ in failed)
            word = "shard" if len(failed) == 1 else "shards"
            raise _fail("run", f"{word} {listed} of {shards} failed; nothing was merged (see {where})", failed[0][1])
        code = ExitCode.OK
    else:
        code = execute(job, storage_for(job), prefix)
    if code == ExitCode.OK:
        _print_outputs(job, prefix, shards)
    raise typer.Exit(int(code))


def _print_outputs(job: AutoLabelJob, prefix: str, shards: int) -> None:
    """Where a finished run's results are (stdout; the worker's log went to stderr)."""
    merged = f" (merged from {shards} shards)" if shards > 1 else ""
    print(f"results: {prefix}{RESULT_FILE}{merged}")
    print(f"summary: {prefix}{SUMMARY_FILE}")
    if job.spec.mode == Mode.ACTIVE_LEARNING:
        print(f"model:   {prefix}model/  (pre-label with it: autolabel run JOB.yaml --local --model {prefix}model/)")


def shard_environment(job: AutoLabelJob, prefix: str, index: int, count: int) -> dict[str, str]:
    """The variables the operator's Indexed Job gives shard ``index``'s pod (:class:`autolabel.contract.Env`;
    the store's ``AWS_*`` come from this process's environment, as for a one-process run)."""
    env = {
        Env.JOB.value: json.dumps(job.model_dump(by_alias=True, exclude_none=True, mode="json")),
        Env.OUTPUT.value: prefix,
        Env.SHARDS.value: str(count),
        Env.SHARD_INDEX.value: str(index),
    }
    endpoint, region = storage_endpoint(job), storage_region(job)
    if endpoint:
        env[Env.ENDPOINT.value] = endpoint
    if region:
        env[Env.REGION.value] = region
    return env


def worker_argv() -> list[str]:
    """The worker pod's entry point (``autolabel-worker``), with this Python."""
    return [sys.executable, "-m", "autolabel_worker.entrypoint"]


def run_shards(job: AutoLabelJob, prefix: str, count: int, debug: bool = False) -> list[tuple[int, int]]:
    """Run the job's ``count`` shards as parallel worker processes (:func:`worker_argv`, the pod's entry
    point, each with its :func:`shard_environment`); their log lines go to stderr prefixed with
    ``[shard i]``. Returns ``(shard, exit code)`` of each shard that failed (empty: all succeeded)."""
    import signal
    import subprocess
    import threading

    log.info("running %d shards as parallel worker processes; results in %s", count, prefix)
    procs: list[subprocess.Popen[bytes]] = []
    pumps: list[threading.Thread] = []
    lock = threading.Lock()

    def pump(index: int, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            if debug or " DEBUG " not in line:
                with lock:
                    print(f"[shard {index}] {line}", file=sys.stderr, flush=True)
        stream.close()

    try:
        for index in range(count):
            env = {**os.environ, **shard_environment(job, prefix, index, count)}
            proc = subprocess.Popen(
                worker_argv(),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            procs.append(proc)
            thread = threading.Thread(target=pump, args=(index, proc.stdout), daemon=True)
            thread.start()
            pumps.append(thread)
        codes = [proc.wait() for proc in procs]
    except BaseException:  # Ctrl-C or a failed start: stop the shards already running, as SIGTERM stops pods
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    for thread in pumps:
        thread.join(5)
    # A shard killed by signal N reports -N; as a shell would, that is exit code 128 + N.
    return [(index, code if code > 0 else 128 - code) for index, code in enumerate(codes) if code != 0]


# ----------------------------------------------------------------------------------------- status


def _fetch(api: kube.JobsApi, namespace: str, name: str | None, all_namespaces: bool) -> list[dict[str, Any]]:
    if name:
        return [api.get(namespace, name)]
    return api.list(None if all_namespaces else namespace)


@app.command()
def status(
    ctx: typer.Context,
    job: Annotated[
        str | None, typer.Argument(metavar="JOB", help="one job (default: every job)", show_default=False)
    ] = None,
    output: OutputOpt = None,
    watch: Annotated[bool, typer.Option("-w", "--watch", help="refresh until every shown job has finished")] = False,
    interval: Annotated[
        float, typer.Option("--interval", metavar="S", min=0.2, help="seconds between refreshes")
    ] = WATCH_INTERVAL,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="S", min=1, help="give up watching after this long")
    ] = WATCH_TIMEOUT,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
    all_namespaces: AllNamespacesOpt = False,
) -> None:
    """Show AutoLabelJobs: phase, progress, results so far, age."""
    opts = _options(ctx, kubeconfig, context, namespace, all_namespaces)
    if watch and output is not None:
        raise _fail("status", "--watch shows a live table; leave out -o/--output", EXIT_USAGE)
    if job and opts.all_namespaces:
        raise _fail(
            "status", "a job name and -A/--all-namespaces do not go together; name the namespace with -n", EXIT_USAGE
        )
    try:
        api, ns = kube.connect(opts)
        jobs = _fetch(api, ns, job, opts.all_namespaces)
        if output is not None:
            docs = [view.status_document(j) for j in jobs]
            sys.stdout.write(view.dump(docs[0] if job else docs, output.value))
            return
        where = "in any namespace" if opts.all_namespaces else f'in namespace "{ns}"'
        console = _stdout()
        if not watch:
            console.print(view.status_view(jobs, opts.all_namespaces, where))
            return
        _watch(
            console,
            lambda: _fetch(api, ns, job, opts.all_namespaces),
            jobs,
            opts.all_namespaces,
            where,
            interval,
            timeout,
        )
    except CliError as exc:
        raise _fail("status", str(exc), exc.code) from None


def _watch(
    console: Console, fetch: Any, jobs: list[dict[str, Any]], all_ns: bool, where: str, interval: float, timeout: float
) -> None:
    """Redraw the table every ``interval`` s until every shown job is Succeeded/Failed, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    try:
        with Live(view.status_view(jobs, all_ns, where), console=console, auto_refresh=False) as live:
            while not all(view.is_finished(j) for j in jobs):
                if time.monotonic() >= deadline:
                    live.stop()
                    raise CliError(f"jobs still unfinished after watching for {timeout:g} s")
                time.sleep(interval)
                jobs = fetch()
                live.update(view.status_view(jobs, all_ns, where, dt.datetime.now(dt.UTC)), refresh=True)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


# ---------------------------------------------------------------------------------------- results


@app.command("results")
def results_command(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", help="a finished job", show_default=False)],
    output: OutputOpt = None,
    top: Annotated[
        int, typer.Option("--top", metavar="N", min=0, help="how many of the hardest examples to list")
    ] = 10,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Summarize a finished job's results: counts, labels, hard-example reasons, the hardest examples."""
    opts = _options(ctx, kubeconfig, context, namespace, False)
    try:
        api, ns = kube.connect(opts)
        obj = api.get(ns, job)
        uri = _results_uri(obj, ns, job)
        report = results.read_report(results.storage_for(obj), uri, top)
    except CliError as exc:
        raise _fail("results", str(exc), exc.code) from None
    if output is not None:
        sys.stdout.write(view.dump(results.report_document(obj, report), output.value))
        return
    results.render_report(_stdout(), obj, report)


def _results_uri(obj: dict[str, Any], namespace: str, name: str) -> str:
    status_ = view.status_of(obj)
    phase = view.phase_of(obj)
    uri = (status_.get("result") or {}).get("uri")
    where = f'AutoLabelJob "{name}" in namespace "{namespace}"'
    if phase == "Failed":
        raise CliError(f"{where} failed, it has no results: {status_.get('message') or 'no message'}")
    if phase != "Succeeded":
        percent = view.percent_of(obj)
        done = f", {percent}% done" if percent is not None else ""
        raise CliError(f"{where} has not finished (phase {phase}{done}); results are there once it has Succeeded")
    if not uri:
        raise CliError(f"{where} succeeded but has no status.result.uri yet (results not recorded)")
    return str(uri)


# ------------------------------------------------------------------- the review loop: confirm, export


def _finished_job(
    ctx: typer.Context, job: str, kubeconfig: str | None, context: str | None, namespace: str | None
) -> tuple[dict[str, Any], str]:
    """The Succeeded AutoLabelJob ``job`` and its results prefix (CliError otherwise)."""
    opts = _options(ctx, kubeconfig, context, namespace, False)
    api, ns = kube.connect(opts)
    obj = api.get(ns, job)
    return obj, _results_uri(obj, ns, job)


def _read_local(command: str, option: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise _fail(command, f"{option} {path}: cannot read: {exc.strerror or exc}", EXIT_USAGE) from None


@app.command()
def confirm(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", help="a finished job", show_default=False)],
    min_confidence: Annotated[
        float | None, typer.Option("--min-confidence", metavar="X", min=0, max=1, help="only proposals this sure")
    ] = None,
    include_hard: Annotated[bool, typer.Option("--include-hard", help="also the proposals flagged hard")] = False,
    labels: Annotated[
        str | None, typer.Option("--labels", metavar="A,B", help="only proposals of these labels")
    ] = None,
    exclude: Annotated[
        str | None, typer.Option("--exclude", metavar="FILE", help="images to leave unlabeled, one per line")
    ] = None,
    corrections: Annotated[
        str | None,
        typer.Option(
            "--corrections",
            metavar="FILE",
            help="a person's fixes: CSV image,label or JSON {image: label}; detection: JSON lines of boxes",
        ),
    ] = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Accept a finished job's proposals (ModelArts' "OK") into a new manifest version beside the original.

    The accepted proposals become labeled lines with their provenance; the original is never modified.
    """
    try:
        excluded = load_image_list(_read_local("confirm", "--exclude", exclude), exclude) if exclude else set()
        fixes = None
        if corrections:
            fixes = load_corrections(_read_local("confirm", "--corrections", corrections), corrections)
        obj, uri = _finished_job(ctx, job, kubeconfig, context, namespace)
        report = review_confirm(
            results.storage_for(obj),
            obj["spec"]["dataset"]["manifest"],
            uri.rstrip("/") + "/" + RESULT_FILE,
            job_name=job,
            min_confidence=min_confidence,
            include_hard=include_hard,
            labels={x.strip() for x in labels.split(",") if x.strip()} if labels else None,
            exclude=excluded,
            corrections=fixes,
        )
    except (CliError, ReviewError, StorageError) as exc:
        raise _fail("confirm", str(exc), getattr(exc, "code", 1)) from None
    counts = f"{report.confirmed} confirmed, {report.corrected} corrected, {report.left} left unlabeled"
    if report.written:
        print(f"wrote {report.uri}: {counts}")
    elif report.confirmed or report.corrected:
        print(f"unchanged: {report.uri} already holds this ({counts})")
    else:
        print(f"nothing to confirm, no new version written ({counts}); try --include-hard or --min-confidence")


@app.command()
def export(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", help="a finished job", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", metavar="|".join(EXPORT_FORMATS), help="the format to write")],
    to: Annotated[
        str | None, typer.Option("--to", metavar="URI", help="where (default: <results>/export/<format>/)")
    ] = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Write a finished job's proposals, with their confidences, for the tools people review or train with."""
    if fmt not in EXPORT_FORMATS:
        raise _fail("export", f"--format {fmt!r}: unknown, use one of {', '.join(EXPORT_FORMATS)}", EXIT_USAGE)
    try:
        obj, uri = _finished_job(ctx, job, kubeconfig, context, namespace)
        prefix = uri.rstrip("/") + "/"
        written = review_export(
            results.storage_for(obj), obj["spec"]["dataset"]["manifest"], prefix + RESULT_FILE, fmt,
            to or f"{prefix}export/{fmt}/",
        )  # fmt: skip
    except (CliError, ReviewError, StorageError) as exc:
        raise _fail("export", str(exc), getattr(exc, "code", 1)) from None
    print(f"wrote {len(written)} file(s): {', '.join(written[:3])}{' …' if len(written) > 3 else ''}")


dataset_app = typer.Typer(help="Datasets: bring one in from the format you have.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("import")
def dataset_import(
    src: Annotated[str, typer.Argument(metavar="SRC", help="an ImageFolder tree, a COCO JSON or a VOC folder")],
    to: Annotated[str, typer.Option("--to", metavar="URI", help="where to upload (s3://bucket/prefix/ or a folder)")],
    fmt: Annotated[
        str | None, typer.Option("--format", metavar="imagefolder|coco|voc", help="default: detected")
    ] = None,
) -> None:
    """Build a ModelArts manifest from SRC and upload it with the images (store from the AWS_* variables)."""
    try:
        manifest = import_dataset(Storage(StorageConfig.from_env()), src, to, fmt)
    except (ReviewError, StorageError) as exc:
        raise _fail("dataset import", str(exc)) from None
    print(f"wrote {manifest}")


review_app = typer.Typer(
    help="Review a finished job's proposals in Label Studio (token from $LABEL_STUDIO_TOKEN).", no_args_is_help=True
)
app.add_typer(review_app, name="review")

LabelStudioOpt = Annotated[
    str,
    typer.Option(
        "--label-studio", metavar="URL", envvar="LABEL_STUDIO_URL", help="the Label Studio server ($LABEL_STUDIO_URL)"
    ),
]
TOKEN_VARIABLE = "LABEL_STUDIO_TOKEN"


def _label_studio(command: str, url: str) -> LabelStudio:
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token:
        raise _fail(command, f"set ${TOKEN_VARIABLE} to a Label Studio API token (Account & Settings)", EXIT_USAGE)
    return LabelStudio(url, token)


@dataclass(frozen=True)
class ReviewTarget:
    """A finished job as the review commands need it."""

    storage: Storage
    manifest: str
    result_manifest: str
    title: str


def _review_target(
    ctx: typer.Context, job: str, kubeconfig: str | None, context: str | None, namespace: str | None
) -> ReviewTarget:
    obj, uri = _finished_job(ctx, job, kubeconfig, context, namespace)
    return ReviewTarget(
        results.storage_for(obj),
        obj["spec"]["dataset"]["manifest"],
        uri.rstrip("/") + "/" + RESULT_FILE,
        project_title(obj["metadata"]["namespace"], job),
    )


@review_app.command("push")
def review_push(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", help="a finished job", show_default=False)],
    label_studio: LabelStudioOpt,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Send a finished job's proposals to Label Studio as tasks with predictions (hard examples first).

    One project per job, `autolabel: <namespace>/<job>`; pushing again adds only what is not there yet.
    """
    ls = _label_studio("review push", label_studio)
    try:
        t = _review_target(ctx, job, kubeconfig, context, namespace)
        report = ls_push(
            t.storage, ls, t.manifest, t.result_manifest, title=t.title, run=run_name(t.result_manifest)
        )
    except (CliError, ReviewError, StorageError) as exc:
        raise _fail("review push", str(exc), getattr(exc, "code", 1)) from None
    what = "created" if report.created else "found"
    print(f"{what} project {report.project_id}: {report.project_url}")
    print(f"imported {report.imported} task(s) ({report.hard} hard, first); {report.already} already there")


@review_app.command("pull")
def review_pull(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", help="a finished job", show_default=False)],
    label_studio: LabelStudioOpt,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Write the next manifest version with the images reviewed in Label Studio labeled, and only those.

    Each submitted annotation counts, whether it kept the proposal or changed it (annotated-by: human).
    """
    ls = _label_studio("review pull", label_studio)
    try:
        t = _review_target(ctx, job, kubeconfig, context, namespace)
        report = ls_pull(t.storage, ls, t.manifest, t.result_manifest, title=t.title, job_name=job)
    except (CliError, ReviewError, StorageError) as exc:
        raise _fail("review pull", str(exc), getattr(exc, "code", 1)) from None
    done = report.confirm
    counts = f"{report.reviewed} reviewed ({report.accepted} accepted, {report.changed} changed)"
    counts += f", {done.left} left unlabeled"
    if done.written:
        print(f"wrote {done.uri}: {counts}")
    elif report.reviewed:
        print(f"unchanged: {done.uri} already holds this ({counts})")
    else:
        print(f"nothing reviewed in project {report.project_id} yet, no new version written")


# ------------------------------------------------------------------------------------------- main


def prog_name(argv0: str | None = None) -> str:
    """``kubectl autolabel`` when run as the kubectl plugin, else ``autolabel``."""
    base = os.path.basename(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else "autolabel"))
    return "kubectl autolabel" if base.startswith("kubectl-autolabel") else "autolabel"


def build_parser() -> Any:
    """The command line as a click command (typer's vendored click; what :func:`main` runs)."""
    return typer.main.get_command(app)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    try:
        build_parser().main(args=list(argv) if argv is not None else None, prog_name=prog_name(), standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
