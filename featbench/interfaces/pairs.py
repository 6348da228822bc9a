"""What the two tracks' training data share: rows of (input, target) pairs of some images, taken
in mini-batches and split by image (`featbench.interfaces.mapper.MapData`: maps → maps;
`featbench.interfaces.inverter.InvertData`: maps → images)."""

from __future__ import annotations

from typing import ClassVar, Iterator

import torch


def split_by_image(image_ids: list[str], val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (kept, held out): a `val_fraction` of the images, all their views, chosen by `seed`."""
    ids = sorted(set(image_ids))
    g = torch.Generator().manual_seed(seed)
    n_val = max(1, round(len(ids) * val_fraction))
    held = {ids[i] for i in torch.randperm(len(ids), generator=g)[:n_val].tolist()}
    is_val = torch.tensor([i in held for i in image_ids])
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


class Pairs:
    """Base of a dataclass with inputs ``x``, targets in the field `target_field`, one row per
    pair, and ``image_ids``; it gives ``len``, `batches` and `split` (over its own `subset`)."""

    target_field: ClassVar[str]

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets) mini-batches of `batch_size` rows, in order or shuffled by `generator`."""
        targets = getattr(self, self.target_field)
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for i in range(0, len(self), batch_size):
            idx = order[i:i + batch_size]
            yield self.x[idx], targets[idx]

    def subset(self, index: torch.Tensor):
        raise NotImplementedError

    def split(self, val_fraction: float = 0.05, seed: int = 0):
        """(train, validation), holding out whole images (all their views), chosen by `seed`."""
        fit_rows, val_rows = split_by_image(self.image_ids, val_fraction, seed)
        return self.subset(fit_rows), self.subset(val_rows)
