"""Audio as a modality: files in and out, resampling, the built-in sounds, audio folders, and an audio run through
the CLI (train, sample, resume, strips)."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from diffusely import audio  # noqa: E402
from diffusely.cli import main  # noqa: E402
from diffusely.data import DataError, load_dataset, modality_of, to_tensor  # noqa: E402
from diffusely.data.audio import load_audio_folder  # noqa: E402
from diffusely.data.sounds import CLASSES, render_sounds  # noqa: E402
from diffusely.options import new_run_config  # noqa: E402

TINY_AUDIO = ["--image-size", "1024", "--channels", "16,32", "--blocks-per-level", "1", "--attention-levels", "1",
              "--batch-size", "4", "--quiet"]


def sine(frequency, rate, seconds=1.0, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * frequency * t).astype(np.float32)
    return np.repeat(wave[:, None], channels, 1) if channels > 1 else wave


def peak_hz(wave, rate):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()]


def test_wav_round_trip_is_bit_exact(tmp_path):
    pcm = np.random.default_rng(0).integers(-32768, 32768, 4000).astype(np.int16)
    pcm[:2] = (-32768, 32767)  # the extremes survive too
    audio.write_wav(tmp_path / "a.wav", pcm, 16000, json.dumps({"seed": 3}))
    back, rate = sf.read(tmp_path / "a.wav", dtype="int16")
    assert rate == 16000 and np.array_equal(back, pcm)
    assert sf.info(tmp_path / "a.wav").subtype == "PCM_16"
    assert audio.read_comment(tmp_path / "a.wav") == {"seed": 3}
    # float samples on the 16-bit grid come back as the same integers
    assert np.array_equal(audio.to_pcm16(pcm / 32767.0), pcm)


def test_mu_law_codes_round_trip():
    x = np.linspace(-1, 1, 1001)
    assert np.allclose(audio.mu_expand(audio.mu_compress(x)), x, atol=1e-12)
    back = audio.from_codes(audio.to_codes(x[None]))[0]
    # one code step of companded amplitude: fine near 0, coarse near full scale (G.711's point)
    step = np.abs(audio.mu_expand(audio.mu_compress(np.abs(x)) + 1 / 127.5) - np.abs(x))
    assert np.all(np.abs(back - x) <= step / 2 + 1e-6)
    assert np.abs(back[np.abs(x) < 0.01] - x[np.abs(x) < 0.01]).max() < 2e-4  # quiet detail kept (8-bit linear: 4e-3)


def test_resampling_keeps_a_sines_frequency_and_removes_what_cannot_be_kept(tmp_path):
    # 44.1 kHz stereo in, 8 kHz mono out: 440 and 3000 Hz stay where they were; 5 kHz lies above the new Nyquist
    # (4 kHz) and is filtered out, not folded to 3 kHz as taking every 5.5th sample would
    for frequency in (440, 3000):
        sf.write(tmp_path / f"{frequency}.wav", sine(frequency, 44100, channels=2), 44100)
        wave = audio.read_audio(tmp_path / f"{frequency}.wav", 8000, 8000)
        assert wave.shape == (8000,) and peak_hz(wave, 8000) == frequency
        assert 0.45 < np.abs(wave[100:-100]).max() < 0.55  # amplitude kept
    sf.write(tmp_path / "5000.wav", sine(5000, 44100), 44100)
    assert np.abs(audio.read_audio(tmp_path / "5000.wav", 8000, 8000)[200:-200]).max() < 0.01  # edges: the cut-in


def test_read_audio_pads_short_clips_at_the_end_and_keeps_the_start_of_long_ones(tmp_path):
    sf.write(tmp_path / "short.wav", sine(440, 8000, 0.1), 8000)
    short = audio.read_audio(tmp_path / "short.wav", 8000, 1000)
    assert np.abs(short[:800]).max() > 0.4 and not short[800:].any()
    ramp = np.linspace(-0.5, 0.5, 4000).astype(np.float32)
    sf.write(tmp_path / "long.wav", ramp, 8000, subtype="FLOAT")
    assert np.array_equal(audio.read_audio(tmp_path / "long.wav", 8000, 1000), ramp[:1000])


def test_sounds_are_seeded_per_clip_and_loud_enough():
    a, b = render_sounds(12, 800, seed=0), render_sounds(6, 800, seed=0)
    assert np.array_equal(a.images[:6], b.images) and list(a.labels[:6]) == list(range(6))
    assert not np.array_equal(render_sounds(6, 800, seed=1).images, b.images)
    peaks = np.abs(audio.from_codes(a.images)).max(1)
    assert a.images.shape == (12, 800, 1) and np.all((peaks > 0.28) & (peaks < 0.92))


def test_sounds_classes_are_told_apart_by_the_spectrogram_classifier():
    # 240 training clips of 1024 samples (128 ms at 8 kHz), 100 steps of 32: ~8-15 s on two busy cores
    train, held_out = render_sounds(240, 1024, seed=0), render_sounds(120, 1024, seed=1)
    net = audio.train_sound_classifier(to_tensor(train.images), torch.from_numpy(train.labels), len(CLASSES), 8000,
                                       steps=100, batch_size=32)
    features, probs = audio.classify(net, to_tensor(held_out.images), 8000)
    assert features.shape == (120, 128)
    assert (probs.argmax(1).numpy() == held_out.labels).mean() > 0.95


def write_folder(root):
    (root / "bell").mkdir(parents=True)
    (root / "hum").mkdir()
    sf.write(root / "bell" / "a.wav", sine(880, 16000, channels=2), 16000)
    sf.write(root / "bell" / "b.flac", sine(660, 22050), 22050)
    sf.write(root / "hum" / "c.ogg", sine(220, 8000), 8000, format="OGG", subtype="VORBIS")
    (root / "hum" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk that is not audio")
    sf.write(root / "hum" / "empty.wav", np.zeros(0, np.int16), 8000)
    (root / "hum" / "notes.txt").write_text("not audio")


def test_audio_folder_loads_labels_and_counts_what_it_skips(tmp_path):
    write_folder(tmp_path / "clips")
    assert modality_of(tmp_path / "clips") == "audio" and modality_of("sounds") == "audio"
    with pytest.warns(UserWarning, match=r"skipped 2 of 5 audio files .*broken\.wav.*empty\.wav"):
        data = load_audio_folder(tmp_path / "clips", 2000, 8000, classes=True)
    assert data.images.shape == (3, 2000, 1) and data.class_names == ["bell", "hum"]
    assert list(data.labels) == [0, 0, 1]
    waves = audio.from_codes(data.images)
    assert [peak_hz(w, 8000) for w in waves] == [880, 660, 220]
    with pytest.warns(UserWarning):
        assert load_dataset(tmp_path / "clips", 2000, classes=True, rate=8000).images.shape == (3, 2000, 1)


def test_a_folder_with_no_readable_audio_is_refused_with_a_message(tmp_path):
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"no audio files under .*none.*\.wav"):
        load_audio_folder(tmp_path / "none", 100, 8000)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"none of the 1 audio files under .*bad.* could be read, e\.g\. .*x\.wav"):
        load_audio_folder(tmp_path / "bad", 100, 8000)


def test_a_folder_with_neither_images_nor_audio_names_what_each_reads(tmp_path):
    (tmp_path / "songs").mkdir()
    (tmp_path / "songs" / "track.m4a").write_bytes(b"\0" * 64)  # no reader for it: neither images nor audio
    result = CliRunner().invoke(main, ["train", str(tmp_path / "songs"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert re.search(r"Error: no image files under .*songs .*nor .*audio.* files; .*image: .*\.png.*audio: .*\.wav, \.flac",
                     result.output), result.output


def test_new_runs_pick_their_modality_from_the_data(tmp_path):
    config = new_run_config("sounds", {})
    assert (config.data.modality, config.model.dims, config.data.channels, config.data.flip) == ("audio", 2, 1, False)
    assert (config.data.sample_rate, config.data.image_size, config.model.patch_size) == (8000, 8000, 8)
    assert new_run_config("sounds", {"image_size": 2048}).data.image_size == 2048  # options win over the defaults
    image = new_run_config("shapes", {})
    assert (image.data.modality, image.model.dims, image.data.image_size) == ("image", 2, 32)
    # an audio run's config.json as --config for images: the audio settings go, the rest (the lr) stays
    config.train.lr = 3e-4
    (tmp_path / "audio.json").write_text(config.to_json())
    image = new_run_config("shapes", {}, str(tmp_path / "audio.json"))
    assert (image.data.modality, image.model.dims, image.data.image_size, image.model.patch_size) == ("image", 2, 32, 1)
    assert (image.data.channels, image.data.flip, image.data.sample_rate, image.train.lr) == (3, False, 0, 3e-4)
    assert (image.diffusion.sigma_data, image.diffusion.P_mean) == (0.5, -1.2)
    # an image run's config.json of version 4 (it reads data.amplitude as mu-law) as --config for sound: linear again
    written = json.loads(image.to_json())
    del written["data"]["amplitude"]
    (tmp_path / "image.json").write_text(json.dumps({**written, "version": 4}))
    sound = new_run_config("sounds", {}, str(tmp_path / "image.json"))
    assert (sound.data.amplitude, sound.diffusion.sigma_data, sound.diffusion.P_mean) == ("spectrogram", 0.5, -1.2)
    sound = new_run_config("sounds", {"audio_model": "waveform"}, str(tmp_path / "image.json"))
    assert (sound.data.amplitude, sound.diffusion.sigma_data, sound.diffusion.P_mean) == ("linear", 0.16, -3.84)


def test_the_audio_model_chooses_what_the_network_learns():
    """--audio-model: a 2-D U-Net on the clip's spectrogram (the default) or a 1-D one on its waveform, each with its
    own fields, which options given override; refused on images, and a config whose dims contradict it is refused."""
    from diffusely.config import ConfigError, RunConfig

    spectrogram = new_run_config("sounds", {})
    assert (spectrogram.data.amplitude, spectrogram.model.dims, spectrogram.model.patch_size) == ("spectrogram", 2, 8)
    assert (spectrogram.diffusion.sigma_data, spectrogram.diffusion.P_mean) == (0.5, -1.2)
    assert spectrogram.sample_shape[1:] == (128, 128) and audio.data_dims(spectrogram) == 1
    waveform = new_run_config("sounds", {"audio_model": "waveform"})
    assert (waveform.data.amplitude, waveform.model.dims, waveform.model.patch_size) == ("linear", 1, 4)
    assert (waveform.diffusion.sigma_data, waveform.diffusion.P_mean) == (0.16, -3.84)
    assert waveform.sample_shape[1:] == (8000,) and audio.data_dims(waveform) == 1
    assert new_run_config("sounds", {"audio_model": "waveform", "patch_size": 2}).model.patch_size == 2
    from diffusely.pipelines.describe import _sample_facts  # what `diffusely info` says of each

    assert _sample_facts(spectrogram)["network_sees"] == (
        "log-magnitude spectrogram (128 x 128), Griffin-Lim back to sound")
    assert _sample_facts(waveform)["network_sees"] == "the waveform (linear amplitudes)"
    image = new_run_config("shapes", {})  # images are what the model's dims say, both as data and for the network
    assert audio.network_dims(image) == audio.data_dims(image) == 2
    with pytest.raises(ConfigError, match="shapes is image data: drop --audio-model"):
        new_run_config("shapes", {"audio_model": "waveform"})
    written = json.loads(spectrogram.to_json())
    written["model"]["dims"] = 1
    with pytest.raises(ConfigError, match="data.amplitude spectrogram runs a 2-D network, not model.dims 1"):
        RunConfig.from_dict(written)
    written["model"]["dims"] = 2
    for rate in (0, 40):  # not a math domain error, or a division by zero, from the STFT's size
        written["data"]["sample_rate"] = rate
        with pytest.raises(ConfigError, match=f"needs data.sample_rate, its clips' rate in Hz, from 1000 .*not {rate}"):
            RunConfig.from_dict(written)


def test_spectrogram_frames_are_padded_to_the_networks_factor():
    assert audio.spectrogram_shape(8000, 8000, 32) == (128, 128)  # 126 frames of 64 samples, padded
    assert audio.spectrogram_shape(1024, 8000, 32) == (128, 32)  # 17 frames
    assert audio.spectrogram_shape(16000, 16000, 32) == (256, 128)  # 512-point FFT, hops of 128: 126 frames


def test_griffin_lim_gives_back_a_sound_with_the_spectrogram_asked_for():
    """A half-scale 440 Hz sine for half a second, then silence: through the network's spectrogram and back by
    Griffin-Lim it keeps its pitch and loudness, the silence stays silent (bins at the floor are zero), the
    spectrogram of what comes back is the one asked for, and the same spectrogram gives the same waveform."""
    rate = 8000
    wave = sine(440, rate)
    wave[4000:] = 0
    spec = audio.spectrogram(torch.from_numpy(wave)[None, None], rate, 128)
    assert spec.shape == (1, 1, 128, 128) and spec.min() == -1 and spec.max() <= 1
    assert torch.all(spec[..., 126:] == -1)  # the frames padded to 128
    # 440 Hz is near bin 14 of 31.25 Hz: the STFT over its window's sum gives half the amplitude, 0.25, ln 0.25 on
    # the scale from -12 to 0
    assert spec[0, 0, 14, 10].item() == pytest.approx((np.log(0.25) + 12) / 6 - 1, abs=0.01)
    back = audio.griffin_lim(spec, rate, 8000)
    assert back.shape == (1, 1, 8000) and torch.equal(back, audio.griffin_lim(spec, rate, 8000))
    back = back[0, 0].numpy()
    assert abs(peak_hz(back[:4000], rate) - 440) < 3
    assert abs(np.sqrt(np.mean(back[:4000] ** 2)) / np.sqrt(np.mean(wave[:4000] ** 2)) - 1) < 0.05
    assert np.abs(back[4300:]).max() == 0
    again = audio.spectrogram(torch.from_numpy(back)[None, None], rate, 128)
    assert (again - spec)[..., :60].abs().mean() < 0.02  # the sounding frames, in units of the [-1, 1] range
    # a clip's sound does not depend on the batch it is drawn in (sample i is the same for any --batch-size)
    other = audio.spectrogram(torch.from_numpy(sine(330, rate))[None, None], rate, 128)
    pair = audio.griffin_lim(torch.cat([other, spec]), rate, 8000)
    assert torch.equal(pair[1:], audio.griffin_lim(spec, rate, 8000))
    assert torch.equal(pair[:1], audio.griffin_lim(other, rate, 8000))


def test_a_spectrogram_run_too_small_for_its_stft_or_network_says_what_to_change():
    """Refused before any data loads, naming the option to change, not a stack trace from torch.stft or the U-Net;
    and --task upscale, for images, is refused on audio whichever network it would run."""
    from diffusely.train.data import check_image_size, check_task

    check_image_size(new_run_config("sounds", {"image_size": 256}))  # 5 frames, padded: fine
    with pytest.raises(DataError, match="a clip of 128 samples is too short for a spectrogram at 8000 Hz .* longer "
                                        "--image-size, or train with --audio-model waveform"):
        check_image_size(new_run_config("sounds", {"image_size": 128}))
    with pytest.raises(DataError, match=r"a spectrogram at 8000 Hz has 128 frequency bins, which the U-Net's "
                                        r"downsampling factor 256 \(3 levels, patch size 64\) does not divide: "):
        check_image_size(new_run_config("sounds", {"patch_size": 64}))
    for model in ("spectrogram", "waveform"):
        with pytest.raises(DataError, match="--task upscale trains on images, not on audio: drop that option"):
            check_task(new_run_config("sounds", {"audio_model": model, "task": "upscale"}))


def test_resuming_with_another_audio_model_is_refused_naming_the_runs(tmp_path):
    from diffusely.config import ConfigError
    from diffusely.options import resumed_config

    for data, options in (("sounds", {}), ("shapes", {})):
        run_dir = tmp_path / data
        run_dir.mkdir()
        (run_dir / "config.json").write_text(new_run_config(data, options).to_json())
    assert resumed_config(tmp_path / "sounds", None, {"audio_model": "spectrogram"})[0].data.amplitude == "spectrogram"
    with pytest.raises(ConfigError, match="--audio-model waveform conflicts with the run .* data.amplitude "
                                          "spectrogram"):
        resumed_config(tmp_path / "sounds", None, {"audio_model": "waveform"})
    with pytest.raises(ConfigError, match="--audio-model waveform conflicts with the run .* data.modality image"):
        resumed_config(tmp_path / "shapes", None, {"audio_model": "waveform"})


def test_an_audio_network_sees_linear_amplitudes_and_its_samples_are_companded_back():
    """Config version 5: an audio run trains on the codes' linear amplitudes and run.decode compands what it draws
    (the form pictures, the classifier and WAV writing take); a version-4 config.json, which has no data.amplitude,
    reads as the companded run it trained, and an image run is left alone."""
    from diffusely.checkpoint import LoadedRun
    from diffusely.config import RunConfig
    from diffusely.data import Dataset
    from diffusely.train.common import Dist
    from diffusely.train.data import TrainingSet

    config = new_run_config("sounds", {"image_size": 256, "audio_model": "waveform"})
    assert (config.data.amplitude, config.diffusion.sigma_data, config.diffusion.P_mean) == ("linear", 0.16, -3.84)
    codes = render_sounds(8, 256, 8000).images
    config.train.batch_size = 4
    batches = TrainingSet(config, Dataset(codes, None, None, None, None, "sounds"), [], None, "cpu", Dist())
    rows = batches.batches.indices(batches.batches.positions(0))
    linear = torch.from_numpy(audio.from_codes(codes))[:, None]
    assert torch.allclose(batches.draw_batch(0)[0], linear[rows], atol=1e-6) and linear.abs().max() > 0.3
    run = LoadedRun(config, None, 0)
    companded = to_tensor(codes)
    assert torch.allclose(run.decode(audio.network_input(companded, config)), companded, atol=1e-5)
    old = RunConfig.from_dict({**json.loads(config.to_json()), "version": 4} | {"data": {
        k: v for k, v in json.loads(config.to_json())["data"].items() if k != "amplitude"}})
    assert old.data.amplitude == "mu-law" and torch.equal(LoadedRun(old, None, 0).decode(companded), companded)
    image = new_run_config("shapes", {})
    assert image.diffusion.sigma_data == 0.5 and torch.equal(audio.network_input(companded, image), companded)


def test_a_spectrogram_network_learns_the_clips_spectrograms_and_its_samples_are_sound():
    """The default audio run: a training batch is the clips' spectrograms (frames padded to the U-Net's factor), and
    run.decode turns a spectrogram back into companded clips whose log-mel spectrogram is the clips' own."""
    from diffusely.checkpoint import LoadedRun
    from diffusely.data import Dataset
    from diffusely.train.common import Dist
    from diffusely.train.data import TrainingSet

    config = new_run_config("sounds", {"image_size": 1024})
    config.train.batch_size = 4
    codes = render_sounds(8, 1024, 8000).images
    batches = TrainingSet(config, Dataset(codes, None, None, None, None, "sounds"), [], None, "cpu", Dist())
    rows = batches.batches.indices(batches.batches.positions(0))
    linear = torch.from_numpy(audio.from_codes(codes))[:, None]
    x0 = batches.draw_batch(0)[0]
    assert x0.shape == (4, 1, 128, 32) and torch.allclose(x0, audio.spectrogram(linear[rows], 8000, 32), atol=1e-4)
    clips = LoadedRun(config, None, 0).decode(x0)
    assert clips.shape == (4, 1, 1024) and clips.abs().max() <= 1
    mel, want = (audio.log_mel(audio.mu_expand(c[:, 0]), 8000) for c in (clips, to_tensor(codes[rows.numpy()])))
    loud = want > -6  # the bins that sound: the floor (log power -11.5) is where a clip is silent
    assert (mel - want)[loud].abs().mean() < 0.3, (mel - want)[loud].abs().mean()  # 0.12 nats when written


def test_audio_run_trains_samples_and_resumes_through_the_cli(tmp_path):
    runner, run = CliRunner(), tmp_path / "run"
    result = runner.invoke(main, ["train", "sounds", "--out", str(run), "--steps", "2", "--classes",
                                  "--sample-every", "1", *TINY_AUDIO])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert (config["data"]["modality"], config["data"]["amplitude"], config["model"]["dims"]) == (
        "audio", "spectrogram", 2)
    # every --sample-every steps a picture of 16 clips, 4 a row: waveform over spectrogram, enlarged twice
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-0000001.png", "step-0000002.png"]
    with Image.open(run / "samples" / "step-0000002.png") as picture:
        assert picture.size == (4 * (2 * 17 + 2) + 2, 4 * (2 * (audio.WAVE_ROWS + audio.N_MELS) + 2) + 2)
        assert len(set(np.asarray(picture.convert("L")).ravel().tolist())) > 10  # a spectrogram, not a blank
    result = runner.invoke(main, ["sample", str(run), "-n", "3", "--steps", "2", "--class", "bell",
                                  "--grid", str(tmp_path / "grid.png"), "--quiet"])
    assert result.exit_code == 0, result.output
    for i in range(3):
        path = run / "generated" / f"{i:06d}.wav"
        info = sf.info(path)
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (8000, 1024, 1, "PCM_16")
        assert audio.read_comment(path)["class"] == "bell" and audio.read_comment(path)["seed"] == i
        if shutil.which("sox"):
            assert subprocess.run(["sox", "--info", str(path)], capture_output=True).returncode == 0
    with Image.open(tmp_path / "grid.png") as grid:  # three tiles of waveform over spectrogram, enlarged twice
        assert grid.size == (3 * (2 * 17 + 2) + 2, 2 * (audio.WAVE_ROWS + audio.N_MELS) + 4)
    result = runner.invoke(main, ["sample", str(run), "-n", "1", "--steps", "2", "--format", "npy", "--out",
                                  str(tmp_path / "npy"), "--quiet"])
    assert result.exit_code == 0, result.output
    wave = np.load(tmp_path / "npy" / "000000.npy")
    assert wave.shape == (1024, 1) and wave.dtype == np.float32 and np.abs(wave).max() <= 1
    result = runner.invoke(main, ["sample", str(run), "-n", "1", "--format", "png", "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and "png" in result.output and "wav, npy" in result.output
    result = runner.invoke(main, ["train", "--out", str(run), "--resume", "--steps", "3", "--quiet"])
    assert result.exit_code == 0 and "from step 2 to 3" in result.output, result.output
    for command in (["forward", "sounds", "--size", "1024"], ["reverse", str(run), "--steps", "3"]):
        result = runner.invoke(main, [*command, "--out", str(tmp_path / f"{command[0]}.png")])
        assert result.exit_code == 0, result.output
        with Image.open(tmp_path / f"{command[0]}.png") as strip:  # spectrogram tiles (96 rows twice), not 1-px lines
            assert strip.size[1] > 2 * (audio.WAVE_ROWS + audio.N_MELS)


def test_a_folder_of_audio_trains_as_audio_through_the_cli(tmp_path):
    write_folder(tmp_path / "clips")
    with pytest.warns(UserWarning, match="skipped 2 of 5 audio files"):
        result = CliRunner().invoke(main, ["train", str(tmp_path / "clips"), "--out", str(tmp_path / "run"),
                                           "--steps", "1", "--classes", "--audio-model", "waveform", *TINY_AUDIO])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["data"]["modality"], config["model"]["dims"], config["data"]["class_names"]) == (
        "audio", 1, ["bell", "hum"])


def test_forward_strip_of_a_file_that_is_not_audio_names_it(tmp_path):
    (tmp_path / "fake.wav").write_text("not audio")
    result = CliRunner().invoke(main, ["forward", str(tmp_path / "fake.wav"), "--out", str(tmp_path / "f.png")])
    assert result.exit_code == 1
    assert re.search(r"Error: cannot read .*fake\.wav as audio \(.*\); pass a file of one of: \.wav", result.output)


def test_an_image_autoencoder_is_refused_for_audio_naming_what_the_run_needs(tmp_path):
    """--autoencoder with an image autoencoder on a sound run: latents of 2-D images cannot be 1-D clips, so train
    stops before it encodes anything, with a line that says what the autoencoder encodes and what to do."""
    from helpers import train_tiny_autoencoder

    ae, run = train_tiny_autoencoder(tmp_path / "ae", steps=1), tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "sounds", "--out", str(run), "--autoencoder", str(ae), "--steps", "1",
                                       "--audio-model", "waveform", *TINY_AUDIO])
    assert result.exit_code == 1, result.output
    assert "encodes images, and this audio run needs one of 1-D samples (audio)" in result.output, result.output
    assert "Traceback" not in result.output and not (run / "checkpoint.safetensors").exists()
    # the default learns spectrograms, which no autoencoder's latents are
    result = CliRunner().invoke(main, ["train", "sounds", "--out", str(run), "--autoencoder", str(ae), "--steps", "1",
                                       *TINY_AUDIO])
    assert result.exit_code == 1 and "add --audio-model waveform, or drop --autoencoder" in result.output, result.output
    assert "Traceback" not in result.output and not (run / "checkpoint.safetensors").exists()
