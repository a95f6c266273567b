"""Pinhole cameras in the OpenCV/COLMAP convention.

x right, y down, z forward; ``w2c`` maps world to camera coordinates; ``K`` is in pixels with
the centre of the top-left pixel at (0.5, 0.5) (COLMAP/gsplat convention), i.e. a point
projecting to u = fx*x/z + cx lands in pixel column floor(u).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diff3r_cli.geometry import crop_intrinsics, opencv_to_opengl, opengl_to_opencv, scale_intrinsics


@dataclass
class Cameras:
    """A batch of C pinhole cameras sharing one image size.

    K: (C,3,3) intrinsics in pixels. w2c: (C,4,4) world-to-camera. width/height in pixels.
    """

    K: torch.Tensor
    w2c: torch.Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.K.dim() == 2:
            self.K = self.K[None]
        if self.w2c.dim() == 2:
            self.w2c = self.w2c[None]
        if self.w2c.shape[-2:] == (3, 4):
            bottom = torch.zeros(*self.w2c.shape[:-2], 1, 4, dtype=self.w2c.dtype, device=self.w2c.device)
            bottom[..., 0, 3] = 1
            self.w2c = torch.cat([self.w2c, bottom], dim=-2)
        if self.K.shape[0] != self.w2c.shape[0]:
            raise ValueError(f"K has {self.K.shape[0]} cameras but w2c has {self.w2c.shape[0]}")
        self.width = int(self.width)
        self.height = int(self.height)

    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return Cameras(self.K[idx], self.w2c[idx], self.width, self.height)

    @property
    def device(self) -> torch.device:
        return self.K.device

    @property
    def dtype(self) -> torch.dtype:
        return self.K.dtype

    def to(self, device=None, dtype=None) -> "Cameras":
        return Cameras(self.K.to(device=device, dtype=dtype), self.w2c.to(device=device, dtype=dtype),
                       self.width, self.height)

    @property
    def c2w(self) -> torch.Tensor:
        """(C,4,4) camera-to-world (rigid inverse of w2c)."""
        R = self.w2c[:, :3, :3]
        t = self.w2c[:, :3, 3:]
        out = torch.zeros_like(self.w2c)
        out[:, :3, :3] = R.transpose(1, 2)
        out[:, :3, 3:] = -R.transpose(1, 2) @ t
        out[:, 3, 3] = 1
        return out

    @property
    def centers(self) -> torch.Tensor:
        """(C,3) camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    @staticmethod
    def of_sample(sample: dict, which: str = "context") -> "Cameras":
        """The ``which`` ("context" or "target") cameras of a dataset sample (``{which}_K``,
        ``{which}_w2c``, ``{which}_images`` (V,H,W,3), as the RE10K/synthetic loaders yield them)."""
        if which not in ("context", "target"):
            raise ValueError(f"which must be 'context' or 'target', not {which!r}")
        h, w = sample[f"{which}_images"].shape[1:3]
        return Cameras(sample[f"{which}_K"], sample[f"{which}_w2c"], int(w), int(h))

    @staticmethod
    def from_c2w_opengl(K: torch.Tensor, c2w_gl: torch.Tensor, width: int, height: int) -> "Cameras":
        """Build from camera-to-world matrices in the OpenGL/NeRF convention (transforms.json)."""
        c2w_gl = c2w_gl.to(torch.float64)
        if c2w_gl.dim() == 2:
            c2w_gl = c2w_gl[None]
        if c2w_gl.shape[-2:] == (3, 4):
            c2w_gl = torch.cat([c2w_gl, torch.tensor([[[0, 0, 0, 1.0]]], dtype=torch.float64).expand(len(c2w_gl), 1, 4)], 1)
        w2c = torch.linalg.inv(opengl_to_opencv(c2w_gl))
        return Cameras(K.to(torch.float64), w2c, width, height)

    def c2w_opengl(self) -> torch.Tensor:
        """(C,4,4) camera-to-world in the OpenGL/NeRF convention (for transforms.json)."""
        return opencv_to_opengl(self.c2w.to(torch.float64))

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project world points (P,3) into every camera: returns pixels (C,P,2) and depths (C,P)."""
        pts = torch.cat([points, torch.ones_like(points[:, :1])], dim=1)  # (P,4)
        cam = torch.einsum("cij,pj->cpi", self.w2c.to(points.dtype), pts)[..., :3]
        z = cam[..., 2]
        uv = torch.einsum("cij,cpj->cpi", self.K.to(points.dtype), cam)
        return uv[..., :2] / uv[..., 2:3], z

    def resized(self, width: int, height: int) -> "Cameras":
        """Cameras for the same images scaled to (width, height) — exact for the pixel-edge convention."""
        K = scale_intrinsics(self.K, width / self.width, height / self.height)
        return Cameras(K, self.w2c.clone(), width, height)

    def cropped(self, left: int, top: int, width: int, height: int) -> "Cameras":
        """Cameras for the sub-image [top:top+height, left:left+width]."""
        return Cameras(crop_intrinsics(self.K, left, top), self.w2c.clone(), width, height)

    def resize_crop(self, width: int, height: int) -> tuple["Cameras", tuple[int, int, int, int], tuple[int, int]]:
        """Scale so the image covers (width,height) then centre-crop, like RE10K training practice.

        Returns the new cameras, the crop box (left, top, width, height) in the scaled image,
        and the scaled size (sw, sh) the image must be resized to before cropping.
        """
        scale = max(width / self.width, height / self.height)
        sw = max(width, round(self.width * scale))
        sh = max(height, round(self.height * scale))
        left = (sw - width) // 2
        top = (sh - height) // 2
        return self.resized(sw, sh).cropped(left, top, width, height), (left, top, width, height), (sw, sh)
