"""Given edit pairs (the ``edit_pairs`` manipulation): the edited images reach the task data cut like
the originals' views, several datasets per suite, the imagefolder layout, and every way a pair
dataset can be wrong is a clear error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageOps

import featbench as fb
from featbench.core.errors import DataError, FeatbenchError
from featbench.data.edit_pairs import METADATA, EditPairs, add_pair, read_edit_pairs, write_edit_pairs
from featbench.data.images import seed_for, split_by_name, views
from featbench.data.storage import column_array, is_built, variant_refs
from tests.conftest import TINY_CNN, make_tiny_suite


@pytest.fixture
def base(tmp_path, private_cache) -> fb.Suite:
    return make_tiny_suite(tmp_path / "base", 6, backbones={TINY_CNN: ["blocks.3"]})


def make_pairs(suite: fb.Suite, folder: Path, edit=ImageOps.invert, skip: int = 0) -> EditPairs:
    """Pairs of all the suite's images but the first `skip`, edited by `edit` (a stand-in for a generative editor)."""
    source = suite.image_source()
    return write_edit_pairs(folder, [add_pair(folder, r.image_id, r.path, edit(source.open(r)))
                                     for r in source.records[skip:]])


def entry(label: str, pairs: EditPairs, **params) -> dict:
    return {"name": f"edit_pairs.{label}",
            "params": {"source": str(pairs.folder), "manifest_sha256": pairs.manifest_sha256, **params}}


def with_manipulations(suite: fb.Suite, manipulations: list, path: Path) -> fb.Suite:
    raw = yaml.safe_load(Path(suite.path).read_text())
    path.write_text(yaml.safe_dump({**raw, "manipulations": manipulations}))
    return fb.load_suite(path)


def _build(suite):
    return fb.build_suite(suite, batch_size=4, progress=False)


def test_targets_are_the_maps_of_the_edited_images_cut_like_the_originals(base, tmp_path):
    pairs = make_pairs(base, tmp_path / "inverted")
    suite = with_manipulations(base, [entry("inverted", pairs)], tmp_path / "s.yaml")
    assert [t.id for t in suite.select(track="map")] == [f"map/{TINY_CNN}/blocks.3/edit_pairs.inverted"]
    assert suite.get_task(f"map/{TINY_CNN}/blocks.3/edit_pairs.inverted").category == "semantic"
    _build(suite)
    data = fb.load_task(suite, f"map/{TINY_CNN}/blocks.3/edit_pairs.inverted")

    # Every row by hand: the edited file, cut like that view of the original (random train views too).
    bb, source = fb.load_backbone(TINY_CNN), suite.image_source()
    pre = bb.spec.preprocessing
    for split in ("train", "test"):
        ds, records = getattr(data, split), {r.image_id: r for r in split_by_name(source.records, 2)[split]}
        expected = []
        for image_id, view in zip(ds["image_id"], ds["view"]):
            with Image.open(pairs.folder / f"edited/{image_id}.png") as edited:
                px = list(views(edited.convert("RGB"), suite.views[split], pre.resize, pre.crop, pre.interpolation,
                                seed_for(suite.seed, image_id)))[view]
            expected.append(bb.features(bb.normalize(px[None]), ["blocks.3"])["blocks.3"][0])
        torch.testing.assert_close(torch.from_numpy(column_array(ds, "y")).float(), torch.stack(expected),
                                   atol=2e-2, rtol=2e-3)
        assert not np.allclose(column_array(ds, "x"), column_array(ds, "y"))
        assert set(ds["image_id"]) == set(records)


def test_a_suite_lists_several_edit_pair_datasets_by_label_and_each_gets_its_own_data(base, tmp_path):
    inverted, gray = make_pairs(base, tmp_path / "inv"), make_pairs(base, tmp_path / "gray", ImageOps.grayscale)
    suite = with_manipulations(base, [entry("inverted", inverted), entry("gray", gray)], tmp_path / "s.yaml")
    refs = variant_refs(suite, TINY_CNN, "blocks.3")
    assert refs["edit_pairs.inverted"].key != refs["edit_pairs.gray"].key
    assert suite.to_yaml_dict()["manipulations"] == [entry("inverted", inverted), entry("gray", gray)]

    with pytest.raises(FeatbenchError, match=r"lists the manipulation 'edit_pairs' 2 times.*edit_pairs\.LABEL"):
        with_manipulations(base, [entry("x", inverted) | {"name": "edit_pairs"}, entry("y", gray) | {"name": "edit_pairs"}],
                           tmp_path / "twice.yaml")
    with pytest.raises(FeatbenchError, match="label after the dot"):
        fb.get_manipulation("edit_pairs.blue body")


def test_the_layout_is_a_hugging_face_imagefolder(base, tmp_path):
    import datasets

    pairs = make_pairs(base, tmp_path / "inverted")
    ds = datasets.load_dataset("imagefolder", data_dir=str(pairs.folder), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert sorted(ds["image_id"]) == sorted(r.image_id for r in base.image_source().records)
    row = ds[0]
    source = {r.image_id: r for r in base.image_source().records}[row["image_id"]]
    with Image.open(source.path) as original:
        assert np.array_equal(np.array(row["original"].convert("RGB")), np.array(original.convert("RGB")))
        assert np.array_equal(np.array(row["edited"].convert("RGB")), np.array(ImageOps.invert(original.convert("RGB"))))
    assert row["edited_sha256"] == pairs.pairs[row["image_id"]].edited_sha256


def _build_error(suite) -> str:
    with pytest.raises(DataError) as err:
        _build(suite)
    return str(err.value)


def test_a_tampered_edit_is_refused_and_nothing_is_built(base, tmp_path):
    pairs = make_pairs(base, tmp_path / "inverted")
    suite = with_manipulations(base, [entry("inverted", pairs)], tmp_path / "s.yaml")
    victim = pairs.folder / f"edited/{base.image_source().records[0].image_id}.png"
    Image.new("RGB", (8, 8)).save(victim)
    assert re.search(rf"{re.escape(str(victim))} does not match its sha256 in .*{METADATA}", _build_error(suite))
    assert not any(is_built(ref) for ref in variant_refs(suite, TINY_CNN, "blocks.3").values()
                   if ref.variant != "original")


def test_pairs_that_do_not_match_the_pinned_manifest_are_refused(base, tmp_path):
    pairs = make_pairs(base, tmp_path / "inverted")
    other = make_pairs(base, tmp_path / "gray", ImageOps.grayscale)
    suite = with_manipulations(base, [entry("inverted", pairs, manifest_sha256=other.manifest_sha256)],
                               tmp_path / "s.yaml")
    assert re.search(rf"{re.escape(str(pairs.folder / METADATA))} hash to {pairs.manifest_sha256[:16]}…, the suite "
                     rf"pins {other.manifest_sha256[:16]}…", _build_error(suite))


def test_missing_pairs_name_the_image(base, tmp_path):
    pairs = make_pairs(base, tmp_path / "inverted", skip=1)  # pinned as it is: one image has no edit
    suite = with_manipulations(base, [entry("inverted", pairs)], tmp_path / "s.yaml")
    first = base.image_source().records[0].image_id
    assert re.search(rf"has no edit of 1 of the \d+ (train|test) images of the suite, e.g. '{first}'", _build_error(suite))


def test_edits_of_other_images_are_refused(base, tmp_path):
    others = make_tiny_suite(tmp_path / "other", 6, backbones={TINY_CNN: ["blocks.3"]})
    for path in Path(others.images["default_path"]).glob("*.png"):  # same names, other pixels
        Image.fromarray(np.asarray(Image.open(path))[::-1].copy()).save(path)
    source = base.image_source()
    folder = tmp_path / "pairs"
    pairs = write_edit_pairs(folder, [add_pair(folder, r.image_id, Path(others.images["default_path"]) / r.image_id,
                                               ImageOps.invert(source.open(r))) for r in source.records])
    suite = with_manipulations(base, [entry("inverted", pairs)], tmp_path / "s.yaml")
    assert re.search(r"the edit of 'img\d\d.png' was made from a file with sha256 \w+…, the suite's image has \w+…",
                     _build_error(suite))


@pytest.mark.parametrize("line, problem", [
    ("{not json", r"line 2 is not valid JSON"),
    ('["a list"]', r"line 2 is not a JSON object"),
    ('{"image_id": "x.png"}', r"line 2 lacks original_file_name, edited_file_name, original_sha256, edited_sha256"),
    ('{"image_id": "x.png", "original_file_name": "o", "edited_file_name": "e", "original_sha256": "abc", '
     '"edited_sha256": "abc"}', r"line 2: original_sha256 'abc' is not a sha256"),
    ('{"image_id": "x.png", "original_file_name": "../o", "edited_file_name": "e", "original_sha256": "' + "0" * 64
     + '", "edited_sha256": "' + "0" * 64 + '"}', r"line 2: original_file_name '../o' must be a path inside the folder"),
])
def test_a_malformed_metadata_file_names_the_line_and_the_problem(base, tmp_path, line, problem):
    pairs = make_pairs(base, tmp_path / "inverted")
    metadata = pairs.metadata_path
    lines = metadata.read_text().splitlines()
    metadata.write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=re.escape(str(metadata)) + ", " + problem):
        read_edit_pairs(pairs.folder)
    duplicate = "\n".join([lines[0], *lines]) + "\n"
    metadata.write_text(duplicate)
    with pytest.raises(DataError, match=rf"line 2: image '{json.loads(lines[0])['image_id']}' has a pair already"):
        read_edit_pairs(pairs.folder)


def test_hub_pairs_offline_name_the_repo_and_the_way_round(base, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # no hub, here or anywhere
    suite = with_manipulations(base, [{"name": "edit_pairs.blue", "params": {
        "source": "hf:someone/blue-edits@0123abc", "manifest_sha256": "0" * 64}}], tmp_path / "s.yaml")
    message = _build_error(suite)
    assert "edit-pair dataset someone/blue-edits at revision 0123abc" in message
    assert "copy the dataset's folder here and give it as the source" in message
    with pytest.raises(DataError, match="not hf:ORG/NAME@REVISION"):
        _build(with_manipulations(base, [{"name": "edit_pairs.blue", "params": {
            "source": "hf:blue-edits", "manifest_sha256": "0" * 64}}], tmp_path / "s2.yaml"))


def test_edit_pairs_params_are_both_given_or_a_clear_error(base, tmp_path):
    with pytest.raises(FeatbenchError, match="needs both source and manifest_sha256"):
        fb.get_manipulation("edit_pairs.blue", source=str(tmp_path))
    with pytest.raises(FeatbenchError, match="manifest_sha256' must be 64 lower-case hex digits"):
        fb.get_manipulation("edit_pairs.blue", source=str(tmp_path), manifest_sha256="ABC")
    suite = with_manipulations(base, ["edit_pairs"], tmp_path / "s.yaml")
    with pytest.raises(FeatbenchError, match="needs its params source .* and manifest_sha256, which `featbench edit` prints"):
        _build(suite)
