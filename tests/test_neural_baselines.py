"""The gradient-trained reference mappers (baselines.mlp, .cnn, .transformer, .training): their start, recipes, seeds, budgets."""

from __future__ import annotations

import time

import pytest
import torch

import featbench as fb
from baselines import cnn, mlp, training, transformer
from baselines.linear import Linear
from featbench.scoring.runner import fit_budget

C, H, W = 6, 4, 4
TRAINED = [mlp.MLPMapper, cnn.CNNMapper, transformer.TransformerMapper, transformer.TransformerNoPosMapper]
FEATMAP = [mlp.MLPFeatMapMapper, cnn.CNNFeatMapMapper, transformer.TransformerFeatMapMapper]


def _data(n: int = 24, budget: float | None = None, prefix: bool = False, seed: int = 0) -> fb.MapData:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(C, C, generator=g) / C + torch.eye(C)
    x = torch.randn(n, C, H, W, generator=g)
    y = torch.tanh(torch.einsum("dc,nchw->ndhw", A, x)) + 0.1 * torch.randn(n, C, H, W, generator=g)
    xp = torch.randn(n, C, 1, generator=g) if prefix else None
    yp = (xp * 2 + 1) if prefix else None
    info = fb.TaskInfo("t", "bb", "l", (C, H, W), (C, 1) if prefix else None, fb.get_manipulation("noise40"),
                       0, budget)
    return fb.MapData(info, x, y, [f"i{i}" for i in range(n)], xp, yp)


def _maps(pred):
    return pred[0] if isinstance(pred, tuple) else pred


@pytest.mark.parametrize("cls", TRAINED)
@pytest.mark.parametrize("prefix", [False, True])
def test_residual_starts_exactly_at_the_linear_prediction(cls, prefix):
    train = _data(prefix=prefix)
    m = cls()
    m.max_steps = 0  # no training: the prediction is the initialisation's
    m.fit(train)
    lin = Linear()
    lin.fit(train)
    x = train.x[:5].clone()
    if prefix:
        x.prefix = train.x_prefix[:5]
    got, want = m.predict(x), lin.predict(x)
    torch.testing.assert_close(_maps(got), _maps(want), atol=1e-5, rtol=1e-5)
    if prefix and cls is cnn.CNNMapper:
        assert not isinstance(got, tuple)  # the CNN maps the grid only: no prefix tokens predicted
    elif prefix:
        torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    assert m.describe()["best_step"] == 0


@pytest.mark.parametrize("cls", FEATMAP)
def test_featmap_variants_use_featmaps_hyperparameters(cls):
    m = cls()
    assert (m.lr, m.weight_decay, m.batch_size, m.accumulation) == (1e-4, 1e-4, 32, 2)
    assert (m.plateau_patience, m.patience, m.min_delta, m.max_epochs) == (8, 6, 1e-3, 100)
    assert m.positional is False
    assert m.name.endswith("-featmap")
    train = _data()
    m.max_epochs = 2
    m.fit(train)
    opt_lr = m.lr  # the loss is FeatMap's: 0.3·MSE + 0.7·(1 − median cosine)
    p, t = torch.randn(2, 5, C), torch.randn(2, 5, C)
    cos = torch.nn.functional.cosine_similarity(p, t, dim=2).median(dim=1).values.mean()
    torch.testing.assert_close(training.recipe_loss(p, t), 0.3 * ((p - t) ** 2).mean() + 0.7 * (1 - cos))
    assert opt_lr == 1e-4 and m.describe()["epochs"] == 2


@pytest.mark.parametrize("cls", [mlp.MLPMapper, transformer.TransformerMapper, mlp.MLPFeatMapMapper])
def test_training_is_deterministic_under_a_seed(cls):
    preds = []
    for _ in range(2):
        m = cls()
        if hasattr(m, "max_steps"):
            m.max_steps = 30
        else:
            m.max_epochs = 3
        m.fit(_data())
        preds.append(_maps(m.predict(_data().x[:4])))
        assert m.describe()["stopped_by"] in ("converged", "early_stopping", "max_epochs")
    torch.testing.assert_close(preds[0], preds[1], atol=0, rtol=0)


@pytest.mark.parametrize("cls", FEATMAP)
def test_a_budget_stop_is_recorded_as_such(cls):
    m = cls()
    m.fit(_data(budget=1e-6))  # no step fits: the budget, not the schedule, ends training
    d = m.describe()
    assert d["stopped_by"] == "time_budget"
    assert d["steps"] >= 1
    assert torch.isfinite(_maps(m.predict(_data().x[:2]))).all()


@pytest.mark.parametrize("cls", TRAINED)
def test_a_budget_spent_by_the_linear_start_keeps_it_and_says_so(cls):
    # A tiny budget or a loaded machine: the closed-form start already took the budget, so the
    # mapper stops there (exactly linear) instead of overrunning and failing the task.
    train = _data(budget=1e-6)
    m = cls()
    m.fit(train)
    d = m.describe()
    assert (d["stopped_by"], d["steps"], d["best_step"], d["epochs"]) == ("time_budget", 0, 0, 0)
    lin = Linear()
    lin.fit(train)
    torch.testing.assert_close(_maps(m.predict(train.x[:4])), _maps(lin.predict(train.x[:4])), atol=1e-5, rtol=1e-5)


def _slowed(m, slow_steps: range, seconds: float):
    """`m` whose training steps in `slow_steps` (0-based) each take `seconds` more: a passing load."""
    loss, calls = m._loss, [0]

    def slow_loss(*args):
        if calls[0] in slow_steps:
            time.sleep(seconds)
        calls[0] += 1
        return loss(*args)

    m._loss = slow_loss
    return m


def test_a_slow_start_does_not_cut_the_schedule_short():
    # Steps 2-10 slowed to 0.5 s, as by another job at the start: version 3 sized its schedule from
    # them (about 60 steps in this budget) and left the rest of the budget unused. On progress, the
    # schedule runs on at the real pace and reaches its step count. (The budget leaves the other
    # 391 steps 70 ms each, ten times what they take on a quiet machine: a busy one passes too.)
    m = _slowed(mlp.MLPMapper(), range(1, 10), 0.5)
    m.max_steps, m.batch_rows, m.patience = 400, 64, 10 ** 6  # the schedule alone ends training
    m.fit(_data(n=60, budget=40.0))
    assert (m.describe()["steps"], m.describe()["stopped_by"]) == (400, "converged")


def test_a_schedule_the_budget_ends_is_recorded_as_a_budget_stop():
    m = _slowed(mlp.MLPMapper(), range(10 ** 6), 0.02)  # every step slow: 1.6 s hold about 80
    m.max_steps, m.patience = 10 ** 5, 10 ** 6
    m.fit(_data(n=60, budget=2.0))
    d = m.describe()
    assert d["stopped_by"] == "time_budget" and 1 <= d["steps"] < m.max_steps
    assert torch.isfinite(_maps(m.predict(_data().x[:2]))).all()


def test_mlp_learns_beyond_linear_on_a_nonlinear_relation():
    train, test = _data(n=60), _data(n=20, seed=1)
    lin = Linear()
    lin.fit(train)
    m = mlp.MLPMapper()
    m.fit(train)
    err = lambda p: float(((p - test.y) ** 2).mean())  # noqa: E731
    assert err(m.predict(test.x)) <= err(lin.predict(test.x))


def test_declared_budget_applies_where_neither_user_nor_suite_sets_one():
    assert fit_budget(mlp.MLPMapper, None, None) == mlp.MLPMapper.time_budget_s
    assert fit_budget(mlp.MLPMapper, 7, 20) == 7
    assert fit_budget(mlp.MLPMapper, None, 20) == 20
    assert fit_budget(Linear, None, 20) == 20
    assert fit_budget(Linear, None, None) is None
    for cls in TRAINED + FEATMAP:
        assert cls.time_budget_s and cls.time_budget_s > 0


def test_transformer_recipe_sets_dropout_positional_start_and_its_lr_group():
    """featbench's transformer trains without dropout, from a 2-D sine-cosine positional embedding
    (the prefix token's stays small and random), the embedding in its own AdamW group."""
    train = _data(prefix=True)
    m = transformer.TransformerMapper()
    m.max_steps = 0
    m.pos_lr = 3.0
    m.fit(train)
    for layer in m.net.encoder.layers:
        assert layer.self_attn.dropout == 0.0
        assert {d.p for d in (layer.dropout, layer.dropout1, layer.dropout2)} == {0.0}
    pos = m.net.pos[0]
    assert pos.shape == (1 + H * W, training.HIDDEN)
    assert pos[0].abs().max() < 0.1  # the class token: trunc_normal(0.02)
    d = training.HIDDEN // 4
    torch.testing.assert_close(pos[1:, d], torch.arange(H).repeat_interleave(W).float().cos())  # row's cos, ω = 1
    torch.testing.assert_close(pos[1:, 3 * d], torch.arange(W).repeat(H).float().cos())  # column's cos, ω = 1
    groups = m._param_groups()
    assert [g["lr_scale"] for g in groups] == [1.0, 3.0] and groups[1]["params"][0] is m.net.pos
    featmap = transformer.TransformerFeatMapMapper()
    featmap.info = train.info
    assert featmap.build(train.info).encoder.layers[0].dropout.p == 0.2  # FeatMap's recipe, untouched


def test_transformer_runs_its_whole_schedule():
    """No early stopping for featbench's transformer: its validation improves late in the cosine decay."""
    m = transformer.TransformerMapper()
    m.max_steps, m.n_checks = 40, 20
    m.fit(_data())
    assert (m.describe()["steps"], m.describe()["stopped_by"]) == (40, "converged")


class _StuckTransformer(transformer.TransformerMapper):
    """A first rate that cannot leave the linear start (0), a second that can."""

    lr, retry_lr, max_steps = 0.0, 1e-3, 10


def test_transformer_refits_at_its_second_rate_where_the_first_keeps_the_linear_start():
    stuck = _StuckTransformer()
    stuck.fit(_data())
    d = stuck.describe()
    assert d["retry"].startswith("lr 0 gained 0.00% on the linear start's validation loss over 10 steps")
    assert d["retry"].endswith("kept the refit") and d["best_step"] > 0
    assert stuck.lr == 0.0  # the second rate is the refit's only
    direct = _StuckTransformer()  # the refit is the recipe at the second rate, from the same start
    direct.lr, direct.retry_lr = 1e-3, None
    direct.fit(_data())
    assert "retry" not in direct.describe()
    torch.testing.assert_close(stuck.predict(_data().x[:4]), direct.predict(_data().x[:4]), atol=0, rtol=0)


def test_transformer_keeps_its_first_fit_where_the_refit_is_worse_on_validation():
    slight = _StuckTransformer()  # a first fit that gains a little, a refit that gains nothing
    slight.lr, slight.retry_lr = 1e-3, 0.0  # 10 steps at 1e-3 gain 0.8 % on this data
    slight.fit(_data())
    d = slight.describe()
    assert d["retry"].endswith("kept the first fit") and d["best_step"] > 0
    once = _StuckTransformer()
    once.lr, once.retry_lr = 1e-3, None
    once.fit(_data())
    torch.testing.assert_close(slight.predict(_data().x[:4]), once.predict(_data().x[:4]), atol=0, rtol=0)


def test_transformer_that_learns_at_its_first_rate_fits_once_in_half_its_budget():
    m = transformer.TransformerMapper()
    m.max_steps = 30  # at lr 3e-4, 30 steps gain 20 % of the linear start's validation loss on this data
    m.fit(_data(budget=600.0))
    d = m.describe()
    assert d["best_step"] > 0 and "retry" not in d and d["steps"] == 30
    assert m.info.time_budget_s == 300.0  # half: the other half is the second rate's
