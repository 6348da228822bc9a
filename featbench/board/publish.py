"""`featbench publish`: a suite's task data and leaderboard as a Hugging Face Hub dataset.

What is uploaded (and what ``--dry-run DIR`` writes, file for file, into DIR):

    README.md                         dataset card: YAML ``configs:`` (one per variant dataset),
                                      suite version, spec hash, data-format version, hashes, licences
    data/<config>/<split>-NNNNN-of-NNNNN.parquet
                                      the variant datasets' rows (columns image_id, view, label,
                                      features, prefix), in their stored order; ``<config>`` is
                                      ``<backbone>--<layer>--<variant>``
    featbench/variants.json           per config: backbone, layer, variant, key, spec and the
                                      sha256 of each stored Arrow file (the datasets' records)
    featbench/task_hashes.json        every task's content hash (``task_sha256`` in results)
    featbench/suite.yaml              the suite file
    leaderboard/...                   the suite's leaderboard folder (tables, page, results)
    inverters/<backbone>/<layer>/<preset>/
                                      each inverter checkpoint the suite pins for its image-level
                                      scores (``invert.image_scores``): the pinned safetensors
                                      file and its record (`featbench.interfaces.checkpoints`)

A variant dataset is published once and shared by its tasks, as on disk (a task is the
unmanipulated maps of its backbone and layer plus the manipulated ones). `install_published`
turns a published folder back into featbench's cache: it loads each config with
``datasets.load_dataset``, saves it as the build does, and accepts it only if the saved Arrow
files hash to the published record, so `load_task` then gives the same task hashes as the
publisher's (the check `tests/test_publish.py` makes); it installs the pinned inverter
checkpoints too, each only if it hashes to its pin (trainings need not be bit-identical across
machines, so the pinned files are shared rather than retrained).

Hidden-target mode: a suite with ``test_targets: hidden`` publishes its test *inputs* only. The
manipulated variants (the map tasks' targets) go out with their ``train`` split alone; the
unmanipulated maps (the inputs) with both. Official scores of such a suite come from the
maintainers' run on their full data (results record ``scoring.test_targets: hidden``;
``featbench submit-check`` says so). `install_published` installs what was published and names
the configs whose test split stays with the maintainers. The targets are only as hidden as the
test images: a suite whose test images are public (featbench-v1's are) cannot hide them.

Publishing needs a Hugging Face token (``HF_TOKEN`` or ``hf auth login``) and the Hub: both are
checked before anything is staged, and their absence fails at once with a message.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import datasets
import yaml

import featbench
from featbench.board.leaderboard import default_root
from featbench.core.errors import DataError, FeatbenchError
from featbench.core.hashing import sha256_file
from featbench.data.storage import (RECORD, SPLITS, TaskData, is_built, load_variant, quiet_datasets, read_record,
                                    variant_refs)
from featbench.data.suites import DATA_FORMAT_VERSION, ORIGINAL, Suite, load_suite
from featbench.interfaces.checkpoints import CheckpointError, install_checkpoint
from featbench.scoring import image_scores
from featbench.zoo.assets import get_asset
from featbench.zoo.backbones import BACKBONES

# Parquet shards stay under this many bytes of feature data (the Hub's advice: a few hundred MB).
SHARD_BYTES = 400 * 2**20
NETWORK_TIMEOUT_S = 5.0
HIDDEN_NOTE = ("**Hidden test targets.** This suite keeps its test targets with the maintainers: the manipulated "
               "configs have a `train` split only, the unmanipulated ones (the test inputs) both. Official scores "
               "come from the maintainers' run; send them your model.")
LEADERBOARD_FILES = ("LEADERBOARD.md", "leaderboard.csv", "leaderboard.json", "index.html", "task_hashes.json",
                     "screenshot.png")


def published_splits(suite: Suite, variant: str) -> tuple[str, ...]:
    """The splits of a variant dataset that are published: all, except the test split of a
    manipulated variant (the map tasks' test targets) where the suite keeps its targets hidden."""

    if suite.test_targets == "hidden" and variant != ORIGINAL:
        return tuple(s for s in SPLITS if s != "test")
    return tuple(SPLITS)


def config_name(backbone: str, layer: str, variant: str) -> str:
    return f"{backbone}--{layer}--{variant}"


@dataclass
class StageReport:
    folder: Path
    configs: list[str] = field(default_factory=list)
    task_hashes: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    bytes: int = 0

    def summary(self) -> str:
        return (f"{self.folder}: {len(self.configs)} variant datasets ({len(self.task_hashes)} tasks), "
                f"{len(self.files)} files, {self.bytes / 2**20:.1f} MiB")


def _refs(suite: Suite):
    for backbone, layers in suite.backbones.items():
        for layer in layers:
            for variant, ref in variant_refs(suite, backbone, layer).items():
                yield backbone, layer, variant, ref


def _write_parquet(ds, folder: Path, split: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-ds.data.nbytes // SHARD_BYTES))
    names = []
    for i in range(n_shards):
        name = f"{split}-{i:05d}-of-{n_shards:05d}.parquet"
        ds.shard(n_shards, i, contiguous=True).to_parquet(str(folder / name))
        names.append(name)
    return names


def _card(suite: Suite, configs: list[dict[str, Any]], task_hashes: dict[str, str], has_leaderboard: bool) -> str:
    meta = {
        "license": "other",
        "pretty_name": f"featbench {suite.name} v{suite.version}",
        "tags": ["featbench", "feature-maps"],
        "configs": [{"config_name": c["config"],
                     "data_files": [{"split": s, "path": f"data/{c['config']}/{s}-*.parquet"} for s in c["splits"]]}
                    for c in configs],
    }
    licences = [f"- images: {suite.images.get('license', 'see the suite file')}"]
    for backbone in suite.backbones:
        spec = BACKBONES.get(backbone)
        asset = getattr(spec, "asset", None)
        note = get_asset(asset).license if asset else "timm's pretrained weights for this model; see its model card"
        licences.append(f"- `{backbone}` weights (the features are computed with them): {note}")
    task_rows = "\n".join(f"| `{tid}` | `{digest}` |" for tid, digest in sorted(task_hashes.items()))
    first = configs[0]["config"] if configs else "CONFIG"
    body = f"""# featbench {suite.name} v{suite.version}: task data

Feature maps of the [featbench](https://github.com/) suite `{suite.name}` version {suite.version}, as built by
featbench {featbench.__version__} (data format {DATA_FORMAT_VERSION}).

- suite spec sha256: `{suite.spec_sha256()}`
- images manifest sha256: `{suite.images.get('manifest_sha256')}`
- {len(configs)} variant datasets (configs), {len(task_hashes)} tasks; {suite.description.strip()}

Each config is one variant dataset: the maps of one backbone layer for the unmanipulated images
(`--{ORIGINAL}`) or for one manipulation, with `train` and `test` splits and columns `image_id`,
`view`, `label`, `features` (float16 C x h x w) and, for vision transformers, `prefix`. A map-track
task pairs the `{ORIGINAL}` config of its backbone and layer (source) with the manipulation's
(target), row by row.

```python
import datasets
ds = datasets.load_dataset("REPO_OR_FOLDER", name="{first}")
```

To use them with featbench without building (checks every hash, then `featbench run` as usual):

```python
from featbench.board.publish import install_published
install_published("FOLDER", "{suite.name}")
```

`featbench/variants.json` holds each dataset's key and the sha256 of its Arrow files;
`featbench/task_hashes.json` each task's content hash, the `task_sha256` that result files carry.
{"The leaderboard of this suite version is in `leaderboard/` (`LEADERBOARD.md`, `index.html`)." if has_leaderboard else ""}
{HIDDEN_NOTE if suite.test_targets == "hidden" else ""}

## Licences

{chr(10).join(licences)}

The features are derived from the images; use them under the images' terms.

## Task hashes

| task | sha256 |
|---|---|
{task_rows}
"""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body


def stage(suite: Suite, folder: str | Path, leaderboard_root: str | Path | None = None) -> StageReport:
    """Write exactly what `publish` uploads into `folder` (which must be absent or empty)."""

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FeatbenchError(f"{folder} is not empty; give a new folder for the dry run")
    missing = []
    records = {}
    for backbone, layer, variant, ref in _refs(suite):
        try:
            records[(backbone, layer, variant)] = read_record(ref)
        except DataError:
            missing.append(f"{backbone}/{layer}/{variant}")
    if missing:
        raise FeatbenchError(f"suite {suite.name} is not fully built ({len(missing)} datasets missing, e.g. "
                             f"{', '.join(missing[:3])}); run `featbench build --suite {suite.cli_name}` first")
    folder.mkdir(parents=True, exist_ok=True)
    report = StageReport(folder)
    configs = []
    for backbone, layer, variant, ref in _refs(suite):
        name = config_name(backbone, layer, variant)
        dd, record = load_variant(ref)
        splits = published_splits(suite, variant)
        with quiet_datasets():
            for split in splits:
                _write_parquet(dd[split], folder / "data" / name, split)
        configs.append({"config": name, "backbone": backbone, "layer": layer, "variant": variant, "splits": list(splits),
                        **{k: record[k] for k in ("key", "spec", "files", "rows", "columns")}})
        report.configs.append(name)
    for task in suite.tasks:
        recs = {"x": {"key": records[(task.backbone, task.layer, ORIGINAL)]["key"],
                      "files": records[(task.backbone, task.layer, ORIGINAL)]["files"]}}
        if task.manipulation is not None:
            r = records[(task.backbone, task.layer, task.manipulation.name)]
            recs["y"] = {"key": r["key"], "files": r["files"]}
        report.task_hashes[task.id] = TaskData(task, None, None, recs).content_sha256  # type: ignore[arg-type]
    meta = folder / "featbench"
    meta.mkdir()
    (meta / "variants.json").write_text(json.dumps({
        "suite": suite.name, "version": suite.version, "spec_sha256": suite.spec_sha256(),
        "data_format_version": DATA_FORMAT_VERSION, "configs": configs}, indent=1, sort_keys=True) + "\n")
    (meta / "task_hashes.json").write_text(json.dumps(report.task_hashes, indent=1, sort_keys=True) + "\n")
    if suite.path is not None:
        shutil.copyfile(suite.path, meta / "suite.yaml")
    root = Path(leaderboard_root) if leaderboard_root is not None else default_root(suite.name)
    has_leaderboard = (root / "LEADERBOARD.md").is_file()
    if has_leaderboard:
        for name in LEADERBOARD_FILES:
            if (root / name).is_file():
                (folder / "leaderboard").mkdir(exist_ok=True)
                shutil.copyfile(root / name, folder / "leaderboard" / name)
        for result in sorted((root / "results").glob("*.json")):
            (folder / "leaderboard" / "results").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(result, folder / "leaderboard" / "results" / result.name)
    _stage_pinned_checkpoints(suite, folder)
    (folder / "README.md").write_text(_card(suite, configs, report.task_hashes, has_leaderboard))
    report.files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    report.bytes = sum((folder / f).stat().st_size for f in report.files)
    return report


def check_hub_access(endpoint: str | None = None, timeout: float = NETWORK_TIMEOUT_S) -> str:
    """The Hugging Face token, after checking there is one and the Hub answers; else FeatbenchError."""
    from huggingface_hub import constants, get_token

    token = get_token()
    if not token:
        raise FeatbenchError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write "
                             "access to the target repository), or use --dry-run DIR to write the files locally")
    url = urlparse(endpoint or constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise FeatbenchError(f"cannot reach the Hugging Face Hub at {host}:{port} ({exc}); publishing needs the "
                             "network. Use --dry-run DIR to write the files locally") from exc
    return token


def publish(suite: Suite, repo_id: str, *, dry_run: str | Path | None = None,
            leaderboard_root: str | Path | None = None, private: bool = False) -> StageReport | str:
    """Upload the suite's task data and leaderboard to the dataset repository `repo_id`.

    With `dry_run` the files are written into that folder and nothing is uploaded (returns the
    stage report); otherwise returns the commit URL.
    """
    if "/" not in repo_id:
        raise FeatbenchError(f"--repo must be ORG/NAME, got {repo_id!r}")
    if dry_run is not None:
        return stage(suite, dry_run, leaderboard_root)
    token = check_hub_access()
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="featbench-publish-") as tmp:
        report = stage(suite, Path(tmp) / "stage", leaderboard_root)
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        info = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=report.folder,
                                 commit_message=f"featbench {suite.name} v{suite.version} "
                                                f"(spec {suite.spec_sha256()[:12]}, featbench {featbench.__version__})")
    return str(getattr(info, "commit_url", info))


def _published_checkpoint(folder: Path, pin) -> Path:
    return folder / "inverters" / pin.backbone / pin.layer


def _stage_pinned_checkpoints(suite: Suite, folder: Path) -> None:
    """Copy each pinned inverter checkpoint (the pinned file and a record naming it alone), from
    the suite's shipped folder or else the cache."""

    for pin in image_scores.pins(suite).values():
        cached = image_scores.pinned_dir(suite, pin)
        src = pin.shipped or cached
        try:
            install_checkpoint(src, _published_checkpoint(folder, pin) / cached.name, pin.checkpoint_sha256)
        except CheckpointError as exc:
            raise FeatbenchError(f"suite {suite.name} pins a {pin.inverter} checkpoint {pin.checkpoint_sha256[:12]}… "
                                 f"for {pin.backbone}/{pin.layer}, and {src} does not hold it ({exc}); it cannot be "
                                 "published") from exc


def _install_pinned_checkpoints(folder: Path, suite: Suite) -> list[str]:
    """Install the published pinned checkpoints that the cache lacks, each checked against its pin
    (`featbench.interfaces.checkpoints.install_checkpoint`: another checkpoint in the cache is moved aside)."""

    installed = []
    for pin in image_scores.pins(suite).values():
        dst = image_scores.pinned_dir(suite, pin)
        label = f"inverter {pin.backbone}/{pin.layer}/{dst.name}"
        try:
            if install_checkpoint(_published_checkpoint(folder, pin) / dst.name, dst, pin.checkpoint_sha256):
                installed.append(label)
        except CheckpointError as exc:
            raise DataError(f"{folder} lacks the {label} checkpoint that suite {suite.name} pins "
                            f"({pin.checkpoint_sha256[:12]}…), or it does not hash to its pin: {exc}") from exc
    return installed


def install_published(folder: str | Path, suite: Suite | str) -> list[str]:
    """Install a published (or dry-run) folder's variant datasets into featbench's cache.

    Each config is read with ``datasets.load_dataset`` and saved as `featbench build` saves it;
    it is accepted only if its key is the suite's and its Arrow files hash to the published
    record (then `load_task` yields the publisher's task hashes), then the pinned inverter
    checkpoints, each checked against its pin. Returns what it installed (configs, then
    ``inverter <backbone>/<layer>/<preset>``); what the cache already holds is left alone.
    """
    folder = Path(folder)
    suite = load_suite(suite) if not isinstance(suite, Suite) else suite
    meta = json.loads((folder / "featbench" / "variants.json").read_text())
    if (meta["suite"], meta["version"], meta["spec_sha256"]) != (suite.name, suite.version, suite.spec_sha256()):
        raise DataError(f"{folder} holds suite {meta['suite']} v{meta['version']} (spec {meta['spec_sha256'][:12]}), "
                        f"not {suite.name} v{suite.version} (spec {suite.spec_sha256()[:12]})")
    installed = []
    for c in meta["configs"]:
        if tuple(c.get("splits", SPLITS)) != tuple(SPLITS):  # hidden-target mode: the test split stays unpublished
            installed.append(f"not installed (test targets kept by the maintainers): {c['config']}")
            continue
        ref = variant_refs(suite, c["backbone"], c["layer"])[c["variant"]]
        if ref.key != c["key"]:
            raise DataError(f"{c['config']}: published for key {c['key'][:12]}, the suite here wants {ref.key[:12]}")
        if is_built(ref):
            continue
        # A fresh datasets cache per config: a cached conversion of another folder (or of an
        # earlier file at the same path) must never stand in for the published rows.
        with quiet_datasets(), tempfile.TemporaryDirectory(prefix="featbench-install-") as hf_cache:
            dd = datasets.load_dataset(str(folder), name=c["config"], cache_dir=hf_cache)
            dd = datasets.DatasetDict({s: dd[s] for s in SPLITS})
            tmp = ref.path.with_name(ref.path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            dd.save_to_disk(str(tmp))
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*.arrow"))}
        if files != c["files"]:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{c['config']}: the published rows do not save to the published files "
                            "(their hashes differ); the folder is damaged or was written by another datasets version")
        record = {k: c[k] for k in ("key", "spec", "files", "rows", "columns")}
        (tmp / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
        shutil.rmtree(ref.path, ignore_errors=True)
        ref.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(ref.path)
        installed.append(c["config"])
    return installed + _install_pinned_checkpoints(folder, suite)
