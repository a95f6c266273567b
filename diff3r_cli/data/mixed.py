"""Training examples drawn from several datasets in set proportions (real photos mixed with synthetic).

Each position of an epoch draws its source from the fractions with a generator seeded by
(seed, epoch, rank), then takes that source's next example. A source is read in passes; pass k of
source i within epoch e is the source dataset's epoch ``mix_seed(e, k, i)``, so its order and view
sampling are fresh each pass yet a pure function of (seed, epoch, position): the training stream
can skip to a position and continue exactly (resume is bit-exact). The epoch ends once every
source with a positive fraction has finished a pass, so the smaller source (the real scenes) is
seen again within an epoch and the larger (synthetic volume) once.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from diff3r_cli.data.re10k import mix_seed
from diff3r_cli.errors import UserError

_EPOCH_BITS = 0x7FFFFFFF  # a source's derived epoch stays a small non-negative int


class MixedDataset:
    """An iterable over examples of ``sources`` (factories of RE10KDataset-like objects) mixed in
    proportion to ``fractions``; ``set_epoch`` selects the epoch like RE10KDataset's."""

    def __init__(self, sources: Sequence[Callable[[], object]], fractions: Sequence[float], seed: int = 0,
                 rank: int = 0):
        if len(sources) != len(fractions) or not sources:
            raise ValueError("one fraction per source, at least one source")
        if min(fractions) < 0 or sum(fractions) <= 0:
            raise ValueError(f"fractions must be non-negative with a positive sum, got {list(fractions)}")
        self.sources = list(sources)
        self.fractions = torch.tensor([float(f) for f in fractions], dtype=torch.float64)
        self.seed, self.rank = int(seed), int(rank)
        self.epoch = 0
        self.root = None  # set to the first pass's dataset root (the stream names it in errors)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _passes(self, i: int, finished: list[bool]) -> Iterator[dict]:
        """Source i's examples, pass after pass; marks finished[i] after the first complete pass."""
        k = 0
        while True:
            ds = self.sources[i]()
            self.root = self.root or getattr(ds, "root", None)
            ds.set_epoch(mix_seed(self.seed, self.epoch, k, i) & _EPOCH_BITS)
            got = 0
            for sample in ds:
                got += 1
                yield sample
            if got == 0:
                raise UserError("a source of the mixed training data yields no usable examples for this process",
                                getattr(ds, "root", None), "check that data (every example skipped?)")
            finished[i] = True
            k += 1

    def __iter__(self) -> Iterator[dict]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 5, self.rank))
        live = [i for i, f in enumerate(self.fractions.tolist()) if f > 0]
        finished = [False] * len(self.sources)
        streams = {i: self._passes(i, finished) for i in live}
        while not all(finished[i] for i in live):
            i = live[0] if len(live) == 1 else int(torch.multinomial(self.fractions, 1, generator=g))
            yield next(streams[i])


__all__ = ["MixedDataset"]
