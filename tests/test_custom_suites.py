"""A suite of your own images: labels, init-suite, suite files by path, custom builds by name, and
the whole path from a folder of images to a leaderboard (tiny random backbones: plumbing only)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import featbench as fb
from featbench.cli import main
from featbench.core.errors import DataError, FeatbenchError, UnknownNameError
from featbench.data.custom_suites import infer_labels, init_suite
from featbench.data.images import folder_source, imagenet_label_index, parse_hf_images

from .conftest import TINY_CNN, TINY_VIT, make_tiny_suite

WNIDS = sorted(imagenet_label_index())[:3]


def _image(path, seed: int, size=(80, 90)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _folder(root, names) -> object:
    for i, name in enumerate(names):
        _image(root / name, i)
    return root


# -- labels ---------------------------------------------------------------------------------------


def test_label_schemes_read_file_names_folders_and_csv(tmp_path):
    index = imagenet_label_index()
    wnid = _folder(tmp_path / "wnid", [f"{WNIDS[0]}_a.png", f"{WNIDS[1]}_b.png"])
    assert [r.label for r in folder_source(wnid, labels="imagenet-wnid").records] == [index[WNIDS[0]], index[WNIDS[1]]]
    ids = _folder(tmp_path / "ids", ["417_balloon.png", "3_shark.png"])
    assert {r.image_id: r.label for r in folder_source(ids, labels="class-id").records} == \
        {"417_balloon.png": 417, "3_shark.png": 3}
    tree = _folder(tmp_path / "tree", ["dog/1.png", "cat/2.png", "cat/3.png"])
    got = {r.image_id: r.label for r in folder_source(tree, labels="imagefolder").records}
    assert got == {"cat/2.png": 0, "cat/3.png": 0, "dog/1.png": 1}  # torchvision's ImageFolder order
    wnid_tree = _folder(tmp_path / "wnid_tree", [f"{WNIDS[2]}/x.png"])
    assert folder_source(wnid_tree, labels="imagenet-wnid").records[0].label == index[WNIDS[2]]
    table = _folder(tmp_path / "csv", ["a.png", "b.png"])
    (table / "labels.csv").write_text(f"file,label\na.png,7\nb.png,{WNIDS[1]}\n")
    assert [r.label for r in folder_source(table, labels="csv:labels.csv").records] == [7, index[WNIDS[1]]]
    assert [r.label for r in folder_source(table).records] == [-1, -1]  # none


@pytest.mark.parametrize("names, scheme, csv, match", [
    (["n99999999_x.png"], "imagenet-wnid", None, "not an ImageNet-1k wnid"),
    (["balloon.png"], "class-id", None, "not a non-negative integer"),
    (["loose.png"], "imagefolder", None, "not in a class folder"),
    (["a.png", "b.png"], "csv:labels.csv", "file,label\na.png,3\n", "no label for 1 image"),
    (["a.png"], "csv:labels.csv", "file,label\na.png,cat\n", "line 2: label 'cat'"),
    (["a.png"], "csv:labels.csv", "name,class\na.png,3\n", "columns file,label"),
    (["a.png"], "csv:missing.csv", None, "does not exist"),
    (["a.png"], "wordnet", None, "unknown label scheme 'wordnet'"),
])
def test_a_label_that_does_not_parse_is_a_clear_error(tmp_path, names, scheme, csv, match):
    folder = _folder(tmp_path / "imgs", names)
    if csv:
        (folder / "labels.csv").write_text(csv)
    with pytest.raises(DataError, match=match):
        folder_source(folder, labels=scheme)


def test_csv_labels_are_pinned_with_the_images(tmp_path):
    folder = _folder(tmp_path / "imgs", ["a.png", "b.png"])
    (folder / "labels.csv").write_text("file,label\na.png,1\nb.png,2\n")
    before = folder_source(folder, labels="csv:labels.csv").manifest_sha256
    (folder / "labels.csv").write_text("file,label\na.png,1\nb.png,3\n")
    assert folder_source(folder, labels="csv:labels.csv").manifest_sha256 != before


def test_labels_are_inferred_from_the_layout(tmp_path):
    assert infer_labels(_folder(tmp_path / "a", [f"{WNIDS[0]}_x.png"])) == "imagenet-wnid"
    assert infer_labels(_folder(tmp_path / "b", ["12_x.png", "4_y.png"])) == "class-id"
    assert infer_labels(_folder(tmp_path / "c", ["dog/1.png", "cat/2.png"])) == "imagefolder"
    assert infer_labels(_folder(tmp_path / "d", ["7/1.png", "9/2.png"])) == "class-id"
    assert infer_labels(_folder(tmp_path / "e", ["holiday.png"])) == "none"
    folder = _folder(tmp_path / "f", ["a.png"])
    (folder / "labels.csv").write_text("file,label\na.png,1\n")
    assert infer_labels(folder) == "csv:labels.csv"


# -- the mapper's view of its task ----------------------------------------------------------------


def test_task_info_grid_action_is_none_where_there_is_none():
    def info(name):
        return fb.TaskInfo("t", "bb", "l", (4, 3, 3), None, fb.get_manipulation(name), 0, None)

    assert info("noise40").grid_action is None and info("mask_tl_red").grid_action is None
    rot = info("rot90")
    fmap = torch.arange(9.0).view(1, 1, 3, 3)
    assert torch.equal(rot.grid_action(fmap), torch.rot90(fmap, 1, (-2, -1)))
    assert (rot.category, rot.manipulation_name, rot.params) == ("geometric", "rot90", {"k": 1})
    assert info("noise40").params == {"sigma": 40.0}


# -- suite files ----------------------------------------------------------------------------------


@pytest.fixture
def base(tmp_path, private_cache):
    """The tiny suite, as the design a user's suite is made from."""
    return make_tiny_suite(tmp_path / "base", n_images=6)


def test_init_suite_pins_the_full_manifest_and_the_split(tmp_path, base):
    images = _folder(tmp_path / "mine", [f"{i}_photo.png" for i in range(10)])
    suite = init_suite(images, tmp_path / "mine.yaml", base=base.path, n_test=3)
    raw = yaml.safe_load((tmp_path / "mine.yaml").read_text())
    assert raw["images"]["manifest_sha256"] == folder_source(images, labels="class-id").manifest_sha256
    assert len(raw["images"]["manifest_sha256"]) == 64
    assert (raw["name"], raw["split"], raw["images"]["labels"]) == ("mine", {"n_test": 3}, "class-id")
    assert raw["images"]["default_path"] == "mine"  # beside the suite file: they move together
    assert suite.manipulations == base.manipulations and suite.backbones == base.backbones
    assert fb.load_suite(tmp_path / "mine.yaml").spec_sha256() == suite.spec_sha256()
    assert init_suite(images, tmp_path / "f.yaml", base=base.path, test_fraction=0.5).n_test == 5
    only = init_suite(images, tmp_path / "one.yaml", base=base.path, backbones={TINY_CNN: ["blocks.3"]})
    assert only.backbones == {TINY_CNN: ["blocks.3"]} and only.n_test == 2  # default: a fifth


@pytest.mark.parametrize("kwargs, match", [
    ({"n_test": 10}, "cannot hold out 10 test images from 10"),
    ({"test_fraction": 1.5}, "strictly between 0 and 1"),
    ({"backbones": {"no-such-net": None}}, "no-such-net"),
    ({"float64": ["no-such-net"]}, "--float64 no-such-net: the suite has no such backbone"),
])
def test_init_suite_refuses_what_cannot_be_built(tmp_path, base, kwargs, match):
    images = _folder(tmp_path / "mine", [f"p{i}.png" for i in range(10)])
    with pytest.raises(FeatbenchError, match=match):
        init_suite(images, tmp_path / "mine.yaml", base=base.path, **kwargs)
    assert not (tmp_path / "mine.yaml").exists()


def test_init_suite_float64_asks_for_maps_computed_in_float64(tmp_path, base, capsys):
    images = _folder(tmp_path / "mine", [f"{i}_photo.png" for i in range(10)])
    assert main(["init-suite", "--images", str(images), "--from", str(base.path), "-o", str(tmp_path / "mine.yaml"),
                 "--float64", TINY_VIT]) == 0
    assert f"{TINY_VIT} (1 layers, maps computed in float64)" in capsys.readouterr().out
    suite = fb.load_suite(tmp_path / "mine.yaml")
    assert suite.precision == {TINY_VIT: "float64"} and suite.precision_of(TINY_CNN) == "float32"
    # A suite made from it keeps it for the backbones it keeps.
    again = init_suite(images, tmp_path / "again.yaml", base=suite.path)
    assert again.precision == {TINY_VIT: "float64"}
    assert init_suite(images, tmp_path / "cnn.yaml", base=suite.path, backbones={TINY_CNN: None}).precision == {}


def test_unknown_suite_and_missing_file_say_what_to_do(tmp_path):
    with pytest.raises(UnknownNameError, match="init-suite"):
        fb.load_suite("no-such-suite")
    with pytest.raises(UnknownNameError, match="does not exist"):
        fb.load_suite(tmp_path / "missing.yaml")


def test_other_images_for_a_pinned_suite_point_to_init_suite(tmp_path, base, monkeypatch):
    monkeypatch.setenv("FEATBENCH_IMAGES", str(_folder(tmp_path / "mine", ["a.png", "b.png", "c.png"])))
    with pytest.raises(DataError, match="featbench init-suite --images .*mine --from .*tiny-test.yaml"):
        base.image_source()


def test_a_custom_build_is_runnable_by_the_name_it_prints(tmp_path, base, capsys):
    images = _folder(tmp_path / "mine", [f"p{i}.png" for i in range(5)])
    assert main(["build", "--suite", str(base.path), "--images", str(images), "--custom",
                 "--backbone", TINY_CNN, "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    name = re.search(r"featbench run --suite (\S+)`", out).group(1)
    assert name.startswith("tiny-test+custom-")
    custom = fb.load_suite(name)
    assert custom.cli_name == name and custom.images["default_path"] == str(images.resolve())
    assert "image_scores" not in custom.invert
    assert main(["run", "--suite", name, "--model", "identity", "--no-isolation", "--tasks", f"map/{TINY_CNN}/blocks.3/rot90",
                 "--out-dir", str(tmp_path / "lb"), "--n-boot", "10"]) == 0
    assert name in fb.list_suites()


def test_hf_images_are_a_pinned_folder(tmp_path, private_cache, monkeypatch):
    import datasets

    rows = {"image": [Image.fromarray(np.full((40, 50, 3), i * 40, np.uint8)) for i in range(4)], "label": [3, 1, 4, 1]}
    calls = []

    def load_dataset(dataset, revision, split):  # the hub's answer, made here (no hub on this machine)
        calls.append((dataset, revision, split))
        return datasets.Dataset.from_dict(rows, features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.Value("int64")}))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    suite = init_suite("hf:someone/photos@0123abc", tmp_path / "hf.yaml", base=make_tiny_suite(tmp_path / "b").path,
                       n_test=1)
    assert suite.images["kind"] == "hf" and suite.images["labels"] == "csv:labels.csv"
    source = suite.image_source()
    assert [r.label for r in source.records] == [3, 1, 4, 1] and source.manifest_sha256 == suite.images["manifest_sha256"]
    assert calls == [("someone/photos", "0123abc", "train")]  # made once, then read from the cache


def test_hf_images_offline_and_malformed_are_clear_errors(tmp_path, private_cache, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("the hub cannot be reached")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="need the hub once; offline, save the images to a folder"):
        init_suite("hf:someone/photos@main", tmp_path / "hf.yaml", base=make_tiny_suite(tmp_path / "b").path)
    with pytest.raises(DataError, match="not hf:ORG/NAME@REVISION"):
        parse_hf_images("hf:photos")


@pytest.mark.slow
def test_from_a_folder_of_images_to_a_leaderboard(tmp_path, base, capsys):
    """The README's path for your own images: init-suite, build, run, leaderboard, validate."""
    images = _folder(tmp_path / "photos", [f"{k}/{i}.png" for k in ("cat", "dog") for i in range(4)])
    suite_file = str(tmp_path / "photos.yaml")
    assert main(["init-suite", "--images", str(images), "--from", str(base.path), "--backbone",
                 f"{TINY_CNN}:blocks.3", "--n-test", "2", "-o", suite_file]) == 0
    assert "labels imagefolder" in capsys.readouterr().out
    assert main(["tasks", "--suite", suite_file]) == 0
    assert main(["build", "--suite", suite_file, "--batch-size", "4"]) == 0
    lb = tmp_path / "leaderboard"
    for model in ("identity", "linear"):
        assert main(["run", "--suite", suite_file, "--model", model, "--out-dir", str(lb), "--n-boot", "10"]) == 0
    assert main(["leaderboard", "build", "--suite", suite_file, "--root", str(lb / "photos")]) == 0
    board = json.loads((lb / "photos" / "leaderboard.json").read_text())
    assert {r["model"] for r in board["results"]} == {"identity", "linear"}
    assert main(["validate", "--suite", suite_file, *map(str, (lb / "photos" / "results").glob("*.json"))]) == 0
    assert main(["validate", "--suite", str(base.path), str(lb / "photos" / "results" / "linear.json")]) == 2
    assert "not on tiny-test" in capsys.readouterr().err
