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


def pytest_configure(config: pytest.Config) -> None:
    """Without CUDA, Triton kernels run in Triton's interpreter (the triton scan's CPU tests).

    The switch must be on before anything imports triton: ``triton.jit`` picks compiled or interpreted when it
    decorates, and triton's own library functions (those behind ``tl.sum``, ``tl.associative_scan``, ...) are
    decorated when triton is first imported, which other tests do (torch.compile). A user's own setting wins;
    the sm_90 compile test runs its subprocess without it.
    """
    if "TRITON_INTERPRET" not in os.environ and not _has_cuda():
        os.environ["TRITON_INTERPRET"] = "1"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is None or _has_cuda():
        return
    if os.environ.get("CLIPHAZE_REQUIRE_GPU") == "1":
        pytest.fail("CLIPHAZE_REQUIRE_GPU=1 but no CUDA device is available")
    pytest.skip("needs a CUDA device")
