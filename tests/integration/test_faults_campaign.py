"""The fault campaign's short versions (issue 11 §1; the long, seeded ones: ``benchmarks/faults.py``,
figures in docs/reliability.md). Each test breaks one thing under running AutoLabelJobs (the real
operator, control plane, MinIO and local node runner, the fake worker in the pods) and fails with every
broken promise the scenario found: a duplicated Job, a Lease left held, a job that did not converge, two
jobs of a dataset at once, an image lost or doubled."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from devenv.cluster import LocalCluster
from devenv.s3 import MinioServer

from .operator_fixtures import OperatorProcess, Process

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import faults_lib

pytestmark = [pytest.mark.needs_cluster, pytest.mark.needs_s3]


@pytest.fixture
def env(
    cluster: LocalCluster, s3_server: MinioServer, autolabel_operator: OperatorProcess, operator_node_runner: Process
) -> faults_lib.Env:
    return faults_lib.Env(cluster, s3_server, autolabel_operator, operator_node_runner)


def passed(outcome: faults_lib.Outcome) -> bool:
    assert not outcome.failures, "\n".join([f"{outcome.scenario}: {outcome.checked}", *outcome.failures])
    return True


def test_operator_sigkilled_at_seeded_moments_converges(env: faults_lib.Env) -> None:
    outcome = faults_lib.operator_kills(env, runs=4, seed=11, jobs=3, datasets=2, work=1.0, max_wait=4.0)
    assert passed(outcome)
    assert sum(v for k, v in outcome.counts.items() if k.startswith("kills ")) >= 4


def test_jobs_racing_for_two_datasets_run_one_at_a_time_in_order(env: faults_lib.Env) -> None:
    outcome = faults_lib.dataset_race(env, runs=3, seed=5, datasets=2)
    assert passed(outcome)
    assert outcome.counts["max running per dataset"] == 1  # it did sample the runs


def test_worker_killed_mid_shard_is_retried_and_every_image_is_merged_once(env: faults_lib.Env) -> None:
    assert passed(faults_lib.worker_kill(env, runs=1, seed=2, work=4.0, unlabeled=15))


def test_node_runner_killed_and_restarted_mid_run(env: faults_lib.Env) -> None:
    assert passed(faults_lib.node_runner_restart(env, runs=1, seed=3, down=0.5, work=3.0))


def test_api_server_then_etcd_restarted_mid_run(env: faults_lib.Env) -> None:
    """Both SIGKILLed (a crash; the scripts' runs stop them with SIGTERM, as an upgrade does)."""
    for component in ("kube-apiserver", "etcd"):
        outcome = faults_lib.control_plane_restart(env, 1, 4, component=component, down=1, work=3.0, kill=True)
        assert passed(outcome)
