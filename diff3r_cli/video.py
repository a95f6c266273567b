"""Camera-path videos: H.264 MP4 through PyAV (its wheels bundle FFmpeg with libx264), GIF on request."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even width/height by repeating the last row/column (yuv420p needs even sizes)."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if (h % 2 or w % 2) else frame


def _import_av(path: str | Path):
    """PyAV, or a one-line error naming the video and the fix (an environment without the wheel)."""
    try:
        import av
    except ImportError:
        from diff3r_cli.errors import UserError
        raise UserError("writing MP4 needs PyAV, which is not installed", path,
                        "pip install av (a dependency of diff3r), or pass --gif") from None
    return av


def write_mp4(path: str | Path, frames: list[np.ndarray], fps: int = 15, crf: int = 18) -> Path:
    """Encode uint8 RGB frames (H,W,3) as H.264 (yuv420p, playable everywhere) into ``path``.

    Odd sizes are padded by one edge pixel. Frames are encoded in order; ``crf`` 18 is visually lossless.
    """
    av = _import_av(path)

    path = Path(path)
    if not frames:
        raise ValueError("no frames to encode")
    first = _even(frames[0])
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height = first.shape[1], first.shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(_even(f)), format="rgb24")
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)
    return path


def read_video_info(path: str | Path) -> dict:
    """Decode a video and return codec, frame count (decoded), width and height."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return {"codec": s.codec_context.name, "frames": n, "width": s.codec_context.width,
                "height": s.codec_context.height}


def write_gif(path: str | Path, frames: list[np.ndarray], fps: int = 15) -> Path:
    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=int(1000 / fps), loop=0)
    return Path(path)


__all__ = ["write_mp4", "write_gif", "read_video_info"]
