import pytest
import torch

from diffusely.data.shapes import write_shapes_folder


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # two cores: keep torch from oversubscribing when pytest runs beside anything else
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


@pytest.fixture
def tiny_folder(tmp_path):
    """A folder of 24 small shape images in class subfolders."""
    root = tmp_path / "images"
    write_shapes_folder(root, 24, size=16, seed=1)
    return root

