"""A suite of your own images: `init_suite` writes a suite file that every command takes.

``featbench init-suite --images DIR -o my-suite.yaml`` takes a published suite's design (its
backbones, layers, manipulations, views and seed; featbench-v1's unless ``--from`` names another),
points it at DIR, pins DIR's manifest hash in full, infers the label scheme and sets the split.
``featbench build|tasks|run|show|leaderboard|validate --suite my-suite.yaml`` then work on it as on
a registered suite. The images may also be a Hugging Face image dataset at a pinned revision,
``hf:ID@REV`` (online; see `featbench.data.images.hf_image_folder`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence

from featbench.core.errors import DataError, FeatbenchError
from featbench.data.images import folder_source, hf_image_folder, imagenet_label_index, parse_hf_images
from featbench.data.suites import Suite, load_suite

DEFAULT_TEST_FRACTION = 0.2  # featbench-v1 holds out 200 of 1000
LABELS_CSV = "labels.csv"


def infer_labels(directory: str | Path) -> str:
    """The label scheme a folder's layout suggests: a ``labels.csv`` beside the images; class
    folders named by wnid (imagenet-wnid), by integer (class-id) or otherwise (imagefolder); file
    names that start with a wnid or an integer; else ``none``."""
    directory = Path(directory)
    if (directory / LABELS_CSV).is_file():
        return f"csv:{LABELS_CSV}"
    ids = [r.image_id for r in folder_source(directory).records]
    nested = [i for i in ids if "/" in i]
    if nested:
        classes = {i.split("/")[-2] for i in nested}
        if len(nested) < len(ids):
            return "none"  # a mix of class folders and loose files names no classes
        if classes <= set(imagenet_label_index()):
            return "imagenet-wnid"
        return "class-id" if all(c.isdigit() for c in classes) else "imagefolder"
    starts = {re.split(r"[_.\-]", i, maxsplit=1)[0] for i in ids}
    if starts <= set(imagenet_label_index()):
        return "imagenet-wnid"
    if all(s.isdigit() for s in starts) and all(re.match(r"\d+_", i) for i in ids):
        return "class-id"
    return "none"


def held_out_count(n_images: int, n_test: int | None, test_fraction: float | None) -> int:
    """How many images to hold out: `n_test`, else `test_fraction` of them (default 0.2), at least one
    of each split."""
    if n_test is not None and test_fraction is not None:
        raise FeatbenchError("give --n-test or --test-fraction, not both")
    if n_test is None:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        if not 0 < fraction < 1:
            raise FeatbenchError(f"--test-fraction must lie strictly between 0 and 1, got {fraction}")
        n_test = round(n_images * fraction)
    n_test = int(n_test)
    if not 0 < n_test < n_images:
        raise DataError(f"cannot hold out {n_test} test images from {n_images}: the test split needs at least one "
                        f"image and the training split at least one (--n-test 1 … {n_images - 1})")
    return n_test


def init_suite(images: str | Path, out: str | Path, *, base: str | Path = "featbench-v1", name: str | None = None,
               backbones: Mapping[str, Sequence[str] | None] | None = None, n_test: int | None = None,
               test_fraction: float | None = None, labels: str | None = None,
               weights: Mapping[str, str | Path] | None = None, float64: Sequence[str] = ()) -> Suite:
    """Write the suite file `out` for `images` (a folder, or ``hf:ID@REV``) and return the suite.

    `base` gives the design; `backbones` ({name: layers or None}) replaces its backbones (None:
    the base suite's layers of that backbone, else every layer the backbone exposes); `labels`
    is a scheme of `featbench.data.images.LABEL_SCHEMES` (default: inferred); `weights`
    ({backbone: file}) names the weights of backbones featbench does not ship; `float64` names
    backbones whose maps are computed in float64 (the suite's ``precision``, for task hashes that
    do not depend on the machine; the base suite's carry over). The file pins the
    images' full manifest hash; the base suite's inverter checkpoints are not carried over (they
    were trained on other images).
    """
    from featbench.zoo.backbones import BACKBONES

    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        raise FeatbenchError(f"the suite file {out} must end in .yaml")
    template = load_suite(base)
    hf = parse_hf_images(str(images)) if str(images).startswith("hf:") else None
    folder = hf_image_folder(**hf) if hf else Path(images).expanduser().resolve()
    labels = labels or (hf_labels(folder) if hf else infer_labels(folder))
    source = folder_source(folder, labels=labels)  # reads every label: a bad one fails here, not in the build
    chosen = {}
    for backbone, layers in (backbones or template.backbones).items():
        spec = BACKBONES.lookup(backbone)
        chosen[backbone] = list(layers or template.backbones.get(backbone) or spec.layers)
    unknown = sorted(set(float64) - set(chosen))
    if unknown:
        raise FeatbenchError(f"--float64 {unknown[0]}: the suite has no such backbone ({', '.join(chosen)})")
    if hf:
        image_spec = {"kind": "hf", **hf}
    else:
        image_spec = {"kind": "folder", "default_path": _portable_path(folder, out.parent)}
    image_spec |= {"name": source.name, "labels": labels, "n_images": len(source),
                   "manifest_sha256": source.manifest_sha256}
    name = name or out.stem
    n_test = held_out_count(len(source), n_test, test_fraction)
    suite = Suite(
        name=name, version=1, seed=template.seed, images=image_spec, n_test=n_test, views=dict(template.views),
        description=(f"{len(source)} images of {source.name} ({len(source) - n_test} train / {n_test} test, split by "
                     f"a hash of the file name), labels {labels}; the design of {template.name} v{template.version}."),
        backbones=chosen, manipulations=list(template.manipulations), tracks=list(template.tracks),
        run_defaults=dict(template.run_defaults),
        invert={k: v for k, v in template.invert.items() if k != "image_scores"},
        extra_scores=list(template.extra_scores),
        precision={b: p for b, p in template.precision.items() if b in chosen} | {b: "float64" for b in float64},
        weights={b: _portable_path(Path(f).expanduser().resolve(), out.parent) for b, f in (weights or {}).items()})
    return suite.save(out)


def hf_labels(folder: Path) -> str:
    """An `hf:` dataset's labels: its label column, written beside the images, where it has one."""
    return f"csv:{LABELS_CSV}" if (folder / LABELS_CSV).is_file() else "none"


def _portable_path(folder: Path, suite_dir: Path) -> str:
    """The image folder (or weights file) relative to the suite file where it lies below it (the
    two move together), else absolute."""
    try:
        return os.path.relpath(folder, suite_dir.resolve()) if folder.is_relative_to(suite_dir.resolve()) else str(folder)
    except ValueError:
        return str(folder)


__all__ = ["DEFAULT_TEST_FRACTION", "LABELS_CSV", "hf_labels", "infer_labels", "init_suite", "held_out_count"]
