"""Fixtures shared by unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Small models on a shared 2-core machine run faster (and steadier) on one torch thread."""
    import torch  # only the worker's tests ask for this fixture; the operator's never import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
