"""What a submission's code does, and nothing else: seed, make a fresh model, fit it under its time
budget, apply it to the test inputs in checked batches. Both tracks run it here
(``--isolation none``) or in an isolated child (`featbench.scoring.isolation`), whose entry points
(`map_child_job`, `invert_child_job`) are the last section.

Every isolated child imports this module on start-up, once per task, so it imports torch and
featbench's interfaces only: never the data store, the backbones or the metrics (seconds each).
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from featbench.core.errors import FeatbenchError
from featbench.data.manipulations import get_manipulation
from featbench.interfaces.inverter import InvertData, InvertInfo, Inverter
from featbench.interfaces.mapper import MapData, Mapper, TaskInfo, with_prefix

BATCH = 64  # maps per forward pass of a mapper or a tail
INVERT_BATCH = 32  # maps per inversion
# A fit may overrun its budget by this much (the model is told the budget and should stop in
# time; the grace absorbs the last step) before it is interrupted and the task fails.
BUDGET_GRACE = 1.25


class BudgetExceeded(FeatbenchError):
    pass


def hard_limit(budget_s: float | None) -> float | None:
    """When a fit given `budget_s` seconds is interrupted."""
    return None if budget_s is None else budget_s * BUDGET_GRACE + 5


@contextlib.contextmanager
def _deadline(budget_s: float | None):
    """Interrupt the body at `hard_limit(budget_s)` (main thread only; elsewhere checked afterwards)."""
    seconds = hard_limit(budget_s)
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise BudgetExceeded(f"fit interrupted after {seconds:.0f} s: over its time budget ({budget_s:g} s)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed_fit(fit: Callable[[], Any], budget_s: float | None) -> float:
    """Run `fit` under its time budget; its wall seconds, or `BudgetExceeded` past the hard limit."""
    start = time.perf_counter()
    with _deadline(budget_s):
        fit()
    fit_s = round(time.perf_counter() - start, 3)
    limit = hard_limit(budget_s)
    if limit is not None and fit_s > limit:  # where no alarm could interrupt it (not the main thread)
        raise BudgetExceeded(f"fit took {fit_s:.0f} s, over its time budget ({budget_s:g} s)")
    return fit_s


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (before each fit, so that fits repeat)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- checked application -----------------------------------------------------------------------


def check_prediction(pred: Any, x: torch.Tensor, prefix: torch.Tensor | None):
    """(maps, predicted prefix or None) after checking type, shape, dtype and finiteness."""
    pred_prefix = None
    if isinstance(pred, tuple):
        if len(pred) != 2:
            raise FeatbenchError(f"predict returned a tuple of {len(pred)}; expected maps or (maps, prefix)")
        pred, pred_prefix = pred
    for what, got, want in (("maps", pred, x), ("prefix", pred_prefix, prefix)):
        if got is None:
            continue
        if want is None:
            raise FeatbenchError("predict returned a prefix, but this backbone's maps have none")
        if not isinstance(got, torch.Tensor):
            raise FeatbenchError(f"predict returned {type(got).__name__} {what}; expected a torch.Tensor")
        if tuple(got.shape) != tuple(want.shape):
            raise FeatbenchError(f"predict returned {what} of shape {tuple(got.shape)}; expected {tuple(want.shape)}")
        if not got.is_floating_point():
            raise FeatbenchError(f"predict returned {what} of dtype {got.dtype}; expected a floating dtype")
        if not torch.isfinite(got).all():
            bad = int((~torch.isfinite(got)).sum())
            raise FeatbenchError(f"predict returned {bad} non-finite values (NaN or inf) in its {what}")
    return pred.detach().float(), None if pred_prefix is None else pred_prefix.detach().float()


def predict_all(mapper: Mapper, x: torch.Tensor, prefix: torch.Tensor | None):
    """`mapper`'s predictions of maps `x` in batches, each checked: (maps, prefix, whether it predicted one);
    the source's prefix stands in where it predicts none."""
    maps, prefixes, any_prefix = [], [], False
    for i in range(0, len(x), BATCH):
        xb = x[i:i + BATCH].clone()
        pb = None if prefix is None else prefix[i:i + BATCH].clone()
        with torch.inference_mode():
            m, p = check_prediction(mapper.predict(with_prefix(xb, pb)), xb, pb)
        maps.append(m)
        any_prefix |= p is not None
        prefixes.append(p if p is not None else pb)
    return torch.cat(maps), (torch.cat(prefixes) if prefix is not None else None), any_prefix


def check_images(out: Any, n: int, size: int) -> torch.Tensor:
    """`out` as float32 CPU images after checking type, shape, dtype, finiteness and range."""
    if not isinstance(out, torch.Tensor):
        raise FeatbenchError(f"invert returned {type(out).__name__}; expected a torch.Tensor")
    want = (n, 3, size, size)
    if tuple(out.shape) != want:
        raise FeatbenchError(f"invert returned images of shape {tuple(out.shape)}; expected {want}")
    if not out.is_floating_point():
        raise FeatbenchError(f"invert returned images of dtype {out.dtype}; expected floats in [0, 1]")
    out = out.detach().to("cpu", torch.float32)
    if not torch.isfinite(out).all():
        raise FeatbenchError(f"invert returned {int((~torch.isfinite(out)).sum())} non-finite values (NaN or inf)")
    lo, hi = float(out.min()), float(out.max())
    if lo < 0 or hi > 1:
        raise FeatbenchError(f"invert returned values outside [0, 1] (min {lo:.4g}, max {hi:.4g})")
    return out


def invert_all(inverter: Inverter, x: torch.Tensor, prefix: torch.Tensor | None, size: int) -> torch.Tensor:
    """`inverter`'s reconstructions of maps `x` (with their prefix), in batches, each checked (`check_images`)."""
    out = []
    for i in range(0, len(x), INVERT_BATCH):
        xb = x[i:i + INVERT_BATCH].clone()
        pb = None if prefix is None else prefix[i:i + INVERT_BATCH].clone()
        with torch.inference_mode():
            out.append(check_images(inverter.invert(with_prefix(xb, pb)), len(xb), size))
    return torch.cat(out)


# --- fit, then apply ---------------------------------------------------------------------------


@dataclass
class Fitted:
    """What a model's fit and its application to the test inputs give the evaluator: the outputs
    (``pred`` and ``pred_prefix`` of a mapper; ``recon`` and ``unconditional`` of an inverter),
    timings and the model's own account (``describe()``)."""

    outputs: dict[str, torch.Tensor]
    fit_s: float
    per_s: float  # test inputs applied per second
    described: dict[str, Any]


def fit_then_apply(factory: Callable[[], Any], train: MapData | InvertData,
                   apply: Callable[[Any], dict[str, torch.Tensor]], n_test: int,
                   untimed: Callable[[Any], dict[str, torch.Tensor]] | None = None) -> Fitted:
    """Seed, make a fresh model, fit it on `train` under its budget, then `apply(model)` to the
    `n_test` test inputs (timed) and add what `untimed(model)` gives: all that a submission's code does."""
    seed_everything(train.info.seed)
    model = factory()
    fit_s = timed_fit(lambda: model.fit(train), train.info.time_budget_s)
    start = time.perf_counter()
    outputs = apply(model)
    per_s = round(n_test / max(time.perf_counter() - start, 1e-9), 3)
    if untimed is not None:
        outputs |= untimed(model)
    described = model.describe() if hasattr(model, "describe") else {}
    return Fitted(outputs, fit_s, per_s, described)


def fit_and_predict(factory: Callable[[], Mapper], train: MapData, test_x: torch.Tensor,
                    test_prefix: torch.Tensor | None) -> Fitted:
    """A mapper's fit and test predictions: ``pred``, and ``pred_prefix`` where it predicts one."""
    def apply(mapper: Mapper) -> dict[str, torch.Tensor]:
        pred, pred_prefix, predicted = predict_all(mapper, test_x, test_prefix)
        return {"pred": pred} | ({"pred_prefix": pred_prefix} if predicted else {})

    return fit_then_apply(factory, train, apply, len(test_x))


def fit_and_invert(factory: Callable[[], Inverter], train: InvertData, test_x: torch.Tensor,
                   test_prefix: torch.Tensor | None) -> Fitted:
    """An inverter's fit and reconstructions of the test maps: ``recon``, and ``unconditional``
    samples (as many, drawn after the timed inversion) where it draws them."""
    n, size = len(test_x), train.resolution

    def apply(inverter: Inverter) -> dict[str, torch.Tensor]:
        return {"recon": invert_all(inverter, test_x, test_prefix, size)}

    def unconditional(inverter: Inverter) -> dict[str, torch.Tensor]:
        if not hasattr(inverter, "invert_unconditional"):
            return {}
        with torch.inference_mode():
            return {"unconditional": check_images(inverter.invert_unconditional(n), n, size)}

    return fit_then_apply(factory, train, apply, n, unconditional)


# --- the isolated child's entry points ---------------------------------------------------------


def _plain(described: dict[str, Any]) -> dict[str, Any]:
    """A model's account as JSON values (what is not a plain value travels as its string)."""
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in described.items()}


def _sent_back(fitted: Fitted) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return fitted.outputs, {"fit_s": fitted.fit_s, "per_s": fitted.per_s, "described": _plain(fitted.described)}


def map_child_job(factory: Callable[[], Mapper], tensors: dict[str, torch.Tensor], meta: dict[str, Any]):
    """`fit_and_predict` inside an isolated child (`featbench.scoring.isolation.run_in_child`):
    from the tensors and metadata it was sent to the tensors and metadata it sends back. A
    ``linear`` account (W, b) travels as the tensors ``linear.W`` and ``linear.b``."""
    info = meta["info"]
    manipulation = get_manipulation(info["manipulation"]["name"], **info["manipulation"]["params"])
    task_info = TaskInfo(info["task_id"], info["backbone"], info["layer"], tuple(info["shape"]),
                         None if info["prefix_shape"] is None else tuple(info["prefix_shape"]), manipulation,
                         info["seed"], info["time_budget_s"])
    train = MapData(task_info, tensors["train_x"], tensors["train_y"], meta["image_ids"],
                    tensors.get("train_x_prefix"), tensors.get("train_y_prefix"))
    fitted = fit_and_predict(factory, train, tensors["test_x"], tensors.get("test_x_prefix"))
    if "linear" in fitted.described:
        W, b = fitted.described.pop("linear")
        fitted.outputs["linear.W"], fitted.outputs["linear.b"] = (v.detach().float().contiguous() for v in (W, b))
    return _sent_back(fitted)


def _received_data(prefix: str, info: InvertInfo, tensors: dict[str, torch.Tensor], rows: dict) -> InvertData:
    return InvertData(info, tensors[f"{prefix}x"], tensors[f"{prefix}images"], rows["image_ids"], rows["views"],
                      tensors.get(f"{prefix}x_prefix"))


def invert_child_job(factory: Callable[[], Inverter], tensors: dict[str, torch.Tensor], meta: dict[str, Any]):
    """`fit_and_invert` inside an isolated child (`featbench.scoring.isolation.run_in_child`):
    from the tensors and metadata it was sent to the tensors and metadata it sends back."""
    info = meta["info"]
    info = InvertInfo(**info | {"shape": tuple(info["shape"]),
                                "prefix_shape": info["prefix_shape"] and tuple(info["prefix_shape"])})
    train = _received_data("train.", info, tensors, meta["train"])
    manipulated = meta["manipulated"]
    train.manipulations = tuple(manipulated)
    train.manipulated_loader = lambda name: _received_data(f"{name}.", info, tensors, manipulated[name])
    return _sent_back(fit_and_invert(factory, train, tensors["test.x"], tensors.get("test.x_prefix")))
