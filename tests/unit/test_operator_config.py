"""Operator settings and the flavor catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest
from autolabel_operator.config import GPU_RESOURCE, ConfigError, Settings, parse_flavors

CATALOGUE = """
default: cpu
flavors:
  cpu:
    resources: {requests: {cpu: "1", memory: 2Gi}}
  gpu-1:
    resources: {limits: {nvidia.com/gpu: 1, memory: 16Gi}}
    nodeSelector: {nvidia.com/gpu.present: "true"}
    tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
"""


def test_catalogue_parses_and_gpu_is_requested_explicitly() -> None:
    catalogue = parse_flavors(CATALOGUE, "flavors.yaml")
    assert catalogue.default == "cpu"
    assert catalogue.get(None) is catalogue.flavors["cpu"]
    gpu = catalogue.get("gpu-1")
    assert gpu is not None
    resources = gpu.pod_resources()
    assert resources["limits"][GPU_RESOURCE] == "1"
    assert resources["requests"] == {GPU_RESOURCE: "1"}  # Kueue counts requests
    assert gpu.node_selector == {"nvidia.com/gpu.present": "true"}
    assert catalogue.get("gpu-8") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("flavors: {}", "non-empty `flavors`"),
        ("default: big\nflavors: {cpu: {}}", "default flavor 'big' is not in flavors"),
        ("flavors: {cpu: {resources: {requests: {cpu: [1]}}}}", "flavors.cpu.resources.requests.cpu"),
        ("flavors: {cpu: {nodeSelectr: {}}}", "flavors.cpu.nodeSelectr"),
        ("flavors: [", "not valid YAML"),
    ],
)
def test_bad_catalogue_names_file_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"flavors\.yaml") as info:
        parse_flavors(text, "flavors.yaml")
    assert message in str(info.value)


def test_settings_from_env(tmp_path: Path) -> None:
    path = tmp_path / "flavors.yaml"
    path.write_text(CATALOGUE)
    settings = Settings.from_env(
        {
            "AUTOLABEL_NAMESPACES": "team-a, team-b,,",
            "AUTOLABEL_FLAVORS": str(path),
            "AUTOLABEL_S3_ENDPOINT": "http://127.0.0.1:9000",
            "AWS_ACCESS_KEY_ID": "key",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AUTOLABEL_WORKER_COMMAND": "/venv/bin/python '/path with space/fake.py'",
            "AUTOLABEL_METRICS_PORT": "0",
        }
    )
    assert settings.namespaces == ("team-a", "team-b")
    assert set(settings.flavors.flavors) == {"cpu", "gpu-1"}
    assert settings.s3_endpoint == "http://127.0.0.1:9000"
    assert settings.worker_command == ("/venv/bin/python", "/path with space/fake.py")
    assert settings.metrics_port == 0
    defaults = Settings.from_env({})
    assert defaults.namespaces == () and defaults.worker_command == ("autolabel-worker",)
    assert defaults.metrics_port == 9090 and defaults.flavors.default == "cpu"


def test_settings_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AUTOLABEL_METRICS_PORT='x'"):
        Settings.from_env({"AUTOLABEL_METRICS_PORT": "x"})
    with pytest.raises(ConfigError, match=f"AUTOLABEL_FLAVORS={tmp_path}/nope.yaml: cannot read"):
        Settings.from_env({"AUTOLABEL_FLAVORS": str(tmp_path / "nope.yaml")})


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from autolabel_operator.main import main, parse_args

    monkeypatch.setenv("AUTOLABEL_NAMESPACES", "from-env")
    monkeypatch.setenv("AUTOLABEL_METRICS_PORT", "1234")
    _, settings = parse_args(["--namespaces", "a,b", "--reconcile-interval", "2.5"])
    assert settings.namespaces == ("a", "b")
    assert settings.metrics_port == 1234 and settings.reconcile_interval == 2.5
    assert main(["--metrics-port", "nope"]) == 2  # a clear message, no traceback
