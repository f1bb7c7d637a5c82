"""Project-wide pytest setup.

``gpu`` tests skip without CUDA, but fail when ``CLIPHAZE_REQUIRE_GPU=1`` so a GPU run cannot pass by
skipping. ``filterwarnings = error`` and ``--strict-markers`` live in pyproject.toml.
"""

from __future__ import annotations

import os

import pytest


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is None or _has_cuda():
        return
    if os.environ.get("CLIPHAZE_REQUIRE_GPU") == "1":
        pytest.fail("CLIPHAZE_REQUIRE_GPU=1 but no CUDA device is available")
    pytest.skip("needs a CUDA device")
