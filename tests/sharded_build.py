"""`featbench` command line with the tests' tiny backbones registered, for launching under torchrun.

    torchrun --nproc-per-node 2 tests/sharded_build.py build --suite tiny-test.yaml

With ``FAIL_RANK=R FAIL_AFTER=K`` in the environment, rank R raises after writing K shards (a
rank that fails mid-build); ``COUNT_SHARDS=FILE`` makes each rank append one line per shard it
writes to FILE.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.conftest  # noqa: E402,F401  (registers the tiny backbones)
from featbench import cli  # noqa: E402
from featbench.data import storage  # noqa: E402


def _instrument_shard_writes() -> None:
    rank = int(os.environ.get("RANK", "0"))
    fail_after = int(os.environ["FAIL_AFTER"]) if os.environ.get("FAIL_RANK") == str(rank) else None
    count_file = os.environ.get("COUNT_SHARDS")
    real_write = storage._write_shard
    written = 0

    def write(path, *args, **kwargs):
        nonlocal written
        if fail_after is not None and written >= fail_after:
            raise RuntimeError(f"rank {rank} stops here, as the test asked (after {written} shards)")
        real_write(path, *args, **kwargs)
        written += 1
        if count_file:
            with open(count_file, "a") as f:
                f.write(f"{rank} {path}\n")

    storage._write_shard = write


if __name__ == "__main__":
    _instrument_shard_writes()
    sys.exit(cli.main(sys.argv[1:]))
