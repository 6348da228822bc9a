"""Processes launched together (``torchrun``, ``accelerate launch``, ``srun``): who this one is
among them, and steps they take together.

Launchers say it in the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``);
`launched_ranks` joins a process group over them (gloo: what passes between the processes is a
few small messages, the data go through the shared file system), or uses the one the caller
already started. A single process is rank 0 of 1, and every step below is then a plain call.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator, Sequence, TypeVar

import torch.distributed as dist

from featbench.core.errors import FeatbenchError

T = TypeVar("T")

# Rank 0 alone checks existing data and assembles the others' output, which for terabytes of
# features takes well past torch's default of 30 minutes while the others wait. A rank that
# dies closes its connections, which the others notice at once: this only bounds a hang.
TIMEOUT = timedelta(hours=12)


class RankFailedError(FeatbenchError):
    """Another process of a launched group failed a step that all of them take together."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among `world_size` processes (rank 0 of 1 when launched alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's share of `items`: every world_size-th one, from its rank on."""
        return list(items[self.rank::self.world_size])

    def _lost(self, what: str, exc: Exception) -> RankFailedError:
        return RankFailedError(f"lost contact with another of the {self.world_size} ranks while {what} (killed, or "
                               f"its machine lost?): {exc}")

    def _gather(self, obj: object, what: str) -> list:
        if self.world_size == 1:
            return [obj]
        out: list = [None] * self.world_size
        try:
            dist.all_gather_object(out, obj)
        except RuntimeError as exc:  # gloo, when a peer's connection closes
            raise self._lost(what, exc) from exc
        return out

    @contextlib.contextmanager
    def together(self, what: str, after: str = "") -> Iterator[None]:
        """Every rank runs the block; at its end they wait for each other, and if any failed, all
        fail: that one with its own error, the others with a `RankFailedError` naming it.

        `what` names the step ("extracting X"), `after` says what the failure leaves behind.
        """
        try:
            yield
        except BaseException as exc:
            with contextlib.suppress(Exception):  # the others must hear of it; our own error comes first
                self._gather(f"{type(exc).__name__}: {exc}", what)
            raise
        tail = f". {after}" if after else ""
        try:
            outcomes = self._gather(None, what)
        except RankFailedError as exc:
            raise RankFailedError(f"{exc}{tail}") from exc.__cause__
        failures = [f"rank {r} of {self.world_size} failed while {what}: {msg}"
                    for r, msg in enumerate(outcomes) if msg is not None]
        if failures:
            raise RankFailedError("; ".join(failures) + tail)

    def from_main(self, fn: Callable[[], T], what: str) -> T:
        """`fn()` run on rank 0 alone, its result (or its failure) passed to every rank."""
        if self.world_size == 1:
            return fn()
        box: list = [None]
        if self.is_main:
            try:
                box = [(fn(), None)]
            except BaseException as exc:
                with contextlib.suppress(Exception):  # as in `together`
                    dist.broadcast_object_list([(None, f"{type(exc).__name__}: {exc}")], src=0)
                raise
        try:
            dist.broadcast_object_list(box, src=0)
        except RuntimeError as exc:
            raise self._lost(what, exc) from exc
        result, failure = box[0]
        if failure is not None:
            raise RankFailedError(f"rank 0 of {self.world_size} failed while {what}: {failure}")
        return result


def launched_env() -> bool:
    """Whether a launcher started this process as one of several (RANK, WORLD_SIZE, MASTER_ADDR set)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and all(
        os.environ.get(v) for v in ("RANK", "MASTER_ADDR", "MASTER_PORT"))


@contextlib.contextmanager
def launched_ranks() -> Iterator[Ranks]:
    """This process's `Ranks`: from the process group already started, else from the launcher's
    environment (a gloo group is started for the block and ended after it), else rank 0 of 1."""
    if dist.is_available() and dist.is_initialized():
        yield Ranks(dist.get_rank(), dist.get_world_size())
        return
    if not launched_env():
        yield Ranks()
        return
    if not (dist.is_available() and dist.is_gloo_available()):
        raise FeatbenchError("this process was launched as one of several (WORLD_SIZE > 1), but this torch "
                             "build has no gloo backend for torch.distributed; launch one process instead")
    dist.init_process_group("gloo", timeout=TIMEOUT)
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size())
    finally:
        dist.destroy_process_group()

