"""Where the training examples come from: the data root (generated for a bare synthetic run), the
synthetic root of a mixed run, and the per-rank dataset the stream reads."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from diff3r_cli.errors import UserError
from diff3r_cli.train.config import AUTO_SYNTH_DIR, DATA_KINDS, DataConfig, default_sampler
from diff3r_cli.train.distributed import Dist, barrier

# A synthetic run without a data root generates this much into the run directory.
AUTO_SYNTH_SCENES = {"train": 64, "test": 8}
AUTO_SYNTH_FRAMES = 24
AUTO_SYNTH_MIN_RESOLUTION = 64


def _has_chunks(root: Path) -> bool:
    return (root / "train").is_dir() and any((root / "train").glob("*.torch"))


def _real_root(data: DataConfig) -> Path:
    from diff3r_cli.scene_io.re10k import LAYOUT_HINT

    root = Path(data.root) if data.root else Path("data") / "re10k"
    if not _has_chunks(root):
        raise UserError("RE10K training data not found", root,
                        f"{LAYOUT_HINT}; pass --data-root <dir> or use --data synthetic")
    return root


def _synthetic_root(root: Path, data: DataConfig, seed: int, out: Path, dist: Dist) -> Path:
    """A synthetic root: given ones must hold chunks; the run directory's own is generated when missing."""
    from diff3r_cli.scene_io.re10k import LAYOUT_HINT

    generated = Path(out) / AUTO_SYNTH_DIR
    if Path(root) != generated:
        if not _has_chunks(Path(root)):
            raise UserError("synthetic training data not found", root,
                            f"{LAYOUT_HINT}; generate it with `diff3r data synth` or omit the synthetic root to "
                            "have a small set generated into the run directory")
        return Path(root)
    if dist.main and not (generated / "train" / "index.json").exists():
        from diff3r_cli.data.synth import generate_dataset

        resolution = max(data.resolution, AUTO_SYNTH_MIN_RESOLUTION)
        for split, scenes in AUTO_SYNTH_SCENES.items():
            generate_dataset(generated, scenes=scenes, frames=AUTO_SYNTH_FRAMES, resolution=resolution, seed=seed,
                             split=split, spp=2)
    barrier(dist)  # the other ranks read what rank 0 generated
    return generated


def resolve_data(data: DataConfig, seed: int, out: Path, dist: Dist) -> Path:
    """The root holding the RE10K-format chunks (for ``mix``, the real ones); for ``synthetic``
    without a root, and ``mix`` without a synthetic root, generate a small set into the run."""
    if data.kind not in DATA_KINDS:
        raise UserError(f"unknown --data {data.kind!r}", fix=f"use one of {', '.join(DATA_KINDS)}")
    if data.kind == "re10k":
        return _real_root(data)
    if data.kind == "synthetic":
        return _synthetic_root(Path(data.root) if data.root else Path(out) / AUTO_SYNTH_DIR, data, seed, out, dist)
    root = _real_root(data)
    _synthetic_root(Path(data.synthetic_root), data, seed, out, dist)  # with_defaults_resolved set it
    return root


def dataset_factory(data: DataConfig, root: Path, seed: int, dist: Dist,
                    depth_range: str = "fitted") -> Callable[[], object]:
    """A function making this rank's training dataset afresh (the stream re-creates it every epoch).

    depth_range: the model's near/far convention, which the examples' near/far follow.
    ``data`` has its defaults resolved (view sampler, gaps, the synthetic root of a mix).
    """
    from diff3r_cli.data.re10k import RE10KDataset, ViewSamplerConfig

    outlier_cfg = None
    if data.outliers > 0:
        from diff3r_cli.data.outliers import OutlierConfig
        outlier_cfg = OutlierConfig(p_occluder=data.outliers, p_exposure=data.outliers * 0.6)

    def source(src_root: Path, sampler: str) -> Callable[[], RE10KDataset]:
        views = ViewSamplerConfig(num_context=data.context_views, num_target=data.target_views, mode=sampler,
                                  min_gap=data.min_gap, max_gap=data.max_gap)
        return lambda: RE10KDataset(src_root, "train", resolution=data.resolution, sampler=views, seed=seed,
                                    rank=dist.rank, world_size=dist.world, outliers=outlier_cfg, warn=dist.main,
                                    depth_range=depth_range, range_jitter=data.range_jitter)

    if data.kind != "mix":
        return source(root, data.view_sampler)
    from diff3r_cli.data.mixed import MixedDataset

    real = source(root, default_sampler("re10k", data.view_sampler))
    synthetic = source(Path(data.synthetic_root), default_sampler("synthetic", data.view_sampler))
    fractions = [data.real_fraction, 1.0 - data.real_fraction]
    return lambda: MixedDataset([real, synthetic], fractions, seed=seed, rank=dist.rank)


__all__ = ["resolve_data", "dataset_factory"]
