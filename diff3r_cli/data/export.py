"""Export a synthetic scene as a transforms.json folder (the bundled sample and demos)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diff3r_cli.cameras import Cameras


def export_synthetic_transforms(out: str | Path, seed: int, frames: list[int], context: list[int],
                                path_frames: int = 24, resolution: int = 256, spp: int = 8) -> Path:
    """Render frames of synthetic scene `seed` (a `path_frames`-long camera path) into `out/`.

    Writes PNG images, depth maps (.npy, for checking), and transforms.json in the
    instant-ngp layout (OpenGL camera-to-world) with two diff3r hints that other tools
    ignore: `diff3r_context_views` (indices into `frames` of the intended inputs) and the
    scene's `near`/`far` depth range. Returns the transforms.json path.
    """
    from diff3r_cli.data.synth import random_scene, render_frame

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scene = random_scene(seed, path_frames, resolution, resolution)
    cams = Cameras(scene.K.to(torch.float64), scene.w2c.to(torch.float64), resolution, resolution)
    c2w_gl = cams.c2w_opengl()
    K0 = scene.K[frames[0]].to(torch.float64)
    records, depths = [], []
    for j, f in enumerate(frames):
        rgb, depth = render_frame(scene, f, spp, generator=torch.Generator().manual_seed(seed * 1000 + f))
        name = f"images/frame_{j:02d}.png"
        Image.fromarray((rgb.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)).save(out / name)
        depths.append(depth)
        records.append({"file_path": name, "transform_matrix": c2w_gl[f].tolist(), "path_frame": f})
    ctx_depth = torch.stack([depths[i] for i in context])
    meta = {"fl_x": float(K0[0, 0]), "fl_y": float(K0[1, 1]), "cx": float(K0[0, 2]), "cy": float(K0[1, 2]),
            "w": resolution, "h": resolution, "diff3r_context_views": list(context),
            "near": float(ctx_depth.min()) * 0.8, "far": float(ctx_depth.max()) * 1.25,
            "diff3r_synthetic_seed": seed, "frames": records}
    path = out / "transforms.json"
    path.write_text(json.dumps(meta, indent=1) + "\n")
    return path


__all__ = ["export_synthetic_transforms"]
