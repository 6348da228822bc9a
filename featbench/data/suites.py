"""Suites and tasks: what is benchmarked, read from ``tasks/<suite>.yaml``.

A suite pins an image source (by manifest hash), a split, the views per image, backbones with
their layers, and manipulations. Its tasks are:

- map track: ``map/<backbone>/<layer>/<manipulation>`` (predict the manipulated image's map);
- invert track: ``invert/<backbone>/<layer>`` (reconstruct the image from its map).

Each task's data are two or one *variant datasets* (the unmanipulated maps, shared by every task
of that backbone and layer, and the manipulated ones), keyed by `variant_key`: a hash of
everything the maps depend on. A suite version never changes once published.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from featbench.core.errors import DataError, FeatbenchError, UnknownNameError
from featbench.core.hashing import sha256_json
from featbench.data.images import ImageSource, folder_source, hf_image_folder, package_source
from featbench.data.manipulations import Manipulation, get_manipulation
from featbench.core.cache import write_bytes
from featbench.core.paths import PACKAGE_DIR, custom_suites_dir, suites_dir

# Bump when the stored layout or the extraction semantics change: every cached dataset and every
# task hash depends on it, so results from different formats never mix.
DATA_FORMAT_VERSION = 1

ORIGINAL = "original"  # the variant name of the unmanipulated maps


@dataclass(frozen=True)
class Task:
    suite: str
    track: str  # "map" | "invert"
    backbone: str
    layer: str
    manipulation: Manipulation | None  # None for the invert track
    version: int

    @property
    def id(self) -> str:
        parts = [self.track, self.backbone, self.layer]
        if self.manipulation is not None:
            parts.append(self.manipulation.name)
        return "/".join(parts)

    @property
    def category(self) -> str | None:
        return self.manipulation.category if self.manipulation else None


@dataclass
class Suite:
    name: str
    version: int
    description: str
    seed: int
    images: dict[str, Any]
    n_test: int
    views: dict[str, int]
    backbones: dict[str, list[str]]
    manipulations: list[Manipulation]
    tracks: list[str]
    path: Path | None = None
    # What `featbench run` does on this suite by default: {"models": [...], "time_budget_s": s}
    run_defaults: dict[str, Any] = field(default_factory=dict)
    # Pinned invert-track settings (classifier, image_size, sampler: {steps, guidance}); empty: the
    # defaults of `featbench.scoring.invert_track.DEFAULT_SETTINGS`. Hashed into the spec when given.
    invert: dict[str, Any] = field(default_factory=dict)
    # "published": the test targets are published with the data (anyone can score);
    # "hidden": they stay with the maintainers (published: test inputs only), who make the
    # official scores. Hashed into the spec when hidden.
    test_targets: str = "published"
    # Scores beside the standard ones (`EXTRA_SCORES`), for every task they apply to. Hashed into
    # the spec when given, so that suites without them keep their hashes.
    extra_scores: list[str] = field(default_factory=list)
    # {backbone: weights file} for backbones whose weights featbench does not ship (a path relative
    # to the suite file). Not hashed: the weights' own hash is in the backbone's fingerprint.
    weights: dict[str, str] = field(default_factory=dict)
    # {backbone: "float64"} for backbones whose maps are computed in float64, then stored in float16
    # like every map: the stored bytes then no longer depend on the CPU's vector width or thread
    # count, so that a build on any machine gives the same task hashes (README, "Task hashes that
    # do not depend on the machine"). Hashed into the spec and those backbones' variant keys when
    # given, so that suites without it keep their hashes.
    precision: dict[str, str] = field(default_factory=dict)

    # -- tasks --------------------------------------------------------------------------------
    @cached_property
    def tasks(self) -> list[Task]:
        out = []
        for backbone, layers in self.backbones.items():
            for layer in layers:
                if "map" in self.tracks:
                    out += [Task(self.name, "map", backbone, layer, m, self.version) for m in self.manipulations]
                if "invert" in self.tracks:
                    out.append(Task(self.name, "invert", backbone, layer, None, self.version))
        return out

    def select(self, pattern: str | None = None, track: str | None = None) -> list[Task]:
        """Tasks whose id matches a glob (``map/*/blocks.6/*``) or contains `pattern`."""
        tasks = [t for t in self.tasks if track is None or t.track == track]
        if pattern:
            tasks = [t for t in tasks if fnmatch.fnmatch(t.id, pattern) or pattern in t.id]
            if not tasks:
                raise UnknownNameError(f"no task of suite {self.name} matches {pattern!r}")
        return tasks

    def scores_changed_region(self, task: Task) -> bool:
        """Whether `task`'s scores include the changed region's (``scores: [changed_region]``): for
        local and semantic tasks, whose edits change part of each image."""
        return "changed_region" in self.extra_scores and task.category in ("local", "semantic")

    def get_task(self, task_id: str) -> Task:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise UnknownNameError(f"suite {self.name} has no task {task_id!r}")

    def precision_of(self, backbone: str) -> str:
        """The dtype `backbone`'s maps are computed in (``float32`` unless the suite says otherwise)."""
        return self.precision.get(backbone, "float32")

    # -- images -------------------------------------------------------------------------------
    def image_source(self, directory: str | Path | None = None, custom: bool = False) -> ImageSource:
        """The suite's images, checked against its pinned manifest.

        `directory` overrides where a folder source is read from; a folder whose manifest differs
        from the pin is refused unless `custom` is set (the suite then becomes a custom one, with
        other hashes, see `as_custom`).
        """
        spec = self.images
        if spec["kind"] == "package":
            source = package_source(spec["package"], spec["files"], self.name)
        elif spec["kind"] == "folder":
            path = Path(directory) if directory else self._default_image_dir()
            source = folder_source(path, name=spec.get("name"), labels=spec.get("labels", "none"))
        elif spec["kind"] == "hf":
            path = Path(directory) if directory else hf_image_folder(spec["dataset"], spec["revision"],
                                                                     spec.get("split", "train"))
            source = folder_source(path, name=spec.get("name"), labels=spec.get("labels", "none"))
        else:
            raise FeatbenchError(f"suite {self.name}: unknown image source kind {spec['kind']!r}")
        pinned = spec.get("manifest_sha256")
        if pinned and source.manifest_sha256 != pinned and not custom:
            raise DataError(
                f"the images in {getattr(source.records[0].path, 'parent', '?')} are not suite {self.name}'s: "
                f"their manifest hashes to {source.manifest_sha256[:16]}…, the suite pins {pinned[:16]}… "
                f"({len(source)} images, the suite expects {spec.get('n_images', '?')}). Point --images at the "
                f"pinned folder; to score your own images, make a suite of them with `featbench init-suite --images "
                f"{getattr(source.records[0].path, 'parent', 'DIR')} --from {self.cli_name} -o my-suite.yaml`, then "
                "build and run it with --suite my-suite.yaml.")
        return source

    def _default_image_dir(self) -> Path:
        env = os.environ.get("FEATBENCH_IMAGES")
        if env:
            return Path(env)
        rel = self.images.get("default_path")
        if rel is None:
            raise DataError(f"suite {self.name} needs --images DIR")
        # A suite file's own folder first (suites written by init-suite), then the checkout
        # (tasks/ lives beside featbench/, so ../shared resolves), then the working directory.
        bases = ([self.path.parent] if self.path is not None else []) + [PACKAGE_DIR.parent, Path.cwd()]
        for base in bases:
            if (base / rel).is_dir():
                return (base / rel).resolve()
        raise DataError(f"suite {self.name}: image folder {rel} not found (looked beside the suite file, the "
                        "featbench checkout and in the working directory); pass --images DIR or set FEATBENCH_IMAGES")

    @property
    def cli_name(self) -> str:
        """How a command names this suite: its name where `load_suite` finds it by name, else its file."""
        if self.path is None:
            return self.name
        for folder in (suites_dir(), custom_suites_dir()):
            if (folder / f"{self.name}.yaml").resolve() == Path(self.path).resolve():
                return self.name
        return str(self.path)

    def as_custom(self, source: ImageSource) -> "Suite":
        """This suite's design over other images: named ``<name>+custom-<manifest>``, pinned to them
        and saved among the custom suites, so that ``--suite <that name>`` finds it afterwards."""
        first = source.records[0]
        folder = first.path.parents[len(Path(first.image_id).parts) - 1]
        images = dict(self.images, kind="folder", default_path=str(folder.resolve()),
                      manifest_sha256=source.manifest_sha256, n_images=len(source))
        for key in ("package", "files", "license"):  # the other images' own, not these
            images.pop(key, None)
        images["name"] = source.name
        name = f"{self.name}+custom-{source.manifest_sha256[:8]}"
        # The design is kept, the inverter pins are not: they were trained on the other images.
        invert = {k: v for k, v in self.invert.items() if k != "image_scores"}
        custom = Suite(name, self.version, self.description, self.seed, images, self.n_test, self.views,
                       self.backbones, self.manipulations, self.tracks, None, self.run_defaults, invert,
                       self.test_targets, self.extra_scores, self._weights_resolved(), self.precision)
        return custom.save(custom_suites_dir() / f"{name}.yaml")

    def _weights_resolved(self) -> dict[str, str]:
        """The weights files as absolute paths (for a suite file saved elsewhere)."""
        here = Path(self.path).parent if self.path else Path.cwd()
        return {b: str((here / Path(f).expanduser()).resolve()) for b, f in self.weights.items()}

    def to_yaml_dict(self) -> dict[str, Any]:
        """The suite as its YAML file holds it (`load_suite` of the written file gives this suite)."""
        def entry(m: Manipulation) -> str | dict:
            default = get_manipulation(m.name)
            return m.name if dict(default.params) == dict(m.params) else {"name": m.name, "params": _plain(m.params)}

        out = {"name": self.name, "version": self.version, "description": self.description, "seed": self.seed,
               "images": self.images, "split": {"n_test": self.n_test}, "views": self.views,
               "backbones": self.backbones, "manipulations": [entry(m) for m in self.manipulations],
               "tracks": self.tracks}
        if self.run_defaults:
            out["run_defaults"] = self.run_defaults
        if self.invert:
            out["invert"] = self.invert
        if self.test_targets != "published":
            out["test_targets"] = self.test_targets
        if self.extra_scores:
            out["scores"] = self.extra_scores
        if self.weights:
            out["weights"] = self.weights
        if self.precision:
            out["precision"] = self.precision
        return out

    def save(self, path: str | Path) -> "Suite":
        """Write the suite file atomically; returns the suite as loaded from it."""
        path = Path(path)
        text = yaml.safe_dump(self.to_yaml_dict(), sort_keys=False, allow_unicode=True, width=100)
        write_bytes(path, text.encode())
        return _suite_from_yaml(path)

    # -- hashes -------------------------------------------------------------------------------
    def variants(self) -> list[Manipulation | None]:
        """The unmanipulated variant (None) then every manipulation."""
        return [None, *self.manipulations]

    def variant_spec(self, manifest_sha256: str, backbone_fingerprint: dict, layer: str,
                     manipulation: Manipulation | None) -> dict[str, Any]:
        """Everything one variant dataset depends on; its hash is the dataset's cache key."""
        spec = {
            "format_version": DATA_FORMAT_VERSION,
            "images_manifest_sha256": manifest_sha256,
            "split": {"n_test": self.n_test, "method": "sha256(file name)"},
            "views": self.views,
            "seed": self.seed,
            "backbone": backbone_fingerprint,
            "layer": layer,
            "variant": manipulation.spec() if manipulation else ORIGINAL,
        }
        precision = self.precision_of(backbone_fingerprint["name"])
        if precision != "float32":  # only then, so that float32 datasets keep their keys
            spec["precision"] = precision
        return spec

    def spec_dict(self) -> dict[str, Any]:
        spec = {
            "name": self.name, "version": self.version, "seed": self.seed, "images": self.images,
            "n_test": self.n_test, "views": self.views, "backbones": self.backbones,
            "manipulations": [m.spec() for m in self.manipulations], "tracks": self.tracks,
            "format_version": DATA_FORMAT_VERSION,
        }
        if self.invert:  # only when given, so the hashes of suites without it stay as they were
            spec["invert"] = self.invert
        if self.test_targets != "published":  # likewise
            spec["test_targets"] = self.test_targets
        if self.extra_scores:  # likewise
            spec["scores"] = self.extra_scores
        if self.precision:  # likewise
            spec["precision"] = self.precision
        return spec

    def spec_sha256(self) -> str:
        return sha256_json(self.spec_dict())

    def result_identity(self) -> dict[str, Any]:
        """How a result file names the suite version it was run on."""
        return {"name": self.name, "version": self.version, "spec_sha256": self.spec_sha256(),
                "data_format_version": DATA_FORMAT_VERSION}


def _plain(value: Any) -> Any:
    """Manipulation parameters as plain YAML values (tuples as lists)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _manipulation(entry: str | dict) -> Manipulation:
    if isinstance(entry, str):
        return get_manipulation(entry)
    return get_manipulation(entry["name"], **entry.get("params", {}))


def _check_layers(suite: Suite) -> Suite:
    from featbench.zoo.backbones import BACKBONES

    for backbone, layers in suite.backbones.items():
        spec = BACKBONES.get(backbone)
        unknown = [layer for layer in layers if spec is not None and layer not in spec.layers]
        if unknown:
            raise UnknownNameError(f"suite {suite.name}: backbone {backbone} has no layer {', '.join(unknown)}; "
                                   f"layers: {', '.join(spec.layers)}")
    return suite


def _use_weights(suite: Suite) -> Suite:
    """Point the suite's backbones at its weights files, unless this process was given others."""
    from featbench.core.paths import weights_env_var
    from featbench.zoo.backbones import use_weights_file

    for backbone, file in suite.weights.items():
        if backbone not in suite.backbones:
            raise FeatbenchError(f"suite file {suite.path}: weights names backbone {backbone!r}, which the suite "
                                 f"does not use ({', '.join(suite.backbones)})")
        if not os.environ.get(weights_env_var(backbone)):
            use_weights_file(backbone, Path(suite.path).parent / Path(file).expanduser())
    return suite


def _check_unique_manipulations(suite: Suite) -> Suite:
    names = [m.name for m in suite.manipulations]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        base = twice[0].partition(".")[0]
        raise FeatbenchError(f"suite {suite.name} lists the manipulation {twice[0]!r} {names.count(twice[0])} times, so "
                             f"their tasks would share one id: give each a label of its own, {base}.LABEL (e.g. "
                             f"{base}.blue-body)")
    return suite


TEST_TARGETS = ("published", "hidden")
PRECISIONS = ("float32", "float64")
# semantic: FeatMap's class scores beside top1_agree (backbones with a head); changed_region: the
# map scores restricted to the positions an edit changed (local and semantic tasks).
EXTRA_SCORES = ("semantic", "changed_region")


def _extra_scores(value: Any, path: Path) -> list[str]:
    if not isinstance(value, list) or any(v not in EXTRA_SCORES for v in value) or len(set(value)) != len(value):
        raise FeatbenchError(f"suite file {path}: scores must be a list of distinct names from "
                             f"{', '.join(EXTRA_SCORES)}, got {value!r}")
    return list(value)


def _precision(value: Any, backbones: dict, path: Path) -> dict[str, str]:
    if not isinstance(value, dict) or any(p not in PRECISIONS for p in value.values()):
        raise FeatbenchError(f"suite file {path}: precision must map backbones to one of {', '.join(PRECISIONS)}, "
                             f"got {value!r}")
    unknown = sorted(set(value) - set(backbones))
    if unknown:
        raise FeatbenchError(f"suite file {path}: precision names backbone {unknown[0]!r}, which the suite does not "
                             f"use ({', '.join(backbones)})")
    # float32 is the default: leaving it out keeps the suite's hashes those of a suite without the key.
    return {str(b): str(p) for b, p in value.items() if p != "float32"}


def _test_targets(value: Any, path: Path) -> str:
    if value not in TEST_TARGETS:
        raise FeatbenchError(f"suite file {path}: test_targets must be one of {', '.join(TEST_TARGETS)}, got {value!r}")
    return value


def _suite_from_yaml(path: Path) -> Suite:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FeatbenchError(f"suite file {path} is not valid YAML: {exc}") from exc
    try:
        return _use_weights(_check_layers(_check_unique_manipulations(Suite(
            name=raw["name"], version=int(raw["version"]), description=raw.get("description", ""),
            seed=int(raw.get("seed", 0)), images=raw["images"], n_test=int(raw["split"]["n_test"]),
            views={"train": int(raw["views"]["train"]), "test": int(raw["views"]["test"])},
            backbones={b: list(layers) for b, layers in raw["backbones"].items()},
            manipulations=[_manipulation(m) for m in raw.get("manipulations", [])],
            tracks=list(raw.get("tracks", ["map", "invert"])), path=path,
            run_defaults=dict(raw.get("run_defaults", {})), invert=dict(raw.get("invert") or {}),
            test_targets=_test_targets(raw.get("test_targets", "published"), path),
            extra_scores=_extra_scores(raw.get("scores", []), path),
            weights={str(b): str(f) for b, f in (raw.get("weights") or {}).items()},
            precision=_precision(raw.get("precision") or {}, raw["backbones"], path),
        ))))
    except FeatbenchError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FeatbenchError(f"suite file {path} is malformed: {type(exc).__name__}: {exc}") from exc


def list_suites(custom: bool = True) -> list[str]:
    """Registered suite names (``tasks/``), then, with `custom`, those made by ``build --custom``."""
    names = sorted(p.stem for p in suites_dir().glob("*.yaml"))
    if custom and custom_suites_dir().is_dir():
        names += sorted(p.stem for p in custom_suites_dir().glob("*.yaml") if p.stem not in names)
    return names


def load_suite(name_or_path: str | Path) -> Suite:
    """A suite by name (``tasks/<name>.yaml``, or one that ``build --custom`` made) or by the path
    of a YAML file. Its ``weights:`` files become its backbones' weights in this process
    (`featbench.zoo.use_weights_file`), except where other files were given already."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return _suite_from_yaml(path)
        if "/" in str(name_or_path) or path.name != str(name_or_path):
            raise UnknownNameError(f"suite file {path} does not exist")
    for folder in (suites_dir(), custom_suites_dir()):
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return _suite_from_yaml(candidate)
    raise UnknownNameError(f"unknown suite {name_or_path!r}; known: {', '.join(list_suites())} (or give a suite "
                           "file: --suite path/to/suite.yaml; make one with `featbench init-suite`)")
