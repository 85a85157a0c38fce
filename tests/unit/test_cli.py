"""``autolabel run --local`` and the container entrypoint: job loading, error messages, exit codes.

The learning pipeline (``autolabel_worker.pipeline.run_job``) is replaced here by small functions that
fail in specific ways, to check how the shared code path reports each failure; full runs of the real
pipeline are covered by the worker's integration tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from autolabel_cli.main import JobFileError, load_job_file, localize, main
from autolabel_worker import entrypoint
from autolabel_worker.preflight import PreflightError

from autolabel.contract import ExitCode
from autolabel.storage import StorageUnreachable

JOB = """\
apiVersion: autolabel.dev/v1alpha1
kind: AutoLabelJob
metadata:
  name: digits-al
spec:
  task: ImageClassification
  mode: ActiveLearning
  dataset:
    manifest: data/digits.manifest
  activeLearning:
    algorithm: Fast
    targetPrecision: 0.95
"""


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_load_valid_job(tmp_path: Path) -> None:
    job = load_job_file(write(tmp_path, JOB))
    assert job.metadata.name == "digits-al" and job.spec.dataset.manifest == "data/digits.manifest"
    assert job.run_name == "digits-al-local"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("targetPrecision: 0.95", "targetPrecision: 1.5"),
         "job.yaml line 12: spec.activeLearning.targetPrecision: Input should be less than or equal to 1"),
        (("algorithm: Fast", "algorithm: Turbo"),
         "job.yaml line 11: spec.activeLearning.algorithm: Input should be 'Fast' or 'Precise'"),
        (("  task: ImageClassification\n", ""), "job.yaml line 6: spec.task: required field is missing"),
        (("targetPrecision: 0.95", "targetPrecison: 0.95"),
         "job.yaml line 12: spec.activeLearning.targetPrecison: unknown field"),
        (("mode: ActiveLearning", "mode: PreLabeling"),
         "job.yaml line 6: spec: spec.preLabeling is required when mode is PreLabeling"),
    ],
)  # fmt: skip
def test_invalid_fields_are_named_with_their_line(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    path = write(tmp_path, JOB.replace(*edit))
    with pytest.raises(JobFileError) as err:
        load_job_file(path)
    assert f"{tmp_path}/{expected}" in str(err.value)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, JOB.replace("  dataset:\n", "  dataset: [\n"))
    with pytest.raises(JobFileError, match=r"job\.yaml line \d+: invalid YAML"):
        load_job_file(path)


def test_missing_file_and_wrong_kind(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match=r"nope\.yaml: cannot read: No such file"):
        load_job_file(str(tmp_path / "nope.yaml"))
    with pytest.raises(JobFileError, match="no document with kind: AutoLabelJob"):
        load_job_file(write(tmp_path, "kind: ConfigMap\n---\nkind: Secret\n"))


def test_multi_document_file_picks_the_job(tmp_path: Path) -> None:
    job = load_job_file(write(tmp_path, "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\n" + JOB))
    assert job.metadata.name == "digits-al"


def test_localize_resolves_against_the_job_file(tmp_path: Path) -> None:
    path = write(tmp_path, JOB + "  output: results/\n")
    job = localize(load_job_file(path), path, None)
    assert job.spec.dataset.manifest == str(tmp_path / "data" / "digits.manifest")
    assert job.spec.output == str(tmp_path / "results")
    job = localize(load_job_file(path), path, "s3://bucket/out/")
    assert job.spec.output == "s3://bucket/out/"
    s3_job = JOB.replace("data/digits.manifest", "s3://datasets/digits/digits.manifest")
    path = write(tmp_path, s3_job, "s3.yaml")
    assert localize(load_job_file(path), path, None).spec.dataset.manifest == "s3://datasets/digits/digits.manifest"


def test_cli_requires_local_and_reports_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, JOB)
    assert main(["run", path]) == 2
    assert "only --local is supported" in capsys.readouterr().err
    bad = write(tmp_path, JOB.replace("targetPrecision: 0.95", "targetPrecision: -1"), "bad.yaml")
    assert main(["run", bad, "--local"]) == ExitCode.BAD_JOB
    err = capsys.readouterr().err
    assert "bad.yaml line 12: spec.activeLearning.targetPrecision: Input should be greater than 0" in err
    assert main(["run", path, "--local", "--time-budget", "3"]) == ExitCode.BAD_JOB
    assert "timeBudgetSeconds" in capsys.readouterr().err


def test_cli_does_not_import_torch_until_run() -> None:
    code = "import sys, autolabel_cli.main as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------- shared run path and exit codes


@pytest.fixture
def fake_pipeline(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[..., Any]], list[tuple]]]:
    """Install ``autolabel_worker.pipeline`` with the given ``run_job``; returns the list of its calls."""

    def install(run_job: Callable[..., Any]) -> list[tuple]:
        calls: list[tuple] = []

        def recording(*args: Any) -> Any:
            calls.append(args)
            return run_job(*args)

        module = types.ModuleType("autolabel_worker.pipeline")
        module.run_job = recording  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "autolabel_worker.pipeline", module)
        return calls

    yield install


def dataset(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    manifest = tmp_path / "data" / "digits.manifest"
    manifest.write_text('{"source": "a.png"}\n')
    return manifest


def test_cli_run_calls_the_pipeline_and_protects_the_manifest(tmp_path: Path, fake_pipeline) -> None:
    manifest = dataset(tmp_path)

    def run_job(job, storage, output_prefix, shard_index, shard_count):
        storage.write_bytes(output_prefix + "summary.json", b"{}")
        storage.write_bytes(str(manifest), b"overwritten")  # must be refused

    calls = fake_pipeline(run_job)
    path = write(tmp_path, JOB)
    assert main(["run", path, "--local", "--time-budget", "30"]) == ExitCode.INTERNAL
    job, _, output, index, count = calls[0]
    assert job.spec.active_learning.time_budget_seconds == 30
    assert output == str(tmp_path / "data" / "autolabel" / job.run_name) + "/"
    assert job.run_name.startswith("digits-al-") and job.run_name != "digits-al-local"
    assert (index, count) == (0, 1)
    assert manifest.read_text() == '{"source": "a.png"}\n'
    progress = json.loads((Path(output) / "progress.json").read_text())
    assert progress["stage"] == "failed" and "refusing to overwrite" in progress["error"]


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (PreflightError("TooManyUnreadableImages", "9 of 10 images cannot be used"), 3, "TooManyUnreadableImages"),
        (StorageUnreachable("s3://b/k", "cannot read: endpoint unreachable"), 4, "StorageUnreachable"),
        (RuntimeError("bug"), 1, "WorkerError"),
    ],
)
def test_failures_map_to_exit_codes_and_failed_progress(
    tmp_path: Path, fake_pipeline, monkeypatch: pytest.MonkeyPatch, error: Exception, code: int, reason: str
) -> None:
    manifest = dataset(tmp_path)

    def run_job(*args: Any) -> None:
        raise error

    fake_pipeline(run_job)
    doc = {"apiVersion": "autolabel.dev/v1alpha1", "kind": "AutoLabelJob",
           "metadata": {"name": "j", "namespace": "team-a", "uid": "0123abcd-ef"},
           "spec": {"task": "ImageClassification", "mode": "ActiveLearning",
                    "dataset": {"manifest": str(manifest)}}}  # fmt: skip
    out = tmp_path / "out"
    monkeypatch.setenv("AUTOLABEL_JOB", json.dumps(doc))
    monkeypatch.setenv("AUTOLABEL_OUTPUT", str(out) + "/")
    assert entrypoint.main([]) == code
    progress = json.loads((out / "progress.json").read_text())
    assert (progress["stage"], progress["reason"]) == ("failed", reason)
    assert progress["error"] == (str(error) if code != 1 else f"RuntimeError: {error}")


def test_shard_failures_go_to_the_shard_folder(tmp_path: Path, fake_pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = dataset(tmp_path)
    fake_pipeline(lambda *a: (_ for _ in ()).throw(PreflightError("ModelNotFound", "no model at s3://m/x")))
    doc = {"metadata": {"name": "p"}, "spec": {"task": "ImageClassification", "mode": "PreLabeling",
           "dataset": {"manifest": str(manifest)}, "preLabeling": {"model": {"uri": "s3://m/x"}},
           "resources": {"computeNodes": 3}}}  # fmt: skip
    monkeypatch.setenv("AUTOLABEL_JOB", json.dumps(doc))
    monkeypatch.setenv("AUTOLABEL_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("AUTOLABEL_SHARDS", "3")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    assert entrypoint.main([]) == ExitCode.DATA
    assert json.loads((tmp_path / "out/shards/2/progress.json").read_text())["reason"] == "ModelNotFound"
    assert not (tmp_path / "out/progress.json").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "AUTOLABEL_JOB is not set"),
        ({"AUTOLABEL_JOB": "{nope"}, "AUTOLABEL_JOB is not valid JSON"),
        ({"AUTOLABEL_JOB": '{"metadata": {"name": "x"}, "spec": {"task": "Foo"}}'}, "spec.task"),
        ({"AUTOLABEL_SHARDS": "two"}, "AUTOLABEL_SHARDS='two' is not an integer"),
        ({"AUTOLABEL_SHARDS": "2", "JOB_COMPLETION_INDEX": "2"}, "JOB_COMPLETION_INDEX=2 is not below"),
        ({"AUTOLABEL_TIME_BUDGET_SECONDS": "5"}, "AUTOLABEL_TIME_BUDGET_SECONDS=5 must be at least 10"),
    ],
)
def test_bad_environment_exits_2(env: dict[str, str], message: str) -> None:
    base = {"AUTOLABEL_JOB": json.dumps({"metadata": {"name": "x"}, "spec": {
        "task": "ImageClassification", "mode": "ActiveLearning", "dataset": {"manifest": "s3://b/m"}}})}  # fmt: skip
    if "AUTOLABEL_JOB" not in env and env:
        env = {**base, **env}
    with pytest.raises(entrypoint.JobConfigError, match=message.replace("(", r"\(")):
        entrypoint.job_from_env(env)


def test_entrypoint_env_defaults() -> None:
    doc = {"metadata": {"name": "x", "uid": "abcd-1234-ffff"}, "spec": {
        "task": "ImageClassification", "mode": "ActiveLearning", "dataset": {"manifest": "s3://b/d/m"}}}  # fmt: skip
    job, output, index, count = entrypoint.job_from_env({"AUTOLABEL_JOB": json.dumps(doc)})
    assert output == "s3://b/d/autolabel/x-abcd1234/" and (index, count) == (0, 1)
    job, _, _, _ = entrypoint.job_from_env({"AUTOLABEL_JOB": json.dumps(doc), "AUTOLABEL_TIME_BUDGET_SECONDS": "120"})
    assert job.spec.active_learning is not None and job.spec.active_learning.time_budget_seconds == 120


def test_invalid_job_is_reported_in_progress_when_the_output_is_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOLABEL_JOB", '{"metadata": {"name": "x"}, "spec": {"task": "Foo"}}')
    monkeypatch.setenv("AUTOLABEL_OUTPUT", str(tmp_path / "out") + "/")
    monkeypatch.delenv("AUTOLABEL_SHARDS", raising=False)
    assert entrypoint.main([]) == ExitCode.BAD_JOB
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["stage"] == "failed" and progress["reason"] == "InvalidJob"
    assert "spec.task" in progress["error"]


def test_sample_dataset_annotation_writes_the_digits(tmp_path: Path) -> None:
    from autolabel_cli.main import ensure_sample_dataset

    text = JOB.replace(
        "  name: digits-al\n", "  name: digits-al\n  annotations:\n    autolabel.dev/sample-dataset: digits\n"
    )
    path = write(tmp_path, text)
    job = localize(load_job_file(path), path, None)
    ensure_sample_dataset(job)
    manifest = tmp_path / "data" / "digits.manifest"
    lines = manifest.read_text().splitlines()
    assert len(lines) == 1797
    first_image = json.loads(lines[0])["source"]
    assert (manifest.parent / first_image).exists()
    before = manifest.stat().st_mtime_ns
    ensure_sample_dataset(job)  # present: left alone
    assert manifest.stat().st_mtime_ns == before

    unknown_text = text.replace(": digits\n", ": cifar\n").replace("data/digits.manifest", "other/digits.manifest")
    unknown_path = write(tmp_path, unknown_text, "u.yaml")
    unknown = localize(load_job_file(unknown_path), unknown_path, None)
    with pytest.raises(JobFileError, match='unknown sample dataset "cifar"'):
        ensure_sample_dataset(unknown)


def test_sigterm_is_recorded_and_exits_143(tmp_path: Path) -> None:
    """The real container entry point in a subprocess, stopped with SIGTERM while the pipeline runs."""
    import os
    import signal
    import time

    manifest = dataset(tmp_path)
    started = tmp_path / "started"
    # A stand-in pipeline module that blocks until the signal arrives.
    code = (
        "import autolabel_worker.entrypoint as e, sys, time, types, pathlib\n"
        "m = types.ModuleType('autolabel_worker.pipeline')\n"
        f"def run_job(*a):\n    pathlib.Path({str(started)!r}).touch()\n    time.sleep(60)\n"
        "m.run_job = run_job\nsys.modules['autolabel_worker.pipeline'] = m\nsys.exit(e.main([]))\n"
    )
    doc = {"metadata": {"name": "j"}, "spec": {"task": "ImageClassification", "mode": "ActiveLearning",
           "dataset": {"manifest": str(manifest)}}}  # fmt: skip
    env = {**os.environ, "AUTOLABEL_JOB": json.dumps(doc), "AUTOLABEL_OUTPUT": str(tmp_path / "out")}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert started.exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == ExitCode.TERMINATED
    finally:
        if proc.poll() is None:
            proc.kill()
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["stage"] == "failed" and progress["reason"] == "Terminated"
    assert "SIGTERM" in progress["error"]


def test_the_worker_refuses_fields_it_does_not_know_naming_each() -> None:
    doc: dict[str, Any] = {"metadata": {"name": "x"}, "spec": {"task": "ImageClassification", "mode": "ActiveLearning",
           "dataset": {"manifest": "s3://b/m", "shardBy": "hash"}, "futureKnob": 3}}  # fmt: skip
    with pytest.raises(entrypoint.JobConfigError) as refused:
        entrypoint.job_from_env({"AUTOLABEL_JOB": json.dumps(doc)})
    assert "spec.dataset.shardBy: unknown field" in str(refused.value)
    assert "spec.futureKnob: unknown field" in str(refused.value)
    del doc["spec"]["futureKnob"], doc["spec"]["dataset"]["shardBy"]
    assert entrypoint.job_from_env({"AUTOLABEL_JOB": json.dumps(doc)})[0].spec.dataset.manifest == "s3://b/m"
    doc["spec"]["task"] = "Nope"
    with pytest.raises(entrypoint.JobConfigError, match=r"spec\.task"):
        entrypoint.job_from_env({"AUTOLABEL_JOB": json.dumps(doc)})


# ------------------------------------------------------------------ --model and PreLabeling shards

PRELABEL = """\
apiVersion: autolabel.dev/v1alpha1
kind: AutoLabelJob
metadata:
  name: boxes-pl
spec:
  task: ObjectDetection
  mode: PreLabeling
  dataset:
    manifest: data/digits.manifest
  preLabeling:
    model: {uri: models/from-the-file/}
  resources: {computeNodes: 3}
"""


def test_model_option_overrides_the_files_model_and_resolves_against_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "jobs").mkdir()
    path = write(tmp_path / "jobs", PRELABEL)
    pre_labeling = localize(load_job_file(path), path, None).spec.pre_labeling
    assert pre_labeling is not None and pre_labeling.model.uri == str(tmp_path / "jobs" / "models" / "from-the-file")
    (tmp_path / "run1" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    job = localize(load_job_file(path), path, None, "run1/model")
    assert job.spec.pre_labeling is not None
    assert job.spec.pre_labeling.model.uri == str(tmp_path / "run1" / "model") + "/"  # a folder stays one
    job = localize(load_job_file(path), path, None, "s3://models/m/model.pt")
    assert job.spec.pre_labeling is not None and job.spec.pre_labeling.model.uri == "s3://models/m/model.pt"
    detection = JOB.replace("ImageClassification", "ObjectDetection")
    weights = write(tmp_path / "jobs", detection + "    pretrainedWeights: w/fcos.pt\n", "w.yaml")
    job = localize(load_job_file(weights), weights, None)
    assert job.spec.active_learning is not None
    assert job.spec.active_learning.pretrained_weights == str(tmp_path / "jobs" / "w" / "fcos.pt")
    with pytest.raises(JobFileError, match="--model is for PreLabeling jobs"):
        localize(load_job_file(weights), weights, None, "run1/model")


def test_shard_environment_is_what_the_worker_reads_from_a_pod(tmp_path: Path) -> None:
    from autolabel_cli.main import shard_environment

    path = write(tmp_path, PRELABEL)
    job = localize(load_job_file(path), path, None)
    for index in range(3):
        env = shard_environment(job, "/out/boxes-pl-1234/", index, 3)
        assert entrypoint.job_from_env(env) == (job, "/out/boxes-pl-1234/", index, 3)


FAKE_SHARD = """\
import json, os, pathlib, sys
index = os.environ["JOB_COMPLETION_INDEX"]
out = pathlib.Path(os.environ["AUTOLABEL_OUTPUT"])
out.mkdir(parents=True, exist_ok=True)
seen = {k: v for k, v in os.environ.items() if k.startswith(("AUTOLABEL_", "JOB_"))}
(out / f"shard-{index}.json").write_text(json.dumps(seen))
print(f"shard {index} of {os.environ['AUTOLABEL_SHARDS']} here", file=sys.stderr)
sys.exit(int(os.environ.get("FAKE_EXIT_" + index, "0")))
"""


def test_prelabeling_shards_run_as_parallel_processes_and_failures_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import autolabel_cli.main as cli

    dataset(tmp_path)
    fake = tmp_path / "fake_shard.py"
    fake.write_text(FAKE_SHARD)
    monkeypatch.setattr(cli, "worker_argv", lambda: [sys.executable, str(fake)])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    path = write(tmp_path, PRELABEL)
    out = tmp_path / "out"
    assert main(["run", path, "--local", "--model", "model", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    (run_dir,) = out.iterdir()
    seen = [json.loads((run_dir / f"shard-{i}.json").read_text()) for i in range(3)]
    assert [s["JOB_COMPLETION_INDEX"] for s in seen] == ["0", "1", "2"]
    assert {s["AUTOLABEL_SHARDS"] for s in seen} == {"3"}
    assert {s["AUTOLABEL_OUTPUT"] for s in seen} == {f"{run_dir}/"}
    described = json.loads(seen[0]["AUTOLABEL_JOB"])
    assert described["spec"]["preLabeling"]["model"]["uri"] == f"{tmp_path / 'model'}/"
    assert len({s["AUTOLABEL_JOB"] for s in seen}) == 1  # one run: one uid, one results folder
    assert "[shard 2] shard 2 of 3 here" in captured.err
    assert f"results: {run_dir}/result.manifest (merged from 3 shards)" in captured.out

    monkeypatch.setenv("FAKE_EXIT_1", "3")
    monkeypatch.setenv("FAKE_EXIT_2", "4")
    assert main(["run", path, "--local", "--model", "model", "--output", str(out)]) == 3
    captured = capsys.readouterr()
    assert "shards 1 (exit code 3), 2 (exit code 4) of 3 failed; nothing was merged" in captured.err
    assert "shards/1/progress.json" in captured.err and "shards/2/progress.json" in captured.err
    assert "results:" not in captured.out
