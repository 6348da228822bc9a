"""Generative edits of a suite's images, made once into an edit-pair dataset (`featbench edit`).

`edit_suite` runs an editor (`featbench.zoo.editors`) over every image of a suite, both splits,
and writes the pairs (`featbench.data.edit_pairs`): each edit as a PNG with its sha256 in
``metadata.jsonl``, every file written atomically, and ``featbench_edits.json`` recording how the
edits were made. Builds read the pairs; they never edit. A run resumes: an image whose edit is in
the folder and matches its recorded hash is kept, the rest are edited. A folder that holds edits
made otherwise (another suite, prompt, model, revision or setting) is refused, never mixed.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from featbench.core.cache import write_bytes, write_json
from featbench.core.errors import DataError
from featbench.core.paths import cache_dir
from featbench.data.edit_pairs import (MANIPULATION, METADATA, PROVENANCE, EditPairs, add_pair,
                                       pairs_manifest_sha256, read_edit_pairs, read_provenance, write_edit_pairs)
from featbench.data.manipulations import get_manipulation
from featbench.data.suites import Suite
from featbench.zoo.editors import Editor


def edit_label(prompt: str, name: str | None = None) -> str:
    """The label of the edits' manipulation (``edit_pairs.<label>``): `name`, checked, or one made
    from the prompt (``make the car body blue`` → ``make-the-car-body-blue``)."""
    label = name or re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48].strip("-") or "edit"
    get_manipulation(f"{MANIPULATION}.{label}")  # one that a suite can name, or a clear error now
    return label


def default_folder(suite: Suite, preset: str, label: str) -> Path:
    """``<cache>/edit_pairs/<suite>/<preset>.<label>``: where `featbench edit` writes without ``--out``."""
    return cache_dir() / "edit_pairs" / suite.name / f"{preset}.{label}"


@dataclass
class EditReport:
    folder: Path
    label: str
    edited: int
    kept: int
    n_pairs: int
    manifest_sha256: str
    seconds: float

    def suite_entry(self) -> dict[str, Any]:
        """The suite file's manipulation entry that scores these edits."""
        return {"name": f"{MANIPULATION}.{self.label}",
                "params": {"source": str(self.folder), "manifest_sha256": self.manifest_sha256}}

    def summary(self) -> str:
        return (f"edited {self.edited} images, kept {self.kept} edited before ({self.n_pairs} pairs in all) in "
                f"{self.folder}; {self.seconds:.0f} s\nmanifest sha256: {self.manifest_sha256}")


def _check_same_edits(folder: Path, made: dict[str, Any]) -> None:
    path = folder / PROVENANCE
    if not path.is_file():
        if any(folder.iterdir()):
            raise DataError(f"{folder} is not empty and holds no {PROVENANCE}: refusing to write edits into it "
                            "(give another --out)")
        return
    before = read_provenance(folder).get("edits", {})
    differ = sorted(k for k in set(made) | set(before) if before.get(k) != made.get(k))
    if differ:
        was = ", ".join(f"{k}={before.get(k)!r}" for k in differ)
        raise DataError(f"{folder} holds edits made otherwise (there {was}); refusing to mix them: write these "
                        "edits to another folder (--out)")


def edit_suite(suite: Suite, editor: Editor, prompt: str, folder: str | Path | None = None, label: str | None = None,
               limit: int | None = None, command: str | None = None, progress: bool = True) -> EditReport:
    """Edit the suite's images (the first `limit` by image id, default all) with `prompt` into
    `folder` (default `default_folder`), resuming where an earlier run stopped. `command` is how
    to rerun it (recorded, so that an error about missing edits can say it)."""
    start = time.time()
    label = edit_label(prompt, label)
    folder = Path(folder) if folder else default_folder(suite, editor.preset.name, label)
    folder.mkdir(parents=True, exist_ok=True)
    source = suite.image_source()
    made = {"suite": suite.name, "images_manifest_sha256": source.manifest_sha256, **editor.spec(prompt)}
    _check_same_edits(folder, made)
    write_json(folder / PROVENANCE, {"edits": made, "label": label, "command": command}, indent=1, sort_keys=True)
    pairs = dict(read_edit_pairs(folder).pairs) if (folder / METADATA).is_file() else {}
    records = sorted(source.records, key=lambda r: r.image_id)[:limit]
    existing = EditPairs(folder, pairs)
    todo = [r for r in records if r.image_id not in pairs or existing.file_problem(r.image_id) is not None
            or pairs[r.image_id].original_sha256 != r.sha256]
    for rec in tqdm(todo, desc=f"edit {editor.preset.name}", unit="image", disable=not progress):
        pairs[rec.image_id] = add_pair(folder, rec.image_id, rec.path, editor.edit(source.open(rec), prompt))
        write_edit_pairs(folder, pairs.values())  # after each image, so an interrupted run keeps what it made
    report = EditReport(folder.resolve(), label, len(todo), len(records) - len(todo), len(pairs),
                        pairs_manifest_sha256(pairs.values()), time.time() - start)
    write_bytes(folder / "README.md", _dataset_card(suite, made, report))
    return report


def _dataset_card(suite: Suite, made: dict[str, Any], report: EditReport) -> str:
    """A Hugging Face dataset card: what the pairs are, how they were made, how to load and score them."""
    model = (f"{made['model_id']} at commit {made['revision']}" if "model_id" in made
             else f"a local pipeline (files sha256 {made['files_sha256']})")
    settings = ", ".join(f"{k} {v!r}" for k, v in made["settings"].items())
    entry = yaml.safe_dump([{"name": f"{MANIPULATION}.{report.label}",
                             "params": {"source": "hf:ID@REVISION", "manifest_sha256": report.manifest_sha256}}],
                           sort_keys=False)
    return f"""# Edit pairs: {report.label}

Edits of the images of the featbench suite `{suite.name}` (images manifest sha256
`{made['images_manifest_sha256']}`), made by `featbench edit` with the {made['pipeline']} of {model}:
prompt {made['prompt']!r}, {made['steps']} steps, guidance_scale {made['guidance_scale']}, seed {made['seed']},
{settings}, {made['dtype']}. The originals are the suite's images, under their own terms
({suite.images.get('license', 'see the suite')}).

{report.n_pairs} pairs; manifest sha256 `{report.manifest_sha256}` (featbench's pin: the sha256 of the sorted
(image_id, original_sha256, edited_sha256) triples).

Load them with `datasets.load_dataset("imagefolder", data_dir=FOLDER)`, or once published with
`datasets.load_dataset(ID, revision=REVISION)`: columns image_id, original, edited, original_sha256,
edited_sha256. Score them in a featbench suite, among its manipulations:

```yaml
{entry}```
"""
