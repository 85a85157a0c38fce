"""``autolabel status`` / ``results``: argument handling, rendering and errors, with a fake cluster API and
results in a local folder (the real :class:`~autolabel.storage.Storage` serves local paths)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from autolabel_cli import kube, main, results, view
from autolabel_cli.kube import JobNotFound, KubeOptions
from review_fixtures import make_detection_dataset
from typer.testing import CliRunner

runner = CliRunner()
NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def job(name: str, phase: str | None, namespace: str = "team-a", **status: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace, "creationTimestamp": "2026-01-01T11:58:00Z"}
    return {"metadata": meta, "status": {"phase": phase, **status} if phase else {}}


class FakeApi:
    def __init__(self, *jobs: dict[str, Any]) -> None:
        self.jobs = list(jobs)
        self.calls: list[tuple[str, str | None]] = []

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        self.calls.append(("get", namespace))
        for j in self.jobs:
            if j["metadata"]["name"] == name and j["metadata"]["namespace"] == namespace:
                return j
        raise JobNotFound(namespace, name)

    def list(self, namespace: str | None) -> list[dict[str, Any]]:
        self.calls.append(("list", namespace))
        return [j for j in self.jobs if namespace is None or j["metadata"]["namespace"] == namespace]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    seen: list[KubeOptions] = []

    def connect(opts: KubeOptions) -> tuple[FakeApi, str]:
        seen.append(opts)
        return fake, opts.namespace or "team-a"

    monkeypatch.setattr(kube, "connect", connect)
    fake.options = seen  # type: ignore[attr-defined]
    return fake


def invoke(*args: str) -> Any:
    return runner.invoke(main.app, list(args), env={"COLUMNS": "200"})


RUNNING = job("al-1", "Running", progress={"percent": 46, "processed": 460, "total": 1000})
DONE = job(
    "al-2",
    "Succeeded",
    progress={"percent": 100, "processed": 1747, "total": 1747},
    result={"uri": "s3://b/x/", "autoLabeled": 1507, "hardExamples": 240, "estimatedPrecision": 0.985239},
)


def test_status_table_rows(api: FakeApi) -> None:
    api.jobs = [RUNNING, DONE, job("al-3", None)]
    out = invoke("status")
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "PROCESSED", "AUTO-LABELED", "HARD", "PRECISION", "AGE"]
    assert lines[1].split()[:2] == ["al-1", "Running"] and "46%" in lines[1] and "460/1000" in lines[1]
    assert lines[2].split()[-5:-1] == ["1747/1747", "1507", "240", "0.985"] and "100%" in lines[2]
    assert lines[3].split()[:2] == ["al-3", "Pending"]
    assert api.calls == [("list", "team-a")]


def test_global_and_command_options_like_kubectl(api: FakeApi) -> None:
    assert invoke("--kubeconfig", "/k", "-n", "x", "status", "--context", "c").exit_code == 0
    assert invoke("status", "-n", "y", "--kubeconfig", "/k2").exit_code == 0
    opts = api.options  # type: ignore[attr-defined]
    assert opts[0] == KubeOptions("/k", "c", "x", False) and opts[1] == KubeOptions("/k2", None, "y", False)
    api.jobs = [DONE, job("other", "Failed", namespace="team-b", message="boom")]
    out = invoke("status", "-A")
    assert out.stdout.split()[:2] == ["NAME", "NAMESPACE"]
    assert "team-b" in out.stdout and "other: boom" in out.stdout
    assert api.calls[-1] == ("list", None)
    assert "No AutoLabelJobs" in invoke("-n", "empty", "status").stdout


def test_status_documents_for_scripts(api: FakeApi) -> None:
    api.jobs = [RUNNING, DONE]
    one = json.loads(invoke("status", "al-2", "-o", "json").stdout)
    assert one == {"name": "al-2", "namespace": "team-a", "status": DONE["status"]}
    many = yaml.safe_load(invoke("status", "-o", "yaml").stdout)
    assert [d["name"] for d in many] == ["al-1", "al-2"]
    bad = invoke("status", "-o", "xml")
    assert bad.exit_code == 2 and "xml" in bad.output


def test_status_errors(api: FakeApi) -> None:
    out = invoke("status", "nope", "-n", "team-z")
    assert out.exit_code == 1 and 'AutoLabelJob "nope" not found in namespace "team-z"' in out.stderr
    assert invoke("status", "x", "-A").exit_code == 2
    assert invoke("status", "--watch", "-o", "json").exit_code == 2


def test_watch_refreshes_until_finished(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main.time, "sleep", lambda s: None)
    states = iter([RUNNING, RUNNING, DONE | {"metadata": RUNNING["metadata"]}])
    api.get = lambda namespace, name: next(states)  # type: ignore[method-assign]
    out = invoke("status", "al-1", "--watch", "--interval", "0.2")
    assert out.exit_code == 0, out.output
    assert "Succeeded" in out.stdout
    with pytest.raises(StopIteration):
        next(states)

    api.get = lambda namespace, name: RUNNING  # type: ignore[method-assign]
    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(main.time, "monotonic", lambda: float(next(clock)))
    out = invoke("status", "al-1", "--watch", "--timeout", "250")
    assert out.exit_code == 1 and "still unfinished after watching for 250 s" in out.stderr

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(main.time, "sleep", interrupted)
    assert invoke("status", "al-1", "--watch").exit_code == main.EXIT_INTERRUPTED


def write_results(folder: Path, lines: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.manifest").write_text("".join(json.dumps(line) + "\n" for line in lines))
    default = {"total": len(lines), "autoLabeled": 2, "hardExamples": 3, "estimatedPrecision": 0.97}
    (folder / "summary.json").write_text(json.dumps(summary or {**default, "targetVerifiable": False}))
    return str(folder) + "/"


def line(source: str, label: str, hard: bool, coefficient: float, reasons: str = "") -> dict[str, Any]:
    annotation = [{"type": "modelarts/image_classification", "name": label, "confidence": 1 - coefficient}]
    return {
        "source": source,
        "annotation": annotation,
        "hard": hard,
        "hard-coefficient": coefficient,
        "hard-reasons": reasons,
    }


LINES = [
    line("a.png", "cat", False, 0.01),
    line("b.png", "cat", True, 0.6, "1"),
    line("c.png", "dog", True, 0.9, "1-19"),
    line("d.png", "dog", False, 0.05),
    line("e.png", "dog", True, 0.7, "3"),
]


def test_results_summary_labels_reasons_and_hardest(api: FakeApi, tmp_path: Path) -> None:
    uri = write_results(tmp_path / "run", LINES)
    api.jobs = [job("al-2", "Succeeded", result={"uri": uri})]
    out = invoke("results", "al-2", "--top", "2")
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert "estimated precision  0.970" in text and "target verifiable    false" in text
    assert "auto-labeled under" not in text  # no floor set
    assert "low confidence" in text and "disagrees under blur" in text and "far from same-class training data" in text
    hardest = text[text.index("Hardest examples") :]
    assert hardest.index("c.png") < hardest.index("e.png") and "b.png" not in hardest

    doc = json.loads(invoke("results", "al-2", "-o", "json", "--top", "2").stdout)
    assert doc["labels"] == {
        "cat": {"total": 2, "autoLabeled": 1, "hard": 1},
        "dog": {"total": 3, "autoLabeled": 1, "hard": 2},
    }
    assert doc["hardReasons"][0] == {"reason": 1, "name": "low confidence", "count": 2, "share": round(2 / 3, 4)}
    assert [e["source"] for e in doc["hardest"]] == ["c.png", "e.png"]
    assert doc["hardest"][0]["hardReasons"] == [1, 19]
    assert doc["summary"]["estimatedPrecision"] == 0.97


def test_results_show_the_workers_notes_such_as_a_precise_fallback(api: FakeApi, tmp_path: Path) -> None:
    note = "Precise fell back to the Fast models: held-out accuracy Precise 26/30 < Fast 29/30"
    uri = write_results(tmp_path / "run", LINES, {"total": 5, "autoLabeled": 2, "notes": [note]})
    api.jobs = [job("al-3", "Succeeded", result={"uri": uri})]
    out = invoke("results", "al-3")
    assert out.exit_code == 0, out.output
    assert "Precise fell back to the Fast models" in out.stdout
    assert json.loads(invoke("results", "al-3", "-o", "json").stdout)["summary"]["notes"] == [note]


def test_results_say_the_floor_a_job_set_under_its_auto_labels(api: FakeApi, tmp_path: Path) -> None:
    summary = {"total": 5, "autoLabeled": 2, "estimatedPrecision": 0.99, "targetPrecision": 0.95,
               "calibration": {"minConfidence": 0.8}}
    uri = write_results(tmp_path / "run", LINES, summary)
    api.jobs = [job("al-4", "Succeeded", result={"uri": uri})]
    out = invoke("results", "al-4")
    assert out.exit_code == 0, out.output
    assert "0.990 (target 0.95, none auto-labeled under 0.80)" in out.stdout
    assert json.loads(invoke("results", "al-4", "-o", "json").stdout)["summary"]["minConfidence"] == 0.8


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (job("j", "Running", progress={"percent": 46}), '"team-a" has not finished (phase Running, 46% done)'),
        (job("j", "Waiting"), "has not finished (phase Waiting)"),
        (job("j", "Failed", message="dataset has 3 labels"), "failed, it has no results: dataset has 3 labels"),
        (job("j", "Succeeded"), "has no status.result.uri yet"),
    ],
)  # fmt: skip
def test_results_of_unfinished_jobs(api: FakeApi, state: dict[str, Any], message: str) -> None:
    api.jobs = [state]
    out = invoke("results", "j")
    assert out.exit_code == 1 and message in out.stderr


def test_results_errors_name_the_uri(api: FakeApi, tmp_path: Path) -> None:
    missing = str(tmp_path / "gone") + "/"
    api.jobs = [job("j", "Succeeded", result={"uri": missing})]
    out = invoke("results", "j")
    assert out.exit_code == 1 and f"cannot read the results at {missing}summary.json" in out.stderr
    uri = write_results(tmp_path / "bad", LINES)
    (tmp_path / "bad" / "result.manifest").write_text('{"source": "a"}\nnot json\n')
    api.jobs = [job("j", "Succeeded", result={"uri": uri})]
    out = invoke("results", "j")
    assert out.exit_code == 1 and f"cannot read the results at {uri}result.manifest line 2" in out.stderr
    out = invoke("results", "nope")
    assert out.exit_code == 1 and 'AutoLabelJob "nope" not found in namespace "team-a"' in out.stderr


def test_storage_comes_from_the_environment_then_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    spec = {"spec": {"storage": {"endpoint": "http://in-job:9000"}}}
    assert results.storage_for(spec).config.endpoint_url == "http://in-job:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://here:9000")
    assert results.storage_for(spec).config.endpoint_url == "http://here:9000"


def test_kubeconfig_errors_and_namespace_from_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(kube.CliError, match=f"cannot use kubeconfig {tmp_path}/missing"):
        kube.connect(KubeOptions())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [
            {"name": "one", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}},
            {"name": "two", "context": {"cluster": "c", "user": "u"}},
        ],
        "current-context": "one",
    }
    (tmp_path / "missing").write_text(yaml.safe_dump(config))
    assert kube.connect(KubeOptions())[1] == "team-a"
    assert kube.connect(KubeOptions(context="two"))[1] == "default"
    assert kube.connect(KubeOptions(context="two", namespace="x"))[1] == "x"
    with pytest.raises(kube.CliError, match="context 'three'"):
        kube.connect(KubeOptions(context="three"))
    api, _ = kube.connect(KubeOptions())
    with pytest.raises(kube.CliError, match=r"cannot reach the API server at https://127\.0\.0\.1:1"):
        api.list("team-a")


def test_ages_like_kubectl() -> None:
    ago = {
        5: "5s",
        150: "2m30s",
        600: "10m",
        4 * 3600 + 60: "4h1m",
        30 * 3600: "30h",
        3 * 86400: "3d",
        800 * 86400: "2y",
    }
    for seconds, text in ago.items():
        created = (NOW - dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
        assert view.human_age(created, NOW) == text


def test_prog_name_as_kubectl_plugin() -> None:
    assert main.prog_name("/venv/bin/kubectl-autolabel") == "kubectl autolabel"
    assert main.prog_name("/venv/bin/autolabel") == "autolabel"
    assert main.main(["status", "--output", "xml"]) == 2


# ------------------------------------------------------------------------------------------ detection


def detection_job(tmp_path: Path) -> dict[str, Any]:
    manifest, result = make_detection_dataset(tmp_path / "ds")
    done = job("det", "Succeeded", result={"uri": str(Path(result).parent) + "/"})
    done["spec"] = {"task": "ObjectDetection", "dataset": {"manifest": manifest}}
    return done


def test_results_of_a_detection_run(api: FakeApi, tmp_path: Path) -> None:
    api.jobs = [detection_job(tmp_path)]
    out = invoke("results", "det", "--top", "2")
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert "Proposed boxes" in text and "in 5 image(s): 3 auto-labeled, 2 hard" in text
    rows = {line.split()[0]: line.split()[1] for line in text.splitlines() if line.split()[:1] in (["cat"], ["dog"])}
    assert rows == {"cat": "3", "dog": "3"}
    hardest = text[text.index("Hardest examples") :]
    assert "(no boxes)" in hardest and "2 cat" in hardest  # d5 (coefficient 1.0) first, then d3
    assert hardest.index("d5.png") < hardest.index("d3.png")
    doc = json.loads(invoke("results", "det", "-o", "json", "--top", "2").stdout)
    assert doc["task"] == "ObjectDetection" and doc["boxes"] == {"cat": 3, "dog": 3}
    assert [(e["label"], e["confidence"]) for e in doc["hardest"]] == [("(no boxes)", None), ("2 cat", 0.42)]


def test_confirm_and_export_a_detection_run(api: FakeApi, tmp_path: Path) -> None:
    api.jobs = [detection_job(tmp_path)]
    fixes = tmp_path / "fixes.jsonl"
    fixes.write_text('{"source": "images/d3.png", "boxes": [["dog", 1, 2, 30, 40]]}\n')
    out = invoke("confirm", "det", "--corrections", str(fixes))
    assert out.exit_code == 0, out.output
    version = tmp_path / "ds" / "data.v1.manifest"
    assert out.stdout.strip() == f"wrote {version}: 3 confirmed, 1 corrected, 1 left unlabeled"
    assert sorted(p.name for p in (tmp_path / "ds" / "data.v1.annotations").iterdir()) == [
        "d1.xml", "d2.xml", "d3.xml", "d4.xml"]  # fmt: skip
    again = invoke("confirm", "det", "--corrections", str(fixes))
    assert again.stdout.startswith(f"unchanged: {version} already holds this")
    fixes.write_text('{"source": "images/d3.png", "boxes": [["bird", 1, 2, 30, 40]]}\n')
    bad = invoke("confirm", "det", "--corrections", str(fixes))
    assert bad.exit_code == 1
    assert f"{fixes} line 1: image 'images/d3.png': label 'bird' is not a label of" in bad.stderr
    out = invoke("export", "det", "--format", "yolo", "--to", str(tmp_path / "yolo"))
    assert out.exit_code == 0, out.output
    assert (tmp_path / "yolo" / "labels" / "d1.txt").read_text().count("\n") == 2
