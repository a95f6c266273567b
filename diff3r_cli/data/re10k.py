"""RE10K-format training/evaluation dataset (views chosen by data/view_sampler.py).

Training mode: for each example, 2 (or ``num_context``) context views whose first-to-last
frame gap is drawn from [min_gap, max_gap], and ``num_target`` target views between them.
Evaluation mode: context/target frames fixed by an evaluation index JSON.

Sharding: the work is split over DDP ranks x DataLoader workers so that every example is
yielded exactly once per epoch. With at least as many chunks as shards, whole chunks are
dealt out (each chunk is read by one shard only); otherwise every shard reads every chunk
and keeps every ``shards``-th example. Order is shuffled per epoch from ``seed`` (call
``set_epoch``); view sampling is seeded by (seed, epoch, key), so it does not depend on the
sharding.
"""

from __future__ import annotations

import math
import warnings
import zlib
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset, get_worker_info

from diff3r_cli.cameras import Cameras
from diff3r_cli.data.view_sampler import ViewSamplerConfig, sample_views, sample_views_real
from diff3r_cli.errors import UserError
from diff3r_cli.scene_io.images import native_size
from diff3r_cli.scene_io.re10k import (LAYOUT_HINT, BadChunkError, decode_jpeg, example_to_cameras, find_chunks,
                                       jpeg_size, read_chunk, read_evaluation_index)


class BadExampleWarning(UserWarning):
    """A chunk or example was skipped (the message says which and how many so far)."""


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (stable across processes, unlike hash())."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


def key_seed(key: str) -> int:
    """Stable integer of an example key."""
    return zlib.crc32(key.encode())


def jitter_factors(amplitude: float, g: torch.Generator) -> tuple[float, float, float]:
    """Random (world scale, near factor, far factor) of log-amplitude ``amplitude``.

    The world (camera translations, near and far) is scaled by exp(U(-a, a)); near is then moved by
    exp(U(-a, a/10)) and far by exp(U(-a/4, a)), so the range mostly widens (little geometry is cut)
    while depth/near and depth/far vary from example to example.
    """
    a = float(amplitude)
    u = torch.rand(3, generator=g, dtype=torch.float64)
    world = math.exp(a * (2 * float(u[0]) - 1))
    near = math.exp(-a + float(u[1]) * 1.1 * a)
    far = math.exp(-0.25 * a + float(u[2]) * 1.25 * a)
    return world, near, far


def _resize_crop_images(images: torch.Tensor, size: tuple[int, int], crop: tuple[int, int, int, int]) -> torch.Tensor:
    """(N,H,W,3) -> scale to size=(sw,sh) (antialiased bilinear), then crop (left, top, w, h)."""
    sw, sh = size
    left, top, w, h = crop
    x = images.permute(0, 3, 1, 2)
    if (x.shape[-1], x.shape[-2]) != (sw, sh):
        x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
    x = x[..., top:top + h, left:left + w]
    return x.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


class RE10KDataset(IterableDataset):
    """Iterable RE10K-format dataset yielding one dict of tensors per example.

    Keys: context_images (V,H,W,3) float [0,1], context_K (V,3,3) pixels, context_w2c (V,4,4),
    target_images (T,H,W,3), target_K, target_w2c, near, far (0-d float tensors, in the units
    of the returned cameras), depth_range_from ("depth maps" or "default": the near/far arguments),
    depth_p5 (the context depth maps' 5th percentile, NaN without them), scale (the factor applied to world units), key (str),
    context_indices (V,), target_indices (T,), indices (V+T,) long, context_outlier_mask
    (V,H,W) bool (all False unless ``outliers`` is given).

    root: dataset root (with train/ and test/), a split dir or a chunk file. resolution: int =
    the short side, each example keeping its native aspect ratio (sides centre-cropped to a
    multiple of ``multiple``, intrinsics exact), so samples of different scenes may differ in
    size (batch them with ``BucketBatcher``); or (width, height) = one fixed size for all
    (scaled to cover, centre-cropped). evaluation_index: JSON path -> evaluation mode (fixed views, no
    shuffling). baseline_normalize: scale the scene so the first-to-last context baseline is 1
    (near/far from depth are scaled too; the default near/far are taken as already normalised,
    as in MVSplat). near/far: used when the example stores no depth. rank/world_size: DDP
    sharding (default: taken from an initialised torch.distributed group, else 0/1).
    depth_range: near/far of examples with depth maps, "fitted" (their min/max widened by
    depth_margin) or "normalised" (``engines.policy.normalised_range`` of their 5th percentile;
    examples without depth maps take near/far, the RE10K convention, either way).
    full_context: also return the context views at their stored size (context_images_full,
    context_K_full; same w2c), e.g. to triangulate features where there are more of them. repeat: loop over epochs forever (the epoch counter advances each pass).
    """

    def __init__(self, root: str | Path, split: str = "train", resolution: int | tuple[int, int] = 256,
                 sampler: ViewSamplerConfig | None = None, evaluation_index: str | Path | None = None,
                 baseline_normalize: bool = False, near: float = 1.0, far: float = 100.0,
                 depth_margin: float = 0.8, seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 shuffle: bool | None = None, repeat: bool = False, outliers=None,
                 min_baseline: float = 1e-3, warn: bool = True, multiple: int = 16, full_context: bool = False,
                 depth_range: str = "fitted", range_jitter: float = 0.0):
        root = Path(root)
        self.chunks = find_chunks(root, split)
        if not self.chunks:
            raise UserError(f"no .torch chunks found for split {split!r}", root, LAYOUT_HINT)
        if rank is None or world_size is None:
            # Default to the initialised torch.distributed group (torchrun), else a single process.
            dist = torch.distributed
            on = dist.is_available() and dist.is_initialized()
            rank = (dist.get_rank() if on else 0) if rank is None else rank
            world_size = (dist.get_world_size() if on else 1) if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.root, self.split = root, split
        # int: short side at native aspect (size decided per example); tuple: one fixed size
        self.short = int(resolution) if isinstance(resolution, int) else None
        self.fixed = None if isinstance(resolution, int) else (int(resolution[0]), int(resolution[1]))
        self.multiple = int(multiple)
        self.full_context = bool(full_context)
        self.sampler = sampler or ViewSamplerConfig()
        self.eval_index = read_evaluation_index(evaluation_index) if evaluation_index is not None else None
        self.baseline_normalize = baseline_normalize
        self.near, self.far, self.depth_margin = float(near), float(far), float(depth_margin)
        self.depth_range = depth_range  # with depth maps: "fitted" (min/max with a margin) or "normalised"
        self.range_jitter = float(range_jitter)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.shuffle = (self.eval_index is None) if shuffle is None else shuffle
        self.repeat = repeat
        self.outliers = outliers
        self.min_baseline = min_baseline
        self.warn = warn
        self.epoch = 0
        self.bad_chunks = 0       # per process (each DataLoader worker counts its own)
        self.skipped_examples = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling of the next pass (call before each epoch, like DistributedSampler)."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ sharding
    def _shard(self) -> tuple[int, int]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * nw + wid, self.world_size * nw

    def _chunk_order(self, epoch: int) -> list[Path]:
        if not self.shuffle:
            return list(self.chunks)
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 1))
        return [self.chunks[i] for i in torch.randperm(len(self.chunks), generator=g).tolist()]

    def _skip(self, msg: str, chunk: bool) -> None:
        if chunk:
            self.bad_chunks += 1
        else:
            self.skipped_examples += 1
        if self.warn:
            warnings.warn(f"{msg} ({self.bad_chunks} bad chunk(s), {self.skipped_examples} skipped example(s) "
                          f"so far in this process)", BadExampleWarning, stacklevel=3)

    def _examples(self, epoch: int) -> Iterator[dict]:
        shard, shards = self._shard()
        chunks = self._chunk_order(epoch)
        by_chunk = len(chunks) >= shards
        position = 0  # global example position, used only for example-level sharding
        for ci, path in enumerate(chunks):
            if by_chunk and ci % shards != shard:
                continue
            try:
                data = read_chunk(path)
            except (BadChunkError, FileNotFoundError) as exc:
                self._skip(f"skipping bad chunk {exc}", chunk=True)
                continue
            order = list(range(len(data)))
            if self.shuffle:
                g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 2, zlib.crc32(path.name.encode())))
                order = torch.randperm(len(data), generator=g).tolist()
            for j in order:
                mine = by_chunk or position % shards == shard
                position += 1
                if mine:
                    yield data[j]

    # ------------------------------------------------------------------ one example
    def _views(self, example: dict, epoch: int) -> tuple[list[int], list[int]] | None:
        T = example["cameras"].shape[0]
        if self.eval_index is not None:
            entry = self.eval_index.get(example["key"])
            if entry is None:
                return None
            ctx, tgt = [int(i) for i in entry["context"]], [int(i) for i in entry["target"]]
            if any(not 0 <= i < T for i in ctx + tgt):
                return None
            return ctx, tgt
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 3, key_seed(example["key"])))
        if self.sampler.mode == "angle":
            w, h = jpeg_size(example["images"][0])  # angles and overlap need the aspect ratio only
            return sample_views_real(example_to_cameras(example, w, h), self.sampler, g)
        return sample_views(T, self.sampler, g)

    def make_sample(self, example: dict, context: list[int], target: list[int], epoch: int = 0) -> dict | None:
        """Decode, resize-crop and package the chosen frames of one example (None: unusable)."""
        frames = context + target
        imgs = [decode_jpeg(example["images"][i]) for i in frames]
        h, w = imgs[0].shape[:2]
        if any(im.shape[:2] != (h, w) for im in imgs):
            return None
        cams = example_to_cameras(example, w, h, frames)
        width, height = self.fixed or native_size(w, h, self.short, self.multiple)
        cams, crop, size = cams.resize_crop(width, height)
        images = _resize_crop_images(torch.stack(imgs), size, crop)
        K = cams.K.float()
        w2c = cams.w2c.clone()
        V = len(context)
        scale = 1.0
        if self.baseline_normalize:
            centres = Cameras(cams.K, w2c, width, height).centers
            baseline = float((centres[0] - centres[V - 1]).norm())
            if baseline < self.min_baseline:
                return None
            scale = 1.0 / baseline
            w2c[:, :3, 3] *= scale  # scaling the world scales camera translations, not rotations
        near, far, range_src, depth_p5 = self.near, self.far, "default", None
        if "depths" in example and len(example["depths"]) == example["cameras"].shape[0]:
            d = torch.stack([example["depths"][i].float() for i in context])
            d = d[torch.isfinite(d) & (d > 0)]
            if d.numel():
                depth_p5 = float(torch.quantile(d.double(), 0.05)) * scale
                if self.depth_range == "normalised":
                    from diff3r_cli.engines.policy import normalised_range
                    near, far = normalised_range(depth_p5)
                else:
                    near = float(d.min()) * self.depth_margin * scale
                    far = float(d.max()) / self.depth_margin * scale
                range_src = "depth maps"
        if self.range_jitter > 0:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 5, key_seed(example["key"])))
            s_world, s_near, s_far = jitter_factors(self.range_jitter, g)
            w2c[:, :3, 3] *= s_world
            scale *= s_world
            near, far = near * s_world * s_near, far * s_world * s_far
            depth_p5 = None if depth_p5 is None else depth_p5 * s_world
        mask = torch.zeros(V, height, width, dtype=torch.bool)
        ctx_images = images[:V]
        if self.outliers is not None:
            from diff3r_cli.data.outliers import corrupt_context
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 4, key_seed(example["key"])))
            ctx_images, mask = corrupt_context(ctx_images, g, self.outliers)
        w2c = w2c.float()
        full = {}
        if self.full_context:
            full = {"context_images_full": torch.stack(imgs[:V]),
                    "context_K_full": example_to_cameras(example, w, h, context).K.float()}
        return {**full,
            "context_images": ctx_images, "context_K": K[:V], "context_w2c": w2c[:V],
            "target_images": images[V:], "target_K": K[V:], "target_w2c": w2c[V:],
            "near": torch.tensor(near, dtype=torch.float32), "far": torch.tensor(far, dtype=torch.float32),
            "scale": torch.tensor(scale, dtype=torch.float32), "key": example["key"], "depth_range_from": range_src,
            # the 5th-percentile depth of the context views' depth maps (NaN without depth maps)
            "depth_p5": torch.tensor(float("nan") if depth_p5 is None else depth_p5, dtype=torch.float32),
            "context_indices": torch.tensor(context, dtype=torch.long),
            "target_indices": torch.tensor(target, dtype=torch.long),
            "indices": torch.tensor(frames, dtype=torch.long),
            "context_outlier_mask": mask,
        }

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch
        while True:
            for ex in self._examples(epoch):
                if self.eval_index is not None and self.eval_index.get(ex["key"]) is None:
                    continue  # not evaluated (absent or null in the index): by design, not an error
                views = self._views(ex, epoch)
                if views is None:
                    self._skip(f"skipping example {ex['key']!r}: no valid views "
                               f"({ex['cameras'].shape[0]} frames)", chunk=False)
                    continue
                try:
                    sample = self.make_sample(ex, *views, epoch=epoch)
                except (OSError, ValueError, RuntimeError) as exc:  # corrupt JPEG bytes and the like
                    self._skip(f"skipping example {ex['key']!r}: {type(exc).__name__}: {str(exc)[:100]}", chunk=False)
                    continue
                if sample is None:
                    self._skip(f"skipping example {ex['key']!r}: unusable frames or zero baseline", chunk=False)
                    continue
                yield sample
            if not self.repeat:
                return
            epoch += 1


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch (keys stay a list of str); all samples must share V and T."""
    out: dict = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


# ViewSamplerConfig is part of RE10KDataset's signature, so it is importable from here too
__all__ = ["RE10KDataset", "ViewSamplerConfig", "collate", "mix_seed", "key_seed", "BadExampleWarning"]
