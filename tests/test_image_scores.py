"""Image-level scores of the map track (pinned inverter checkpoints) and `featbench show`, on the tiny suite."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import featbench as fb
from baselines.decoder import Decoder, DecoderConfig
from featbench.scoring import image_scores
from featbench.interfaces.checkpoints import CheckpointError, read_record
from featbench.scoring.map_track import evaluate_map_task, run_map_track
from featbench.scoring.isolation import Isolation
NO_ISOLATION = Isolation("none")  # these tests are about image scores, in-process
from featbench.core.results import IMAGE_SCORES_KEYS, TaskRecord
from featbench.scoring.runner import Models, RunConfig, new_task_record
from featbench.scoring.invert_track import train_inverter
from featbench.core.plugins import resolve_model
from featbench.core.paths import cache_dir
from featbench.core.results import validate_result
from featbench.data.storage import column_array
from tests.conftest import TINY_CNN, TINY_VIT, link_lpips_weights, make_tiny_suite

CFG = RunConfig(seed=0, n_boot=20, time_budget_s=30, isolation=NO_ISOLATION)
INVERT = {"classifier": TINY_CNN, "image_size": 32}
PRESET = "tests.test_image_scores:TinyDecoder"
PINNED = f"map/{TINY_CNN}/blocks.3"


class TinyDecoder(Decoder):
    config = DecoderConfig(width=16, batch_size=4, max_steps=2, lpips_weight=0.0, checkpoint_every=2, lr=0.05,
                           warmup_steps=1)


def _with_pins(suite, name: str, entries: list[dict]) -> fb.Suite:
    """The same suite (same name, same data) with `entries` as its invert.image_scores."""
    raw = yaml.safe_load(Path(suite.path).read_text())
    raw["invert"] = {**INVERT, "image_scores": entries}
    path = Path(suite.path).parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return fb.load_suite(path)


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    """(pinned suite, checkpoint sha256): the tiny suite, a 2-step decoder of TINY_CNN/blocks.3, pinned."""
    root = tmp_path_factory.mktemp("image_scores")
    real = cache_dir()  # the user's cache, read before it is redirected
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATBENCH_CACHE", str(root / "cache"))
        link_lpips_weights(real, root / "cache")
        torch.set_num_threads(1)
        plain = make_tiny_suite(root, n_images=8, invert=INVERT)
        fb.build_suite(plain, batch_size=8, progress=False)
        report = train_inverter(plain, TINY_CNN, "blocks.3", PRESET, max_steps=2, progress=False)
        sha = report.weights_sha256
        pinned = _with_pins(plain, "pinned", [{"backbone": TINY_CNN, "layer": "blocks.3", "inverter": PRESET,
                                               "checkpoint_sha256": sha, "n_images": 2}])
        yield pinned, sha


@pytest.fixture
def in_cache(suites, monkeypatch):
    monkeypatch.setenv("FEATBENCH_CACHE", str(Path(suites[0].path).parent / "cache"))


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """fresh_cache(name): switch to an empty FEATBENCH_CACHE (with the converted LPIPS weights linked in)."""
    current = cache_dir()

    def switch(name: str) -> Path:
        monkeypatch.setenv("FEATBENCH_CACHE", str(tmp_path / name))
        link_lpips_weights(current, tmp_path / name)
        return tmp_path / name

    return switch


class Oracle(fb.Mapper):
    """Predicts the true target maps of the test split (it reads them): invert(P) = invert(Y)."""

    name, version = "oracle", "1"

    def fit(self, train):
        suite = fb.load_suite(os.environ["ORACLE_SUITE"])
        test = fb.load_task(suite, train.info.task_id).test
        self.x = torch.from_numpy(column_array(test, "x")).float()
        self.y = torch.from_numpy(column_array(test, "y")).float()

    def predict(self, x):
        rows = [next(i for i in range(len(self.x)) if torch.equal(self.x[i], xi)) for xi in x]
        return self.y[rows].clone()


def _assert_image_scores(scores: dict):
    for m in image_scores.METRICS:
        s = scores[m]
        assert s["value"] is not None and s["ci_low"] is not None and s["ci_high"] is not None, m
        assert s["ci_low"] <= s["value"] + 1e-9 and s["value"] <= s["ci_high"] + 1e-9, m


def test_pinned_layer_gets_image_scores_with_intervals(suites, in_cache, tmp_path):
    suite, sha = suites
    res = run_map_track(resolve_model("linear"), suite, suite.select(f"map/{TINY_CNN}/*"), tmp_path / "lin.json",
                        CFG, progress=False)
    validate_result(res)
    for t in res["tasks"]:
        assert t["status"] == "ok", t.get("reason")
        if t["layer"] == "blocks.3":
            _assert_image_scores(t["metrics"])
            for ref in t["reference_points"].values():  # identity, and spatial for rot90
                _assert_image_scores(ref)
            assert any(f"sha256 {sha[:12]}" in n and "on 2 test images at 32 px" in n for n in t["notes"])
        else:  # blocks.1 is not pinned: no image-level scores
            assert not set(image_scores.METRICS) & set(t["metrics"])
    assert "spatial" in next(t for t in res["tasks"] if t["task_id"] == f"{PINNED}/rot90")["reference_points"]
    # The leaderboard shows lpips_vs_manipulated as a map-track headline score, lower is better.
    from featbench.board.tables import headline_metrics, tidy_frame
    from featbench.scoring.summaries import LOWER_IS_BETTER

    assert "lpips_vs_manipulated" in headline_metrics(tidy_frame({"lin.json": res}), "map")
    assert {"lpips_vs_manipulated", "lpips_vs_inverted_target"} <= LOWER_IS_BETTER


def test_pinning_a_layer_later_rescores_its_tasks_and_keeps_the_others(suites, in_cache, tmp_path):
    suite, _ = suites
    unpinned = _with_pins(suite, "unpinned", [])
    out, pattern = tmp_path / "lin.json", f"map/{TINY_CNN}/*"
    first = run_map_track(resolve_model("linear"), unpinned, unpinned.select(pattern), out, CFG, progress=False)
    assert not any(set(image_scores.METRICS) & set(t["metrics"]) for t in first["tasks"])
    second = run_map_track(resolve_model("linear"), suite, suite.select(pattern), out, CFG, progress=False)
    assert second["suite"]["spec_sha256"] == suite.spec_sha256() != unpinned.spec_sha256()
    before = {t["task_id"]: t for t in first["tasks"]}
    for t in second["tasks"]:
        if t["layer"] == "blocks.3":
            _assert_image_scores(t["metrics"])
        else:
            assert t == before[t["task_id"]]  # kept as it was scored
    # Unpinning drops them again.
    third = run_map_track(resolve_model("linear"), unpinned, unpinned.select(pattern), out, CFG, progress=False)
    assert not any(set(image_scores.METRICS) & set(t["metrics"]) for t in third["tasks"])


def test_oracle_mapper_scores_zero_lpips_to_the_inverted_target(suites, in_cache, monkeypatch):
    suite, _ = suites
    monkeypatch.setenv("ORACLE_SUITE", str(suite.path))
    rec = evaluate_map_task(Oracle, suite, suite.get_task(f"{PINNED}/noise40"), CFG)
    assert rec.status == "ok", rec.reason
    m = rec.metrics
    assert m["lpips_vs_inverted_target"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert m["ssim_vs_inverted_target"]["value"] == pytest.approx(1.0)
    assert m["lpips_vs_manipulated"]["value"] > 0  # a 2-step decoder is far from the real image
    # The identity reference point (P = X) does not reconstruct the manipulated target's inversion.
    assert rec.reference_points["identity"]["lpips_vs_inverted_target"]["value"] > 0


def test_manipulated_images_are_the_manipulation_of_the_test_view(suites, in_cache):
    suite, _ = suites
    task = suite.get_task(f"{PINNED}/rot90")
    data = fb.load_task(suite, task)
    record = new_task_record(task, data, CFG)
    scorer = image_scores.for_task(suite, task, data, Models(), CFG, record)
    assert {k: record.provenance[k] for k in IMAGE_SCORES_KEYS} == {
        "image_scores n_images": "2", "image_scores resolution": "32", "image_scores inverter": PRESET,
        "image_scores checkpoint_sha256": scorer.checkpoint_sha256}
    assert scorer.rows == image_scores.subset(len(data.test), 2, suite.seed) == [0, 1]
    originals, manipulated = scorer.originals(), scorer.manipulated
    assert manipulated.dtype == torch.uint8 and manipulated.shape == (2, 3, 32, 32)
    # rot90 of the 64-px view, then resized: close to rot90 of the resized original (resizing commutes
    # with a rotation up to rounding).
    assert (manipulated.float() - torch.rot90(originals, 1, (-2, -1)).float()).abs().max() <= 1


def test_missing_checkpoint_scores_at_map_level_with_a_note_unless_required(suites, in_cache, tmp_path, capsys):
    from featbench.cli import main

    suite, sha = suites
    other = _with_pins(suite, "vit-pinned", [{"backbone": TINY_VIT, "layer": "blocks.1", "inverter": PRESET,
                                              "checkpoint_sha256": sha, "n_images": 2}])
    task = f"map/{TINY_VIT}/blocks.1/noise40"
    want = (f"featbench train-inverter --suite {other.path} --backbone {TINY_VIT} --layer blocks.1 "
            f"--preset {PRESET}")
    with pytest.warns(UserWarning, match=f"image scores unavailable for {TINY_VIT}/blocks.1"):
        rec = evaluate_map_task(resolve_model("identity"), other, other.get_task(task), CFG)
    assert rec.status == "ok", rec.reason
    assert {"r2", "emb_cos"} <= set(rec.metrics) and not set(image_scores.METRICS) & set(rec.metrics)
    assert not set(image_scores.METRICS) & set(rec.reference_points["identity"])
    why = rec.provenance[image_scores.UNAVAILABLE]  # which pin, the command, and that a new one will not match it
    assert sha in why and want in why and "sha256 will differ" in why and "map level only" in why
    # Asked for explicitly, it is an error naming the command.
    with pytest.raises(image_scores.MissingCheckpointError) as err:
        evaluate_map_task(resolve_model("identity"), other, other.get_task(task), replace(CFG, require_image_scores=True))
    assert want in str(err.value)
    base = ["run", "--suite", str(other.path), "--tasks", task, "--model", "identity", "--n-boot", "5",
            "--no-isolation"]
    assert main(base + ["--out", str(tmp_path / "req.json"), "--require-image-scores"]) == 2
    assert want in capsys.readouterr().err
    with pytest.warns(UserWarning, match="image scores unavailable"):
        assert main(base + ["--out", str(tmp_path / "id.json")]) == 0
    result = json.loads((tmp_path / "id.json").read_text())
    validate_result(result)
    assert result["tasks"][0]["provenance"][image_scores.UNAVAILABLE] == why


def test_a_map_level_record_is_kept_while_the_checkpoint_is_wanting(suites, in_cache, tmp_path):
    suite, sha = suites
    wrong = _with_pins(suite, "wrong-pin", [{"backbone": TINY_CNN, "layer": "blocks.3", "inverter": PRESET,
                                             "checkpoint_sha256": "0" * 64, "n_images": 2}])
    out, tasks = tmp_path / "id.json", wrong.select(f"{PINNED}/noise40")
    with pytest.warns(UserWarning, match="is not the one suite tiny-test pins"):
        first = run_map_track(resolve_model("identity"), wrong, tasks, out, CFG, progress=False)
    rec = TaskRecord.from_dict(first["tasks"][0])
    assert rec.status == "ok" and rec.provenance[image_scores.UNAVAILABLE]
    second = run_map_track(resolve_model("identity"), wrong, tasks, out, CFG, progress=False)
    assert second["tasks"] == first["tasks"]  # resumed: kept, not scored again
    # Where the pinned checkpoint is at hand (the suite that pins the trained one), it is scored again.
    assert not image_scores.record_is_current(suite, tasks[0], rec)


def test_a_checkpoint_trained_on_other_data_scores_at_map_level_and_says_why(suites, in_cache, tmp_path):
    """Features extracted on another machine can differ in their last bits: the pinned checkpoint
    then belongs to other data, and the task is scored at map level, kept on resume."""
    suite, sha = suites
    directory = image_scores.pinned_dir(suite, image_scores.pins(suite)[(TINY_CNN, "blocks.3")])
    record_file = directory / "checkpoint.json"
    original = record_file.read_text()
    record = json.loads(original)
    record["identity"]["data_sha256"] = "f" * 64
    record_file.write_text(json.dumps(record))
    try:
        out, tasks = tmp_path / "id.json", suite.select(f"{PINNED}/noise40")
        assert not image_scores.available(suite, image_scores.pins(suite)[(TINY_CNN, "blocks.3")])
        with pytest.warns(UserWarning, match="trained on data hashing to ffffffffffff"):
            first = run_map_track(resolve_model("identity"), suite, tasks, out, CFG, progress=False)
        task = first["tasks"][0]
        assert task["status"] == "ok" and "published data" in task["provenance"][image_scores.UNAVAILABLE]
        assert not set(image_scores.METRICS) & set(task["metrics"])
        second = run_map_track(resolve_model("identity"), suite, tasks, out, CFG, progress=False)
        assert second["tasks"] == first["tasks"]  # resumed: kept while the data still differ
    finally:
        record_file.write_text(original)
    assert image_scores.available(suite, image_scores.pins(suite)[(TINY_CNN, "blocks.3")])


def test_featbench_v1_records_stay_current_without_its_lost_decoders(private_cache):
    """featbench-v1 pins decoders that no cache here holds: its committed results, which have
    their image-level scores, are kept as they are by a resumed run."""
    v1 = fb.load_suite("featbench-v1")
    assert not any(image_scores.available(v1, pin) for pin in image_scores.pins(v1).values())
    root = Path(__file__).resolve().parents[1] / "leaderboard" / "featbench-v1" / "results"
    result = json.loads((root / "linear.json").read_text())
    last = [t for t in result["tasks"] if (t["backbone"], t["layer"]) in image_scores.pins(v1)]
    assert len(last) == 24 and all(image_scores.record_is_current(v1, v1.get_task(t["task_id"]), TaskRecord.from_dict(t))
                                 for t in last)


def test_other_or_tampered_checkpoint_is_refused(suites, in_cache):
    suite, sha = suites
    task = suite.get_task(f"{PINNED}/noise40")
    wrong = _with_pins(suite, "wrong-pin", [{"backbone": TINY_CNN, "layer": "blocks.3", "inverter": PRESET,
                                             "checkpoint_sha256": "0" * 64, "n_images": 2}])
    with pytest.raises(CheckpointError, match="is not the one suite tiny-test pins.*train-inverter"):
        evaluate_map_task(resolve_model("identity"), wrong, wrong.get_task(task.id),
                          replace(CFG, require_image_scores=True))
    directory = cache_dir() / "inverters" / suite.name / TINY_CNN / "blocks.3" / "decoder"
    path = directory / read_record(directory)["latest"]["file"]
    raw = path.read_bytes()
    try:
        flipped = bytearray(raw)
        flipped[-1] ^= 0xFF
        path.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match="does not match its recorded sha256"):
            evaluate_map_task(resolve_model("identity"), suite, task, CFG)  # an error even when not required
    finally:
        path.write_bytes(raw)


def test_show_writes_a_grid_of_nonblank_tiles(suites, in_cache, tmp_path, capsys):
    from featbench.cli import main
    from featbench.viz.show import grid_pixels, tile_pixels

    suite, _ = suites
    out = tmp_path / "grid.png"
    assert main(["show", "--suite", str(suite.path), "--tasks", f"{PINNED}/rot90", "--images", "2",
                 "--model", "identity", "--model", "linear", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    n_rows, n_cols = 2, 5  # 2 images; original, manipulated, inverted target, identity, linear
    assert Image.open(out).size == grid_pixels(n_rows, n_cols, 32)
    for r in range(n_rows):
        for c in range(n_cols):
            tile = tile_pixels(out, r, c, 32)
            assert tile.std() > 1 and not (tile == 255).all(), (r, c)  # an image, not the white background
    # Deterministic: the same call writes the same bytes.
    if os.environ.get("FEATBENCH_KEEP_SHOW"):
        Path(os.environ["FEATBENCH_KEEP_SHOW"]).write_bytes(out.read_bytes())
    again = tmp_path / "again.png"
    assert main(["show", "--suite", str(suite.path), "--tasks", f"{PINNED}/rot90", "--images", "2",
                 "--model", "identity", "--model", "linear", "--out", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    # A model that does not take the task (spatial: geometric only) gets an empty tile.
    other = tmp_path / "noise.png"
    assert main(["show", "--suite", str(suite.path), "--tasks", f"{PINNED}/noise40", "--images", "1",
                 "--model", "spatial", "--model", "identity", "--out", str(other)]) == 0
    assert (tile_pixels(other, 0, 3, 32) == 255).all() and tile_pixels(other, 0, 4, 32).std() > 1


def test_readme_pins_parse_for_featbench_v1():
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n(invert:\n  image_scores:.*?)```", readme, re.S).group(1)
    suite = fb.load_suite("featbench-v1")
    suite.invert = yaml.safe_load(block.replace("<sha256>", "ab" * 32))["invert"]
    pinned = image_scores.pins(suite)
    assert set(pinned) == {("efficientnet_lite0", "blocks.6"), ("dinov2_vits14", "blocks.11")}
    assert image_scores.train_command(suite, "efficientnet_lite0", "blocks.6", "decoder") == (
        "featbench train-inverter --suite featbench-v1 --backbone efficientnet_lite0 --layer blocks.6 --preset decoder")
    suite.invert = {"image_scores": [{"backbone": "efficientnet_lite0", "layer": "blocks.9", "inverter": "decoder",
                                      "checkpoint_sha256": "ab" * 32, "n_images": 5}]}
    with pytest.raises(fb.FeatbenchError, match="not one of its layers"):
        image_scores.pins(suite)


def test_published_folder_carries_the_pinned_checkpoint(suites, in_cache, tmp_path, fresh_cache):
    import json

    from featbench.board.publish import install_published, stage

    suite, sha = suites
    stage(suite, tmp_path / "pub", leaderboard_root=tmp_path / "no-leaderboard")
    published = tmp_path / "pub" / "inverters" / TINY_CNN / "blocks.3" / "decoder"
    assert json.loads((published / "checkpoint.json").read_text())["latest"]["sha256"] == sha
    assert len(list(published.glob("*.safetensors"))) == 1  # the pinned file only

    fresh_cache("fresh")
    assert f"inverter {TINY_CNN}/blocks.3/decoder" in install_published(tmp_path / "pub", suite)
    rec = evaluate_map_task(resolve_model("identity"), suite, suite.get_task(f"{PINNED}/noise40"), CFG)
    assert rec.status == "ok", rec.reason
    _assert_image_scores(rec.metrics)
    # A published checkpoint that does not hash to its pin is refused, and nothing is installed for it.
    weights = next(published.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"!")
    fresh_cache("fresh2")
    with pytest.raises(fb.DataError, match="does not hash to its pin"):
        install_published(tmp_path / "pub", suite)
    assert not (cache_dir() / "inverters").exists()


class VitDecoder(TinyDecoder):
    name = "tiny-decoder-vit"  # its own checkpoint folder (the missing-checkpoint test needs the ViT's empty)


def test_vit_layer_with_class_token_prefix(suites, in_cache):
    suite, _ = suites
    preset = "tests.test_image_scores:VitDecoder"
    report = train_inverter(suite, TINY_VIT, "blocks.1", preset, max_steps=2, progress=False)
    vit = _with_pins(suite, "vit-ok", [{"backbone": TINY_VIT, "layer": "blocks.1", "inverter": preset,
                                        "checkpoint_sha256": report.weights_sha256, "n_images": 2}])
    rec = evaluate_map_task(resolve_model("linear"), vit, vit.get_task(f"map/{TINY_VIT}/blocks.1/rot90"), CFG)
    assert rec.status == "ok", rec.reason
    _assert_image_scores(rec.metrics)
    _assert_image_scores(rec.reference_points["spatial"])


# -- checkpoints shipped with the suite ------------------------------------------------------------


@pytest.fixture
def shipping(suites, in_cache, capsys):
    """(suite file that ships its checkpoint, its entry): `train-inverter --export` of the trained
    decoder, pinned by the entry it prints."""
    from featbench.cli import main

    suite, _ = suites
    assert main(["train-inverter", "--suite", str(suite.path), "--backbone", TINY_CNN, "--layer", "blocks.3",
                 "--preset", PRESET, "--export"]) == 0
    printed = capsys.readouterr().out
    (entry,) = yaml.safe_load(printed[printed.index("\n  - ") + 1:])
    return _with_pins(suite, "shipping", [entry]), entry


def test_export_writes_a_small_folder_that_hashes_to_its_entry(suites, shipping, capsys):
    from featbench.cli import main
    from featbench.core.hashing import sha256_file

    suite, entry = shipping
    folder = Path(suite.path).parent / "checkpoints" / "tiny-test" / TINY_CNN / "blocks.3" / "decoder"
    assert entry == {"backbone": TINY_CNN, "layer": "blocks.3", "inverter": PRESET,
                     "checkpoint_sha256": entry["checkpoint_sha256"], "n_images": 2,
                     "checkpoint": f"checkpoints/tiny-test/{TINY_CNN}/blocks.3/decoder"}
    (shipped,) = folder.glob("*.safetensors")
    assert sha256_file(shipped) == entry["checkpoint_sha256"] == read_record(folder)["latest"]["sha256"]
    trained = cache_dir() / "inverters" / "tiny-test" / TINY_CNN / "blocks.3" / "decoder"
    full = trained / read_record(trained)["latest"]["file"]
    assert shipped.stat().st_size < full.stat().st_size / 4  # weights only (no Adam moments), float16
    assert image_scores.pins(suite)[(TINY_CNN, "blocks.3")].shipped == folder
    # An unfinished training is not exported.
    assert main(["train-inverter", "--suite", str(suite.path), "--backbone", TINY_CNN, "--layer", "blocks.3",
                 "--preset", PRESET, "--max-steps", "4", "--max-minutes", "0", "--export"]) == 2
    assert "not exported: the training stopped at step 2 of 4" in capsys.readouterr().err


def test_a_suite_shipping_its_checkpoint_scores_on_a_fresh_cache(suites, shipping, fresh_cache, recwarn):
    suite, entry = shipping
    sha, original_sha = entry["checkpoint_sha256"], suites[1]
    trained = cache_dir() / "inverters" / "tiny-test" / TINY_CNN / "blocks.3" / "decoder"
    fresh = fresh_cache("fresh")
    fb.build_suite(suite, batch_size=8, progress=False)
    task = suite.get_task(f"{PINNED}/noise40")
    rec = evaluate_map_task(resolve_model("identity"), suite, task, CFG)
    assert rec.status == "ok", rec.reason
    _assert_image_scores(rec.metrics)
    assert rec.provenance["image_scores checkpoint_sha256"] == sha and not recwarn.list
    # The same record as schema 1.1 wrote it (its provenance in its notes only) is as current.
    legacy = TaskRecord.from_dict({k: v for k, v in rec.to_dict().items() if k != "provenance"})
    assert legacy.provenance == rec.provenance | {"image_scores checkpoint_sha256": sha[:12]}
    assert image_scores.record_is_current(suite, task, rec) and image_scores.record_is_current(suite, task, legacy)
    installed = fresh / "inverters" / "tiny-test" / TINY_CNN / "blocks.3" / "decoder"
    assert read_record(installed)["latest"]["sha256"] == sha
    # A weights-only checkpoint loads as it is and is never trained further.
    with pytest.raises(CheckpointError, match="holds weights only.*--restart"):
        train_inverter(suite, TINY_CNN, "blocks.3", PRESET, max_steps=4, progress=False)
    # Another checkpoint in the way (here, the training it was exported from) is moved aside, not lost.
    installed.rename(fresh / "installed")
    shutil.copytree(trained, installed)
    with pytest.warns(UserWarning, match="held another checkpoint.*moved it to"):
        again = evaluate_map_task(resolve_model("identity"), suite, task, CFG)
    assert again.metrics == rec.metrics
    aside = installed.with_name(f"decoder.replaced-{original_sha[:12]}")
    assert read_record(aside)["latest"]["sha256"] == original_sha
    assert read_record(installed)["latest"]["sha256"] == sha


def test_a_tampered_shipped_checkpoint_is_refused(suites, shipping, fresh_cache):
    suite, entry = shipping
    folder = Path(suite.path).parent / entry["checkpoint"]
    (shipped,) = folder.glob("*.safetensors")
    shipped.write_bytes(shipped.read_bytes()[:-1] + b"!")
    fresh = fresh_cache("fresh")
    fb.build_suite(suite, batch_size=8, progress=False)
    with pytest.raises(CheckpointError, match="ships its .* checkpoint of .*blocks.3 in .*does not hash to its pin"):
        evaluate_map_task(resolve_model("identity"), suite, suite.get_task(f"{PINNED}/noise40"), CFG)
    assert not (fresh / "inverters").exists()  # nothing installed


def test_submit_check_leaves_out_image_scores_whose_checkpoint_is_not_here(suites, in_cache, tmp_path, fresh_cache):
    from featbench.board.submit_check import submit_check

    suite, sha = suites
    out = tmp_path / "identity.json"
    run_map_track(resolve_model("identity"), suite, suite.select(f"{PINNED}/noise40"), out, CFG, progress=False)
    fresh_cache("elsewhere")  # a maintainer's machine with the data and without the pinned checkpoint
    fb.build_suite(suite, batch_size=8, progress=False)
    with pytest.warns(UserWarning, match="image scores unavailable"):
        report = submit_check(out, suite=suite, sample=1, isolation=NO_ISOLATION)
    assert report.ok and report.checked == [f"{PINNED}/noise40"]
    (why,) = report.not_compared
    assert why.startswith(f"{PINNED}/noise40 image-level scores: ") and sha in why
    assert "NOT COMPARED" in report.summary()


def test_the_changed_region_gets_image_scores_of_its_own_on_local_tasks_only(suites, in_cache, monkeypatch, tmp_path):
    suite, _ = suites
    raw = yaml.safe_load(Path(suite.path).read_text()) | {"scores": ["changed_region"]}
    path = Path(suite.path).parent / "changed.yaml"
    path.write_text(yaml.safe_dump(raw))
    changed = fb.load_suite(path)
    monkeypatch.setenv("ORACLE_SUITE", str(changed.path))
    local = evaluate_map_task(Oracle, changed, changed.get_task(f"{PINNED}/mask_tl_red"), CFG)
    assert local.status == "ok", local.reason
    m = local.metrics
    assert set(image_scores.CHANGED_METRICS) <= set(m) and image_scores.metrics_of(changed, changed.get_task(
        f"{PINNED}/mask_tl_red")) == image_scores.METRICS + image_scores.CHANGED_METRICS
    # The oracle's reconstruction is invert(Y) inside the masked corner as everywhere.
    assert m["lpips_vs_inverted_target_changed"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert m["ssim_vs_inverted_target_changed"]["value"] == pytest.approx(1.0)
    assert m["lpips_vs_manipulated_changed"]["value"] > 0
    assert set(image_scores.CHANGED_METRICS) <= set(local.reference_points["identity"])
    # A photometric task changes every pixel: no changed-region scores, as at map level.
    photometric = evaluate_map_task(Oracle, changed, changed.get_task(f"{PINNED}/noise40"), CFG)
    assert not set(image_scores.CHANGED_METRICS) & set(photometric.metrics)
    # A local record scored before the suite asked for them is not current: a resumed run rescores it.
    before = evaluate_map_task(Oracle, suite, suite.get_task(f"{PINNED}/mask_tl_red"), CFG)
    task = changed.get_task(f"{PINNED}/mask_tl_red")
    assert image_scores.record_is_current(changed, task, local)
    assert not image_scores.record_is_current(changed, task, before)
    assert image_scores.record_is_current(suite, suite.get_task(f"{PINNED}/mask_tl_red"), before)
