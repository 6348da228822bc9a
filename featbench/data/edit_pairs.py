"""Edit-pair datasets: given (original, edited) images, read by the ``edit_pairs`` manipulation.

An edit-pair dataset is a folder in the layout of Hugging Face ``datasets``' imagefolder, so that
``datasets.load_dataset("imagefolder", data_dir=FOLDER)`` (or ``load_dataset(ID, revision=REV)``
once it is published) reads it, with ``original`` and ``edited`` image columns::

    metadata.jsonl          one line per image: {"image_id", "original_file_name", "edited_file_name",
                            "original_sha256", "edited_sha256"}, file names relative to the folder
    original/<image_id>     the suite's image, byte for byte
    edited/<image_id>.png   its edit
    featbench_edits.json    how `featbench edit` made the edits (editor, model, prompt, seed...), if it did

``image_id`` is the suite's image id. A dataset is pinned by its *manifest hash*, the sha256 of
the sorted (image_id, original_sha256, edited_sha256) triples (`pairs_manifest_sha256`). A suite
lists one as ``{name: edit_pairs.<label>, params: {source: FOLDER or hf:ID@REV, manifest_sha256:
...}}``; a build reads the pairs (it never edits), checks that the manifest, each edited file and
each original match, and cuts the edited image the way it cuts the original's view.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

import torch
from PIL import Image

from featbench.core.cache import atomic_write, write_bytes
from featbench.core.errors import DataError
from featbench.core.hashing import sha256_file, sha256_json
from featbench.core.paths import cache_dir
from featbench.data.images import parse_hf_images
from featbench.data.manipulations import ManipulationContext, ManipulationParamError, register_manipulation

METADATA = "metadata.jsonl"
PROVENANCE = "featbench_edits.json"
MANIPULATION = "edit_pairs"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class EditPair:
    """One line of ``metadata.jsonl``: an image of the suite and its edit."""

    image_id: str
    original_file_name: str
    edited_file_name: str
    original_sha256: str
    edited_sha256: str


def pairs_manifest_sha256(pairs: Iterable[EditPair]) -> str:
    """The hash that pins an edit-pair dataset: over the sorted (image_id, original, edited sha256) triples."""
    return sha256_json(sorted([p.image_id, p.original_sha256, p.edited_sha256] for p in pairs))


def original_file_name(image_id: str) -> str:
    return f"original/{image_id}"


def edited_file_name(image_id: str) -> str:
    # The image id's own suffix is kept, so that a.jpg and a.png get different edits' names.
    return f"edited/{image_id}.png"


@dataclass(frozen=True)
class EditPairs:
    """An edit-pair dataset as read from its folder (see the module's docstring)."""

    folder: Path
    pairs: Mapping[str, EditPair]  # by image id

    @property
    def metadata_path(self) -> Path:
        return self.folder / METADATA

    @property
    def manifest_sha256(self) -> str:
        return pairs_manifest_sha256(self.pairs.values())

    def pair(self, image_id: str) -> EditPair:
        if image_id not in self.pairs:
            raise DataError(f"{self.metadata_path} has no edit of image {image_id!r}")
        return self.pairs[image_id]

    def file_problem(self, image_id: str, which: str = "edited") -> str | None:
        """Why the `which` file ("edited" or "original") of an image's pair is not the one the metadata
        pins, or None when it is."""
        pair = self.pair(image_id)
        name, digest = ((pair.edited_file_name, pair.edited_sha256) if which == "edited"
                        else (pair.original_file_name, pair.original_sha256))
        path = self.folder / name
        if not path.is_file():
            return f"{path} is missing"
        got = sha256_file(path)
        if got != digest:
            return (f"{path} does not match its sha256 in {self.metadata_path} ({got[:12]}… != {digest[:12]}…): "
                    "the file was changed or damaged")
        return None

    def edited_image(self, image_id: str) -> Image.Image:
        """The edit of `image_id`, decoded after checking its file against the metadata."""
        problem = self.file_problem(image_id)
        if problem:
            raise DataError(f"edit pairs {self.folder}: {problem}")
        with Image.open(self.folder / self.pair(image_id).edited_file_name) as im:
            return im.convert("RGB")


def read_provenance(folder: str | Path) -> dict[str, Any]:
    """What `featbench edit` recorded in `folder` about how its edits were made ({edits, label,
    command}); empty for pairs made otherwise."""
    path = Path(folder) / PROVENANCE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc


_FIELDS = tuple(EditPair.__dataclass_fields__)


def _parse_line(path: Path, n: int, line: str) -> EditPair:
    where = f"{path}, line {n}"
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise DataError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(row, dict):
        raise DataError(f"{where} is not a JSON object")
    missing = [k for k in _FIELDS if k not in row]
    if missing:
        raise DataError(f"{where} lacks {', '.join(missing)} (each line needs {', '.join(_FIELDS)})")
    bad = [k for k in _FIELDS if not isinstance(row[k], str) or not row[k]]
    if bad:
        raise DataError(f"{where}: {', '.join(bad)} must be non-empty strings")
    for key in ("original_sha256", "edited_sha256"):
        if not _SHA256.fullmatch(row[key]):
            raise DataError(f"{where}: {key} {row[key]!r} is not a sha256 (64 lower-case hex digits)")
    for key in ("original_file_name", "edited_file_name"):
        rel = PurePosixPath(row[key])
        if rel.is_absolute() or ".." in rel.parts:
            raise DataError(f"{where}: {key} {row[key]!r} must be a path inside the folder")
    return EditPair(**{k: row[k] for k in _FIELDS})


def read_edit_pairs(folder: str | Path) -> EditPairs:
    """The edit-pair dataset in `folder`; a :class:`DataError` naming the line of a malformed metadata file."""
    folder = Path(folder).expanduser()
    path = folder / METADATA
    if not path.is_file():
        raise DataError(f"{folder} is not an edit-pair dataset: it has no {METADATA}")
    pairs: dict[str, EditPair] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        pair = _parse_line(path, n, line)
        if pair.image_id in pairs:
            raise DataError(f"{path}, line {n}: image {pair.image_id!r} has a pair already")
        pairs[pair.image_id] = pair
    if not pairs:
        raise DataError(f"{path} lists no pairs")
    return EditPairs(folder, pairs)


def write_edit_pairs(folder: str | Path, pairs: Iterable[EditPair]) -> EditPairs:
    """Replace the folder's ``metadata.jsonl`` (atomically) with `pairs`, in image-id order."""
    folder = Path(folder)
    ordered = sorted(pairs, key=lambda p: p.image_id)
    write_bytes(folder / METADATA, "".join(json.dumps(asdict(p), sort_keys=True) + "\n" for p in ordered))
    return EditPairs(folder, {p.image_id: p for p in ordered})


def add_pair(folder: str | Path, image_id: str, original: str | Path, edited: Image.Image) -> EditPair:
    """Store one pair's files in `folder` (the original copied byte for byte, the edit as PNG, each
    written atomically) and return its metadata line; `write_edit_pairs` records it."""
    folder = Path(folder)
    original_name, edited_name = original_file_name(image_id), edited_file_name(image_id)
    atomic_write(folder / original_name, lambda tmp: shutil.copyfile(original, tmp))
    atomic_write(folder / edited_name, lambda tmp: edited.convert("RGB").save(tmp, format="PNG"))
    return EditPair(image_id, original_name, edited_name, sha256_file(folder / original_name),
                    sha256_file(folder / edited_name))


def edit_pairs_folder(source: str) -> Path:
    """Where `source` (a folder, or ``hf:ID@REV``: a Hugging Face dataset at a pinned revision,
    downloaded once into featbench's cache) is on this machine."""
    if not source.startswith("hf:"):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise DataError(f"edit-pair folder {folder} does not exist")
        return folder
    repo = parse_hf_images(source)
    from huggingface_hub import snapshot_download

    where = {"repo_id": repo["dataset"], "revision": repo["revision"], "repo_type": "dataset",
             "cache_dir": cache_dir() / "edit_pairs" / "hub"}
    try:
        return Path(snapshot_download(**where, local_files_only=True))
    except Exception:  # not downloaded yet: fetch it
        pass
    try:
        return Path(snapshot_download(**where))
    except Exception as exc:  # offline, unknown id or revision: say which and how to get round it
        raise DataError(f"cannot download the edit-pair dataset {repo['dataset']} at revision {repo['revision']} from "
                        f"the Hugging Face Hub ({type(exc).__name__}: {str(exc)[:200]}). hf: edit pairs need the hub "
                        "once; offline, copy the dataset's folder here and give it as the source") from exc


def load_edit_pairs(source: str, manifest_sha256: str) -> EditPairs:
    """The edit-pair dataset at `source`, checked against the manifest hash a suite pins."""
    pairs = read_edit_pairs(edit_pairs_folder(source))
    if pairs.manifest_sha256 != manifest_sha256:
        raise DataError(f"the edit pairs in {pairs.metadata_path} hash to {pairs.manifest_sha256[:16]}…, the suite "
                        f"pins {manifest_sha256[:16]}…: they are other edits than the suite's (changed, added to or "
                        "removed from)")
    return pairs


def _missing_pairs_error(pairs: EditPairs, context: ManipulationContext, missing: list[str]) -> DataError:
    made = read_provenance(pairs.folder)
    how = "add their pairs"
    if made.get("command"):
        how = f"make them with `{made['command']}` (it resumes: the edits already there are kept)"
    return DataError(f"{pairs.metadata_path} has no edit of {len(missing)} of the {len(context.split_ids)} "
                     f"{context.split} images of the suite, e.g. {missing[0]!r}: {how}")


def apply_edit_pairs(images: torch.Tensor, context: ManipulationContext, source: str,
                     manifest_sha256: str) -> torch.Tensor:
    """Each row's edited image, cut like the row's view of the original (the ``edit_pairs`` manipulation)."""
    if not source or not manifest_sha256:
        raise ManipulationParamError(f"manipulation {MANIPULATION} needs its params source (a folder or hf:ID@REV) "
                                     "and manifest_sha256, which `featbench edit` prints")
    pairs = load_edit_pairs(source, manifest_sha256)
    missing = [i for i in context.split_ids if i not in pairs.pairs]
    if missing:
        raise _missing_pairs_error(pairs, context, missing)
    edited: dict[str, Image.Image] = {}
    rows = []
    for image_id, view in zip(context.image_ids, context.views):
        if image_id not in edited:
            pinned, made_from = context.split_sha256.get(image_id), pairs.pair(image_id).original_sha256
            if made_from != pinned:
                raise DataError(f"{pairs.metadata_path}: the edit of {image_id!r} was made from a file with sha256 "
                                f"{made_from[:12]}…, the suite's image has {(pinned or 'none')[:12]}…: these are "
                                "edits of other images")
            edited[image_id] = pairs.edited_image(image_id)
        rows.append(context.view_of(edited[image_id], image_id, view))
    return torch.stack(rows).to(images.device)


def _check_params(p: Mapping[str, Any]) -> None:
    if not isinstance(p["source"], str) or not isinstance(p["manifest_sha256"], str):
        raise ManipulationParamError("parameters 'source' and 'manifest_sha256' must be strings")
    if p["manifest_sha256"] and not _SHA256.fullmatch(p["manifest_sha256"]):
        raise ManipulationParamError(f"parameter 'manifest_sha256' must be 64 lower-case hex digits, "
                                     f"got {p['manifest_sha256']!r}")
    if bool(p["source"]) != bool(p["manifest_sha256"]):
        raise ManipulationParamError(f"manipulation {MANIPULATION} needs both source and manifest_sha256")


# After the built-in semantic edits, whichever module is imported first: the listing order is fixed.
import featbench.data.semantic  # noqa: E402,F401

# The unset defaults pass the check (a suite file may name the kind first); a build without them fails clearly.
register_manipulation(MANIPULATION, "semantic", apply_edit_pairs, {"source": "", "manifest_sha256": ""},
                      check=_check_params, contextual=True)
