"""Hyper-parameters of the predictor, with named size presets; saved as JSON next to the weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class PredictorConfig:
    """Hyper-parameters of the predictor (saved with the weights)."""

    size: str = "small"
    enc_channels: tuple[int, int] = (16, 32)   # channels at full and 1/2 resolution
    feat_dim: int = 48                          # channels at 1/4 resolution (cost volume features)
    enc_blocks: int = 1                         # residual blocks at 1/4 resolution
    attn_layers: int = 1                        # cross-view attention layers at 1/8 (0 = off)
    attn_heads: int = 2
    num_planes: int = 32                        # depth hypotheses
    refine_channels: int = 48                   # cost-volume U-Net width
    head_channels: int = 32                     # full-resolution decoder width
    sh_degree: int = 0
    scale_init_px: float = 0.5                  # Gaussian std in pixels at initialisation
    opacity_init: float = 0.75
    # Λ per group at initialisation. With lam_relative, Λ is expressed in units of 1/P
    # (P = V·H·W context pixels), the scale of one pixel's term in the TTO energy
    # E = 1/(2P)·Σ‖r‖² + ½Σλ(θ−θ0)², so λ ≈ 1 weighs θ0 about as much as one pixel's
    # photometric curvature, whatever the resolution and number of views.
    lam_init: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    lam_relative: bool = True
    # Lower bound added to every λ (units of 1/P with lam_relative). At the small Λ a model
    # learns, H = JᵀJ/P + Λ is so ill-conditioned that the IFT backward does not converge and
    # its gradient is far from the true one; a floor of ~10 fixes that (benchmarks/layer.py).
    lam_floor: float = 0.0
    # How near/far were set in training, so inference sets them alike (engines.policy):
    # "fitted" (tight around the depths of the context views; the synthetic-trained models) or
    # "normalised" (the scene scaled so its 5th-percentile depth is 2, near 1, far 100: models
    # trained on RE10K-style scale-normalised data such as the real corpus).
    depth_range: str = "fitted"
    # How the decoder refines the cost volume's depth: "t" (a free residual in normalised inverse
    # depth, anywhere inside near..far: what the earlier models use, and what let them read depth off
    # the range) or "log" (depth = cost-volume depth · exp(DEPTH_LOG_BOUND·tanh(r)): the matching
    # decides, the head only corrects within a bounded factor).
    depth_residual: str = "t"
    # The TTO anchor's calibration, learned through the optimisation layer after training
    # (diff3r_cli/train/anchor_fit.py): log multipliers of Λ per Gaussian set (rows: covisible,
    # single-view, backdrop; see depth/covisible.ANCHOR_SETS) and group (columns: mean, scale,
    # rotation, opacity, colour). None: Λ as predicted (with the covisible scale).
    anchor_log_scales: tuple[tuple[float, ...], ...] | None = None

    @staticmethod
    def preset(size: str, **overrides) -> "PredictorConfig":
        """Named sizes: "small" (CPU-trainable) and "base"."""
        if size == "small":
            cfg = PredictorConfig()
        elif size == "base":
            cfg = PredictorConfig(size="base", enc_channels=(32, 64), feat_dim=96, enc_blocks=3, attn_layers=2,
                                  attn_heads=4, num_planes=64, refine_channels=96, head_channels=48)
        else:
            raise ValueError(f"unknown model size {size!r} (use small or base)")
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise ValueError(f"unknown predictor option {k!r}")
            setattr(cfg, k, v)
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "PredictorConfig":
        d = dict(d)
        for k in ("enc_channels", "lam_init"):
            if k in d:
                d[k] = tuple(d[k])
        if d.get("anchor_log_scales") is not None:
            d["anchor_log_scales"] = tuple(tuple(float(v) for v in row) for row in d["anchor_log_scales"])
        d.setdefault("lam_relative", False)
        d.setdefault("depth_residual", "t")  # files written before the 1/P convention
        known = {f for f in PredictorConfig.__dataclass_fields__}
        return PredictorConfig(**{k: v for k, v in d.items() if k in known})


__all__ = ["PredictorConfig"]
