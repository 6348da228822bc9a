"""Rank intervals: where a model would place if the scores moved within their bootstrap intervals."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np



Z95 = 1.959963984540054
RANK_BOOT = 1000
RANK_SEED = 0


def _ranks(values: np.ndarray, higher: np.ndarray, applies: np.ndarray | None = None) -> np.ndarray:
    """Rank (1 = best, ties share the mean of their places) of each model along axis -3, among
    the models that apply to the task, rescaled to the range of all models.

    `values`: (..., models, tasks, metrics) with NaN for missing; a missing score ranks last,
    tied with the other missing ones. `higher`: (metrics,) bool, True where higher is better.
    `applies`: (..., models, tasks) bool, default all True. With n of M models applying to a task, a place r among
    them counts as 1 + (r - 1)(M - 1)/(n - 1), so that a task where fewer models compete weighs
    as much as any other (first is 1, last is M); a lone model sits at (M + 1)/2. Models that do
    not apply get NaN.
    """
    n_models = values.shape[-3]
    if applies is None:
        applies = np.ones(values.shape[:-1], dtype=bool)
    signed = np.where(higher, values, -values)
    signed = np.where(np.isnan(signed), -np.inf, signed)
    a = signed[..., :, None, :, :]  # model i
    b = signed[..., None, :, :, :]  # model j
    rivals = applies[..., None, :, :, None]  # (..., 1, M, T, 1): model j applies
    better = ((b > a) & rivals).sum(axis=-3)
    ties = ((b == a) & rivals).sum(axis=-3) - 1
    place = better + 0.5 * ties  # 0-based place among the n applying models
    n = applies.sum(axis=-2, keepdims=True)[..., None]  # (..., 1, T, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(n > 1, 1.0 + place * (n_models - 1) / (n - 1), (n_models + 1) / 2)
    return np.where(applies[..., None], scaled, np.nan)


def rank_interval(values: np.ndarray, higher: Sequence[bool], sigma: np.ndarray | None = None,
                  n_boot: int = RANK_BOOT, seed: int = RANK_SEED, level: float = 0.95,
                  applies: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean rank of each model and its percentile-bootstrap interval.

    `values` is (models, tasks, metrics), NaN where a model has no score (a failed or missing
    task). `applies` (models, tasks; default all True) says which tasks each model is meant for
    (a mapper's declared `categories`): a model is ranked only on those, against the models that
    apply there, with places rescaled to the range of all models (`_ranks`). So a model made for
    geometric manipulations alone is neither ranked last on the others nor pushes the others'
    places there. On each (task, metric) that at least one model scored, the applying models are
    ranked (1 = best; ties share the mean of their places; a missing score ranks last); a model's
    rank on a task is its mean rank over that task's metrics, and its mean rank the mean over the
    tasks it applies to.

    The interval: each of `n_boot` seeded replicates draws the tasks with replacement and, where
    `sigma` (same shape as `values`) is given, each score from a normal distribution around it
    with that standard deviation (`sigma_from_interval`), and recomputes the mean ranks; the
    interval holds the central `level` of them. Resampling *test images* exactly would need each
    task's per-image scores, which result files do not keep; the normal draw stands in for it.
    It draws each model's score independently, whereas models are scored on the same images
    (their errors move together), so it overstates how often close models swap places: the
    rank intervals err on the wide side. With ``sigma=None`` only tasks are resampled.

    Returns (mean rank, low, high), each of shape (models,).
    """
    values = np.asarray(values, dtype=np.float64)
    higher = np.asarray(higher, dtype=bool)
    if values.ndim != 3 or higher.shape != (values.shape[2],):
        raise ValueError("values must be (models, tasks, metrics) and higher one flag per metric")
    applies = np.ones(values.shape[:2], dtype=bool) if applies is None else np.asarray(applies, dtype=bool)
    if applies.shape != values.shape[:2]:
        raise ValueError("applies must be (models, tasks)")
    scored = ~np.isnan(values).all(axis=0)  # (tasks, metrics): someone has a score
    keep = scored.any(axis=1)
    values, scored, applies = values[:, keep], scored[keep], applies[:, keep]
    if sigma is not None:
        sigma = np.nan_to_num(np.asarray(sigma, dtype=np.float64)[:, keep], nan=0.0)
    n_models, n_tasks, _ = values.shape
    if n_tasks == 0:
        nan = np.full(n_models, np.nan)
        return nan, nan.copy(), nan.copy()

    def mean_rank(v: np.ndarray, mask: np.ndarray, app: np.ndarray) -> np.ndarray:
        # v: (..., M, T, K); mask: (..., T, K); app: (..., M, T)
        r = np.where(mask[..., None, :, :], _ranks(v, higher, app), np.nan)
        with warnings.catch_warnings():  # all-NaN: a model with no task in a replicate; NaN is the answer
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.nanmean(r, axis=-1), axis=-1)

    point = mean_rank(values, scored, applies)
    rng = np.random.default_rng(seed)
    reps = np.empty((n_boot, n_models))
    chunk = 100
    for start in range(0, n_boot, chunk):
        n = min(chunk, n_boot - start)
        idx = rng.integers(0, n_tasks, size=(n, n_tasks))
        v = values[:, idx].transpose(1, 0, 2, 3)  # (n, M, T, K)
        if sigma is not None:
            v = v + rng.standard_normal(v.shape) * sigma[:, idx].transpose(1, 0, 2, 3)
        reps[start:start + n] = mean_rank(v, scored[idx], applies[:, idx].transpose(1, 0, 2))
    tail = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(reps, [tail, 1 - tail], axis=0)
    return point, low, high


def sigma_from_interval(ci_low: np.ndarray, ci_high: np.ndarray) -> np.ndarray:
    """The standard deviation of a normal whose central 95 % interval is (ci_low, ci_high)."""
    return (np.asarray(ci_high, dtype=np.float64) - np.asarray(ci_low, dtype=np.float64)) / (2 * Z95)


