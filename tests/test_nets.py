import pytest
import torch

from diffusely.denoisers import Denoiser
from diffusely.loss import denoising_loss, edm_weight
from diffusely.nets import UNet, UNetConfig


def randomize(net):
    """Residual branches and the output conv start at zero, so a fresh net ignores its noise label;
    give every weight a value so a test sees the whole network."""
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)


@pytest.mark.parametrize("dims, spatial", [(1, (32,)), (2, (16, 16)), (3, (4, 8, 8))])
def test_unet_serves_1d_2d_3d(dims, spatial):
    torch.manual_seed(0)
    net = UNet(UNetConfig(dims=dims, in_channels=2, out_channels=2, channels=(8, 16, 16), blocks_per_level=1,
                          attention_levels=(1,), head_channels=8, groups=4))
    x = torch.randn(3, 2, *spatial)
    randomize(net)
    y = net(x, torch.tensor([0.1, 1.0, -1.0]))
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    # the noise label matters
    y2 = net(x, torch.tensor([0.5, 1.0, -1.0]))
    assert not torch.allclose(y[0], y2[0]) and torch.allclose(y[1], y2[1], atol=1e-6)


def test_unet_rejects_sizes_it_cannot_take():
    net = UNet(UNetConfig(channels=(8, 16, 16), groups=4, attention_levels=()))
    with pytest.raises(ValueError, match=r"input size \(30, 30\) is not divisible by 4.*multiple of 4"):
        net(torch.randn(1, 3, 30, 30), torch.zeros(1))
    with pytest.raises(ValueError, match=r"expected input \(batch, 3, size, size\), got \(1, 1, 32, 32\)"):
        net(torch.randn(1, 1, 32, 32), torch.zeros(1))


def test_unet_config_errors():
    with pytest.raises(ValueError, match="attention_levels \\[3\\] outside the 3 levels 0..2"):
        UNetConfig(channels=(8, 16, 16), attention_levels=(3,))
    with pytest.raises(ValueError, match="dims must be 1, 2 or 3"):
        UNetConfig(dims=4)


def test_class_labels_condition_the_output():
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=(8, 16), num_classes=3, groups=4, attention_levels=()))
    randomize(net)
    x = torch.randn(2, 3, 8, 8)
    a = net(x, torch.zeros(2), class_labels=torch.tensor([0, 1]))
    b = net(x, torch.zeros(2), class_labels=torch.tensor([2, 1]))
    null = net(x, torch.zeros(2))  # no labels: the null label (index 3)
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    assert torch.allclose(null, net(x, torch.zeros(2), class_labels=torch.tensor([3, 3])))
    uncond = UNet(UNetConfig(channels=(8, 16), groups=4, attention_levels=()))
    with pytest.raises(ValueError, match="trained without class labels"):
        uncond(x, torch.zeros(2), class_labels=torch.tensor([0, 1]))


def test_overfits_one_fixed_batch():
    """The network can drive the denoising loss on one fixed batch (images, sigmas, noise) close to zero."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=(32, 32), blocks_per_level=1, attention_levels=(1,), head_channels=32, groups=8))
    D = Denoiser(net, "edm")
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    sigma = torch.tensor([0.05, 0.3, 1.0, 3.0])
    noise = torch.randn_like(x0)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(300):
        loss = denoising_loss(D, x0, sigma, edm_weight(sigma), noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.5
    assert losses[-1] < 0.01 * losses[0], losses[::50]


@pytest.mark.parametrize("dims, spatial", [(1, (32,)), (2, (8, 12)), (3, (4, 8, 8))])
def test_space_to_depth_is_pixel_unshuffle_and_inverts(dims, spatial):
    from diffusely.nets.layers import depth_to_space, space_to_depth

    x = torch.randn(2, 3, *spatial)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 3 * 2 ** dims, *[s // 2 for s in spatial])
    assert torch.equal(depth_to_space(y, 2), x)
    if dims == 2:
        assert torch.equal(y, torch.nn.functional.pixel_unshuffle(x, 2))


def test_patched_unet_keeps_pixels_apart():
    """With patch_size 2 the net still maps each pixel to its own output: perturbing one input pixel changes
    the output, and the output keeps the input's shape; sizes must divide by patch x 2^(levels-1)."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=(8, 16), blocks_per_level=1, attention_levels=(), groups=4, patch_size=2))
    randomize(net)
    x = torch.randn(1, 3, 16, 16)
    y = net(x, torch.zeros(1))
    assert y.shape == x.shape
    x2 = x.clone()
    x2[0, 0, 5, 5] += 1.0
    assert (net(x2, torch.zeros(1)) - y).abs()[0, :, 5, 5].sum() > 0
    with pytest.raises(ValueError, match=r"not divisible by 4.*times the patch size 2"):
        net(torch.randn(1, 3, 18, 18), torch.zeros(1))


def test_layout_channels_are_read_and_required():
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=(8, 16), blocks_per_level=1, attention_levels=(), groups=4, layout_channels=3))
    randomize(net)
    x = torch.randn(2, 3, 8, 8)
    empty = torch.zeros(2, 3, 8, 8)
    box = empty.clone()
    box[:, 0, 2:5, 2:5] = 1
    assert not torch.allclose(net(x, torch.zeros(2), layout=empty), net(x, torch.zeros(2), layout=box))
    with pytest.raises(ValueError, match=r"layout-conditional: give layout \(2, 3, 8, 8\).*got none"):
        net(x, torch.zeros(2))
    with pytest.raises(ValueError, match="trained without layouts"):
        UNet(UNetConfig(channels=(8, 16), groups=4, attention_levels=()))(x, torch.zeros(2), layout=empty)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_upsample_equals_nearest_doubling_then_its_conv(dims):
    """The transposed-conv form computes nearest x2 then the 3x3 conv, forward and backward (float64, so any
    wrong tap or edge shows far above rounding), on an odd size where the padding edges matter."""
    import torch.nn.functional as F
    from diffusely.nets.layers import Upsample

    torch.manual_seed(0)
    up = Upsample(dims, 6).double()
    torch.nn.init.normal_(up.conv.weight)
    torch.nn.init.normal_(up.conv.bias)
    x = torch.randn(2, 6, *[5] * dims, dtype=torch.float64, requires_grad=True)
    out = up(x)
    ref = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert out.shape == ref.shape == (2, 6, *[10] * dims)
    assert (out - ref).abs().max() < 1e-12 * ref.abs().max()
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [x, up.conv.weight, up.conv.bias], g)
    refs = torch.autograd.grad(ref, [x, up.conv.weight, up.conv.bias], g)
    for a, b in zip(grads, refs):
        assert (a - b).abs().max() < 1e-10 * b.abs().max()
    assert list(up.state_dict()) == ["conv.weight", "conv.bias"]  # checkpoints as before
