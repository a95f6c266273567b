"""The one prediction entry: context views in, (Gaussians, Λ) out, without autograd.

Every caller that runs a trained predictor for inference (reconstruct, evaluation, training-time
evaluation, benchmarks) goes through :func:`predict_gaussians`, so the input conventions (a batch
of one scene, float32, the model's device) and the finiteness check live in one place.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import NumericalError
from diff3r_cli.gaussians import Gaussians


class Prediction(NamedTuple):
    """One scene's prediction; unpacks as ``gaussians, lam = predict_gaussians(...)``."""

    gaussians: Gaussians
    lam: torch.Tensor  # (N, 5) uncertainty weights Λ per parameter group


def inference_lam(lam: torch.Tensor, floor: float, pixels: int, relative: bool = True) -> torch.Tensor:
    """Λ without the training-time floor (PredictorConfig.lam_floor, in units of 1/P when relative).

    The floor conditions the IFT backward in training; at test time it only anchors every Gaussian
    to θ0 more than the network asked for (measured on real photos: TTO from the floored Λ stops
    5 dB short of plain TTO on the context views), so inference uses the learned part alone.
    """
    if floor <= 0:
        return lam
    return (lam - (floor / pixels if relative else floor)).clamp_min(0.0)


def predict_gaussians(model: torch.nn.Module, images: torch.Tensor, cameras: Cameras, near: float, far: float,
                      device: Optional[torch.device | str] = None, keep_floor: bool = False) -> Prediction:
    """Run the predictor on one scene's context views: images (V,H,W,3) in [0,1] -> Prediction on `device`.

    The model is moved to ``device`` (default: where its parameters are) and run in eval mode under
    ``torch.no_grad``; its previous train/eval mode is restored afterwards. Λ comes without the
    model's training-time floor (:func:`inference_lam`) unless ``keep_floor``. Raises NumericalError
    when the Gaussians or Λ are not finite (a broken checkpoint or input, not a crash).
    """
    if device is None:
        device = next(model.parameters()).device
    dev = torch.device(device)
    model = model.to(dev)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(images[None].to(dev, torch.float32), cameras.K[None].to(dev, torch.float32),
                        cameras.w2c[None].to(dev, torch.float32),
                        torch.tensor([float(near)], device=dev), torch.tensor([float(far)], device=dev))
    finally:
        model.train(was_training)
    g = out.gaussians[0].detach()
    lam = out.lam[0].detach()
    cfg = getattr(model, "cfg", None)
    if not keep_floor and cfg is not None:
        lam = inference_lam(lam, float(getattr(cfg, "lam_floor", 0.0)), images.shape[0] * images.shape[1] * images.shape[2],
                            bool(getattr(cfg, "lam_relative", True)))
    if not g.is_finite() or not bool(torch.isfinite(lam).all()):
        raise NumericalError("the predictor produced non-finite Gaussians")
    return Prediction(g, lam)


__all__ = ["Prediction", "predict_gaussians", "inference_lam"]
