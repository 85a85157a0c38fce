"""Fixtures shared by unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from autolabel_operator.config import Settings
from autolabel_operator.kube import Kube
from autolabel_operator.reconcile import Reconciler
from fakes import FakeKube, LocalS3Storage, issue_fake_credentials


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Small models on a shared 2-core machine run faster (and steadier) on one torch thread."""
    import torch  # only the worker's tests ask for this fixture; the operator's never import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The operator's reconciler over an in-memory API (test_operator_reconcile.py, test_operator_kueue.py).
@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def store(tmp_path: Path) -> LocalS3Storage:
    return LocalS3Storage(tmp_path / "s3")


@pytest.fixture
def reconciler(kube: FakeKube, store: LocalS3Storage) -> Reconciler:
    settings = Settings(access_key="k", secret_key="s", storage_retries=1, storage_backoff=0.01,
                        default_credentials_namespaces=("ns",), allowed_buckets=("datasets",))  # fmt: skip
    # duck-typed: the calls the reconciler makes
    return Reconciler(settings, cast(Kube, kube), store.for_config, issue_fake_credentials)
