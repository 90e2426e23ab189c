"""Shared test settings.

``--runslow`` runs tests marked ``slow``; tests marked ``gpu`` run only where CUDA is available.
Torch uses one thread unless ``GRADCOMP_TEST_THREADS`` says otherwise. ``SOURCE_DATE_EPOCH``
fixes the time in every Dataset's ``history``, so two Datasets built in different seconds compare
identical (``tests/test_provenance.py`` checks the clock itself).
"""

from __future__ import annotations

import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("SOURCE_DATE_EPOCH", "1798761600")  # 2027-01-01T00:00:00Z
torch.set_num_threads(int(os.environ.get("GRADCOMP_TEST_THREADS", "1")))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="gpu: no CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
