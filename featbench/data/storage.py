"""Task data on disk: building the variant datasets of a suite, verifying and loading them.

One *variant dataset* holds the feature maps of one (backbone, layer, variant) for every view of
every image of the suite, as a Hugging Face ``DatasetDict`` (splits ``train`` / ``test``) in the
files ``save_to_disk`` writes (``datasets.load_from_disk`` reads it): columns ``image_id``,
``view``, ``label``, ``features`` (float16 C×h×w) and, for vision transformers, ``prefix``
(float16 C×k, the class and register tokens). It lives in

    <cache>/datasets/<backbone>/<layer>/<variant>-<key[:16]>/

beside a ``featbench.json`` that records its full key (the hash of `Suite.variant_spec`) and the
sha256 of each data file. A dataset whose record or files do not match is never used: loading
refuses it, building rebuilds it. Builds stream: images are decoded once per chunk, every
manipulation is derived from the decoded pixels, the variants of a chunk share one stream of
fixed-size batches, one forward pass serves all layers, and each chunk is written as an Arrow
shard, so an interrupted build resumes at the first missing shard. Processes launched together
(``torchrun``, see `featbench.core.distributed`) share the chunks out, each writing its own
shards; rank 0 then assembles them, so the datasets are those of one process.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence, TypeVar

import datasets
import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from datasets import Array2D, Array3D, DatasetDict, DatasetInfo, Features, Value
from datasets.arrow_writer import get_writer_batch_size_from_data_size
from datasets.features.features import numpy_to_pyarrow_listarray
from datasets.table import MemoryMappedTable, concat_tables
from datasets.utils.py_utils import asdict, convert_file_size_to_int
from tqdm.auto import tqdm

from featbench.zoo.backbones import Backbone, backbone_fingerprint, load_backbone
from featbench.core.cache import atomic_write
from featbench.core.distributed import Ranks, launched_ranks
from featbench.core.prefetch import prefetched
from featbench.core.errors import DataError, FeatbenchError
from featbench.core.hashing import sha256_file, sha256_json
from featbench.data.images import ImageRecord, ImageSource, seed_for, split_by_name, views
from featbench.data.manipulations import Manipulation, ManipulationContext
from featbench.core.paths import cache_dir
from featbench.data.suites import ORIGINAL, Suite, Task

SPLITS = ("train", "test")
RECORD = "featbench.json"
T = TypeVar("T")


def variant_name(manipulation: Manipulation | None) -> str:
    return manipulation.name if manipulation else ORIGINAL


@dataclass(frozen=True)
class VariantRef:
    """Where one variant dataset lives and the key it must carry."""

    backbone: str
    layer: str
    variant: str
    key: str
    spec: dict

    @property
    def path(self) -> Path:
        return cache_dir() / "datasets" / self.backbone / self.layer / f"{self.variant}-{self.key[:16]}"

    @property
    def partial(self) -> Path:
        path = self.path
        return path.with_name(path.name + ".partial")


def variant_refs(suite: Suite, backbone: str, layer: str,
                 fingerprint: dict | None = None) -> dict[str, VariantRef]:
    """The variant datasets of one backbone and layer, keyed by variant name."""
    fingerprint = fingerprint or backbone_fingerprint(backbone)
    manifest = suite.images["manifest_sha256"]
    out = {}
    for m in suite.variants():
        spec = suite.variant_spec(manifest, fingerprint, layer, m)
        out[variant_name(m)] = VariantRef(backbone, layer, variant_name(m), sha256_json(spec), spec)
    return out


# ----------------------------------------------------------------------------------------------
# verification


def read_record(ref: VariantRef, check_files: bool = True) -> dict:
    """The dataset's ``featbench.json`` after checking its key and (optionally) its files."""
    record_path = ref.path / RECORD
    if not record_path.is_file():
        raise DataError(f"no built dataset for {ref.backbone}/{ref.layer}/{ref.variant} at {ref.path}")
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"cached dataset {ref.path} has a damaged {RECORD}: {exc}") from exc
    if record.get("key") != ref.key:
        raise DataError(f"cached dataset {ref.path} was built for another spec (key {str(record.get('key'))[:16]}…)")
    if check_files:
        for rel, digest in record["files"].items():
            f = ref.path / rel
            if not f.is_file():
                raise DataError(f"cached dataset {ref.path} is incomplete: {rel} is missing")
            if sha256_file(f) != digest:
                raise DataError(f"cached dataset {ref.path} is corrupt: {rel} does not match its recorded "
                                "sha256. Run `featbench build` for its suite to rebuild it.")
    return record


def is_built(ref: VariantRef) -> bool:
    try:
        read_record(ref)
    except DataError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# building


@dataclass
class BuildReport:
    suite: str
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    rebuilt_corrupt: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bytes_on_disk: int = 0
    n_images: int = 0
    ranks: Ranks = field(default_factory=Ranks)  # the processes that built it; rank 0 has the whole report
    device: str = ""  # where rank 0 ran the forward passes ("" if nothing was extracted)

    def summary(self) -> str:
        processes = f" in {self.ranks.world_size} processes" if self.ranks.world_size > 1 else ""
        on = f" on {self.device}" if self.device else ""
        lines = [f"suite {self.suite}: {len(self.built)} datasets built, {len(self.reused)} reused, "
                 f"{len(self.rebuilt_corrupt)} corrupt ones rebuilt; {self.n_images} images; "
                 f"{self.bytes_on_disk / 2**30:.2f} GiB on disk; {self.seconds:.0f} s{processes}{on}"]
        lines += [f"  rebuilt (was corrupt): {name}" for name in self.rebuilt_corrupt]
        return "\n".join(lines)


def _features_schema(shape: Sequence[int], prefix_shape: Sequence[int] | None) -> Features:
    cols = {"image_id": Value("string"), "view": Value("int16"), "label": Value("int32"),
            "features": Array3D(tuple(shape), "float16")}
    if prefix_shape:
        cols["prefix"] = Array2D(tuple(prefix_shape), "float16")
    return Features(cols)


@dataclass(frozen=True)
class Chunk:
    """A run of one split's images, decoded and written together (one Arrow shard per variant)."""

    split: str
    index: int
    records: tuple[ImageRecord, ...]

    @property
    def shard(self) -> str:
        return f"{self.split}-{self.index:05d}.arrow"


def _chunks(splits: dict[str, list[ImageRecord]], images_per_chunk: int) -> list[Chunk]:
    out = []
    for split in SPLITS:
        recs = splits[split]
        for i in range(0, len(recs), images_per_chunk):
            out.append(Chunk(split, i // images_per_chunk, tuple(recs[i:i + images_per_chunk])))
    return out


def _input_batches(bb: Backbone, pieces: Iterable[tuple[T, torch.Tensor]], batch_size: int
                   ) -> Iterator[tuple[torch.Tensor, list[tuple[T, int]]]]:
    """The pieces' pixels, normalised, in order, as batches of exactly `batch_size` rows, each with
    its real rows by piece: [(tag, rows), ...] for the (tag, pixels) pieces it holds.

    Batches span piece boundaries (variants and chunks alike), so only the very last one is padded
    (with zeros): a compiled extractor sees one shape, and none of its work but the last batch's is
    padding. A row's map does not depend on the rows beside it in its batch (checked bit for bit
    by tests/test_backbones.py and tests/test_sharded_build.py), so the bytes stored do not depend
    on the batching. Pixels are normalised straight into each batch, in the network's layout; each
    batch is a fresh tensor, since batches are made ahead of their use (freed memory is kept for
    reuse during builds: allocating is cheap).
    """
    batch: torch.Tensor | None = None
    spans: list[tuple[T, int]] = []
    filled = 0
    for tag, piece in pieces:
        start = 0
        while start < len(piece):
            if batch is None:
                batch = torch.empty(batch_size, *piece.shape[1:], memory_format=bb.input_memory_format)
            take = min(batch_size - filled, len(piece) - start)
            bb.normalize(piece[start:start + take], out=batch[filled:filled + take])
            spans.append((tag, take))
            filled, start = filled + take, start + take
            if filled == batch_size:
                yield batch, spans
                batch, spans, filled = None, [], 0
    if filled:
        batch[filled:] = 0
        yield batch, spans


@dataclass
class _Segment:
    """The rows of one variant of one chunk on their way through the network: their maps are
    gathered batch by batch, and written as the chunk's shards of that variant once complete."""

    chunk: Chunk
    variant: str
    layers: list[str]
    rows: Decoded
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]] = field(default_factory=dict)
    missing: int = field(init=False)  # rows not through the network yet

    def __post_init__(self) -> None:
        self.missing = len(self.rows.ids)

    def add(self, feats: dict[str, torch.Tensor], start: int, n: int) -> None:
        """Rows start..start+n of a batch's maps `feats` ({layer: maps, ViT maps with .prefix})."""
        for layer in self.layers:
            f = feats[layer]
            prefix = getattr(f, "prefix", None)
            self.parts.setdefault(layer, []).append(
                (f[start:start + n], None if prefix is None else prefix[start:start + n]))
        self.missing -= n

    def maps(self, layer: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The segment's maps of `layer` and their prefixes (None for CNNs), float16, rows in order."""
        parts = self.parts[layer]
        return (torch.cat([m for m, _ in parts]),
                None if parts[0][1] is None else torch.cat([p for _, p in parts]))


def _write_shard(path: Path, schema: pa.Schema, ids: list[str], view_ix: list[int], labels: list[int],
                 maps: torch.Tensor, prefixes: torch.Tensor | None) -> None:
    """One chunk's rows of one variant dataset; `maps` and `prefixes` are float16 already.

    The bytes are those of ``datasets``' own ``ArrowWriter`` for `schema` (``Features.arrow_schema``
    of `_features_schema`; tests/test_storage.py compares them), written straight with pyarrow: the
    ``ArrowWriter`` spent two thirds of a shard's time on its per-file set-up.
    """
    columns = [pa.array(ids, pa.string()), pa.array(view_ix, pa.int16()), pa.array(labels, pa.int32())]
    for name, array in (("features", maps), ("prefix", prefixes)):
        if array is not None:  # ArrayND columns: the extension type over datasets' nested lists
            columns.append(pa.ExtensionArray.from_storage(schema.field(name).type,
                                                          numpy_to_pyarrow_listarray(array.numpy())))
    table = pa.Table.from_arrays(columns, schema=schema)
    atomic_write(path, lambda tmp: _write_arrow(tmp, table, datasets.config.DEFAULT_MAX_BATCH_SIZE))


def _write_arrow(path: str | Path, table: pa.Table, batch_size: int) -> None:
    """`table` as an Arrow stream file of record batches of `batch_size` rows, as datasets writes them."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for offset in range(0, len(table), batch_size):
            writer.write_table(table.slice(offset, batch_size).combine_chunks())


def save_table(table: pa.Table, fingerprint: str, directory: Path) -> list[Path]:
    """Save `table` (with datasets' features in its schema) as ``datasets.Dataset.save_to_disk``
    saves a dataset of it whose format lists its columns (as ``concatenate_datasets`` leaves one)
    and whose fingerprint is `fingerprint`; returns the data files written.

    The files are save_to_disk's, byte for byte (tests/test_storage.py compares them), written
    here with pyarrow: save_to_disk's Python (a Dataset, its state, a cast per record batch) held
    the GIL that the network's thread needs between its kernels, and builds ran 2–3.5 % slower
    with it (benchmarks/extraction_throughput.py's suite, builds interleaved in one process,
    median units/s: 140.8 against 143.5, and 137.8 against 142.8).
    """
    directory.mkdir(parents=True, exist_ok=True)
    n, nbytes = len(table), table.nbytes
    # save_to_disk's sharding and record-batch size (datasets.Dataset.save_to_disk)
    n_files = min(n, int(nbytes / convert_file_size_to_int(datasets.config.MAX_SHARD_SIZE)) + 1)
    batch_size = datasets.config.DEFAULT_MAX_BATCH_SIZE
    if nbytes > 0:
        batch_size = min(batch_size, get_writer_batch_size_from_data_size(n, nbytes))
    names = [f"data-{i:05d}-of-{n_files:05d}.arrow" for i in range(n_files)]
    per_file, extra = divmod(n, n_files) if n_files else (0, 0)
    start = 0
    for i, name in enumerate(names):
        end = start + per_file + (i < extra)
        _write_arrow(directory / name, table.slice(start, end - start), batch_size)
        start = end
    state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": fingerprint,
             "_format_columns": table.column_names, "_format_kwargs": {}, "_format_type": None,
             "_output_all_columns": False, "_split": None}
    (directory / datasets.config.DATASET_STATE_JSON_FILENAME).write_text(json.dumps(state, indent=2, sort_keys=True))
    info = asdict(DatasetInfo(features=Features.from_arrow_schema(table.schema)))
    (directory / datasets.config.DATASET_INFO_FILENAME).write_text(
        json.dumps({key: info[key] for key in sorted(info)}, indent=2))
    return [directory / name for name in names]


@contextlib.contextmanager
def quiet_datasets():
    """datasets' own per-save progress bars would drown featbench's one bar per backbone."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


# glibc's mallopt parameters and its defaults as a PyTorch process settles at them (the dynamic
# mmap threshold climbs to its 32 MiB cap once large tensors are freed; trimming follows at twice it).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_SETTLED_MMAP_THRESHOLD = 32 * 2**20


@contextlib.contextmanager
def keep_freed_memory():
    """Within the block, freed memory stays in the process for reuse (glibc; elsewhere a no-op).

    glibc hands blocks over its mmap threshold (32 MiB at most) straight back to the kernel when
    they are freed, so every forward pass faults in its activations afresh (hundreds of MiB per
    batch of 50 images): measured on a 2-core CPU, about 40 % of the extraction's CPU time went
    into page faults. Afterwards the thresholds go back to where glibc settles them and the kept
    memory is released.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 2**31 - 1)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _SETTLED_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _SETTLED_MMAP_THRESHOLD)
        libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


class _Assembly:
    """Assembles one backbone's shards into saved ``DatasetDict``s with their records.

    A split whose shards are all written is saved while the extraction goes on (`split_written`,
    rank 0 only), so that the end of a build is left with the last split to save, not every split.
    Splits are saved into a staging folder beside the dataset, which then replaces it at once.
    """

    def __init__(self, refs: dict[str, dict[str, VariantRef]], chunks: list[Chunk], n_rows: dict[str, int],
                 todo: dict[str, list[str]]):
        self.refs, self.n_rows = refs, n_rows
        self.chunks = {split: [c for c in chunks if c.split == split] for split in SPLITS}
        self.staged: set[tuple[str, str, str]] = set()  # (variant, layer, split)
        self.hashes: dict[tuple[str, str], dict[str, str]] = {}  # sha256 of the staged files, by relative path
        self.columns: dict[tuple[str, str], list[str]] = {}
        for variant, layers in todo.items():  # a staging folder left by an interrupted build is never reused
            for layer in layers:
                shutil.rmtree(self._staging(refs[layer][variant]), ignore_errors=True)

    @staticmethod
    def _staging(ref: VariantRef) -> Path:
        path = ref.path
        return path.with_name(path.name + ".tmp")

    def _save_split(self, variant: str, layer: str, split: str) -> None:
        """One split's shards as one dataset, fingerprinted by the key."""
        ref = self.refs[layer][variant]
        partial = ref.partial
        table = concat_tables([MemoryMappedTable.from_file(str(partial / c.shard)) for c in self.chunks[split]])
        if len(table) != self.n_rows[split]:
            raise DataError(f"{partial}: {split} has {len(table)} rows, expected {self.n_rows[split]}")
        staging = self._staging(ref)
        files = save_table(table.table, f"{ref.key[:16]}-{split}", staging / split)
        # Hashed now, while the network may still be running, rather than all at the build's end.
        self.hashes.setdefault((variant, layer), {}).update({str(p.relative_to(staging)): sha256_file(p) for p in files})
        self.staged.add((variant, layer, split))
        self.columns[variant, layer] = table.column_names

    def split_written(self, variant: str, layer: str, split: str) -> None:
        """Save the split now if all of its shards are on disk (the last one may be another rank's)."""
        partial = self.refs[layer][variant].partial
        if all((partial / c.shard).is_file() for c in self.chunks[split]):
            self._save_split(variant, layer, split)

    def finish(self, variant: str, layer: str) -> int:
        """Save the splits not saved yet, record the files and put the dataset in place; returns bytes on disk."""
        ref = self.refs[layer][variant]
        for split in SPLITS:
            if (variant, layer, split) not in self.staged:
                self._save_split(variant, layer, split)
        tmp = self._staging(ref)
        # What DatasetDict.save_to_disk writes beside its splits, which are saved one by one here.
        (tmp / datasets.config.DATASETDICT_JSON_FILENAME).write_text(json.dumps({"splits": list(SPLITS)}))
        files = dict(sorted(self.hashes[variant, layer].items()))
        record = {"key": ref.key, "spec": ref.spec, "files": files, "rows": self.n_rows,
                  "columns": self.columns[variant, layer],
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
        shutil.rmtree(ref.path, ignore_errors=True)
        os.replace(tmp, ref.path)
        shutil.rmtree(ref.partial, ignore_errors=True)
        return sum(p.stat().st_size for p in ref.path.rglob("*") if p.is_file())


def build_suite(suite: Suite, images: str | Path | None = None, custom: bool = False, *,
                backbones: Iterable[str] | None = None, batch_size: int = 32, compile: bool = False,
                progress: bool = True, models: Mapping[str, Backbone] | None = None,
                device: str | None = None) -> tuple[Suite, BuildReport]:
    """Extract and cache every variant dataset of `suite`; returns the suite built (custom or not).

    `images` overrides the image folder; with `custom`, a folder that is not the pinned one
    builds a custom suite (see `Suite.as_custom`). `compile` uses ``torch.compile`` for the
    forward passes (worth its start-up time on full suites) of the backbones the suite computes in
    float32; those it computes in float64 (its ``precision``) run eager. `models` gives backbones already
    loaded (say, compiled and warmed up by an earlier build), by name, to use instead of loading.
    `device` runs the forward passes there (default: the CPU); ``cuda`` under a launcher gives
    each rank the GPU of its LOCAL_RANK. Decoding, manipulating and writing stay on the CPU.
    A GPU's maps are deterministic (no TF32) but not the CPU's bits: the published suites'
    task hashes are those of CPU builds.

    Under a launcher of several processes (``torchrun``, ``accelerate launch``: see
    `launched_ranks`), each process extracts every world_size-th chunk of images; rank 0 alone
    checks what is built and, once every rank has written its shards, assembles the datasets
    (the same bytes as one process writes). If a rank fails, every rank fails and nothing of that
    backbone is assembled; the shards written stay, so the next build resumes from them.
    """
    start = time.time()
    with launched_ranks() as ranks:
        source = suite.image_source(images, custom=custom)
        if source.manifest_sha256 != suite.images.get("manifest_sha256"):
            suite = suite.as_custom(source)
        report = BuildReport(suite.name, n_images=len(source), ranks=ranks)
        splits = split_by_name(source.records, suite.n_test)
        n_rows = {s: len(splits[s]) * suite.views[s] for s in SPLITS}
        images_per_chunk = max(1, batch_size // max(suite.views.values()))
        chunks = _chunks(splits, images_per_chunk)
        for name in backbones or suite.backbones:
            refs = {layer: variant_refs(suite, name, layer) for layer in suite.backbones[name]}
            todo = ranks.from_main(lambda: _plan_backbone(name, refs, report), f"checking {name}'s datasets")
            if not todo:
                continue
            with keep_freed_memory():
                assembly = _Assembly(refs, chunks, n_rows, todo) if ranks.is_main else None
                with quiet_datasets(), ranks.together(
                        f"extracting {name}", after=f"Nothing of {name} was assembled; the shards "
                        "written are kept, and building again resumes from them"):
                    precision = suite.precision_of(name)
                    dtype = getattr(torch, precision)
                    bb = (models or {}).get(name) or load_backbone(
                        name, compile=compile and dtype == torch.float32, device=_rank_device(device), dtype=dtype)
                    if bb.dtype != dtype:
                        raise FeatbenchError(f"suite {suite.name} computes {name}'s maps in {precision}; "
                                             f"the backbone given runs in {str(bb.dtype).removeprefix('torch.')}")
                    report.device = _device_name(bb.device)
                    _build_backbone(suite, source, bb, refs, todo, ranks.share(chunks), batch_size,
                                    progress and ranks.is_main, assembly)
                with quiet_datasets(), ranks.together(f"assembling {name}'s datasets"):
                    if assembly is not None:
                        labels = [(variant, layer) for variant, ls in todo.items() for layer in ls]
                        # Mostly writing and hashing, which release the GIL: two at a time shorten
                        # the build's serial tail (benchmarks/extraction_throughput.py).
                        with ThreadPoolExecutor(_ASSEMBLERS, "featbench-assemble") as pool:
                            for (variant, layer), size in zip(labels, pool.map(lambda vl: assembly.finish(*vl), labels)):
                                report.bytes_on_disk += size
                                report.built.append(f"{name}/{layer}/{variant}")
    report.seconds = time.time() - start
    return suite, report


def _rank_device(device: str | None) -> str | None:
    """``cuda`` under a launcher (torchrun and accelerate set LOCAL_RANK): this rank's own GPU."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def _device_name(device: torch.device) -> str:
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def _plan_backbone(backbone_name: str, refs: dict[str, dict[str, VariantRef]],
                   report: BuildReport) -> dict[str, list[str]]:
    """What is left to build of one backbone's datasets `refs` ({layer: {variant: ref}}): {variant: layers}."""
    todo: dict[str, list[str]] = {}
    for layer, by_variant in refs.items():
        for variant, ref in by_variant.items():
            label = f"{backbone_name}/{layer}/{variant}"
            if is_built(ref):
                report.reused.append(label)
                report.bytes_on_disk += sum(p.stat().st_size for p in ref.path.rglob("*") if p.is_file())
                continue
            if ref.path.exists():  # damaged or stale: rebuilt, never used
                report.rebuilt_corrupt.append(label)
                shutil.rmtree(ref.path)
            todo.setdefault(variant, []).append(layer)
    return todo


@dataclass
class Decoded:
    """A chunk's views as float32 pixels N×3×H×W in [0, 255], with each row's columns and the
    context that image-aware manipulations get."""

    pixels: torch.Tensor
    ids: list[str]
    view_ix: list[int]
    labels: list[int]
    context: ManipulationContext


class _SplitViews:
    """The views of one split's images as `suite` cuts them for `bb`: what a manipulation's context offers."""

    def __init__(self, suite: Suite, source: ImageSource, bb: Backbone, split: str):
        self.suite, self.source, self.pre, self.split = suite, source, bb.spec.preprocessing, split
        self.records = {r.image_id: r for r in split_by_name(source.records, suite.n_test)[split]}

    def cut(self, image: Image.Image, image_id: str) -> list[torch.Tensor]:
        pre = self.pre
        return list(views(image, self.suite.views[self.split], pre.resize, pre.crop, pre.interpolation,
                          seed_for(self.suite.seed, image_id)))

    def _record(self, image_id: str) -> ImageRecord:
        if image_id not in self.records:
            raise DataError(f"image {image_id!r} is not in the {self.split} split of {self.suite.name}")
        return self.records[image_id]

    def load_view(self, image_id: str, view: int) -> torch.Tensor:
        return self.cut(self.source.open(self._record(image_id)), image_id)[view]

    def view_of(self, image: Image.Image, image_id: str, view: int) -> torch.Tensor:
        with Image.open(self._record(image_id).path) as original:
            size = original.size
        return self.cut(image.convert("RGB").resize(size, Image.Resampling.BICUBIC), image_id)[view]

    def context(self, ids: list[str], view_ix: list[int]) -> ManipulationContext:
        return ManipulationContext(ids, view_ix, self.split, tuple(self.records), self.suite.seed,
                                   self.load_view, self.view_of, {i: r.sha256 for i, r in self.records.items()})


def decode_chunk(suite: Suite, source: ImageSource, bb: Backbone, chunk: Chunk) -> Decoded:
    """Decode each image of the chunk once; every variant derives from these pixels."""
    split_views = _SplitViews(suite, source, bb, chunk.split)
    pixels, ids, view_ix, labels = [], [], [], []
    # Decoding and resizing release the GIL: two at a time shorten the wait for a build's first batch.
    with ThreadPoolExecutor(_DECODERS, "featbench-decode-image") as pool:
        cuts = pool.map(lambda rec: split_views.cut(source.open(rec), rec.image_id), chunk.records)
    for rec, rec_views in zip(chunk.records, cuts):
        for v, px in enumerate(rec_views):
            pixels.append(px)
            ids.append(rec.image_id)
            view_ix.append(v)
            labels.append(rec.label)
    return Decoded(torch.stack(pixels), ids, view_ix, labels, split_views.context(ids, view_ix))


def variant_pixels(suite: Suite, rows: Decoded, manipulations: list[Manipulation | None]) -> Iterator[torch.Tensor]:
    """The pixels of each variant in turn, made only when the batching reaches them."""
    for m in manipulations:
        if m is None:
            yield rows.pixels
        else:
            yield m(rows.pixels, [seed_for(suite.seed, i, v, m.name) for i, v in zip(rows.ids, rows.view_ix)],
                    rows.context)


def _build_backbone(suite: Suite, source: ImageSource, bb: Backbone, refs: dict[str, dict[str, VariantRef]],
                    todo: dict[str, list[str]], chunks: list[Chunk], batch_size: int, progress: bool,
                    assembly: _Assembly | None) -> None:
    """Write the shards of `chunks` that `todo` ({variant: layers}) lacks.

    Three stages overlap: a background thread decodes, manipulates and normalises the next input
    batches while this one runs the network, and another writes each variant's shard of a chunk
    as soon as its last row is through the network (and hands each split whose shards are complete
    to `assembly`), so that little is left to write after the last batch. Measured on 2 shared
    cores (benchmarks/extraction_throughput.py), each overlap made the build faster.
    """
    manipulations = {variant_name(m): m for m in suite.variants()}
    schemas = {}
    for layer in refs:
        c, h, w = bb.layers[layer]
        prefix = (c, bb.num_prefix_tokens) if bb.num_prefix_tokens else None
        schemas[layer] = _features_schema((c, h, w), prefix).arrow_schema
    work = []
    for chunk in chunks:
        pending = {v: [layer for layer in ls if not (refs[layer][v].partial / chunk.shard).is_file()]
                   for v, ls in todo.items()}
        if any(pending.values()):
            work.append((chunk, {v: ls for v, ls in pending.items() if ls}))
    # One stream of batches for every pending variant of every chunk: the union of their layers is
    # extracted throughout (the same layers, except after an interruption), and each keeps its own.
    layers = sorted({layer for _, pending in work for ls in pending.values() for layer in ls}, key=list(refs).index)

    def write(segment: _Segment) -> None:
        rows = segment.rows
        for layer in segment.layers:
            maps, prefixes = segment.maps(layer)
            _write_shard(refs[layer][segment.variant].partial / segment.chunk.shard, schemas[layer], rows.ids,
                         rows.view_ix, rows.labels, maps, prefixes)
            if assembly is not None:
                assembly.split_written(segment.variant, layer, segment.chunk.split)

    batches = prefetched(_input_batches(bb, _segment_pixels(suite, source, bb, work, manipulations), batch_size),
                         _BATCHES_AHEAD, name="featbench-decode")
    bar = tqdm(total=sum(len(c.records) * suite.views[c.split] * len(p) for c, p in work),
               desc=f"build {bb.name}", unit="map", disable=not progress)
    with ThreadPoolExecutor(1, thread_name_prefix="featbench-write") as writer:
        written: deque[Future] = deque()
        for xb, spans in batches:
            feats = bb.features(xb, layers, dtype=torch.float16)
            start = 0
            for segment, n in spans:
                segment.add(feats, start, n)
                start += n
                if segment.missing == 0:
                    written.append(writer.submit(write, segment))
                    if len(written) > _WRITES_AHEAD:
                        written.popleft().result()  # errors of a write are raised here
            bar.update(start)
        for future in written:
            future.result()
    bar.close()


_ASSEMBLERS = _DECODERS = 2  # threads that save datasets, and that decode a chunk's images
_BATCHES_AHEAD = 4  # input batches made ahead: enough to cover the decoding at a chunk's start
# Segments whose writes may wait behind the one being written: when a split is saved, its write
# takes several batches' time, which the network does not wait for.
_WRITES_AHEAD = 16


def _segment_pixels(suite: Suite, source: ImageSource, bb: Backbone, work: list[tuple[Chunk, dict[str, list[str]]]],
                    manipulations: dict[str, Manipulation | None]) -> Iterator[tuple[_Segment, torch.Tensor]]:
    """(segment, its pixels) for each pending variant of each chunk of `work`, in order; a chunk's
    images are decoded once, and each variant's pixels made only when the batching reaches them."""
    for chunk, pending in work:
        rows = decode_chunk(suite, source, bb, chunk)
        variants = list(pending)
        for variant, pixels in zip(variants, variant_pixels(suite, rows, [manipulations[v] for v in variants])):
            yield _Segment(chunk, variant, pending[variant], rows), pixels


# ----------------------------------------------------------------------------------------------
# loading


def column_array(ds: datasets.Dataset, column: str) -> np.ndarray:
    """A fixed-shape array column as one numpy array, without per-row conversion (float16 kept)."""
    feature = ds.features[column]
    shape = feature.shape
    table = ds.with_format("arrow")[:][column]
    chunks = []
    for chunk in table.chunks:
        values = chunk.storage if hasattr(chunk, "storage") else chunk
        for _ in range(len(shape)):
            values = values.flatten()
        chunks.append(values.to_numpy(zero_copy_only=False).reshape(-1, *shape))
    return np.concatenate(chunks) if chunks else np.zeros((0, *shape), dtype=feature.dtype)


def column_tensor(ds: datasets.Dataset, column: str) -> torch.Tensor | None:
    """`column_array` as a float32 tensor; None where the dataset has no such column (no prefix)."""
    if column not in ds.column_names:
        return None
    return torch.from_numpy(column_array(ds, column)).float()


@dataclass
class TaskData:
    """A task's data: ``train`` and ``test`` datasets with columns image_id, view, label, x and,
    for the map track, y (plus x_prefix / y_prefix for vision transformers)."""

    task: Task
    train: datasets.Dataset
    test: datasets.Dataset
    record: dict  # variant keys and data hashes this task was read from

    @property
    def content_sha256(self) -> str:
        """Hash over the task's spec and its data files."""
        return sha256_json({"task": self.task.id, "version": self.task.version, **self.record})


def load_variant(ref: VariantRef) -> tuple[DatasetDict, dict]:
    record = read_record(ref)
    return datasets.load_from_disk(str(ref.path)), record


def load_task(suite: Suite, task: Task | str) -> TaskData:
    """Read a built task (verified against its keys and data hashes); a clear error if not built."""
    if isinstance(task, str):
        task = suite.get_task(task)
    refs = variant_refs(suite, task.backbone, task.layer)
    try:
        source, source_record = load_variant(refs[ORIGINAL])
        parts = {"x": source}
        records = {"x": {"key": refs[ORIGINAL].key, "files": source_record["files"]}}
        if task.manipulation is not None:
            ref = refs[task.manipulation.name]
            target, target_record = load_variant(ref)
            parts["y"] = target
            records["y"] = {"key": ref.key, "files": target_record["files"]}
    except DataError as exc:
        raise DataError(f"task {task.id}: {exc}. Build it with `featbench build --suite {suite.cli_name}`.") from exc
    splits = {}
    for split in SPLITS:
        base = parts["x"][split]
        cols = [base.rename_column("features", "x")]
        if "prefix" in base.column_names:
            cols[0] = cols[0].rename_column("prefix", "x_prefix")
        if "y" in parts:
            other = parts["y"][split]
            if other["image_id"] != base["image_id"] or other["view"] != base["view"]:
                raise DataError(f"task {task.id}: source and target rows of {split} are not aligned")
            keep = [c for c in ("features", "prefix") if c in other.column_names]
            y = other.select_columns(keep).rename_column("features", "y")
            if "prefix" in keep:
                y = y.rename_column("prefix", "y_prefix")
            cols.append(y)
        splits[split] = datasets.concatenate_datasets(cols, axis=1) if len(cols) > 1 else cols[0]
    return TaskData(task, splits["train"], splits["test"], records)
