"""Scores of predictions against targets on the test split: docs/design.md's "Metrics", formula by formula.

Every headline metric is computed in two steps, so that a bootstrap over test images resamples it
correctly:

1. per-image *components*: a dict of arrays of length N (one entry per test image), computed in
   one pass over the data (`map_components`, `logit_components`, `embedding_components`);
2. a *statistic*: a function from components to one number (`MAP_STATISTICS`, ...).

A mean of per-image values is one kind of statistic; a ratio such as r2 = 1 − ΣSSE/ΣSST is
another, and resampling its numerator and denominator together (rather than averaging per-image
ratios) is what keeps its interval honest. `bootstrap` resamples image indices once for all
components; `score` evaluates a set of statistics with their intervals. The entry points are
`score_maps`, `score_logits` and `score_embeddings`, and where a suite asks for them FeatMap's
`score_semantic` and `score_changed_region`; `linear_structure` analyses mappers that
expose a shared channel matrix. At the image level, `lpips` (LPIPS v0.1 on featbench's pinned
backbones) and `ssim` give one value per image pair.

All arithmetic is in float64, whatever the input dtype or device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

Components = Mapping[str, np.ndarray]
Statistic = Callable[[Components], float]

CI_LEVEL = 0.95
TOP_K_VARIANCE = (1, 10, 50)
# Images per float64 chunk: bounds the extra memory of one pass to a few chunk-sized copies.
_CHUNK = 32
# Divides by max(norm product, tiny): a zero vector then has cosine 0 with anything, as in
# torch.nn.functional.cosine_similarity, while every other cosine stays exact.
_TINY = torch.finfo(torch.float64).tiny


@dataclass(frozen=True)
class Score:
    """A point estimate with its bootstrap interval; None where undefined (no labels, no bootstrap)."""

    value: float | None
    ci_low: float | None
    ci_high: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}


# --- the bootstrap ------------------------------------------------------------------------------


def _n_images(components: Components) -> int:
    lengths = {len(v) for v in components.values()}
    if len(lengths) != 1:
        raise ValueError(f"components must all have one entry per image; got lengths {sorted(lengths)}")
    (n,) = lengths
    if n == 0:
        raise ValueError("no test images to score")
    return n


def bootstrap(components: Components, statistic: Statistic, n_boot: int = 1000,
              seed: int = 0) -> tuple[float, float]:
    """Seeded percentile bootstrap over test images: the central `CI_LEVEL` interval of `statistic`.

    Each of the `n_boot` resamples draws N image indices with replacement and applies the *same*
    indices to every component, so statistics that combine components (ratios) stay paired.
    Resamples on which the statistic is undefined (NaN, e.g. no labelled image drawn) are left
    out. Returns (nan, nan) for ``n_boot == 0`` or when no resample is defined.
    """
    n = _n_images(components)
    if n_boot == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    # One resample at a time: memory stays O(N) however many resamples are drawn.
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        stats[b] = statistic({name: values[idx] for name, values in components.items()})
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return math.nan, math.nan
    tail = (1 - CI_LEVEL) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def score(components: Components, statistics: Mapping[str, Statistic], *, n_boot: int = 1000,
          seed: int = 0) -> dict[str, Score]:
    """Each statistic's value and bootstrap interval; every statistic sees the same resamples."""
    out = {}
    for name, statistic in statistics.items():
        lo, hi = bootstrap(components, statistic, n_boot, seed)
        out[name] = Score(_finite_or_none(statistic(components)), _finite_or_none(lo), _finite_or_none(hi))
    return out


# --- shared tensor helpers ----------------------------------------------------------------------


def _cosine(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """cos(a, b) = a·b / (‖a‖ ‖b‖) along `dim`; 0 where either vector is zero."""
    dot = (a * b).sum(dim)
    return dot / (a.norm(dim=dim) * b.norm(dim=dim)).clamp_min(_TINY)


def _median(x: torch.Tensor) -> torch.Tensor:
    """True median along the last dim: the mean of the two middle values for an even count.

    (torch.median returns the lower of the two, which would bias cos_median downwards.)
    """
    s = x.sort(dim=-1).values
    n = s.shape[-1]
    return (s[..., (n - 1) // 2] + s[..., n // 2]) / 2


def _float64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x).to(torch.float64)


def _check_pair(pred: torch.Tensor, target: torch.Tensor, ndim: int, what: str) -> None:
    if pred.shape != target.shape or pred.dim() != ndim:
        raise ValueError(f"{what}: prediction and target must have the same {ndim}-d shape; "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")


# --- feature maps -------------------------------------------------------------------------------


def map_components(P: torch.Tensor, Y: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image components of the map metrics, for P and Y of shape N×C×H×W.

    - ``sse``: Σ_{c,p} (P − Y)² over the image;
    - ``sst``: Σ_{c,p} (Y − mean_Y)², mean_Y per channel over the whole test split (all images and
      positions), held fixed under resampling;
    - ``mse``: sse / (C·H·W);
    - ``cos_median``: the true median over positions p of cos(P_p, Y_p), cosine over channels.
    """
    P, Y = torch.as_tensor(P), torch.as_tensor(Y)
    _check_pair(P, Y, 4, "feature maps")
    n, c, h, w = Y.shape
    mean_y = (Y.sum(dim=(0, 2, 3), dtype=torch.float64) / (n * h * w)).view(1, c, 1, 1)
    parts: dict[str, list[torch.Tensor]] = {"sse": [], "sst": [], "cos_median": []}
    for start in range(0, n, _CHUNK):
        p, y = _float64(P[start:start + _CHUNK]), _float64(Y[start:start + _CHUNK])
        parts["sse"].append(((p - y) ** 2).sum(dim=(1, 2, 3)))
        parts["sst"].append(((y - mean_y) ** 2).sum(dim=(1, 2, 3)))
        parts["cos_median"].append(_median(_cosine(p.flatten(2), y.flatten(2), dim=1)))
    out = {name: torch.cat(chunks).cpu().numpy() for name, chunks in parts.items()}
    out["mse"] = out["sse"] / (c * h * w)
    return out


def _mse(c: Components) -> float:
    """mse = mean over all elements of (P − Y)² (every image has C·H·W elements)."""
    return float(np.mean(c["mse"]))


def _r2(c: Components) -> float:
    """r2 = 1 − Σ(P − Y)² / Σ(Y − mean_Y)²; NaN for a constant target."""
    sst = float(np.sum(c["sst"]))
    return 1 - float(np.sum(c["sse"])) / sst if sst > 0 else math.nan


def _cos_median(c: Components) -> float:
    """cos_median = mean over images of the per-image median cosine (FeatMap's aggregation)."""
    return float(np.mean(c["cos_median"]))


MAP_STATISTICS: dict[str, Statistic] = {"mse": _mse, "r2": _r2, "cos_median": _cos_median}


def score_maps(P: torch.Tensor, Y: torch.Tensor, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Score]:
    """mse, r2 and cos_median of predicted maps P against targets Y (N×C×H×W), with intervals."""
    return score(map_components(P, Y), MAP_STATISTICS, n_boot=n_boot, seed=seed)


# --- logits (backbones with a classification head) ----------------------------------------------


def logit_components(LP: torch.Tensor, LY: torch.Tensor,
                     labels: torch.Tensor | Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Per-image components from logits LP = tail(P), LY = tail(Y) (N×K) and labels (N, −1 unknown).

    - ``agree``: 1 where argmax LP = argmax LY;
    - ``jsd``: Jensen-Shannon divergence in bits between p = softmax(LP) and q = softmax(LY),
      JSD = ½ KL(p‖m) + ½ KL(q‖m) with m = (p + q)/2, in [0, 1]. Computed from log-softmax with
      log m = logaddexp(log p, log q) − log 2, and 0·log 0 = 0, so near-zero (even −inf-logit)
      probabilities are safe;
    - ``labelled``: 1 where the label is known; ``correct``: 1 where labelled and argmax LP = label.
    """
    LP, LY = _float64(LP), _float64(LY)
    _check_pair(LP, LY, 2, "logits")
    log_p, log_q = LP.log_softmax(-1), LY.log_softmax(-1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2)

    def kl_to_m(log_a: torch.Tensor) -> torch.Tensor:
        a = log_a.exp()
        return torch.where(a > 0, a * (log_a - log_m), 0.0).sum(-1)

    # Rounding can leave a hair outside [0, 1]; the divergence itself cannot be.
    jsd = ((kl_to_m(log_p) + kl_to_m(log_q)) / (2 * math.log(2))).clamp(0.0, 1.0)
    pred = LP.argmax(-1)
    labels_t = (torch.full_like(pred, -1) if labels is None
                else torch.as_tensor(labels, dtype=torch.long, device=pred.device))
    if labels_t.shape != pred.shape:
        raise ValueError(f"labels must have shape {tuple(pred.shape)}; got {tuple(labels_t.shape)}")
    labelled = labels_t >= 0
    out = {"agree": pred == LY.argmax(-1), "jsd": jsd, "labelled": labelled, "correct": labelled & (pred == labels_t)}
    return {name: t.to(torch.float64).cpu().numpy() for name, t in out.items()}


def _top1_agree(c: Components) -> float:
    """top1_agree = share of images with argmax LP = argmax LY."""
    return float(np.mean(c["agree"]))


def _jsd(c: Components) -> float:
    """jsd = mean over images of JSD(softmax(LP), softmax(LY)) in bits."""
    return float(np.mean(c["jsd"]))


def _top1_acc(c: Components) -> float:
    """top1_acc = Σ correct / Σ labelled (a ratio: the labelled count varies under resampling)."""
    n = float(np.sum(c["labelled"]))
    return float(np.sum(c["correct"])) / n if n > 0 else math.nan


LOGIT_STATISTICS: dict[str, Statistic] = {"top1_agree": _top1_agree, "jsd": _jsd, "top1_acc": _top1_acc}


def score_logits(LP: torch.Tensor, LY: torch.Tensor, labels: torch.Tensor | Sequence[int] | None = None, *,
                 n_boot: int = 1000, seed: int = 0) -> dict[str, Score]:
    """top1_agree, jsd and top1_acc (None without labels) with intervals."""
    return score(logit_components(LP, LY, labels), LOGIT_STATISTICS, n_boot=n_boot, seed=seed)


# --- FeatMap's semantic scores (suites that ask for them: ``scores: [semantic]``) ---------------


def semantic_components(LP: torch.Tensor, LY: torch.Tensor, LX: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image components from logits LP = tail(P), LY = tail(Y) and LX = tail(X), X the original
    image's map (N×K each).

    - ``agree_original``: 1 where argmax LP = argmax LX (the mapped features keep the original's class);
    - ``agree5``: 1 where argmax LY is among the 5 largest LP;
    - ``prob_delta``: |softmax(LP)[c] − softmax(LY)[c]| with c = argmax LY, how far the mapped
      features' confidence in the edited image's class is from the edited image's own.
    """
    LP, LY, LX = _float64(LP), _float64(LY), _float64(LX)
    _check_pair(LP, LY, 2, "logits")
    _check_pair(LX, LY, 2, "logits of the original")
    c = LY.argmax(-1, keepdim=True)
    top5 = LP.topk(min(5, LP.shape[-1]), dim=-1).indices
    out = {"agree_original": LP.argmax(-1) == LX.argmax(-1), "agree5": (top5 == c).any(-1),
           "prob_delta": (LP.softmax(-1).gather(-1, c) - LY.softmax(-1).gather(-1, c)).abs()[:, 0]}
    return {name: t.to(torch.float64).cpu().numpy() for name, t in out.items()}


def _top1_agree_original(c: Components) -> float:
    """top1_agree_original = share of images with argmax LP = argmax LX."""
    return float(np.mean(c["agree_original"]))


def _top5_agree(c: Components) -> float:
    """top5_agree = share of images whose argmax LY is among LP's 5 largest."""
    return float(np.mean(c["agree5"]))


def _top1_prob_delta(c: Components) -> float:
    """top1_prob_delta = mean over images of |softmax(LP)[c] − softmax(LY)[c]|, c = argmax LY."""
    return float(np.mean(c["prob_delta"]))


SEMANTIC_STATISTICS: dict[str, Statistic] = {"top1_agree_original": _top1_agree_original,
                                             "top5_agree": _top5_agree, "top1_prob_delta": _top1_prob_delta}


def score_semantic(LP: torch.Tensor, LY: torch.Tensor, LX: torch.Tensor, *, n_boot: int = 1000,
                   seed: int = 0) -> dict[str, Score]:
    """top1_agree_original, top5_agree and top1_prob_delta with intervals."""
    return score(semantic_components(LP, LY, LX), SEMANTIC_STATISTICS, n_boot=n_boot, seed=seed)


# --- the changed region (suites that ask for it: ``scores: [changed_region]``) ------------------


def changed_region_components(P: torch.Tensor, Y: torch.Tensor, changed: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image components of the map scores restricted to the positions where the manipulated
    image differs from the original (`changed`, bool N×H×W: FeatMap's masked variant).

    - ``sse``: Σ (P − Y)² over the changed positions and all channels; ``n``: C × their count;
    - ``cos_median``: the median over the changed positions of cos(P_p, Y_p) (0 where none changed);
    - ``any``: 1 where at least one position changed.
    """
    P, Y, changed = torch.as_tensor(P), torch.as_tensor(Y), torch.as_tensor(changed, dtype=torch.bool)
    _check_pair(P, Y, 4, "feature maps")
    n, c, h, w = Y.shape
    if changed.shape != (n, h, w):
        raise ValueError(f"changed must be a bool map of shape {(n, h, w)}; got {tuple(changed.shape)}")
    sse, count, cos = [], [], []
    for i in range(n):
        where = changed[i].flatten()
        p, y = _float64(P[i]).flatten(1)[:, where], _float64(Y[i]).flatten(1)[:, where]
        sse.append(float(((p - y) ** 2).sum()))
        count.append(c * int(where.sum()))
        cos.append(float(_median(_cosine(p[None], y[None], dim=1))[0]) if where.any() else 0.0)
    return {"sse": np.array(sse), "n": np.array(count, dtype=np.float64), "cos_median": np.array(cos),
            "any": np.array([x > 0 for x in count], dtype=np.float64)}


def _mse_changed(c: Components) -> float:
    """mse_changed = Σ sse / Σ n over the changed positions of all images."""
    n = float(np.sum(c["n"]))
    return float(np.sum(c["sse"])) / n if n > 0 else math.nan


def _cos_median_changed(c: Components) -> float:
    """cos_median_changed = mean over the images with a changed position of their median cosine there."""
    k = float(np.sum(c["any"]))
    return float(np.sum(c["cos_median"] * c["any"])) / k if k > 0 else math.nan


CHANGED_REGION_STATISTICS: dict[str, Statistic] = {"mse_changed": _mse_changed,
                                                   "cos_median_changed": _cos_median_changed}


def score_changed_region(P: torch.Tensor, Y: torch.Tensor, changed: torch.Tensor, *, n_boot: int = 1000,
                         seed: int = 0) -> dict[str, Score]:
    """mse_changed and cos_median_changed with intervals."""
    return score(changed_region_components(P, Y, changed), CHANGED_REGION_STATISTICS, n_boot=n_boot, seed=seed)


# --- embeddings (backbones without a head) ------------------------------------------------------


def embedding_components(EP: torch.Tensor, EY: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image components from pooled embeddings EP = tail(P), EY = tail(Y) (N×D).

    - ``cos``: cos(EP_i, EY_i);
    - ``retrieval``: 1 where the cosine nearest neighbour of EP_i among the other images' targets
      {EY_j : j ≠ i} is the one of EY_i. The gallery is the whole test split, fixed under
      resampling. NaN for fewer than two images (no neighbour exists).
    """
    EP, EY = _float64(EP), _float64(EY)
    _check_pair(EP, EY, 2, "embeddings")
    n = EY.shape[0]
    retrieval = torch.full((n,), math.nan, dtype=torch.float64)
    if n >= 2:
        gallery = EY / EY.norm(dim=1, keepdim=True).clamp_min(_TINY)
        queries = EP / EP.norm(dim=1, keepdim=True).clamp_min(_TINY)
        self_match = torch.eye(n, dtype=torch.bool, device=EY.device)
        nn_target = (gallery @ gallery.T).masked_fill(self_match, -math.inf).argmax(1)
        nn_pred = (queries @ gallery.T).masked_fill(self_match, -math.inf).argmax(1)
        retrieval = (nn_pred == nn_target).to(torch.float64)
    return {"cos": _cosine(EP, EY, dim=1).cpu().numpy(), "retrieval": retrieval.cpu().numpy()}


def _emb_cos(c: Components) -> float:
    """emb_cos = mean over images of cos(EP_i, EY_i)."""
    return float(np.mean(c["cos"]))


def _retrieval_agree(c: Components) -> float:
    """retrieval_agree = share of images whose nearest other-image neighbour agrees."""
    return float(np.mean(c["retrieval"]))


EMBEDDING_STATISTICS: dict[str, Statistic] = {"emb_cos": _emb_cos, "retrieval_agree": _retrieval_agree}


def score_embeddings(EP: torch.Tensor, EY: torch.Tensor, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Score]:
    """emb_cos and retrieval_agree (None for a single image) with intervals."""
    return score(embedding_components(EP, EY), EMBEDDING_STATISTICS, n_boot=n_boot, seed=seed)


# --- linear structure ---------------------------------------------------------------------------


def linear_structure(W: torch.Tensor, b: torch.Tensor, X: torch.Tensor) -> dict[str, float]:
    """How a shared linear map y_p = W x_p + b spends its output, over test source maps X (N×C×H×W).

    Per position p of every image: ‖Wx‖, ‖b‖ and ‖Wx + b‖ (norms over channels); reported as
    medians over all images and positions (``wx_norm_median``, ``b_norm_median``,
    ``y_norm_median``), with the medians of the shares ‖Wx‖/‖Wx+b‖ and ‖b‖/‖Wx+b‖
    (``wx_share_median``, ``b_share_median``). From the singular values s of W, with
    pᵢ = sᵢ² / Σⱼ sⱼ²: ``effective_rank`` = exp(−Σ pᵢ log pᵢ), ``spectral_norm`` = s_max, and
    ``top{k}_variance_share`` = Σ_{i≤k} pᵢ for k in `TOP_K_VARIANCE`, k capped at the number of
    singular values (so the keys are the same for every layer). W = 0 has effective rank 0 and
    variance shares 0.
    """
    W, b, X = _float64(W), _float64(b), torch.as_tensor(X)
    if W.dim() != 2 or b.shape != (W.shape[0],) or X.dim() != 4 or X.shape[1] != W.shape[1]:
        raise ValueError(f"need W (C_out×C_in), b (C_out) and X (N×C_in×H×W); got "
                         f"{tuple(W.shape)}, {tuple(b.shape)}, {tuple(X.shape)}")
    wx_norms, y_norms = [], []
    for start in range(0, X.shape[0], _CHUNK):
        wx = torch.einsum("oc,nchw->nohw", W, _float64(X[start:start + _CHUNK]).to(W.device))
        wx_norms.append(wx.norm(dim=1).flatten())
        y_norms.append((wx + b.view(1, -1, 1, 1)).norm(dim=1).flatten())
    wx_norm, y_norm, b_norm = torch.cat(wx_norms), torch.cat(y_norms), b.norm()
    out = {
        "wx_norm_median": _median(wx_norm), "b_norm_median": b_norm, "y_norm_median": _median(y_norm),
        "wx_share_median": _median(wx_norm / y_norm.clamp_min(_TINY)),
        "b_share_median": _median(b_norm / y_norm.clamp_min(_TINY)),
    }
    s = torch.linalg.svdvals(W)
    energy = s ** 2
    total = energy.sum()
    p = energy / total if total > 0 else torch.zeros_like(energy)
    out["effective_rank"] = torch.exp(-torch.special.xlogy(p, p).sum()) if total > 0 else 0.0
    out["spectral_norm"] = s.max()
    shares = p.cumsum(0)
    for k in TOP_K_VARIANCE:
        out[f"top{k}_variance_share"] = shares[min(k, len(shares)) - 1]
    return {name: float(v) for name, v in out.items()}


# --- images (image-level metrics: LPIPS and SSIM) -----------------------------------------------

# featbench's net names -> (the lpips package's net name, the asset holding its backbone).
LPIPS_NETS = {"alex": ("alex", "lpips_alex"), "vgg": ("vgg", "lpips_vgg16")}
_LPIPS_ALIASES = {"vgg16": "vgg", "alexnet": "alex"}
_LPIPS_CHUNK = 16  # image pairs per forward pass: bounds memory for large batches
# SSIM as Wang et al. (2004): an 11×11 Gaussian window of σ = 1.5, K1 = 0.01, K2 = 0.03, population
# (not sample) covariances; on [0, 1] images (data_range = 1), per channel, averaged over channels.
SSIM_PARAMS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "K1": 0.01,
               "K2": 0.03, "data_range": 1.0}

def _images_unit(images: object, what: str) -> torch.Tensor:
    """Images as a float32 N×3×H×W tensor in [0, 1] (CPU unless given as a tensor elsewhere).

    Accepted: a PIL image or a sequence of them (converted to RGB); a uint8 array H×W×3 or
    N×H×W×3 (channels last, as images are stored; divided by 255); a float array of that layout
    in [0, 1]; a torch tensor 3×H×W or N×3×H×W (channels first, as torch models take them),
    uint8 (divided by 255) or float in [0, 1].
    """
    from PIL import Image

    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{what}: no images")
        arrays = [np.asarray(im.convert("RGB")) if isinstance(im, Image.Image) else np.asarray(im)
                  for im in images]
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"{what}: images of different shapes {sorted({a.shape for a in arrays})}")
        images = np.stack(arrays)
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{what}: arrays must be H×W×3 or N×H×W×3 (channels last); got {images.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    elif isinstance(images, torch.Tensor):
        x = images.detach()
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{what}: tensors must be 3×H×W or N×3×H×W (channels first); "
                             f"got {tuple(x.shape)}")
    else:
        raise TypeError(f"{what}: expected PIL images, arrays or tensors; got {type(images).__name__}")
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255
    if not x.is_floating_point():
        raise TypeError(f"{what}: images must be uint8 or float in [0, 1]; got {x.dtype}")
    x = x.to(torch.float32)
    if x.numel() and not (bool(x.min() >= 0) and bool(x.max() <= 1)):  # NaN fails both
        raise ValueError(f"{what}: float images must lie in [0, 1]; got values in "
                         f"[{float(x.min()):.4g}, {float(x.max()):.4g}]")
    return x


def _image_pair(images_a: object, images_b: object) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _images_unit(images_a, "images_a"), _images_unit(images_b, "images_b")
    if a.shape != b.shape:
        raise ValueError(f"images_a and images_b must have the same shape N×3×H×W; "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def _lpips_net_name(net: str) -> str:
    name = _LPIPS_ALIASES.get(net, net)
    if name not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; known: {', '.join(LPIPS_NETS)}")
    return name


_LPIPS_MODELS: dict[tuple[str, str, bool], torch.nn.Module] = {}


def lpips_model(net: str = "alex", device: str | torch.device = "cpu", spatial: bool = False) -> torch.nn.Module:
    """The ``lpips`` package's LPIPS v0.1 model with featbench's pinned backbone, in eval mode.

    Built with ``pretrained=True, pnet_rand=True`` (its linear layers from the package's own
    ``weights/v0.1``, no download), then the backbone's conv layers are loaded, strictly, from the
    asset ``lpips_alex`` / ``lpips_vgg16`` (hash-verified). With `spatial`, it returns each pair's
    distance per pixel (every layer's map upsampled to the image size) instead of its mean.
    Cached per (net, device, spatial) in-process.
    """
    name = _lpips_net_name(net)
    key = (name, str(torch.device(device)), spatial)
    if key not in _LPIPS_MODELS:
        import warnings

        import lpips as lpips_package

        from featbench.zoo.assets import load_asset

        lpips_net, asset = LPIPS_NETS[name]
        with warnings.catch_warnings():  # torchvision's notice about lpips's `pretrained=False`
            warnings.simplefilter("ignore", UserWarning)
            model = lpips_package.LPIPS(net=lpips_net, pretrained=True, pnet_rand=True, spatial=spatial,
                                        verbose=False)
        # lpips splits torchvision's `features` into slices that keep the original indices as
        # their submodule names (slice2.3 is features.3), so each tensor has exactly one home.
        home = {f"features.{index}": f"{slice_name}.{index}"
                for slice_name, block in model.net.named_children() for index, _ in block.named_children()}
        backbone = {}
        for key_name, tensor in load_asset(asset).items():
            module, param = key_name.rsplit(".", 1)
            if module not in home:
                raise RuntimeError(f"LPIPS {name}: asset {asset} has {key_name}, which its backbone lacks")
            backbone[f"{home[module]}.{param}"] = tensor
        model.net.load_state_dict(backbone, strict=True)
        model.requires_grad_(False)
        _LPIPS_MODELS[key] = model.eval().to(device)
    return _LPIPS_MODELS[key]


def lpips(images_a: object, images_b: object, net: str = "alex", spatial: bool = False) -> torch.Tensor:
    """LPIPS v0.1 distance of each image pair: a float64 CPU tensor of N values (0 for equal images).

    `net` is ``"alex"`` (docs/design.md's metric) or ``"vgg"``. Images as `_images_unit` accepts them
    (PIL images, uint8 or [0, 1] float arrays N×H×W×3, tensors N×3×H×W), both sides the same
    shape; they are scaled to [-1, 1] as LPIPS expects, at their own size (no resizing). Runs
    without gradients on the device of tensor inputs, else the CPU. With `spatial`, N×H×W maps of
    the distance per pixel (`lpips_model`): where they differ from each other, not only how much.
    """
    a, b = _image_pair(images_a, images_b)
    model = lpips_model(net, a.device, spatial)
    out = []
    with torch.no_grad():
        for start in range(0, a.shape[0], _LPIPS_CHUNK):
            pa, pb = a[start:start + _LPIPS_CHUNK], b[start:start + _LPIPS_CHUNK]
            d = model(pa * 2 - 1, pb * 2 - 1).to("cpu", torch.float64)
            out.append(d[:, 0] if spatial else d.flatten())
    return torch.cat(out)


def ssim(images_a: object, images_b: object, spatial: bool = False) -> torch.Tensor:
    """Structural similarity of each image pair: a float64 CPU tensor of N values (1 for equal images).

    scikit-image's `structural_similarity` with `SSIM_PARAMS` (Wang et al.'s Gaussian window), on
    images as `_images_unit` accepts them, in [0, 1], per RGB channel and averaged. Images must be
    at least 11 px on each side (the window). With `spatial`, N×H×W maps of the SSIM per pixel
    (averaged over channels); an image's value is its map's mean over the pixels at least
    `SSIM_BORDER` px from its edges, as scikit-image leaves the window's border out.
    """
    from skimage.metrics import structural_similarity

    a, b = _image_pair(images_a, images_b)
    a_np = a.permute(0, 2, 3, 1).to("cpu", torch.float64).numpy()
    b_np = b.permute(0, 2, 3, 1).to("cpu", torch.float64).numpy()
    if min(a_np.shape[1:3]) < 11:
        raise ValueError(f"ssim: images must be at least 11×11 px (its window); got {a_np.shape[1:3]}")
    if spatial:
        return torch.from_numpy(np.stack([structural_similarity(x, y, channel_axis=-1, full=True, **SSIM_PARAMS)[1]
                                          .mean(-1) for x, y in zip(a_np, b_np)]))
    return torch.tensor([structural_similarity(x, y, channel_axis=-1, **SSIM_PARAMS)
                         for x, y in zip(a_np, b_np)], dtype=torch.float64)


# SSIM's Gaussian window reaches 5 px (truncate 3.5 σ): the border scikit-image leaves out of the mean.
SSIM_BORDER = 5


def region_components(maps: torch.Tensor, where: torch.Tensor, border: int = 0) -> dict[str, np.ndarray]:
    """Per-image components of a per-pixel score map (N×H×W) restricted to the pixels `where`
    (bool N×H×W) at least `border` px from the edges: ``sum`` of the map there and ``n``, their
    count (0 for an image with none). `mean_where_changed` makes them a score."""
    maps, where = torch.as_tensor(maps, dtype=torch.float64), torch.as_tensor(where, dtype=torch.bool)
    if maps.dim() != 3 or where.shape != maps.shape:
        raise ValueError(f"maps and where must both be N×H×W; got {tuple(maps.shape)} and {tuple(where.shape)}")
    if border:
        inner = torch.zeros_like(where)
        inner[:, border:-border, border:-border] = True
        where = where & inner
    return {"sum": (maps * where).sum((1, 2)).numpy(), "n": where.sum((1, 2)).to(torch.float64).numpy()}


def mean_where_changed(c: Components, prefix: str = "") -> float:
    """The mean over the images with a pixel in the region of their map's mean there (from
    `region_components`, its keys under `prefix`); NaN where no image has one."""
    n, total = c[prefix + "n"], c[prefix + "sum"]
    some = n > 0
    return float(np.mean(total[some] / n[some])) if some.any() else math.nan
