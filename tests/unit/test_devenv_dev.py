"""The parts of ``make dev-up``/``dev-down`` (tools/devenv/dev.py) that need no running services; the
whole thing is tested in tests/integration/test_dev_env.py."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
import yaml
from devenv import dev


def test_env_file_is_sourceable_with_awkward_values(tmp_path: Path) -> None:
    env = dev.DevEnv(tmp_path / "dev", tmp_path / "cluster")
    env.dir.mkdir()
    env.s3.endpoint_url = "http://127.0.0.1:9000"
    env.s3.access_key = "key with spaces"
    env.s3.secret_key = "s3cr$t'\"`x"
    env._write_env_file()
    out = subprocess.run(
        ["bash", "-c", f"source {env.env_file} && printf '%s|%s|%s|%s' "
         '"$KUBECONFIG" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "$AWS_REGION"'],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out == f"{tmp_path / 'cluster' / 'kubeconfig'}|key with spaces|s3cr$t'\"`x|us-east-1"


def test_flavor_catalogue_has_cpu_default_and_a_gpu_flavor() -> None:
    catalogue = yaml.safe_load(dev.FLAVORS_YAML)
    assert catalogue["default"] == "cpu"
    assert catalogue["flavors"]["cpu"]["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    gpu = catalogue["flavors"]["gpu-1"]["resources"]
    assert gpu["requests"]["nvidia.com/gpu"] == 1 and gpu["limits"]["nvidia.com/gpu"] == 1


def test_missing_operator_is_reported_not_pretended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = dev.DevEnv(tmp_path / "dev", tmp_path / "cluster")
    monkeypatch.setattr(dev.importlib.util, "find_spec", lambda name: None)
    out = io.StringIO()
    state: dict[str, object] = {}
    assert env._start_operator(state, out) == 1
    assert "operator: MISSING" in out.getvalue()
    assert "operator" not in env.procs.alive() and not state


def test_down_with_nothing_started_says_so(tmp_path: Path) -> None:
    env = dev.DevEnv(tmp_path / "dev", tmp_path / "cluster")
    out = io.StringIO()
    assert env.down(out) == 0
    assert "stopped: nothing was running" in out.getvalue()
