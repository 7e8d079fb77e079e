"""Video: moving-shapes data, GIF/MP4 folders, factorised space-time blocks, frame conditioning, the coherence score,
and a video run through the CLI."""

import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffusely.cli import main
from diffusely.conditions import Frames
from diffusely.config import DataConfig, RunConfig
from diffusely.data import load_dataset, to_tensor
from diffusely.data.moving_shapes import MOTIONS, bounce, render_moving_shapes
from diffusely.data.video import load_video_folder, read_video, resample, write_video
from diffusely.metrics.adherence import segment
from diffusely.metrics.coherence import mean_coherence
from diffusely.nets import UNet
from diffusely.nets.layers import Attention, ResBlock
from diffusely.nets.unet import UNetConfig
from diffusely.nets.video import PerFrame, TemporalAttention, TemporalMix

pytest.importorskip("av")  # the video extra: MP4 and WebM

TINY_VIDEO = ["--image-size", "16", "--frames", "4", "--channels", "8,16", "--blocks-per-level", "1",
              "--attention-levels", "1", "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def clips():
    return render_moving_shapes(48, size=32, frames=8, seed=5)


@pytest.mark.parametrize("fmt", ["gif", "mp4", "webm"])
def test_video_round_trip_keeps_frame_count_size_and_pixels(tmp_path, clips, fmt):
    clip = clips.images[0]
    write_video(tmp_path / f"clip.{fmt}", clip, fps=8)
    frames, times = read_video(tmp_path / f"clip.{fmt}")
    assert len(frames) == 8 and frames[0].shape == (32, 32, 3)
    assert times[-1] == pytest.approx(1.0, abs=0.05)  # 8 frames shown for 1/8 s each
    error = np.abs(np.stack(frames).astype(float) - clip).mean()
    assert error < (0.5 if fmt == "gif" else 8.0)  # GIF: exact palette for these few colours; H.264/VP9: lossy


def test_folder_resamples_cuts_clips_and_counts_what_it_skips(tmp_path, clips):
    long = np.concatenate([clips.images[0], clips.images[1]])  # 16 frames at 8 fps: 2 s
    (tmp_path / "a").mkdir()
    write_video(tmp_path / "a" / "long.mp4", long, fps=8)
    write_video(tmp_path / "a" / "short.gif", clips.images[2][:3], fps=8)
    (tmp_path / "a" / "broken.mp4").write_bytes(b"not a video")
    seq = tmp_path / "b" / "seq"
    seq.mkdir(parents=True)
    for i, frame in enumerate(clips.images[3]):
        Image.fromarray(frame).save(seq / f"{i:03d}.png")
    with pytest.warns(UserWarning, match="skipped 1 unreadable file.* and 1 shorter than 4 frames") as caught:
        folder = load_video_folder(tmp_path, 32, frames=4, fps=4.0, classes=True)
    assert len(caught) == 1
    # long.mp4 at 4 fps: frames 0, 2, 4, ... of 16, two clips of 4; the image sequence (taken at 4 fps): two clips
    assert folder.images.shape == (4, 4, 32, 32, 3) and folder.class_names == ["a", "b"]
    assert folder.labels.tolist() == [0, 0, 1, 1]
    assert np.abs(folder.images[0].astype(float) - long[[0, 2, 4, 6]]).mean() < 8
    assert np.array_equal(folder.images[2], clips.images[3][:4])
    # the latest frame shown at each k/4 s before the end; a GIF stores 1/8 s as 0.12 s, so its end falls short of 1 s
    assert resample(list(range(3)), [0.0, 0.5, 0.75, 0.96], fps=4.0) == [0, 0, 1, 2]


def test_frames_are_made_small_as_decoded_and_match_the_whole_decode(tmp_path, clips):
    """Each frame kept is resized as it is decoded, once however often it is shown, and the clips are what resizing
    the whole decoded, resampled stream gives."""
    from diffusely.data.video import _resampled, _shown, clips_of, square

    long = np.concatenate([clips.images[0], clips.images[1]])
    write_video(tmp_path / "long.mp4", long, fps=8)
    whole = [square(f, 16) for f in resample(*read_video(tmp_path / "long.mp4"), 6.0)]
    got = clips_of(tmp_path / "long.mp4", 16, 4, 6.0)  # 2 s at 6 fps: 12 frames, three clips
    assert len(got) == 3 and np.array_equal(np.concatenate(got), np.stack(whole[:12]))
    made = []
    up = list(_resampled(_shown(tmp_path / "long.mp4"), 20.0, lambda f: made.append(f) or len(made)))
    assert len(up) == 40 and len(made) == 16 and up[:6] == [1, 1, 1, 2, 2, 3]  # 8 fps to 20: each frame made once
    made.clear()
    down = list(_resampled(_shown(tmp_path / "long.mp4"), 6.0, lambda f: made.append(f) or len(made)))
    assert len(down) == 12 and len(made) == 12  # 8 fps to 6: the 4 frames never shown are never made
    # the latest frame to start at or before each k / fps: the first before it starts; of two at one time, the later;
    # a frame ending exactly on k / fps is not shown at k / fps
    assert resample(["a", "b"], [0.5, 1.0, 1.5], fps=2.0) == ["a", "a", "b"]
    assert resample(["a", "b", "c"], [0.0, 0.5, 0.5, 1.0], fps=2.0) == ["a", "c"]
    assert resample([], [0.0], fps=2.0) == [] and resample(["a"], [0.0, 1.0], fps=2.0) == ["a", "a"]


def test_a_stray_video_among_image_folders_is_said_and_sequences_go_in_natural_order(tmp_path, clips):
    (tmp_path / "cats").mkdir()
    write_video(tmp_path / "cats" / "stray.gif", clips.images[0], fps=8)
    for i in range(3):  # images beside a video file are no clip's frames
        Image.fromarray(clips.images[1, i]).save(tmp_path / "cats" / f"{i}.png")
    (tmp_path / "dogs").mkdir()
    for i in range(10):  # frame9 before frame10, as a person numbers them
        Image.fromarray(clips.images[2, i % 8]).save(tmp_path / "dogs" / f"frame{i}.png")
    (tmp_path / "dogs" / "frame10.png").write_bytes((tmp_path / "dogs" / "frame2.png").read_bytes())
    with pytest.warns(UserWarning, match=r"read 1 folder\(s\) of images as image sequences .* ignored 3 image"):
        folder = load_video_folder(tmp_path, 32, frames=11, fps=8.0)
    assert len(folder.images) == 1 and folder.paths[0].endswith("dogs")
    assert np.array_equal(folder.images[0, [2, 9, 10]], clips.images[2, [2, 1, 2]])  # frame2, frame9, frame10
    # the stray video beside the class folders: more of them read as sequences than there are videos, said so
    (tmp_path / "cats" / "stray.gif").rename(tmp_path / "stray.gif")
    (tmp_path / "cats" / "._stray.mp4").write_bytes(b"macOS metadata")  # hidden: no video file, cats/ a sequence
    with pytest.warns(UserWarning, match=r"holds 1 video file\(s\) and images: read 2 folder\(s\) of images as image "
                                         r"sequences \(a clip source each, frames in name order\); a folder"):
        folder = load_video_folder(tmp_path, 32, frames=3, fps=8.0)
    assert [p.split("/")[-1] for p in folder.paths] == ["cats", "dogs", "dogs", "dogs", "stray.gif", "stray.gif"]


def test_moving_shapes_keep_their_true_paths(clips):
    assert clips.images.shape == (48, 8, 32, 32, 3) and set(clips.labels % len(MOTIONS)) == {0, 1, 2}
    single = np.flatnonzero(clips.objects == 1)
    for i in single[:8]:  # the segmented centroid is the drawn centre, frame by frame
        for t in range(8):
            _, _, masks = segment(clips.images[i, t])
            ys, xs = np.nonzero(masks[0])
            assert np.hypot(xs.mean() + 0.5 - clips.trajectories[i, 0, t, 0],
                            ys.mean() + 0.5 - clips.trajectories[i, 0, t, 1]) < 1.2
    path = bounce(np.array([2.0, 5.0]), np.array([3.0, -1.0]), np.array([1.0, 1.0]), np.array([9.0, 9.0]), 6)
    assert path[:, 0].tolist() == [2, 5, 8, 7, 4, 1] and path[:, 1].tolist() == [5, 4, 3, 2, 1, 2]


def test_coherence_scores_real_clips_high_and_shuffled_frames_low(clips):
    real = mean_coherence(clips.images)
    rng = np.random.default_rng(0)
    shuffled = mean_coherence(np.stack([clip[rng.permutation(8)] for clip in clips.images]))
    assert real["coherence"] > 0.9 and real["identity"] == 1.0
    assert shuffled["coherence"] < 0.3
    flickering = clips.images.astype(np.int16) + rng.integers(-12, 13, clips.images.shape[:2])[..., None, None, None]
    assert mean_coherence(np.clip(flickering, 0, 255).astype(np.uint8))["flicker"] < 0.5


@pytest.mark.parametrize("layer", [lambda: ResBlock(2, 8, 16, 32, groups=4), lambda: Attention(2, 8, 4, groups=4)])
def test_per_frame_layers_commute_with_permuting_frames(layer):
    torch.manual_seed(0)
    inner = layer()
    for p in inner.parameters():  # wake the zero-initialised output layers, or every frame maps alike trivially
        torch.nn.init.normal_(p, std=0.2) if not p.any() else None
    block = PerFrame(inner)
    x, emb = torch.randn(2, 8, 5, 8, 8), torch.randn(2, 32)
    order = torch.tensor([3, 0, 4, 1, 2])
    args = (emb,) if isinstance(inner, ResBlock) else ()
    assert torch.allclose(block(x[:, :, order], *args), block(x, *args)[:, :, order], atol=1e-5)
    # and a frame alone gives what it gives in the clip: no frame sees another
    assert torch.allclose(block(x[:, :, 2:3], *args), block(x, *args)[:, :, 2:3], atol=1e-5)


def test_temporal_layers_start_as_identity_and_know_frame_order():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 4, 4)
    mix, attn = TemporalMix(8, 4), TemporalAttention(8, 4, 4)
    assert torch.equal(mix(x), x) and torch.equal(attn(x), x)
    torch.nn.init.normal_(mix.conv.weight, std=0.3)
    order = torch.tensor([4, 3, 2, 1, 0])
    assert not torch.allclose(mix(x[:, :, order]), mix(x)[:, :, order], atol=1e-3)


def test_factorised_unet_downsamples_space_only_and_old_configs_build_as_before():
    torch.manual_seed(0)
    net = UNet(UNetConfig(dims=3, channels=(8, 16), attention_levels=(1,), groups=4, factorised=True))
    out = net(torch.randn(2, 3, 5, 16, 16), torch.zeros(2))  # 5 frames: no time axis to halve
    assert out.shape == (2, 3, 5, 16, 16)
    plain = UNet(UNetConfig(dims=3, channels=(8, 16), attention_levels=(1,), groups=4))
    assert not any(isinstance(m, PerFrame) for m in plain.modules())
    with pytest.raises(ValueError, match="input size"):
        plain(torch.randn(1, 3, 5, 16, 16), torch.zeros(1))
    with pytest.raises(ValueError, match="dims 3"):
        UNetConfig(dims=2, factorised=True)


def test_frames_condition_gives_the_first_frames_and_marks_them():
    config = RunConfig(data=DataConfig(frames=4, image_size=8, given_frames=2),
                       model=UNetConfig(dims=3, in_channels=3, frames_channels=4))
    frames = Frames(config)
    first = torch.rand(2, 3, 2, 8, 8) * 2 - 1
    rendered = frames.given(first, "cpu")["first_frames"]
    assert rendered.shape == (2, 4, 4, 8, 8)
    assert torch.equal(rendered[:, :3, :2], first) and not rendered[:, :, 2:].any()
    assert rendered[:, 3, :2].eq(1).all()
    dropped = frames.render(first, given=torch.tensor([True, False]))
    assert not dropped[1].any() and torch.equal(dropped[0], rendered[0])
    with pytest.raises(ValueError, match="2 given frames"):
        frames.given(torch.zeros(1, 3, 3, 8, 8), "cpu")
    # in training, each sample's own first frames (none dropped here)
    frames.images, frames.dropout = torch.randint(0, 256, (3, 4, 8, 8, 3), dtype=torch.uint8), 0.0
    drawn = frames.train(torch.tensor([2, 0]), [torch.Generator().manual_seed(i) for i in range(2)], None)
    assert torch.equal(drawn["first_frames"][:, :3, :2], to_tensor(frames.images[[2, 0]])[:, :, :2])


def test_video_run_trains_samples_and_resumes_through_the_cli(tmp_path):
    runner, run = CliRunner(), tmp_path / "run"
    result = runner.invoke(main, ["train", "moving-shapes", "--out", str(run), "--steps", "2", "--classes",
                                  "--factorised", "--sample-every", "1", *TINY_VIDEO])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["modality"] == "video" and config["model"]["dims"] == 3 and config["data"]["frames"] == 4
    # every --sample-every steps a row of 16 film strips of 4 frames (1-pixel gaps), enlarged twice
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-0000001.png", "step-0000002.png"]
    with Image.open(run / "samples" / "step-0000002.png") as picture:
        assert picture.size == (16 * (2 * 16 + 2) + 2, 2 * (4 * 17 - 1) + 4)
    result = runner.invoke(main, ["sample", str(run), "-n", "2", "--steps", "2", "--class", "square crossing",
                                  "--grid", str(tmp_path / "grid.png"), "--quiet"])
    assert result.exit_code == 0, result.output
    frames, _ = read_video(run / "generated" / "000001.gif")
    assert len(frames) == 4 and frames[0].shape == (16, 16, 3)
    with Image.open(run / "generated" / "000001.gif") as gif:
        assert json.loads(gif.info["comment"])["class"] == "square crossing"
    with Image.open(tmp_path / "grid.png") as grid:  # two film strips of 4 frames (1-pixel gaps), enlarged twice
        assert grid.size == (2 * (2 * 16 + 2) + 2, 2 * (4 * 17 - 1) + 4)
        top = np.asarray(grid.convert("RGB"))[2:2 + 2 * 16, 2:2 + 2 * 16]  # clip 0's first frame, as the GIF holds it
    first, _ = read_video(run / "generated" / "000000.gif")
    assert np.abs(top[::2, ::2].astype(int) - first[0]).mean() < 3
    result = runner.invoke(main, ["sample", str(run), "-n", "1", "--steps", "2", "--format", "mp4", "--out",
                                  str(tmp_path / "mp4"), "--quiet"])
    assert result.exit_code == 0, result.output
    frames, _ = read_video(tmp_path / "mp4" / "000000.mp4")
    assert len(frames) == 4 and frames[0].shape == (16, 16, 3)
    result = runner.invoke(main, ["train", "--out", str(run), "--resume", "--steps", "3", "--quiet"])
    assert result.exit_code == 0 and "from step 2 to 3" in result.output, result.output
    result = runner.invoke(main, ["reverse", str(run), "--steps", "2", "--out", str(tmp_path / "reverse.png")])
    assert result.exit_code == 0, result.output


def test_a_latent_video_run_encodes_each_frame_and_samples_clips(tmp_path):
    """--autoencoder on a video run: an image autoencoder encodes every frame of every clip (latents (N, C, T, h, w)),
    the 3-D U-Net learns those, and sampling decodes each frame alike into a GIF of the run's frames and size."""
    from diffusely._files import load_tensors
    from diffusely.checkpoint import load_run
    from diffusely.train.latents import LATENTS

    from helpers import train_tiny_autoencoder

    runner, ae, run = CliRunner(), train_tiny_autoencoder(tmp_path / "ae"), tmp_path / "run"
    result = runner.invoke(main, ["train", "moving-shapes", "--out", str(run), "--autoencoder", str(ae), "--steps", "2",
                                  *TINY_VIDEO])
    assert result.exit_code == 0, result.output
    latents, _ = load_tensors(run / LATENTS)
    assert latents["images"].shape[1:] == (4, 4, 8, 8)  # 4 latent channels, 4 frames, 16 / 2 a side
    loaded = load_run(run)
    assert loaded.config.sample_shape == (4, 4, 8, 8)
    z = torch.randn(2, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clip = loaded.latent.decode(z)
        frame = loaded.latent.decode(z[:, :, 2])
    assert clip.shape == (2, 3, 4, 16, 16) and torch.allclose(clip[:, :, 2], frame, atol=1e-5)
    result = runner.invoke(main, ["sample", str(run), "-n", "2", "--steps", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    frames, _ = read_video(run / "generated" / "000001.gif")
    assert len(frames) == 4 and frames[0].shape == (16, 16, 3)


def test_frame_conditioned_run_continues_a_given_clip(tmp_path, clips):
    runner, run = CliRunner(), tmp_path / "run"
    result = runner.invoke(main, ["train", "moving-shapes", "--out", str(run), "--steps", "1", "--given-frames", "2",
                                  "--classes", *TINY_VIDEO])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["model"]["frames_channels"] == 4
    # guided towards a class, both halves continue the given frames: only the label differs between them
    from diffusely.checkpoint import load_run
    from diffusely.pipelines.generate import recipe

    first = torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    guided, cond = recipe(load_run(run), steps=2, classes=[1], first_frames=[first]).conditions.batch([0], "cpu")
    seen, cfg = [], guided.denoiser
    cfg.denoiser = lambda x, sigma, **given: seen.append(given) or x  # the network, recording what it is given
    cfg(torch.zeros(1, 3, 4, 16, 16), torch.tensor(1.0), **cond)
    both = seen[0]["first_frames"]
    assert cfg.scale > 1 and seen[0]["class_labels"].tolist() == [12, 1]  # the null label, then class 1
    assert torch.equal(both[0], both[1]) and both[0, -1, :2].eq(1).all()  # the same given frames in both halves
    write_video(tmp_path / "start.gif", clips.images[0], fps=8)
    result = runner.invoke(main, ["sample", str(run), "-n", "1", "--steps", "2", "--first-frames",
                                  str(tmp_path / "start.gif"), "--format", "npy", "--quiet"])
    assert result.exit_code == 0, result.output
    assert np.load(run / "generated" / "000000.npy").shape == (4, 16, 16, 3)
    # the given frames are read at the run's frame rate: at 4 fps, frames 0 and 2 of the 8-fps clip
    from types import SimpleNamespace

    from diffusely.cli.sample import given_frames

    def at(fps, k):
        return given_frames(SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(
            image_size=16, given_frames=k, sample_rate=fps, channels=3))), tmp_path / "start.gif")

    assert torch.equal(at(4, 2), at(8, 3)[:, 0:3:2])
    # and a clip's forward strip
    result = runner.invoke(main, ["forward", str(tmp_path / "start.gif"), "--out", str(tmp_path / "forward.png")])
    assert result.exit_code == 0 and (tmp_path / "forward.png").is_file(), result.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_dataset("moving-shapes", 16, frames=4).images.shape[1:] == (4, 16, 16, 3)


@pytest.mark.parametrize("args, message", [
    (["--frames", "6"], "--frames 6 is not divisible by 4"),
    (["--given-frames", "8"], "--given-frames: data.given_frames must be an integer between 0 and 7"),
    (["--given-frames", "2", "--autoencoder", "runs/ae"], "drop one of them"),
    (["--factorised", "--frames", "65"], "--frames 65 is more than the 64 a factorised U-Net's temporal attention "
                                         "knows positions for; use --frames 64 or fewer, or --no-factorised"),
    (["--grayscale"], "--grayscale is for images: a video run learns RGB clips; moving-shapes is video data: drop "
                      "--grayscale"),
    (["shapes", "--frames", "8"], "--frames is a video run's clip length; shapes is image data: drop --frames"),
    (["shapes", "--given-frames", "2"], "--given-frames is what a video run continues from; shapes is image data"),
])
def test_bad_video_options_are_refused_naming_the_flag(tmp_path, args, message):
    data, args = (args[0], args[1:]) if args[0] == "shapes" else ("moving-shapes", args)
    result = CliRunner().invoke(main, ["train", data, "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "run").exists()
