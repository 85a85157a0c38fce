"""The chart's Argo CD health check (charts/autolabel-operator/files/argocd-health.lua), run with lupa.

Argo CD's convention is emulated: the script sees the resource as the global ``obj`` (a Lua table made from
its JSON) and returns ``{status=..., message=...}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

lupa = pytest.importorskip("lupa")

SCRIPT = Path(__file__).resolve().parents[2] / "charts" / "autolabel-operator" / "files" / "argocd-health.lua"


def health(status: dict[str, Any] | None) -> dict[str, str]:
    obj: dict[str, Any] = {
        "apiVersion": "autolabel.dev/v1alpha1",
        "kind": "AutoLabelJob",
        "metadata": {"name": "digits", "namespace": "ml", "generation": 1},
        "spec": {"mode": "AutoLabel"},
    }
    if status is not None:
        obj["status"] = status
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT.read_text())
    assert lupa.lua_type(result) == "table", result
    return dict(result.items())


def test_succeeded_is_healthy() -> None:
    got = health({"phase": "Succeeded", "message": "1000 images labeled"})
    assert got == {"status": "Healthy", "message": "1000 images labeled"}


def test_failed_is_degraded_with_the_status_message() -> None:
    got = health({"phase": "Failed", "message": "manifest s3://datasets/x.manifest not found"})
    assert got == {"status": "Degraded", "message": "manifest s3://datasets/x.manifest not found"}


def test_suspended_is_suspended() -> None:
    assert health({"phase": "Suspended", "message": "suspended by spec.suspend"})["status"] == "Suspended"


@pytest.mark.parametrize("phase", ["Pending", "Waiting", "Queued"])
def test_not_started_phases_are_progressing_at_zero(phase: str) -> None:
    got = health({"phase": phase})
    assert got == {"status": "Progressing", "message": f"{phase}: 0% done"}


def test_running_is_progressing_with_its_percent() -> None:
    got = health({"phase": "Running", "message": "training",
                  "progress": {"stage": "train", "processed": 425, "total": 1000, "percent": 42.5}})
    assert got["status"] == "Progressing"
    assert got["message"] == "Running: 42% done - training"


def test_no_status_yet_is_progressing() -> None:
    got = health(None)
    assert got["status"] == "Progressing"
    assert got["message"]


def test_status_without_phase_is_progressing() -> None:
    assert health({"observedGeneration": 1})["status"] == "Progressing"


def test_unknown_phase_is_unknown() -> None:
    assert health({"phase": "Exploded"}) == {"status": "Unknown", "message": "Unknown phase Exploded"}
