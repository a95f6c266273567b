"""Render | ground truth of the unseen (interpolation) views of `reconstruct` outputs, one row per scene.

    python tools/unseen_grid.py OUT.png RENDERS_DIR [RENDERS_DIR ...] [--height 160]

RENDERS_DIR is a `reconstruct` output's `*_renders` folder (it holds `interp_NN.png` and
`interp_NN_gt.png`). Each row: every interpolation view as render then ground truth, scaled to
--height pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def row(folder: Path, height: int) -> Image.Image:
    """One scene's row: render, ground truth for each interpolation view, side by side."""
    tiles = []
    for gt in sorted(folder.glob("interp_*_gt.png")):
        for p in (gt.with_name(gt.name.replace("_gt", "")), gt):
            im = Image.open(p).convert("RGB")
            tiles.append(im.resize((round(im.width * height / im.height), height), Image.LANCZOS))
    if not tiles:
        raise SystemExit(f"{folder}: no interp_*_gt.png (run reconstruct with its default renders)")
    out = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) // 2), height), "white")
    x = 0
    for k, t in enumerate(tiles):
        out.paste(t, (x, 0))
        x += t.width + (4 if k % 2 else 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("folders", type=Path, nargs="+")
    ap.add_argument("--height", type=int, default=160)
    a = ap.parse_args()
    rows = [row(f, a.height) for f in a.folders]
    grid = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 4 for r in rows)), "white")
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height + 4
    tmp = a.out.with_suffix(".tmp.png")
    grid.save(tmp)
    tmp.replace(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
