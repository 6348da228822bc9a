"""The invert track on tiny random backbones: interface, targets, checkpoints, decoder, evaluator, CLI."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

import featbench as fb
from featbench.core.paths import cache_dir
from baselines.decoder import Decoder, up_stages
from featbench.interfaces import checkpoints
from featbench.interfaces.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from featbench.scoring.isolation import Isolation
from featbench.scoring.runner import RunConfig
from featbench.scoring.invert_track import evaluate_invert_task, invert_data, invert_info, run_invert_track
from featbench.data.targets import target_images
from featbench.interfaces.inverter import InvertData, InvertInfo, registered_inverters, resolve_inverter
from featbench.core.results import validate_result
from featbench.data.storage import column_array
from tests.conftest import TINY_CNN, TINY_VIT, link_lpips_weights, make_tiny_suite

# These tests are about the invert track, in-process (their checkpoints stay in the cache);
# tests/test_isolation.py scores isolated.
CFG = RunConfig(seed=0, n_boot=20, time_budget_s=60, isolation=Isolation("none"))
# Scored at 32 px (LPIPS's AlexNet needs about that much), classified by the tiny random CNN.
INVERT = {"classifier": TINY_CNN, "image_size": 32}
TASK = f"invert/{TINY_CNN}/blocks.3"


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("invert")
    real = cache_dir()  # the user's cache, read before it is redirected
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATBENCH_CACHE", str(root / "cache"))
        link_lpips_weights(real, root / "cache")
        s = make_tiny_suite(root, n_images=8, invert=INVERT)
        fb.build_suite(s, batch_size=8, progress=False)
        yield s


@pytest.fixture
def in_suite_cache(suite, monkeypatch):
    monkeypatch.setenv("FEATBENCH_CACHE", str(Path(suite.path).parent / "cache"))


class TinyDecoder(Decoder):
    config = Decoder.config.__class__(width=16, batch_size=4, max_steps=4, lpips_weight=0.0, checkpoint_every=2)


class MeanImage(fb.Inverter):
    name, version = "mean-image", "1"

    def fit(self, train):
        self.mean = train.images.mean(dim=0)

    def invert(self, x):
        return self.mean.expand(len(x), -1, -1, -1).clone()

    def invert_unconditional(self, n):
        return self.mean.expand(n, -1, -1, -1).clone()


# -- finding an inverter --------------------------------------------------------------------------

def test_baselines_are_entry_points(tmp_path):
    assert {"decoder", "featinv-tiny", "featinv-sd"} <= set(registered_inverters())
    assert resolve_inverter("decoder") is Decoder
    src = tmp_path / "my_inverter.py"
    src.write_text(textwrap.dedent("""
        import featbench as fb

        class Gray(fb.Inverter):
            name, version = "gray", "1"
            def fit(self, train):
                pass
            def invert(self, x):
                import torch
                return torch.full((len(x), 3, 32, 32), 0.5)
    """))
    assert resolve_inverter(f"{src}:Gray").name == "gray"
    with pytest.raises(fb.UnknownNameError, match="registered"):
        resolve_inverter("no-such-inverter")


# -- targets ------------------------------------------------------------------------------------

def test_targets_are_each_rows_own_view_and_cached(suite, in_suite_cache):
    data = fb.load_task(suite, TASK)
    info = invert_info(suite, suite.get_task(TASK), data, CFG)
    assert info.image_size == 32 and info.settings["classifier"] == TINY_CNN
    train = invert_data(suite, data, info, 32)
    assert train.images.shape == (len(data.train), 3, 32, 32) and train.views == list(data.train["view"])
    assert 0 <= float(train.images.min()) and float(train.images.max()) <= 1
    # View 0 at the backbone's input size is exactly the backbone's resize and center crop.
    bb = fb.load_backbone(TINY_CNN)
    full, rows = target_images(suite, TINY_CNN, "test", [64])
    source = suite.image_source()
    rec = next(r for r in source.records if r.image_id == rows[0][0])
    want = bb.resize_crop_one(source.open(rec)).round().clamp(0, 255).to(torch.uint8)
    assert rows[0][1] == 0 and torch.equal(full[64][0], want)
    cached = sorted((Path(suite.path).parent / "cache" / "images").glob("*.safetensors"))
    assert cached
    again, _ = target_images(suite, TINY_CNN, "test", [64])
    assert torch.equal(again[64], full[64])


def test_training_pairs_under_a_manipulation(suite, in_suite_cache):
    """with_manipulation gives the map task's training targets with the manipulated images, row by row."""
    data = fb.load_task(suite, TASK)
    train = invert_data(suite, data, invert_info(suite, suite.get_task(TASK), data, CFG), 32)
    assert train.manipulations == ("rot90", "noise40", "mask_tl_red")
    rot = train.with_manipulation("rot90")
    mapped = fb.load_task(suite, f"map/{TINY_CNN}/blocks.3/rot90").train
    assert rot.image_ids == train.image_ids and rot.views == train.views
    assert torch.equal(rot.x, torch.from_numpy(column_array(mapped, "y")).float())
    # Rotating then resizing equals resizing then rotating, up to the 8-bit rounding of targets.
    assert (rot.images - torch.rot90(train.images, 1, dims=(-2, -1))).abs().max() <= 1.01 / 255
    with pytest.raises(fb.DataError, match="hflip"):
        train.with_manipulation("hflip")
    with pytest.raises(fb.DataError, match="none"):  # a subset may hold out images: it offers none
        train.subset(torch.arange(3)).with_manipulation("rot90")
    test = invert_data(suite, data, invert_info(suite, suite.get_task(TASK), data, CFG), 32, "test")
    assert test.manipulations == ()


# -- checkpoints --------------------------------------------------------------------------------

def test_checkpoint_round_trip_keep_and_identity(tmp_path):
    ident = {"preset": "x", "data_sha256": "abc"}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, {"w": torch.full((3,), float(step))}, {"k": step}, ident, step=step, keep=2)
    tensors, state, step = load_checkpoint(tmp_path, ident)
    assert step == 3 and state == {"k": 3} and torch.equal(tensors["w"], torch.full((3,), 3.0))
    assert sorted(p.name for p in tmp_path.glob("step-*.safetensors")) == ["step-00000002.safetensors",
                                                                         "step-00000003.safetensors"]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind
    with pytest.raises(CheckpointError, match="another training.*data_sha256"):
        load_checkpoint(tmp_path, {"preset": "x", "data_sha256": "other"})
    assert load_checkpoint(tmp_path / "empty") is None


def test_tampered_checkpoint_is_refused(tmp_path):
    ident = {"preset": "x"}
    path = save_checkpoint(tmp_path, {"w": torch.zeros(16)}, {}, ident, step=5)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit of a weight
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="does not match its recorded sha256"):
        load_checkpoint(tmp_path, ident)


def test_optimizer_state_round_trips():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(2):
        net(torch.randn(4, 3)).sum().backward()
        opt.step()
    tensors, meta = checkpoints.optimizer_to_flat(opt)
    meta = json.loads(json.dumps(meta))  # what the record keeps
    other = torch.optim.AdamW(net.parameters(), lr=5.0)
    checkpoints.optimizer_from_flat(other, tensors, meta)
    a, b = opt.state_dict(), other.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 1e-2
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k])


def _synthetic(n: int = 12, c: int = 8, h: int = 4, r: int = 32) -> InvertData:
    g = torch.Generator().manual_seed(1)
    info = InvertInfo("invert/bb/l", "s", "bb", "l", (c, h, h), None, r, 7, None, "data-hash")
    return InvertData(info, torch.randn(n, c, h, h, generator=g), torch.rand(n, 3, r, r, generator=g),
                      [f"i{i}" for i in range(n)], [0] * n)


def test_map_and_invert_data_batch_and_split_alike():
    n, info = 12, _synthetic().info
    x = torch.arange(n).float().view(n, 1, 1, 1).expand(n, *info.shape)  # each row's maps: its index
    ids = [f"i{i // 2}" for i in range(n)]  # two views of each image
    inv = InvertData(info, x, _synthetic(n).images, ids, [i % 2 for i in range(n)])
    maps = fb.MapData(fb.TaskInfo("t", "bb", "l", info.shape, None, fb.get_manipulation("noise40"), 0, None),
                      x, x + 1, ids)
    assert [len(b) for b, _ in inv.batches(5)] == [5, 5, 2] and torch.equal(next(maps.batches(5))[0], x[:5])
    shuffled = [(data.batches(5, shuffle=True, generator=torch.Generator().manual_seed(0))) for data in (maps, inv)]
    for (mx, my), (ix, images) in zip(*shuffled, strict=True):
        rows = mx[:, 0, 0, 0].long()
        assert torch.equal(mx, ix) and torch.equal(my, mx + 1) and torch.equal(images, inv.images[rows])
    assert not torch.equal(rows, torch.arange(10, 12))  # shuffled
    (map_fit, map_val), (inv_fit, inv_val) = maps.split(0.25, seed=3), inv.split(0.25, seed=3)
    assert map_val.image_ids == inv_val.image_ids and torch.equal(map_val.x, inv_val.x) and len(inv_val) == 4
    assert not set(inv_val.image_ids) & set(inv_fit.image_ids) and len(map_fit) == 8  # whole images held out
    assert inv_val.views == [0, 1, 0, 1]


def test_resumed_training_ends_at_the_same_weights(tmp_path):
    torch.set_num_threads(1)
    data = _synthetic()
    straight = TinyDecoder()
    report = straight.train(data, directory=tmp_path / "a", max_steps=4)
    assert report.finished and report.start_step == 0
    first = TinyDecoder()
    first.train(data, directory=tmp_path / "b", max_steps=2)
    resumed = TinyDecoder()
    report = resumed.train(data, directory=tmp_path / "b", max_steps=4)
    assert report.start_step == 2 and report.step == 4
    for (k, a), (_, b) in zip(straight.net.state_dict().items(), resumed.net.state_dict().items()):
        assert torch.equal(a, b), k
    # The finished checkpoint is loaded, not trained further, by a fresh instance.
    again = TinyDecoder()
    assert again.train(data, directory=tmp_path / "b", max_steps=4).start_step == 4
    assert torch.equal(again.invert(data.x[:2]), resumed.invert(data.x[:2]))


def test_decoder_geometry(tmp_path):
    assert [up_stages(64, h) for h in (7, 14, 28, 16, 4)] == [3, 2, 1, 2, 4]
    assert up_stages(32, 4) == 3 and up_stages(16, 32) == 0
    data = _synthetic(r=32)
    d = TinyDecoder()
    d.train(data, directory=tmp_path, max_steps=1)
    out = d.invert(data.x)
    assert out.shape == (12, 3, 32, 32) and 0 <= float(out.min()) and float(out.max()) <= 1


# -- the evaluator ------------------------------------------------------------------------------

HEADLINE = {"lpips", "lpips_shuffled", "lpips_gap", "ssim", "top1_agree", "jsd", "top1_acc", "feat_cos"}


def test_invert_track_result_validates_with_reference_points(suite, in_suite_cache, tmp_path):
    tasks = [suite.get_task(TASK), suite.get_task(f"invert/{TINY_VIT}/blocks.1")]
    res = run_invert_track(TinyDecoder, suite, tasks, tmp_path / "decoder.json", CFG, progress=False)
    validate_result(res)
    assert res["track"] == "invert" and res["model"]["metadata"]["invert_settings"]["image_size"] == 32
    for t in res["tasks"]:
        assert t["status"] == "ok", t.get("reason")
        assert set(t["metrics"]) == HEADLINE and t["predict_per_s"] > 0 and t["n_params"] > 0
        assert {"mean", "downsampled"} <= set(t["reference_points"])
        down = t["reference_points"]["downsampled"]
        assert down["lpips"]["value"] == pytest.approx(0, abs=1e-6) and down["ssim"]["value"] == pytest.approx(1)
        assert down["top1_agree"]["ci_low"] is not None
        # The true images are their own: the whole shuffled distance is the gap.
        assert down["lpips_gap"]["value"] == pytest.approx(down["lpips_shuffled"]["value"])
        assert down["lpips_gap"]["value"] > 0.05
        # One image for every map ignores the condition: no gap.
        assert t["reference_points"]["mean"]["lpips_gap"]["value"] == pytest.approx(0, abs=1e-6)
        assert any(n.startswith("steps: 4/4") for n in t["notes"])
    # The decoder's checkpoint went to the cache's per-task folder.
    ckpt = Path(suite.path).parent / "cache" / "inverters" / suite.name / TINY_CNN / "blocks.3" / "decoder"
    assert (ckpt / "checkpoint.json").is_file()


def test_mean_image_inverter_scores_its_reference_point(suite, in_suite_cache, tmp_path):
    rec = evaluate_invert_task(MeanImage, suite, suite.get_task(TASK), CFG)
    assert rec.status == "ok"
    assert rec.metrics == rec.reference_points["mean"] == rec.reference_points["unconditional"]


class _Bad(fb.Inverter):
    name, version = "bad", "1"
    mode = ""

    def fit(self, train):
        if self.mode == "raise":
            raise RuntimeError("boom in fit")

    def invert(self, x):
        good = torch.full((len(x), 3, 32, 32), 0.5)
        return {"shape": good[:, :, :16], "nan": good * float("nan"), "range": good * 3, "type": good.numpy(),
                "dtype": (good * 255).to(torch.uint8)}.get(self.mode, good)


@pytest.mark.parametrize("mode,reason", [
    ("raise", "boom in fit"), ("shape", "shape"), ("nan", "non-finite"), ("range", "outside [0, 1]"),
    ("type", "torch.Tensor"), ("dtype", "dtype"),
])
def test_bad_inverter_fails_its_task_and_the_run_goes_on(suite, in_suite_cache, tmp_path, mode, reason):
    factory = type(f"Bad_{mode}", (_Bad,), {"mode": mode})
    tasks = suite.select("invert/*", track="invert")[:2]
    res = run_invert_track(factory, suite, tasks, tmp_path / "bad.json", CFG, progress=False)
    assert len(res["tasks"]) == 2
    for t in res["tasks"]:
        assert t["status"] == "failed" and reason in t["reason"]
        assert {"mean", "downsampled"} <= set(t["reference_points"])
    validate_result(res)


def test_other_resolutions_are_resized_to_the_scored_size(suite, in_suite_cache):
    class Big(MeanImage):
        resolution = 48

    rec = evaluate_invert_task(Big, suite, suite.get_task(TASK), CFG)
    assert rec.status == "ok" and any("48 px resized to 32 px" in n for n in rec.notes)


# -- command line -------------------------------------------------------------------------------

def test_cli_train_inverter_resumes_and_run_scores(suite, in_suite_cache, tmp_path, capsys):
    from featbench.cli import main

    args = ["train-inverter", "--suite", str(suite.path), "--backbone", TINY_CNN, "--layer", "blocks.3",
            "--preset", "tests.test_inverters:TinyDecoder", "--threads", "1"]
    assert main(args + ["--max-steps", "2", "--restart"]) == 0
    assert "2/2 steps (2 this session" in capsys.readouterr().out
    assert main(args + ["--max-steps", "3"]) == 0
    assert "3/3 steps (1 this session" in capsys.readouterr().out
    out = tmp_path / "mean.json"
    assert main(["run", "--track", "invert", "--suite", str(suite.path), "--tasks", TASK, "--n-boot", "10",
                 "--model", "tests.test_inverters:MeanImage", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean-image" in printed and "(mean)" in printed and "lpips" in printed
    assert json.loads(out.read_text())["tasks"][0]["status"] == "ok"
    assert main(["train-inverter", "--suite", str(suite.path), "--backbone", TINY_CNN, "--layer", "blocks.3",
                 "--preset", "tests.test_inverters:MeanImage"]) == 2
    assert "has no train()" in capsys.readouterr().err


def test_run_scores_the_trained_checkpoint_as_it_is(suite, in_suite_cache, tmp_path):
    """A run uses train-inverter's checkpoint without training it further (the result names its
    sha256, the folder is unchanged); with none, fit trains from scratch within the budget."""
    from featbench.interfaces.checkpoints import read_record
    from featbench.interfaces.inverter import checkpoint_dir

    task = suite.get_task(TASK)
    directory = checkpoint_dir(suite.name, TINY_CNN, "blocks.3", TinyDecoder.name)
    shutil.rmtree(directory, ignore_errors=True)
    task_data = fb.load_task(suite, task)
    TinyDecoder().train(invert_data(suite, task_data, invert_info(suite, task, task_data, CFG), 32, "train"),
                        directory=directory, max_steps=3)
    before = read_record(directory)["latest"]
    rec = evaluate_invert_task(TinyDecoder, suite, task, CFG)
    assert rec.status == "ok"
    assert rec.provenance == {"threads": rec.provenance["threads"], "steps": "3/4", "stopped_by": "already trained",
                              "weights_sha256": before["sha256"]}
    assert read_record(directory)["latest"] == before
    shutil.rmtree(directory)
    rec = evaluate_invert_task(TinyDecoder, suite, task, CFG)
    assert rec.status == "ok" and rec.provenance["steps"] == "4/4" and rec.provenance["stopped_by"] == "max_steps"
    assert read_record(directory)["latest"]["step"] == 4


def test_resumed_run_rescores_a_task_whose_checkpoint_was_trained_further(suite, in_suite_cache, tmp_path):
    """A resumed invert run keeps a record while the cache holds the checkpoint it names, and scores
    the task again once train-inverter has left another one (a stale score is never carried on)."""
    from featbench.interfaces.checkpoints import read_record
    from featbench.interfaces.inverter import checkpoint_dir

    task = suite.get_task(TASK)
    directory = checkpoint_dir(suite.name, TINY_CNN, "blocks.3", TinyDecoder.name)
    shutil.rmtree(directory, ignore_errors=True)
    task_data = fb.load_task(suite, task)
    train = invert_data(suite, task_data, invert_info(suite, task, task_data, CFG), 32, "train")
    TinyDecoder().train(train, directory=directory, max_steps=2)
    out = tmp_path / "resume.json"
    first = run_invert_track(TinyDecoder, suite, [task], out, CFG, progress=False)["tasks"][0]
    kept = run_invert_track(TinyDecoder, suite, [task], out, CFG, progress=False)["tasks"][0]
    assert kept == first  # same checkpoint: the record is kept as it is, fit_s included
    TinyDecoder().train(train, directory=directory, max_steps=4)
    latest = read_record(directory)["latest"]["sha256"]
    rescored = run_invert_track(TinyDecoder, suite, [task], out, CFG, progress=False)["tasks"][0]
    assert f"weights_sha256: {latest}" in rescored["notes"] and "steps: 4/4" in rescored["notes"]
    assert "steps: 2/4" in first["notes"]
    shutil.rmtree(directory)


def test_suite_invert_settings_are_hashed_only_when_given(tmp_path):
    plain = make_tiny_suite(tmp_path / "a")
    pinned = make_tiny_suite(tmp_path / "b", invert=INVERT)
    assert "invert" not in plain.spec_dict() and pinned.spec_dict()["invert"] == INVERT
    assert plain.spec_sha256() != pinned.spec_sha256()



def test_readme_example_inverter_runs(suite, in_suite_cache, tmp_path):
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(# my_inverter\.py.*?)```", readme, re.S).group(1)
    (tmp_path / "my_inverter.py").write_text(code)
    rec = evaluate_invert_task(resolve_inverter(f"{tmp_path / 'my_inverter.py'}:MeanImage"), suite,
                               suite.get_task(TASK), CFG)
    assert rec.status == "ok" and rec.metrics == rec.reference_points["mean"]
