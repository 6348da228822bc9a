"""A map-track submission written as an attacker would write it: its fit tries every way it can
think of to get its task's test targets (featbench's public API, FEATBENCH_CACHE, the default
cache, the cache's absolute path if it knows it, a walk of the file system), and its predict
returns the stored target of the nearest stored source map when it found them, else its input.
`tests/test_isolation.py` scores it; under isolation it must get no targets. What it found is
its ``describe()["findings"]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import featbench as fb

WALK_SKIP = ("/proc", "/sys", "/dev")
FOUND_SUFFIXES = (".arrow", ".safetensors", ".parquet")


class Attacker(fb.Mapper):
    name, version = "attacker", "1"

    def __init__(self, suite_file: str = "", cache: str = ""):
        self.suite_file, self.cache = suite_file, cache  # what a well-informed attacker knows by heart

    def fit(self, train: fb.MapData) -> None:
        self.findings: dict = {"env FEATBENCH_CACHE": os.environ.get("FEATBENCH_CACHE")}
        self.targets = None
        try:  # featbench's own API, as a user would load a task
            data = fb.load_task(fb.load_suite(self.suite_file), train.info.task_id)
            self.sources = torch.tensor(data.test["x"]).float()
            self.targets = torch.tensor(data.test["y"]).float()
            self.findings["load_task"] = f"got {len(self.targets)} test targets"
        except Exception as exc:
            self.findings["load_task"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        for label, folder in (("default cache", Path.home() / ".cache" / "featbench"), ("known cache path", self.cache),
                              ("env cache", os.environ.get("FEATBENCH_CACHE") or "")):
            folder = Path(folder)
            self.findings[label] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) \
                if folder.is_dir() else "absent"
        hits = []
        for root, dirs, files in os.walk("/"):
            if root.startswith(WALK_SKIP):
                dirs[:] = []
                continue
            hits += [os.path.join(root, f) for f in files
                     if f.endswith(FOUND_SUFFIXES) and ("featbench" in root or "job" in root or "cache" in root)]
        self.findings["walk"] = sorted(hits)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.targets is None:
            return x
        nearest = torch.cdist(x.flatten(1), self.sources.flatten(1)).argmin(dim=1)
        return self.targets[nearest]

    def describe(self) -> dict:
        return {"findings": json.dumps(self.findings)}
