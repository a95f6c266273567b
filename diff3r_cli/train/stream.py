"""The training data as an endless, resumable stream of same-size batches."""

from __future__ import annotations

from typing import Callable, Iterator

from diff3r_cli.errors import UserError


class DataStream:
    """An endless, resumable stream of batches from RE10KDataset, grouped by image size.

    Examples keep their native aspect ratio, so consecutive samples may differ in size; a batch
    is the first ``batch`` samples of one size (a bucket), never a stretched or padded mix.
    With one size throughout (synthetic data) this is plain consecutive batching.

    State = (epoch, position in the epoch) of the oldest sample still waiting in a bucket (else
    of the next sample) plus the positions after it already consumed. The dataset's order and view
    sampling are pure functions of (seed, epoch, key), so re-creating it, skipping to that
    position and dropping the consumed ones reproduces the stream exactly.
    """

    def __init__(self, make_dataset: Callable[[], object], batch: int, state: dict | None = None):
        self.make_dataset = make_dataset
        self.batch = batch
        self.epoch = int(state["epoch"]) if state else 0
        self.pos = int(state["pos"]) if state else 0
        self._skip = {tuple(x) for x in (state or {}).get("consumed", [])}
        self._buckets: dict[tuple, list[tuple[int, int, dict]]] = {}
        self._consumed: set[tuple[int, int]] = set()
        self._it: Iterator[tuple[int, int, dict]] | None = None

    def state_dict(self) -> dict:
        pending = [(e, p) for items in self._buckets.values() for e, p, _ in items]
        if not pending:
            return {"epoch": self.epoch, "pos": self.pos}
        first = min(pending)
        return {"epoch": first[0], "pos": first[1], "consumed": sorted([e, p] for e, p in self._consumed if (e, p) > first)}

    def _samples(self) -> Iterator[tuple[int, int, dict]]:
        skip = self.pos
        while True:
            ds = self.make_dataset()
            ds.set_epoch(self.epoch)
            got = 0
            for sample in ds:
                got += 1
                if skip > 0:
                    skip -= 1
                    continue
                where = (self.epoch, self.pos)
                self.pos += 1
                if where in self._skip:  # consumed before the checkpoint this run resumed from
                    self._skip.discard(where)
                    continue
                yield where[0], where[1], sample
            if got == 0:
                raise UserError("the training data yields no usable examples for this process", ds.root,
                                "check the data (every example skipped?) or use fewer processes")
            self.epoch += 1
            self.pos = 0
            skip = 0

    def next_batch(self) -> dict:
        from diff3r_cli.data.re10k import collate

        if self._it is None:
            self._it = self._samples()
        while True:
            for key, items in self._buckets.items():
                if len(items) >= self.batch:
                    take, self._buckets[key] = items[:self.batch], items[self.batch:]
                    self._consumed.update((e, p) for e, p, _ in take)
                    pending = [(e, p) for its in self._buckets.values() for e, p, _ in its]
                    first = min(pending) if pending else None
                    # only consumed positions after the oldest waiting sample matter for resuming
                    self._consumed = {c for c in self._consumed if first is not None and c > first}
                    return collate([smp for _, _, smp in take])
            e, p, smp = next(self._it)
            key = tuple(smp["context_images"].shape[1:3]) + tuple(smp["target_images"].shape[1:3])
            self._buckets.setdefault(key, []).append((e, p, smp))


__all__ = ["DataStream"]
