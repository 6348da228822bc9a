"""Submissions written as an attacker would write them: their fit tries every way it can think of
to get its task's test targets (featbench's public API, FEATBENCH_CACHE, the default cache, the
cache's absolute path if it knows it, a walk of the file system). The mapper's predict returns
the stored target of the nearest stored source map when it found them, else its input; the
inverter's invert returns the true test images when it found them, else the mean training image.
`tests/test_isolation.py` scores them; under isolation they must get no targets. What they found
is their ``describe()["findings"]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import featbench as fb

WALK_SKIP = ("/proc", "/sys", "/dev")
FOUND_SUFFIXES = (".arrow", ".safetensors", ".parquet")


def look_around(findings: dict, cache: str) -> None:
    """What the environment, the caches (default, known by path, named by FEATBENCH_CACHE) and a
    walk of the file system show of featbench's data, into `findings`."""
    findings["env FEATBENCH_CACHE"] = os.environ.get("FEATBENCH_CACHE")
    for label, folder in (("default cache", Path.home() / ".cache" / "featbench"), ("known cache path", cache),
                          ("env cache", os.environ.get("FEATBENCH_CACHE") or "")):
        folder = Path(folder)
        findings[label] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) \
            if folder.is_dir() else "absent"
    hits = []
    for root, dirs, files in os.walk("/"):
        if root.startswith(WALK_SKIP):
            dirs[:] = []
            continue
        hits += [os.path.join(root, f) for f in files
                 if f.endswith(FOUND_SUFFIXES) and ("featbench" in root or "job" in root or "cache" in root)]
    findings["walk"] = sorted(hits)


class Attacker(fb.Mapper):
    name, version = "attacker", "1"

    def __init__(self, suite_file: str = "", cache: str = ""):
        self.suite_file, self.cache = suite_file, cache  # what a well-informed attacker knows by heart

    def fit(self, train: fb.MapData) -> None:
        self.findings: dict = {}
        self.targets = None
        try:  # featbench's own API, as a user would load a task
            data = fb.load_task(fb.load_suite(self.suite_file), train.info.task_id)
            self.sources = torch.tensor(data.test["x"]).float()
            self.targets = torch.tensor(data.test["y"]).float()
            self.findings["load_task"] = f"got {len(self.targets)} test targets"
        except Exception as exc:
            self.findings["load_task"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        look_around(self.findings, self.cache)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.targets is None:
            return x
        nearest = torch.cdist(x.flatten(1), self.sources.flatten(1)).argmin(dim=1)
        return self.targets[nearest]

    def describe(self) -> dict:
        return {"findings": json.dumps(self.findings)}


class InverterAttacker(fb.Inverter):
    name, version = "inverter-attacker", "1"

    def __init__(self, suite_file: str = "", cache: str = ""):
        self.suite_file, self.cache = suite_file, cache

    def fit(self, train: fb.InvertData) -> None:
        from featbench.data.targets import target_images

        self.findings: dict = {}
        self.mean, self.targets = train.images.mean(dim=0), None
        try:  # the test images through featbench's own API, as the evaluator derives them
            suite = fb.load_suite(self.suite_file)
            images, _ = target_images(suite, train.info.backbone, "test", [train.resolution])
            self.targets = images[train.resolution].float() / 255
            self.findings["target_images"] = f"got {len(self.targets)} test images"
        except Exception as exc:
            self.findings["target_images"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        look_around(self.findings, self.cache)
        self.calls = 0

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        if self.targets is None:
            return self.mean.expand(len(x), -1, -1, -1).clone()
        out = self.targets[self.calls:self.calls + len(x)]
        self.calls += len(x)
        return out

    def describe(self) -> dict:
        return {"findings": json.dumps(self.findings)}
