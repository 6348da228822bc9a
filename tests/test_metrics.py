"""Metrics against hand-computed values on tiny arrays, limiting cases, and the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from featbench.scoring.metrics import (
    MAP_STATISTICS, Score, bootstrap, linear_structure, map_components, score_embeddings, score_logits,
    score_maps,
)


def _values(scores: dict[str, Score]) -> dict[str, float | None]:
    return {name: s.value for name, s in scores.items()}


def _maps(rows: list[list[float]]) -> torch.Tensor:
    """One image, C×1×p from a list of per-position channel vectors."""
    return torch.tensor(rows, dtype=torch.float32).T.reshape(1, len(rows[0]), 1, len(rows))


# --- maps ---------------------------------------------------------------------------------------


def test_maps_hand_computed_1x2x1x2():
    # Two positions, two channels. Y_p0 = (1, 0), Y_p1 = (0, 2); P_p0 = (1, 1), P_p1 = (0, 1).
    Y, P = _maps([[1, 0], [0, 2]]), _maps([[1, 1], [0, 1]])
    v = _values(score_maps(P, Y, n_boot=0))
    # Errors (0, −1) and (0, 1): SSE = 2 over 4 elements.
    assert v["mse"] == pytest.approx(2 / 4)
    # Channel means of Y: (0.5, 1). SST = 0.5² + 0.5² + 1² + 1² = 2.5, so r2 = 1 − 2/2.5.
    assert v["r2"] == pytest.approx(1 - 2 / 2.5)
    # cos at p0 = 1/(√2·1), at p1 = 2/(1·2) = 1; an even count: the median is their mean
    # (torch.median would give the lower one, 1/√2).
    assert v["cos_median"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)


def test_cos_median_odd_count_and_average_over_images():
    # Image 0 cosines (1, 0, −1) → median 0; image 1 cosines all 1 → median 1; mean 0.5.
    Y = torch.cat([_maps([[1, 0], [1, 0], [1, 0]]), _maps([[0, 1], [0, 2], [3, 0]])])
    P = torch.cat([_maps([[2, 0], [0, 1], [-1, 0]]), _maps([[0, 5], [0, 1], [1, 0]])])
    assert map_components(P, Y)["cos_median"].tolist() == pytest.approx([0.0, 1.0])
    assert score_maps(P, Y, n_boot=0)["cos_median"].value == pytest.approx(0.5)


def test_perfect_prediction():
    Y = torch.randn(5, 3, 4, 4)
    v = _values(score_maps(Y.clone(), Y, n_boot=0))
    assert v == pytest.approx({"mse": 0.0, "r2": 1.0, "cos_median": 1.0})


def test_channel_mean_prediction_has_r2_zero():
    Y = torch.randn(6, 3, 2, 2, dtype=torch.float64)
    P = Y.mean(dim=(0, 2, 3), keepdim=True).expand_as(Y)
    assert score_maps(P, Y, n_boot=0)["r2"].value == pytest.approx(0.0, abs=1e-12)


def test_constant_target_has_undefined_r2():
    Y = torch.ones(3, 2, 2, 2)
    assert score_maps(Y + 1, Y, n_boot=0)["r2"].value is None


def test_map_components_chunking_matches_one_pass():
    # 70 images span three chunks of the one-pass loop; the per-image values must not depend on it.
    g = torch.Generator().manual_seed(0)
    Y, P = torch.randn(70, 4, 3, 3, generator=g), torch.randn(70, 4, 3, 3, generator=g)
    c = map_components(P, Y)
    assert c["sse"][65] == pytest.approx(float(((P[65] - Y[65]).double() ** 2).sum()))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same 4-d shape"):
        score_maps(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))


# --- logits -------------------------------------------------------------------------------------


def test_logits_hand_computed():
    LP = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 2.0, 1.0]])
    LY = torch.tensor([[5.0, 0.0, 0.0], [1.0, 2.0, 0.0], [4.0, 0.0, 0.0]])
    v = _values(score_logits(LP, LY, labels=[0, 2, -1], n_boot=0))
    # argmax LP = (0, 1, 1), argmax LY = (0, 1, 0): two of three agree.
    assert v["top1_agree"] == pytest.approx(2 / 3)
    # Labelled images 0 and 1: image 0 correct (0 = 0), image 1 wrong (1 ≠ 2).
    assert v["top1_acc"] == pytest.approx(1 / 2)


def test_top1_acc_without_labels_is_none():
    L = torch.randn(4, 10)
    assert score_logits(L, L, labels=None)["top1_acc"] == Score(None, None, None)
    assert score_logits(L, L, labels=[-1] * 4, n_boot=0)["top1_acc"].value is None


def test_jsd_hand_computed_with_a_zero_probability():
    # p = softmax(0, 0) = (½, ½); q = softmax(0, −inf) = (1, 0); m = (¾, ¼).
    # KL(p‖m) = ½ log2(2/3) + ½ log2 2 = 1 − ½ log2 3;  KL(q‖m) = log2(4/3) = 2 − log2 3.
    # JSD = ½ (KL(p‖m) + KL(q‖m)) = 3/2 − ¾ log2 3.
    LP, LY = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, -math.inf]])
    assert score_logits(LP, LY, n_boot=0)["jsd"].value == pytest.approx(1.5 - 0.75 * math.log2(3))


def test_jsd_disjoint_support_is_one_bit_and_never_more():
    LP, LY = torch.tensor([[0.0, -math.inf]]), torch.tensor([[-math.inf, 0.0]])
    assert score_logits(LP, LY, n_boot=0)["jsd"].value == pytest.approx(1.0)
    far = torch.tensor([[0.0, -1e4]]), torch.tensor([[-1e4, 0.0]])
    assert 0.999 < score_logits(*far, n_boot=0)["jsd"].value <= 1.0


def test_jsd_symmetric_and_perfect():
    g = torch.Generator().manual_seed(1)
    LP, LY = 5 * torch.randn(8, 1000, generator=g), 5 * torch.randn(8, 1000, generator=g)
    forward, backward = score_logits(LP, LY, n_boot=0), score_logits(LY, LP, n_boot=0)
    assert forward["jsd"].value == pytest.approx(backward["jsd"].value, rel=1e-12)
    assert 0 < forward["jsd"].value <= 1
    same = _values(score_logits(LY, LY, n_boot=0))
    assert same["jsd"] == pytest.approx(0.0, abs=1e-12) and same["top1_agree"] == 1.0


# --- embeddings ---------------------------------------------------------------------------------


def test_emb_cos_hand_computed():
    EP, EY = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert score_embeddings(EP, EY, n_boot=0)["emb_cos"].value == pytest.approx((1 + 1 / math.sqrt(2)) / 2)


def test_retrieval_agree_three_images():
    # Targets y0 = (1, 0), y1 = (.8, .6), y2 = (0, 1): cos(y0,y1) = .8, cos(y0,y2) = 0, cos(y1,y2) = .6,
    # so the target neighbours are 0 → 1, 1 → 0, 2 → 1.
    EY = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    # Queries: (1, 0) → among {y1, y2}: y1 (agrees). (0, 1) → among {y0, y2}: y2 (≠ 0).
    # (1, .1) → among {y0, y1}: cos .995 vs .856, y0 (≠ 1). One of three agrees.
    EP = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    assert score_embeddings(EP, EY, n_boot=0)["retrieval_agree"].value == pytest.approx(1 / 3)
    assert score_embeddings(EY, EY, n_boot=0)["retrieval_agree"].value == 1.0


def test_retrieval_undefined_for_one_image():
    E = torch.ones(1, 4)
    scores = score_embeddings(E, E, n_boot=10)
    assert scores["retrieval_agree"] == Score(None, None, None)
    assert scores["emb_cos"].value == pytest.approx(1.0)


# --- bootstrap ----------------------------------------------------------------------------------


def _random_maps(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    Y = torch.randn(n, 4, 3, 3, generator=g)
    return Y + 0.5 * torch.randn(n, 4, 3, 3, generator=g), Y


def test_bootstrap_deterministic_per_seed():
    P, Y = _random_maps(30, 0)
    assert score_maps(P, Y, n_boot=200, seed=3) == score_maps(P, Y, n_boot=200, seed=3)
    assert score_maps(P, Y, n_boot=200, seed=3)["r2"] != score_maps(P, Y, n_boot=200, seed=4)["r2"]


def test_bootstrap_contains_point_estimate_and_shrinks_with_more_images():
    few, many = score_maps(*_random_maps(20, 0), n_boot=300), score_maps(*_random_maps(400, 0), n_boot=300)
    for name in MAP_STATISTICS:
        for scores in (few, many):
            assert scores[name].ci_low <= scores[name].value <= scores[name].ci_high
        assert many[name].ci_high - many[name].ci_low < few[name].ci_high - few[name].ci_low


def test_bootstrap_resamples_ratio_components_together():
    # With SSE ∝ SST image by image, every resample has the same ratio: a zero-width interval.
    components = {"sse": np.array([1.0, 2.0, 4.0]), "sst": np.array([2.0, 4.0, 8.0])}
    assert bootstrap(components, MAP_STATISTICS["r2"], n_boot=100) == pytest.approx((0.5, 0.5))


def test_bootstrap_refuses_ragged_components_and_skips_when_asked():
    with pytest.raises(ValueError, match="one entry per image"):
        bootstrap({"a": np.zeros(3), "b": np.zeros(4)}, lambda c: 0.0)
    lo, hi = bootstrap({"a": np.zeros(3)}, lambda c: 0.0, n_boot=0)
    assert math.isnan(lo) and math.isnan(hi)


# --- linear structure ---------------------------------------------------------------------------


def test_linear_structure_known_singular_values():
    W, b = torch.diag(torch.tensor([3.0, 4.0])), torch.zeros(2)
    # Positions x = (1, 0), (0, 1), (1, 1): ‖Wx‖ = 3, 4, 5 → median 4.
    X = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]).reshape(1, 2, 1, 3)
    out = linear_structure(W, b, X)
    p = np.array([9, 16]) / 25
    assert out["spectral_norm"] == pytest.approx(4.0)
    assert out["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert out["top1_variance_share"] == pytest.approx(16 / 25)
    assert out["top10_variance_share"] == out["top50_variance_share"] == pytest.approx(1.0)  # k capped at C = 2
    assert out["wx_norm_median"] == out["y_norm_median"] == pytest.approx(4.0)
    assert out["b_norm_median"] == 0.0 and out["b_share_median"] == 0.0
    assert out["wx_share_median"] == pytest.approx(1.0)


def test_linear_structure_with_bias():
    # x = (1, 0): Wx = (3, 0), b = (0, 3), Wx + b = (3, 3) with norm 3√2: both shares 1/√2.
    W, b = torch.diag(torch.tensor([3.0, 4.0])), torch.tensor([0.0, 3.0])
    out = linear_structure(W, b, torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1))
    assert out["y_norm_median"] == pytest.approx(3 * math.sqrt(2))
    assert out["wx_share_median"] == out["b_share_median"] == pytest.approx(1 / math.sqrt(2))
