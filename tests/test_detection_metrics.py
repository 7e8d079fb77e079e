"""mAP against hand-worked cases, layout fidelity, and the small CenterNet on the built-in defects."""

import numpy as np
import pytest
import torch

from diffusely.data.defects import render_defects
from diffusely.metrics.detection import (average_precision, box_iou, detect, layout_fidelity, mean_average_precision,
                                         train_detector)


def test_box_iou_exact_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    assert np.allclose(box_iou(a, b), [[50 / 150, 1.0, 0.0]])


def test_average_precision_worked_example():
    """3 truths; detections by score: hit, miss, hit. Precision at recall 1/3 is 1, at 2/3 it is 2/3, never 1.
    Interpolated at 101 recalls: 34 points (0..0.33) at 1, 33 points (0.34..0.66) at 2/3, 34 at 0."""
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 3)
    assert ap == pytest.approx((34 * 1.0 + 33 * 2 / 3) / 101)
    assert average_precision(np.array([0.9]), np.array([True]), 1) == pytest.approx(1.0)
    assert np.isnan(average_precision(np.array([]), np.array([], bool), 0))


def test_map_perfect_and_shifted_detections():
    truth = [[(0, 10, 10, 30, 30)], [(1, 0, 0, 8, 8), (0, 40, 40, 50, 60)]]
    perfect = [[(c, 0.9, *b) for c, *b in image] for image in truth]
    result = mean_average_precision(perfect, truth, 2)
    assert result["mAP50"] == pytest.approx(1.0) and result["mAP50-95"] == pytest.approx(1.0)
    # every box shifted so its IoU with the truth is 0.6 (a 20-wide box moved by 5: 15*20 / (2*400 - 300) = 0.6)
    shifted = [[(0, 0.9, 15, 10, 35, 30)], [(1, 0.9, 2, 0, 10, 8), (0, 0.9, 40, 45, 50, 65)]]
    result = mean_average_precision(shifted, truth, 2)
    assert result["mAP50"] == pytest.approx(1.0)
    # matches at IoU thresholds 0.50, 0.55 and 0.60 (COCO matches at IoU >= t) of the ten
    assert result["per_class"][0]["AP50-95"] == pytest.approx(0.3)
    wrong_class = [[(1, 0.9, 10, 10, 30, 30)], []]
    assert mean_average_precision(wrong_class, truth, 2)["per_class"][0]["AP50"] == 0.0


def test_layout_fidelity_counts_found_requested_boxes():
    requested = [[(0, 0, 0, 10, 10), (1, 20, 20, 30, 30)], [(0, 5, 5, 15, 15)]]
    found = [[(0, 0.9, 0, 0, 10, 10), (1, 0.2, 20, 20, 30, 30)], [(0, 0.8, 5, 5, 15, 15), (1, 0.9, 40, 40, 50, 50)]]
    r = layout_fidelity(found, requested, 2, score_threshold=0.3)
    assert r["recall"] == pytest.approx(2 / 3) and r["precision"] == pytest.approx(2 / 3)
    assert r["per_class"][0]["recall"] == 1.0 and r["per_class"][1]["recall"] == 0.0


def test_centernet_learns_to_find_defects():
    """A brief fit on 300 built-in images finds defects on 100 held-out ones far above chance (a detector
    placing boxes at random scores near 0); stains, the largest, it already finds almost all of."""
    data = render_defects(400, size=32, seed=4)
    torch.manual_seed(0)
    net = train_detector(data.images[:300], data.boxes[:300], 4, steps=250, batch_size=32)
    found = detect(net, data.images[300:])
    result = mean_average_precision(found, data.boxes[300:], 4)
    assert result["per_class"][3]["AP50"] > 0.7, result
    assert result["mAP50"] > 0.2, result


def test_detector_and_scores_reject_what_they_cannot_take():
    with pytest.raises(ValueError, match=r"square RGB images \(N, S, S, 3\) uint8 with S a multiple of 8"):
        train_detector(np.zeros((2, 36, 36, 3), np.uint8), [[], []], 4, steps=1)
    with pytest.raises(ValueError, match="detections for 1 images and boxes for 2"):
        mean_average_precision([[]], [[], []], 2)
