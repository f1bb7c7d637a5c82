"""Project-wide pytest setup.

``gpu`` tests skip without CUDA, but fail when ``CLIPHAZE_REQUIRE_GPU=1`` so a GPU run cannot pass by
skipping. ``filterwarnings = error`` and ``--strict-markers`` live in pyproject.toml.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def one_torch_thread():
    """Tiny models: intra-op thread hand-offs cost more than the maths on a shared 2-core runner."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is None or _has_cuda():
        return
    if os.environ.get("CLIPHAZE_REQUIRE_GPU") == "1":
        pytest.fail("CLIPHAZE_REQUIRE_GPU=1 but no CUDA device is available")
    pytest.skip("needs a CUDA device")
