"""Where the training examples come from: the data root (generated for a bare synthetic run) and
the per-rank dataset the stream reads."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from diff3r_cli.errors import UserError
from diff3r_cli.train.config import DATA_KINDS, DataConfig
from diff3r_cli.train.distributed import Dist, barrier

# A synthetic run without a data root generates this much into the run directory.
AUTO_SYNTH_SCENES = {"train": 64, "test": 8}
AUTO_SYNTH_FRAMES = 24
AUTO_SYNTH_MIN_RESOLUTION = 64


def _has_chunks(root: Path) -> bool:
    return (root / "train").is_dir() and any((root / "train").glob("*.torch"))


def resolve_data(data: DataConfig, seed: int, out: Path, dist: Dist) -> Path:
    """The root holding the RE10K-format chunks; for ``synthetic`` without a root, generate a small set."""
    from diff3r_cli.scene_io.re10k import LAYOUT_HINT

    if data.kind not in DATA_KINDS:
        raise UserError(f"unknown --data {data.kind!r}", fix=f"use one of {', '.join(DATA_KINDS)}")
    if data.kind == "re10k":
        root = Path(data.root) if data.root else Path("data") / "re10k"
        if not _has_chunks(root):
            raise UserError("RE10K training data not found", root,
                            f"{LAYOUT_HINT}; pass --data-root <dir> or use --data synthetic")
        return root
    if data.root:
        root = Path(data.root)
        if not _has_chunks(root):
            raise UserError("synthetic training data not found", root,
                            f"{LAYOUT_HINT}; generate it with `diff3r synth` or omit --data-root to have "
                            "a small set generated into the run directory")
        return root
    root = out / "synthetic_data"
    if dist.main and not (root / "train" / "index.json").exists():
        from diff3r_cli.data.synth import generate_dataset

        resolution = max(data.resolution, AUTO_SYNTH_MIN_RESOLUTION)
        for split, scenes in AUTO_SYNTH_SCENES.items():
            generate_dataset(root, scenes=scenes, frames=AUTO_SYNTH_FRAMES, resolution=resolution, seed=seed,
                             split=split, spp=2)
    barrier(dist)  # the other ranks read what rank 0 generated
    return root


def dataset_factory(data: DataConfig, root: Path, seed: int, dist: Dist) -> Callable[[], object]:
    """A function making this rank's training dataset afresh (the stream re-creates it every epoch).

    ``data`` has its defaults resolved (view sampler and gaps).
    """
    from diff3r_cli.data.re10k import RE10KDataset, ViewSamplerConfig

    sampler = ViewSamplerConfig(num_context=data.context_views, num_target=data.target_views,
                                mode=data.view_sampler, min_gap=data.min_gap, max_gap=data.max_gap)
    outlier_cfg = None
    if data.outliers > 0:
        from diff3r_cli.data.outliers import OutlierConfig
        outlier_cfg = OutlierConfig(p_occluder=data.outliers, p_exposure=data.outliers * 0.6)

    def make_dataset():
        return RE10KDataset(root, "train", resolution=data.resolution, sampler=sampler, seed=seed, rank=dist.rank,
                            world_size=dist.world, outliers=outlier_cfg, warn=dist.main)

    return make_dataset


__all__ = ["resolve_data", "dataset_factory"]
