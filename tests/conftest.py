import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of scripts/test.sh's workers: one thread, for it and what it starts
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from diffusely.data.shapes import write_shapes_folder


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # two cores: keep torch from oversubscribing when pytest runs beside anything else (a worker beside the other)
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))
    yield


@pytest.fixture
def tiny_folder(tmp_path):
    """A folder of 24 small shape images in class subfolders."""
    root = tmp_path / "images"
    write_shapes_folder(root, 24, size=16, seed=1)
    return root

