"""Building, caching, verifying and loading task data, on tiny random backbones and made-up images."""

from __future__ import annotations

import json
import re

import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from PIL import Image
from datasets.arrow_writer import ArrowWriter
from datasets.table import MemoryMappedTable, concat_tables

import featbench as fb
from featbench.data import storage
from featbench.core.errors import DataError, UnknownNameError
from featbench.data.images import folder_source, seed_for, split_by_name, views
from featbench.data.storage import column_array, variant_refs
from tests.conftest import TINY_CNN, TINY_VIT, make_tiny_suite, write_images

N_IMAGES = 6


@pytest.fixture
def image_dir(suite) -> Path:
    return Path(suite.images["default_path"])


@pytest.fixture
def suite(tmp_path, private_cache) -> fb.Suite:
    return make_tiny_suite(tmp_path, N_IMAGES)


def _build(suite, **kw):
    return fb.build_suite(suite, batch_size=4, progress=False, **kw)


def test_build_then_load_gives_the_maps_of_the_manipulated_views(suite, image_dir):
    built, report = _build(suite)
    assert built.name == "tiny-test"
    assert len(report.built) == 3 * 4  # 3 backbone-layers × (original + 3 manipulations)
    data = fb.load_task(suite, f"map/{TINY_CNN}/blocks.3/noise40")
    assert len(data.train) == (N_IMAGES - 2) * 2 and len(data.test) == 2
    x, y = column_array(data.test, "x"), column_array(data.test, "y")
    assert x.dtype == np.float16 and x.shape == (2, 48, 4, 4) and y.shape == (2, 48, 4, 4)

    # Recompute one test row by hand through the public interface.
    bb = fb.load_backbone(TINY_CNN)
    source = folder_source(image_dir)
    test_ids = [r.image_id for r in split_by_name(source.records, 2)["test"]]
    assert list(data.test["image_id"]) == test_ids
    rec = next(r for r in source.records if r.image_id == test_ids[0])
    pre = bb.spec.preprocessing
    px = next(views(source.open(rec), 1, pre.resize, pre.crop, pre.interpolation, seed_for(3, rec.image_id)))
    noisy = fb.get_manipulation("noise40")(px[None], [seed_for(3, rec.image_id, 0, "noise40")])
    expect_x = bb.features(bb.normalize(px[None]), ["blocks.3"])["blocks.3"][0]
    expect_y = bb.features(bb.normalize(noisy), ["blocks.3"])["blocks.3"][0]
    torch.testing.assert_close(torch.from_numpy(x[0]).float(), expect_x, atol=2e-2, rtol=2e-3)
    torch.testing.assert_close(torch.from_numpy(y[0]).float(), expect_y, atol=2e-2, rtol=2e-3)
    assert not np.allclose(x, y)


def test_unmanipulated_maps_are_stored_once_and_shared(suite):
    _build(suite)
    a = fb.load_task(suite, f"map/{TINY_CNN}/blocks.1/rot90")
    b = fb.load_task(suite, f"map/{TINY_CNN}/blocks.1/mask_tl_red")
    assert a.record["x"]["key"] == b.record["x"]["key"]
    assert a.record["y"]["key"] != b.record["y"]["key"]
    inv = fb.load_task(suite, f"invert/{TINY_CNN}/blocks.1")
    assert "y" not in inv.train.column_names
    np.testing.assert_array_equal(column_array(inv.test, "x"), column_array(a.test, "x"))


def test_vit_maps_carry_their_class_token_prefix(suite):
    _build(suite, backbones=[TINY_VIT])
    data = fb.load_task(suite, f"map/{TINY_VIT}/blocks.1/rot90")
    assert column_array(data.test, "x").shape == (2, 64, 4, 4)
    assert column_array(data.test, "x_prefix").shape == (2, 64, 1)
    assert column_array(data.test, "y_prefix").shape == (2, 64, 1)


def test_second_build_reuses_everything(suite):
    _build(suite)
    _, report = _build(suite)
    assert report.built == [] and len(report.reused) == 12


@pytest.mark.parametrize("shape, prefix_shape", [((24, 16, 16), None), ((64, 4, 4), (64, 1))])
def test_a_shard_has_the_bytes_of_datasets_own_writer(tmp_path, shape, prefix_shape):
    features = storage._features_schema(shape, prefix_shape)
    n = 5
    maps = torch.randn(n, *shape).half()
    prefixes = torch.randn(n, *prefix_shape).half() if prefix_shape else None
    rows = {"image_id": [f"img{i}" for i in range(n)], "view": [0, 1] * 2 + [0], "label": list(range(n))}
    batch = {**rows, "features": maps.numpy()}
    if prefixes is not None:
        batch["prefix"] = prefixes.numpy()
    with ArrowWriter(features=features, path=str(tmp_path / "datasets.arrow")) as writer:
        writer.write_batch(batch)
        writer.finalize()
    storage._write_shard(tmp_path / "featbench.arrow", features.arrow_schema, rows["image_id"], rows["view"],
                         rows["label"], maps, prefixes)
    assert (tmp_path / "featbench.arrow").read_bytes() == (tmp_path / "datasets.arrow").read_bytes()


@pytest.mark.parametrize("shape, prefix_shape", [((24, 16, 16), None), ((64, 4, 4), (64, 1))])
@pytest.mark.parametrize("limits", [{}, {"MAX_ROW_GROUP_SIZE": "10KB", "MAX_SHARD_SIZE": "20KB"}],
                         ids=["one-file", "several-files-and-batches"])
def test_a_saved_split_has_the_bytes_of_datasets_save_to_disk(tmp_path, monkeypatch, shape, prefix_shape, limits):
    for name, value in limits.items():  # small limits: files and record batches are split as a big split's are
        monkeypatch.setattr(datasets.config, name, value)
    features = storage._features_schema(shape, prefix_shape)
    for s, n in enumerate([7, 6]):  # two shards, as a build writes them
        maps = torch.randn(n, *shape).half()
        prefixes = torch.randn(n, *prefix_shape).half() if prefix_shape else None
        storage._write_shard(tmp_path / f"shard{s}.arrow", features.arrow_schema, [f"img{s}-{i}" for i in range(n)],
                             [i % 2 for i in range(n)], list(range(n)), maps, prefixes)
    table = concat_tables([MemoryMappedTable.from_file(str(tmp_path / f"shard{s}.arrow")) for s in range(2)])
    ds = datasets.Dataset(table, fingerprint="0123456789abcdef-train")
    ds.set_format(None, columns=ds.column_names)
    ds.save_to_disk(str(tmp_path / "datasets"))
    files = storage.save_table(table.table, "0123456789abcdef-train", tmp_path / "featbench")

    ours, theirs = tmp_path / "featbench", tmp_path / "datasets"
    names = sorted(p.name for p in theirs.iterdir())
    assert sorted(p.name for p in ours.iterdir()) == names
    assert [p.name for p in files] == [name for name in names if name.endswith(".arrow")]
    for name in names:
        if name != "state.json":
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    # The state is save_to_disk's but for the fingerprint: the one given, where set_format had made another.
    theirs_state = (theirs / "state.json").read_text()
    assert (ours / "state.json").read_text() == theirs_state.replace(
        json.loads(theirs_state)["_fingerprint"], "0123456789abcdef-train")
    if limits:
        batches = sum(len(list(pa.ipc.open_stream(str(f)))) for f in files)
        assert 1 < len(files) < batches
    loaded = datasets.load_from_disk(str(ours))
    assert loaded["image_id"] == ds["image_id"] and loaded.format["columns"] == ds.column_names


def _build_interrupted_after(suite, monkeypatch, n_writes: int) -> None:
    """Build until `n_writes` shards are written, then stop as Ctrl-C would."""
    real_write = storage._write_shard
    calls = {"n": 0}

    def failing_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_writes:
            raise KeyboardInterrupt
        real_write(*args, **kwargs)

    monkeypatch.setattr(storage, "_write_shard", failing_write)
    with pytest.raises(KeyboardInterrupt):
        _build(suite)
    monkeypatch.setattr(storage, "_write_shard", real_write)


def test_interrupted_build_resumes_without_redoing_written_shards(suite, monkeypatch):
    _build_interrupted_after(suite, monkeypatch, 10)
    real_write = storage._write_shard
    counted = {"n": 0}

    def counting_write(*args, **kwargs):
        counted["n"] += 1
        real_write(*args, **kwargs)

    monkeypatch.setattr(storage, "_write_shard", counting_write)
    _, report = _build(suite)
    shards_total = 12 * 3  # 12 datasets × 3 chunks (4 train images at 2 views → 2 chunks, 1 test chunk)
    assert counted["n"] == shards_total - 10
    assert len(report.built) == 12
    resumed = fb.load_task(suite, f"map/{TINY_CNN}/blocks.3/rot90")
    monkeypatch.setattr(storage, "_write_shard", real_write)
    shutil.rmtree(Path(storage.cache_dir()) / "datasets")
    _build(suite)
    clean = fb.load_task(suite, f"map/{TINY_CNN}/blocks.3/rot90")
    np.testing.assert_array_equal(column_array(resumed.train, "y"), column_array(clean.train, "y"))


def test_splits_saved_before_an_interruption_are_saved_again_on_resume(suite, monkeypatch):
    # TINY_CNN's 8 datasets are written first, chunk by chunk: after the 16th write every train
    # shard is there, so its train splits are saved into their staging folders when the build
    # stops at the 19th, in its test chunk.
    _build_interrupted_after(suite, monkeypatch, 18)
    ref = variant_refs(suite, TINY_CNN, "blocks.3")["rot90"]
    staged = sorted(ref.path.parent.glob(f"{ref.path.name}.tmp/train/*.arrow"))
    assert staged and not ref.path.exists()
    staged[0].write_bytes(b"left by a build that was killed while saving")
    (staged[0].parent / "data-00001-of-00002.arrow").write_bytes(b"a stray file of another layout")

    _, report = _build(suite)
    assert len(report.built) == 12 and not list(ref.path.parent.glob("*.tmp"))
    resumed = fb.load_task(suite, f"map/{TINY_CNN}/blocks.3/rot90")  # verified against its recorded hashes
    def saved_files() -> dict:  # all but the record, whose creation time differs
        return {p.relative_to(ref.path): p.read_bytes() for p in ref.path.rglob("*")
                if p.is_file() and p.name != storage.RECORD}

    files = saved_files()
    shutil.rmtree(Path(storage.cache_dir()) / "datasets")
    _build(suite)
    assert files == saved_files()
    np.testing.assert_array_equal(column_array(resumed.train, "y"),
                                  column_array(fb.load_task(suite, f"map/{TINY_CNN}/blocks.3/rot90").train, "y"))


def test_corrupt_cache_entry_is_refused_then_rebuilt(suite):
    _build(suite)
    ref = variant_refs(suite, TINY_CNN, "blocks.3")["rot90"]
    arrow = next(ref.path.rglob("*.arrow"))
    blob = bytearray(arrow.read_bytes())
    blob[-100] ^= 0xFF
    arrow.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="corrupt"):
        fb.load_task(suite, f"map/{TINY_CNN}/blocks.3/rot90")
    _, report = _build(suite)
    assert report.rebuilt_corrupt == [f"{TINY_CNN}/blocks.3/rot90"]
    fb.load_task(suite, f"map/{TINY_CNN}/blocks.3/rot90")


def test_unbuilt_task_names_the_build_command(suite):
    # The suite was loaded from a file that is not registered: the command names that file.
    with pytest.raises(DataError, match=re.escape(f"featbench build --suite {suite.path}`")):
        fb.load_task(suite, f"map/{TINY_CNN}/blocks.3/rot90")


def test_wrong_image_folder_is_refused_unless_custom(suite, tmp_path):
    write_images(tmp_path / "other", N_IMAGES, seed=1)
    with pytest.raises(DataError, match="not suite tiny-test's"):
        _build(suite, images=tmp_path / "other")
    built, _ = _build(suite, images=tmp_path / "other", custom=True, backbones=[TINY_CNN])
    assert built.name.startswith("tiny-test+custom-")
    assert built.get_task(f"map/{TINY_CNN}/blocks.3/rot90")
    own = variant_refs(suite, TINY_CNN, "blocks.3")["original"].key
    assert variant_refs(built, TINY_CNN, "blocks.3")["original"].key != own


def test_tampered_image_is_refused(suite, image_dir):
    victim = sorted(image_dir.glob("*.png"))[0]
    Image.new("RGB", (90, 80), (1, 2, 3)).save(victim)  # SHA256SUMS still lists the old file
    with pytest.raises(DataError, match="does not match its manifest"):
        _build(suite)


def test_unknown_manipulation_in_a_suite_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bad", "version": 1, "images": {"kind": "folder"}, "split": {"n_test": 1},
        "views": {"train": 1, "test": 1}, "backbones": {TINY_CNN: ["blocks.1"]},
        "manipulations": ["rot45"]}))
    with pytest.raises(UnknownNameError, match="rot45"):
        fb.load_suite(path)


def test_task_selection_and_ids(suite):
    assert len(suite.select(track="map")) == 3 * 3 and len(suite.select(track="invert")) == 3
    assert [t.id for t in suite.select("map/*/blocks.1/rot90")] == [
        f"map/{TINY_CNN}/blocks.1/rot90", f"map/{TINY_VIT}/blocks.1/rot90"]
    with pytest.raises(UnknownNameError):
        suite.select("map/nothing/*")
