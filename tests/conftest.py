"""Shared test fixtures: seeded randomness, one thread per worker, the real-data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

#: The project's real data (../shared/data beside the checkout); tests that need it skip without it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist already runs one worker per core: more threads per worker only contend.
    if hasattr(config, "workerinput"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


def require_data(*parts: str) -> Path:
    """The path of ``SHARED_DATA / parts``, skipping the test with a reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (it lives in ../shared/data beside the checkout)")
    return path
