"""RE10K-format training/evaluation dataset with the usual view sampler.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset, get_worker_info

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import UserError
from diff3r_cli.scene_io.images import native_size
from diff3r_cli.scene_io.re10k import (LAYOUT_HINT, BadChunkError, decode_jpeg, example_to_cameras, find_chunks,
                                       jpeg_size, read_chunk, read_evaluation_index)


@dataclass
class ViewSamplerConfig:
    """How context/target frames are drawn in training mode.

    min_gap/max_gap: frames between the first and the last context view (inclusive range).
    num_context >= 2: extra context views are drawn between the first and the last.
    num_target: target views drawn strictly between the outer context views when there are
    enough frames there (without replacement), else from the whole closed range.
    """

    num_context: int = 2
    num_target: int = 4
    min_gap: int = 8
    max_gap: int = 24
    # mode "angle" (real sequences): the outer context pair is drawn among pairs whose viewing
    # directions are min_angle..max_angle degrees apart and whose frusta share >= min_overlap of
    # the view (photo sets are sparse, videos dense: a frame gap alone means different things);
    # without such a pair, pairs min_gap..max_gap frames apart that share the view; else "gap".
    mode: str = "gap"
    min_angle: float = 15.0
    max_angle: float = 30.0
    min_overlap: float = 0.5


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


def sample_views(num_frames: int, cfg: ViewSamplerConfig, generator: torch.Generator
                 ) -> tuple[list[int], list[int]] | None:
    """Draw (context, target) frame indices, or None when the clip is too short for min_gap."""
    if cfg.num_context < 2 or cfg.num_target < 0 or cfg.min_gap < cfg.num_context - 1 or cfg.max_gap < cfg.min_gap:
        raise ValueError(f"invalid view sampler settings {cfg}")
    max_gap = min(cfg.max_gap, num_frames - 1)
    if max_gap < cfg.min_gap:
        return None
    gap = int(torch.randint(cfg.min_gap, max_gap + 1, (1,), generator=generator))
    start = int(torch.randint(0, num_frames - gap, (1,), generator=generator))
    return _fill_views(start, start + gap, cfg, generator)


def view_angles(cameras: Cameras) -> torch.Tensor:
    """(T,T) angle in degrees between the cameras' viewing directions (optical axes)."""
    d = cameras.c2w[:, :3, 2].to(torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    return torch.rad2deg(torch.arccos((d @ d.T).clamp(-1.0, 1.0)))


def view_overlap(cameras: Cameras, grid: int = 8, symmetric: bool = True) -> torch.Tensor:
    """(T,T) shared content: the fraction of view i's pixel grid, put at the scene depth, that view j sees
    (with ``symmetric``, the minimum of both directions).

    The scene depth of a pair is where the two optical axes pass closest, when they are > 5 deg apart
    and converge in front of both cameras (orbits, photo sets); otherwise (parallel or diverging
    axes: walks, fly-bys) the sequence's median converging depth, or 10x the median step between
    frames when fewer than a tenth of the pairs converge.
    """
    T = len(cameras)
    c2w = cameras.c2w.to(torch.float64)
    o, d = c2w[:, :3, 3], c2w[:, :3, 2]
    # closest approach of the axes o_i + s d_i and o_j + t d_j (least squares in s, t)
    b = (d[:, None] * d[None]).sum(-1)                      # d_i . d_j
    w = o[:, None] - o[None]                                # o_i - o_j
    dw_i, dw_j = (d[:, None] * w).sum(-1), (d[None] * w).sum(-1)
    den = 1.0 - b ** 2
    ok = den > math.sin(math.radians(5.0)) ** 2             # > 5 deg apart: else the crossing is ill-posed
    s_ = torch.where(ok, (b * dw_j - dw_i) / den.clamp_min(1e-12), torch.zeros_like(den))
    t_ = torch.where(ok, (dw_j - b * dw_i) / den.clamp_min(1e-12), torch.zeros_like(den))
    conv = ok & (s_ > 0) & (t_ > 0)
    pair_depth = 0.5 * (s_ + t_)
    if int(conv.sum()) >= max(1, (T * (T - 1)) // 10):
        fallback = float(pair_depth[conv].median())
    else:
        steps = (o[1:] - o[:-1]).norm(dim=1) if T > 1 else torch.ones(1, dtype=torch.float64)
        fallback = 10.0 * max(float(steps.median()), 1e-6)
    depth = torch.where(conv, pair_depth, torch.full_like(pair_depth, fallback))  # (T,T)
    # pixel grid of view i at depth(i,j), into world, into view j
    W, H = cameras.width, cameras.height
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    px = torch.stack(torch.meshgrid(u * W, u * H, indexing="xy"), -1).reshape(-1, 2)   # (G,2)
    K = cameras.K.to(torch.float64)
    rays = torch.stack([(px[:, 0][None] - K[:, 0, 2, None]) / K[:, 0, 0, None],
                        (px[:, 1][None] - K[:, 1, 2, None]) / K[:, 1, 1, None],
                        torch.ones(T, len(px), dtype=torch.float64)], -1)              # (T,G,3), z = 1
    pts_cam = rays[:, None] * depth[..., None, None]                                    # (T,T,G,3) in cam i
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]
    world = torch.einsum("iab,ijgb->ijga", R, pts_cam) + t[:, None, None]
    w2c = cameras.w2c.to(torch.float64)
    cam_j = torch.einsum("jab,ijgb->ijga", w2c[:, :3, :3], world) + w2c[None, :, None, :3, 3]
    z = cam_j[..., 2]
    uv = torch.einsum("jab,ijgb->ijga", K, cam_j)
    uv = uv[..., :2] / uv[..., 2:3].clamp_min(1e-12)
    inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= W) & (uv[..., 1] >= 0) & (uv[..., 1] <= H)
    frac = inside.double().mean(-1)
    return torch.minimum(frac, frac.T) if symmetric else frac


def sample_views_real(cameras: Cameras, cfg: ViewSamplerConfig, generator: torch.Generator
                      ) -> tuple[list[int], list[int]] | None:
    """Draw (context, target) for a real sequence by viewing angle and shared content (see ViewSamplerConfig)."""
    T = len(cameras)
    ang, ov = view_angles(cameras), view_overlap(cameras)
    # room for the extra context views and distinct targets strictly between the outer pair;
    # only when no such pair qualifies, at least one frame between
    for gap_min in dict.fromkeys((max(2, cfg.num_context - 1 + cfg.num_target), 2)):
        if T < gap_min + 1:
            continue
        i, j = torch.triu_indices(T, T, offset=gap_min)
        gap = j - i
        shared = ov[i, j] >= cfg.min_overlap
        by_angle = shared & (ang[i, j] >= cfg.min_angle) & (ang[i, j] <= cfg.max_angle) & (gap <= cfg.max_gap)
        by_gap = shared & (gap >= cfg.min_gap) & (gap <= cfg.max_gap)
        by_content = shared & (gap <= cfg.max_gap)  # e.g. a forward walk: few frames apart already differ a lot
        for cand in (by_angle, by_gap, by_content):
            idx = torch.nonzero(cand).flatten()
            if len(idx):
                k = int(idx[torch.randint(0, len(idx), (1,), generator=generator)])
                return _fill_views(int(i[k]), int(j[k]), cfg, generator)
    return sample_views(T, cfg, generator)


def _fill_views(start: int, end: int, cfg: ViewSamplerConfig, generator: torch.Generator
                ) -> tuple[list[int], list[int]]:
    """Context = start, end and num_context-2 frames drawn between; targets drawn between them."""
    inner = torch.arange(start + 1, end)
    extra = cfg.num_context - 2
    mids = inner[torch.randperm(len(inner), generator=generator)[:extra]].tolist() if extra else []
    context = [start] + sorted(mids) + [end]
    pool = torch.tensor([i for i in range(start + 1, end) if i not in context], dtype=torch.long)
    if len(pool) >= cfg.num_target:
        target = pool[torch.randperm(len(pool), generator=generator)[:cfg.num_target]]
    else:  # short gap: targets may repeat and include the context frames
        target = torch.randint(start, end + 1, (cfg.num_target,), generator=generator)
    return context, sorted(target.tolist())


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
    of the returned cameras), depth_range_from ("depth maps" or "default": the near/far arguments), scale (the factor applied to world units), key (str),
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
    full_context: also return the context views at their stored size (context_images_full,
    context_K_full; same w2c), e.g. to triangulate features where there are more of them. repeat: loop over epochs forever (the epoch counter advances each pass).
    """

    def __init__(self, root: str | Path, split: str = "train", resolution: int | tuple[int, int] = 256,
                 sampler: ViewSamplerConfig | None = None, evaluation_index: str | Path | None = None,
                 baseline_normalize: bool = False, near: float = 1.0, far: float = 100.0,
                 depth_margin: float = 0.8, seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 shuffle: bool | None = None, repeat: bool = False, outliers=None,
                 min_baseline: float = 1e-3, warn: bool = True, multiple: int = 16, full_context: bool = False):
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
        near, far, range_src = self.near, self.far, "default"
        if "depths" in example and len(example["depths"]) == example["cameras"].shape[0]:
            d = torch.stack([example["depths"][i].float() for i in context])
            d = d[torch.isfinite(d) & (d > 0)]
            if d.numel():
                near = float(d.min()) * self.depth_margin * scale
                far = float(d.max()) / self.depth_margin * scale
                range_src = "depth maps"
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


__all__ = ["RE10KDataset", "ViewSamplerConfig", "sample_views", "sample_views_real", "view_angles", "view_overlap",
           "collate", "mix_seed", "BadExampleWarning"]
