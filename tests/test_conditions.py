"""The conditioning seam (diffusely.conditions): a run's config lists its conditions, each kind draws its dropout
from the samples' own generators, renders training's and sampling's values alike, and mirrors with its image."""

import torch

from diffusely.conditions import KINDS, Captions, ClassLabel, Layout, Text, conditions
from diffusely.config import DataConfig, RunConfig, TextConfig
from diffusely.layout import layout_channels, pack_boxes
from diffusely.nets import UNetConfig

LAYOUTS = [[(0, 2.0, 3.0, 9.0, 7.0, 1)], [(1, 8.0, 0.0, 16.0, 12.0, -1), (0, 1.0, 10.0, 5.0, 15.0, 0)], []]


def layout_config() -> RunConfig:
    return RunConfig(model=UNetConfig(layout_channels=layout_channels(2, lines=True)),
                     data=DataConfig(image_size=16, class_names=("scratch", "dent"), layout=True))


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_the_config_lists_the_conditions_in_training_order():
    assert RunConfig().conditions == ()
    config = layout_config()
    config.model.num_classes, config.text = 4, TextConfig(encoder="scratch")
    assert config.conditions == ("class", "text", "layout")
    assert [type(c) for c in conditions(config)] == [KINDS["class"], KINDS["text"], KINDS["layout"]]


def test_a_layout_renders_alike_for_training_and_sampling_and_mirrors_with_its_image():
    config = layout_config()
    layout = Layout(config, pack_boxes(LAYOUTS))
    layout.dropout = 0.0
    rows = torch.arange(3)
    sampled = layout.given(LAYOUTS, "cpu")["layout"]
    assert sampled.shape == (3, 4, 16, 16) and sampled[:, 2].eq(1).all()  # the "layout given" flag
    assert sampled[0, 3].sum() > 0 and sampled[0, 1].sum() == 0  # the directed scratch draws its line, no dent
    assert torch.equal(layout.train(rows, gens(0, 1, 2), None)["layout"], sampled)
    mirrored = layout.train(rows, gens(0, 1, 2), torch.tensor([True, True, False]))["layout"]
    assert torch.allclose(mirrored[:2], sampled[:2].flip(-1), atol=1e-6) and torch.equal(mirrored[2], sampled[2])
    assert not torch.allclose(mirrored[:2], sampled[:2])  # the boxes are not symmetric: mirroring is seen
    assert torch.equal(layout.null(3, "cpu")["layout"], torch.zeros(3, 4, 16, 16))


def test_dropout_draws_the_null_value_from_each_samples_own_generator():
    config = layout_config()
    config.model.num_classes = 5
    labels = ClassLabel(config, torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]))
    rows = torch.arange(8)
    labels.dropout = 1.0
    assert labels.train(rows, gens(*range(8)), None)["class_labels"].eq(5).all()  # 5: the null label
    labels.dropout = 0.5
    joined = labels.train(rows, gens(*range(8)), None)["class_labels"]
    alone = torch.cat([labels.train(rows[i:i + 1], gens(i), None)["class_labels"] for i in range(8)])
    assert torch.equal(joined, alone)  # a sample's draw depends on its generator, not on its batch
    assert 0 < joined.eq(5).sum() < 8

    layout = Layout(config, pack_boxes(LAYOUTS))
    layout.dropout = 1.0
    assert layout.train(torch.arange(3), gens(0, 1, 2), None)["layout"].abs().sum() == 0


def test_text_trains_on_a_caption_or_a_paraphrase_and_drops_to_the_null_caption():
    # two images, each with its caption and one paraphrase: rows 0..3 of the table, row 4 the null caption
    captions = Captions(torch.arange(10).view(5, 2), torch.ones(5, 2, dtype=torch.bool),
                        torch.tensor([[0, 1], [2, 3]]))
    text = Text(RunConfig(), captions)
    text.dropout = 0.0
    seen = torch.stack([text.train(torch.tensor([0, 1]), gens(s, 100 + s), None)["text"] for s in range(40)])
    assert {tuple(r) for r in seen[:, 0].tolist()} == {(0, 1), (2, 3)}  # image 0: its caption or its paraphrase
    assert {tuple(r) for r in seen[:, 1].tolist()} == {(4, 5), (6, 7)}
    text.dropout = 1.0
    assert text.train(torch.tensor([0, 1]), gens(0, 1), None)["text"].tolist() == [[8, 9], [8, 9]]
    assert text.examples(3, "cpu")["text"].tolist() == [[0, 1], [4, 5], [0, 1]]  # each image's own caption

