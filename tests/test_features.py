"""Feature extractors: the FID Inception port loads the standard weights file's layout, and is
deterministic; the domain networks train, separate distinct images, and round-trip through files."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffusely.metrics import (FIDInceptionV3, InceptionFeatures, fit_domain_features, load_domain_features,
                               load_fid_inception, save_domain_features, train_contrastive_encoder)
from diffusely.metrics.domain import augment, nt_xent_loss
from diffusely.metrics.features import as_uint8
from diffusely.metrics.inception import WEIGHTS_ENV, _avg_pool_tf, resize_for_inception

# torchvision's Inception-v3 names, which pytorch-fid's pt_inception-2015-12-05-6726825d.pth uses
A = ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool"]
B = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
C = ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3",
     "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"]
D = ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"]
E = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3a",
     "branch3x3dbl_3b", "branch_pool"]
CONVS = ([f"Conv2d_{n}" for n in ("1a_3x3", "2a_3x3", "2b_3x3", "3b_1x1", "4a_3x3")]
         + [f"Mixed_{m}.{b}" for m, branches in [("5b", A), ("5c", A), ("5d", A), ("6a", B), ("6b", C), ("6c", C),
                                                ("6d", C), ("6e", C), ("7a", D), ("7b", E), ("7c", E)] for b in branches])
SHAPES = {  # a few layers, from torchvision's definition with pytorch-fid's 1008-class fc
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.bn.bias": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
TOTAL = 23_885_392  # numbers in the weights file without num_batches_tracked (94 conv + bn layers and fc: 472 tensors)


@pytest.fixture(scope="module")
def fid_state():
    """A random state dict of the weights file's layout, as an old PyTorch saved it (no num_batches_tracked)."""
    expected = {f"{c}.{p}" for c in CONVS for p in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")}
    expected |= {"fc.weight", "fc.bias"}
    shapes = {k: v.shape for k, v in FIDInceptionV3().state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(shapes) == expected and len(expected) == 472
    assert sum(int(np.prod(s)) for s in shapes.values()) == TOTAL
    assert {k: tuple(shapes[k]) for k in SHAPES} == SHAPES
    g = torch.Generator().manual_seed(0)
    state = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("conv.weight"):  # He initialisation keeps activations finite through 94 layers
            state[key] = torch.randn(shape, generator=g) * (2 / np.prod(shape[1:])) ** 0.5
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g) + (1.0 if key.endswith("bn.weight") else 0.0)
    return state


def test_inception_loads_the_weights_layout_from_pth_and_safetensors(fid_state, tmp_path):
    torch.save(fid_state, tmp_path / "pt_inception.pth")
    save_file(dict(fid_state), str(tmp_path / "inception.safetensors"))
    for name in ("pt_inception.pth", "inception.safetensors"):
        net = load_fid_inception(tmp_path / name)
        assert torch.equal(net.Mixed_7c.branch_pool.conv.weight, fid_state["Mixed_7c.branch_pool.conv.weight"])
    missing = OrderedDict((k, v) for k, v in fid_state.items() if k != "fc.bias")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="does not fit the FID Inception network.*fc.bias"):
        load_fid_inception(tmp_path / "missing.pth")


def test_inception_never_unpickles_code(tmp_path):
    torch.save({"not weights": np.random.default_rng(0)}, tmp_path / "evil.pth")  # an arbitrary Python object
    with pytest.raises(ValueError, match="refused .*evil.pth: it holds Python objects besides tensors") as e:
        load_fid_inception(tmp_path / "evil.pth")
    # the whole reason and the fix, not torch's advice cut off before it says weights_only=False would run code
    assert "weights_only" not in str(e.value) and str(e.value).endswith("or a .safetensors conversion")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "evil.pth").read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot read .*cut.pth as weights"):
        load_fid_inception(tmp_path / "cut.pth")


def test_missing_inception_weights_say_where_to_get_them(monkeypatch, tmp_path):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth.*--inception-weights"):
        InceptionFeatures()
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(FileNotFoundError, match="no Inception weights file at .*nowhere.pth"):
        InceptionFeatures()


def test_inception_features_are_deterministic(fid_state, tmp_path, monkeypatch):
    save_file(dict(fid_state), str(tmp_path / "inception.safetensors"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "inception.safetensors"))
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    features = InceptionFeatures(batch_size=2)(images)
    assert features.shape == (2, 2048) and np.isfinite(features).all() and (features >= 0).all() and features.std() > 0
    one_by_one = InceptionFeatures(batch_size=1)(images)
    np.testing.assert_allclose(one_by_one, features, rtol=1e-4, atol=1e-6)  # an image's features do not depend on its batch
    assert np.array_equal(InceptionFeatures(batch_size=2)(images), features)


def test_inception_preprocessing_follows_clean_fid():
    flat = np.full((1, 20, 20, 3), 255, np.uint8)
    flat[..., 1] = 0
    x = resize_for_inception(flat)
    assert x.shape == (1, 3, 299, 299) and torch.allclose(x[0, :, 150, 150], torch.tensor([1.0, -1.0, 1.0]))
    gray = resize_for_inception(np.arange(64, dtype=np.uint8).reshape(1, 8, 8, 1))
    assert gray.shape == (1, 3, 299, 299) and torch.equal(gray[:, 0], gray[:, 2])
    # TensorFlow's average pool: padding does not count, so a constant map stays constant at the border
    assert torch.equal(_avg_pool_tf(torch.ones(1, 1, 5, 5)), torch.ones(1, 1, 5, 5))
    # floats are quantized as a PNG would be before any resizing
    assert np.array_equal(as_uint8(torch.tensor([[[[-1.0, 0.0, 1.0]]]])), np.array([[[[0], [128], [255]]]], np.uint8))


def two_sets(n, seed):
    """Horizontal against vertical stripes, in random colours: (2n, 16, 16, 3) uint8 and labels."""
    rng = np.random.default_rng(seed)
    stripes = (np.arange(16) // 2 % 2).astype(float)
    images, labels = [], []
    for i in range(2 * n):
        pattern = stripes[:, None] * np.ones(16) if i % 2 else stripes[None, :] * np.ones((16, 1))
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        images.append(pattern[..., None] * a + (1 - pattern[..., None]) * b)
        labels.append(i % 2)
    return np.stack(images).astype(np.uint8), np.array(labels)


def test_augment_keeps_shape_range_and_seed():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    a = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(2)))
    assert augment(x[:, :1], torch.Generator().manual_seed(1)).shape == (4, 1, 16, 16)


def test_contrastive_encoder_trains_and_separates_distinct_images():
    from diffusely.data import to_tensor
    images, labels = two_sets(64, 0)
    x = to_tensor(images)
    g = torch.Generator().manual_seed(5)
    views = augment(x[:32], g), augment(x[:32], g)
    torch.manual_seed(0)
    before = nt_xent_loss(*(train_contrastive_encoder(x, steps=0)(v) for v in views))
    net = train_contrastive_encoder(x, steps=100, batch_size=32)
    assert nt_xent_loss(*(net(v) for v in views)) < before

    test_images, test_labels = two_sets(50, 1)
    with torch.no_grad():
        train_f, test_f = net.body(x).numpy(), net.body(to_tensor(test_images)).numpy()
    centroids = np.stack([train_f[labels == c].mean(0) for c in (0, 1)])
    predicted = ((test_f[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == test_labels).mean() > 0.8  # chance: 0.5


def test_domain_features_round_trip(tmp_path):
    images, labels = two_sets(16, 0)
    clf = fit_domain_features(images, labels, 2, steps=3, reference={"source": "stripes"})
    enc = fit_domain_features(images, steps=3)
    assert clf.name.startswith("domain-classifier-") and enc.name.startswith("domain-contrastive-")
    for extractor in (clf, enc):
        save_domain_features(tmp_path / "f.safetensors", extractor)
        back = load_domain_features(tmp_path / "f.safetensors")
        assert back.name == extractor.name and back.info == extractor.info
        assert np.array_equal(back(images), extractor(images)) and back(images).shape == (32, 128)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a diffusely domain-features file"):
        load_domain_features(tmp_path / "bad.safetensors")
