"""The synthetic dataset writer: scenes rendered into RE10K-format chunks, an index, an evaluation index."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from diff3r_cli.data.synth.draw import frame_size
from diff3r_cli.data.synth_config import SynthConfig
from diff3r_cli.data.synth.photos import load_bank
from diff3r_cli.data.synth.raycast import render_frame
from diff3r_cli.data.synth.scene import random_scene
from diff3r_cli.errors import UserError
from diff3r_cli.scene_io.re10k import (BadChunkError, cameras_to_rows, encode_jpeg, read_chunk, read_index,
                                       write_chunk, write_json_atomic)

SPLIT_SEED_OFFSET = {"train": 0, "test": 1_000_000}
Progress = Callable[[int, int], None]


def scene_seed(index: int, seed: int, split: str) -> int:
    """Seed of the index-th scene of a split: test seeds are offset by 1e6 so they never meet train."""
    if split not in SPLIT_SEED_OFFSET:
        raise UserError(f"unknown split {split!r}", None, "use train or test")
    if not 0 <= seed + index < 1_000_000:
        raise UserError("scene seeds must stay in [0, 1e6) so train and test never overlap", None,
                        "use a smaller --seed or fewer --scenes")
    return SPLIT_SEED_OFFSET[split] + seed + index


def make_example(seed: int, frames: int, resolution: int, spp: int = 4, jpeg_quality: int = 92,
                 save_depth: bool = True, device: torch.device | str = "cpu",
                 config: SynthConfig | None = None) -> dict:
    """Render one scene into an RE10K example dict (plus `depths` float16 z-depth maps).

    resolution: the frames' short side (the long side and the orientation are the scene's, see
    `frame_size`). config: what to draw, default `SynthConfig()`.
    """
    config = SynthConfig() if config is None else config
    width, height = frame_size(seed, resolution, config)
    scene = random_scene(seed, frames, width, height, config)
    images, depths = [], []
    for f in range(frames):
        rgb, depth = render_frame(scene, f, spp, device=device)
        images.append(encode_jpeg(rgb, jpeg_quality))
        depths.append(depth.to(torch.float16))
    ex = {"key": f"synth{seed:07d}", "url": f"synth://diff3r/{seed}",
          "timestamps": torch.arange(frames, dtype=torch.int64) * 33_333,
          "cameras": cameras_to_rows(scene.K, scene.w2c, width, height),
          "images": images}
    if save_depth:
        ex["depths"] = depths
    return ex


def evaluation_entry(seed: int, frames: int, n_targets: int = 3) -> dict | None:
    """Fixed context/target frames for a test scene (deterministic in the seed)."""
    if frames < 3:
        return None
    g = torch.Generator().manual_seed(seed + 99)
    gap = int(torch.randint(max(2, frames // 3), max(3, (2 * frames) // 3 + 1), (1,), generator=g))
    gap = min(gap, frames - 1)
    c0 = int(torch.randint(0, frames - gap, (1,), generator=g))
    inner = list(range(c0 + 1, c0 + gap))
    k = min(n_targets, len(inner))
    tg = sorted(inner[int(round(i))] for i in torch.linspace(0, len(inner) - 1, k).tolist()) if k else []
    return {"context": [c0, c0 + gap], "target": tg}


def _chunk_complete(path: Path, keys: list[str], frames: int) -> bool:
    if not path.exists():
        return False
    try:
        existing = read_chunk(path)
    except BadChunkError:
        return False  # truncated/foreign: render it again
    return [e["key"] for e in existing] == keys and all(e["cameras"].shape[0] == frames for e in existing)


def _render_chunk(job: tuple) -> tuple[str, list[str], float]:
    """Render and write one chunk (runs in a worker process or inline). Returns name, keys, seconds."""
    path, group, frames, resolution, spp, jpeg_quality, save_depth, threads, device, config = job
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    examples = [make_example(s, frames, resolution, spp, jpeg_quality, save_depth, device, config) for s in group]
    write_chunk(path, examples)
    return path.name, [e["key"] for e in examples], time.perf_counter() - t0

def _check_settings(out: str | Path, scenes: int, frames: int, resolution: int, spp: int, chunk_size: int,
                    workers: int, device: str) -> None:
    if scenes < 0 or frames < 2 or resolution < 8 or spp < 1 or chunk_size < 1 or workers < 1:
        raise UserError(f"invalid synth settings (scenes={scenes}, frames={frames}, resolution={resolution}, "
                        f"spp={spp}, workers={workers})", out,
                        "use scenes >= 0, frames >= 2, resolution >= 8, spp >= 1, workers >= 1")
    if workers > 1 and str(device) != "cpu":
        raise UserError(f"workers={workers} with device={device!r}: worker processes render on the CPU only", out,
                        "use workers=1 on a GPU")


def _make_dir(split_dir: Path) -> None:
    try:
        split_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory ({exc.strerror})", split_dir,
                        "choose a writable --out") from None


@contextmanager
def _progress_callback(progress: Progress | bool | None, split: str, scenes: int) -> Iterator[Progress | None]:
    """The caller's callback, a rich bar for ``True``, or None."""
    if progress is not True:
        yield progress if callable(progress) else None
        return
    from rich.progress import Progress as RichProgress
    bar = RichProgress(transient=False)
    task = bar.add_task(f"synth {split}", total=scenes)
    bar.start()
    try:
        yield lambda done, total: bar.update(task, completed=done)
    finally:
        bar.stop()


class _Index:
    """The split's index.json, rewritten after every chunk: a killed run leaves a consistent, usable dataset."""

    def __init__(self, split_dir: Path, total: int):
        self.path = split_dir / "index.json"
        self.entries = read_index(split_dir)
        self.total = total
        self.progress: Progress | None = None
        self.done = self.rendered = 0

    def add_existing(self, name: str, keys: list[str]) -> None:
        self.entries.update({k: name for k in keys})
        self.done += len(keys)

    def add_rendered(self, name: str, keys: list[str]) -> None:
        self.add_existing(name, keys)
        self.rendered += len(keys)
        self.write()
        self.report()

    def report(self) -> None:
        if self.progress:
            self.progress(self.done, self.total)

    def write(self) -> None:
        write_json_atomic(self.path, self.entries)


def _plan(split_dir: Path, seeds: list[int], chunk_size: int, settings: tuple, index: _Index) -> list[tuple]:
    """Jobs for the chunks still to render; complete chunks go straight into the index.

    settings: the per-chunk rendering arguments of ``_render_chunk`` after (path, seeds), frames first.
    """
    frames = settings[0]
    jobs = []
    for c in range(0, len(seeds), chunk_size):
        group = seeds[c:c + chunk_size]
        path = split_dir / f"{group[0]:07d}.torch"
        keys = [f"synth{s:07d}" for s in group]
        if _chunk_complete(path, keys, frames):
            index.add_existing(path.name, keys)
        else:
            jobs.append((path, group, *settings))
    return jobs


def _run(jobs: list[tuple], workers: int, index: _Index) -> None:
    """Render the jobs inline or in a process pool, indexing each chunk as it finishes."""
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            name, keys, _ = _render_chunk(job)
            index.add_rendered(name, keys)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_render_chunk, job) for job in jobs]
        for fut in as_completed(futures):
            name, keys, _ = fut.result()
            index.add_rendered(name, keys)


def _photo_count(config: SynthConfig) -> int:
    """How many train-split photos textures were cut from (0: procedural textures only)."""
    if config.texture_root is None or config.photo_fraction <= 0:
        return 0
    bank = load_bank(config.texture_root)
    return len(bank) if bank is not None else 0


def _write_evaluation_index(out: Path, seeds: list[int], frames: int, eval_targets: int) -> None:
    """Merge the test scenes' fixed context/target frames into out/evaluation_index.json."""
    ev_path = out / "evaluation_index.json"
    ev = {}
    if ev_path.exists():
        try:
            ev = json.loads(ev_path.read_text())
        except ValueError:
            ev = {}
    ev.update({f"synth{s:07d}": evaluation_entry(s, frames, eval_targets) for s in seeds})
    write_json_atomic(ev_path, ev)


def generate_dataset(out: str | Path, scenes: int, frames: int = 24, resolution: int = 128, seed: int = 0,
                     split: str = "train", spp: int = 4, chunk_size: int = 16, jpeg_quality: int = 92,
                     save_depth: bool = True, eval_targets: int = 3,
                     progress: Progress | bool | None = None, workers: int = 1,
                     threads: int | None = 1, device: str = "cpu", config: SynthConfig | None = None) -> dict:
    """Write ``scenes`` synthetic scenes as RE10K chunks under ``out/<split>/``.

    resolution: the short side of the frames; each scene draws its aspect and orientation
    (``config``, default `SynthConfig()`; `CLASSIC` gives the square rooms of before issue 13).
    Defaults (short side 128, 24 frames, 4 spp) are sized for about 2,000 scenes in an hour or two
    on a 2-core CPU (benchmarks/synth.py); 256 x 40 frames is about 6x slower per scene.
    Scene i uses seed ``scene_seed(i, seed, split)`` (test seeds are offset by 1e6). Chunk files
    are named after their first scene seed and are skipped if already complete, so a killed run
    resumes and disjoint seed ranges can be generated in parallel into one directory.
    ``out/<split>/index.json`` is merged, and for the test split ``out/evaluation_index.json``
    (key -> context/target frames) too. progress: callback(done, total) or True for a rich bar.
    workers: processes rendering chunks in parallel. threads: torch threads per process (1 is
    fastest for this many small ops; None leaves torch's setting). device: where rays are cast
    ("cuda" works in principle but has not been run on a GPU yet; use workers=1 with it).
    Returns a summary dict
    (counts, seconds, scenes per minute of the rendered scenes).
    """
    _check_settings(out, scenes, frames, resolution, spp, chunk_size, workers, device)
    config = SynthConfig() if config is None else config
    out = Path(out)
    split_dir = out / split
    _make_dir(split_dir)
    seeds = [scene_seed(i, seed, split) for i in range(scenes)]
    index = _Index(split_dir, scenes)
    old_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    with _progress_callback(progress, split, scenes) as cb:
        index.progress = cb
        settings = (frames, resolution, spp, jpeg_quality, save_depth, threads, device, config)
        jobs = _plan(split_dir, seeds, chunk_size, settings, index)
        index.report()
        try:
            _run(jobs, workers, index)
            index.write()
            if split == "test":
                _write_evaluation_index(out, seeds, frames, eval_targets)
        finally:
            torch.set_num_threads(old_threads)
    secs = time.perf_counter() - t0
    rendered = index.rendered
    return {"out": str(out), "split": split, "scenes": scenes, "rendered": rendered, "frames": frames,
            "resolution": resolution, "spp": spp, "workers": workers, "seconds": secs,
            "texture_photos": _photo_count(config),
            "scenes_per_minute": (rendered / secs * 60) if rendered and secs > 0 else None}


__all__ = ["generate_dataset", "make_example", "scene_seed", "evaluation_entry", "SPLIT_SEED_OFFSET"]
