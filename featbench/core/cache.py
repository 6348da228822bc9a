"""Writing files so that a reader never sees half of one, and the small on-disk caches built on it.

`atomic_write` is the one way featbench replaces a file: the content goes to a temporary file in
the same folder, which is then moved into place with `os.replace`, so the path holds either the
old file or the complete new one, and an error leaves nothing behind. The caches (tail outputs,
scores, target images, reference points) store a value under a key that hashes everything it
depends on; a damaged or partial entry is made again.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside `path`, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; featbench's files are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | Path, data: str | bytes) -> Path:
    """Replace `path` atomically with `data` (text is written as UTF-8), flushed to disk."""
    data = data.encode("utf-8") if isinstance(data, str) else data

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def write_json(path: str | Path, obj: Any, **dumps: Any) -> Path:
    """Replace `path` atomically with `obj` as JSON (``json.dumps`` options in `dumps`)."""
    return write_bytes(path, json.dumps(obj, **dumps))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Replace `path` atomically with a safetensors file."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_tensors(path: str | Path, key: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """A safetensors file's tensors and metadata; None if it is missing, unreadable, or (with `key`)
    made for another key (its ``key`` metadata)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if key is not None and meta.get("key") != key:
                return None
            return {name: f.get_tensor(name) for name in f.keys()}, meta
    except Exception:  # damaged or partial: the caller makes it again
        return None


def cached_tensor(path: str | Path, key: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor cached at `path` for `key`, else ``make()``, stored there first."""
    found = read_tensors(path, key)
    if found is not None and "value" in found[0]:
        return found[0]["value"]
    out = make()
    save_tensors(path, {"value": out}, metadata={"key": key})
    return out


def cached_json(path: str | Path, make: Callable[[], Any]) -> Any:
    """The JSON value cached at `path` (named by its key), else ``make()``, stored there first."""
    path = Path(path)
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:  # damaged or partial: made again
            pass
    out = make()
    write_json(path, out)
    return out
