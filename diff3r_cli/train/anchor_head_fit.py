"""Fitting the anchor head (``depth/anchor_head.py``) on train tuples.

Per tuple (:func:`prepare_record`): θ0 from the predictor as ``eval`` makes it, the confidence
pre-pass θ1 and pixel weights as the anchored refine makes them, the head's features, and the
target: the mean squared change per group of a plain TTO that fits the context *and* the target
views (θ_A). Where θ_A moves a Gaussian far from θ0, the prediction was wrong in a way the photos can
show, so the anchor should let it go; where it stays, the anchor may hold it.

:func:`fit_head` regresses log(displacement / the tuple's median + 0.1) per group (MSE; the offset
keeps the many Gaussians that barely move from dominating), so the head learns a ranking within
each tuple. Records are small (features and targets only) and cached by the caller, so a fit is
cheap to repeat.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.depth.anchor_head import FEATURES, AnchorHead, anchor_features, group_change
from diff3r_cli.gaussians import GROUPS

OFFSET = 0.1       # added to the median-normalised displacement before the log
TARGET_STEPS = 200  # plain TTO on context + target views


def prepare_record(g0, context: Cameras, context_images: torch.Tensor, target: Cameras,
                   target_images: torch.Tensor, key: str = "", steps: int = TARGET_STEPS) -> dict:
    """Features of θ0's Gaussians (after the pre-pass, as the anchored refine computes them) and
    their displacement under a TTO that also sees the target views: {"key", "features" (N,F),
    "displacement" (N,5)}."""
    from diff3r_cli.depth.consistency import settled_confidence
    from diff3r_cli.optim.tto import optimize

    g0 = g0.detach()
    owner, g1, w = settled_confidence(g0, context, context_images)
    feats = anchor_features(g0, g1, context, context_images, w, owner=owner)
    both = Cameras(torch.cat([context.K, target.K]), torch.cat([context.w2c, target.w2c]),
                   context.width, context.height)
    g_all, _ = optimize(g0, None, both, torch.cat([context_images, target_images]), steps, compensation="auto")
    return {"key": key, "features": feats, "displacement": group_change(g0, g_all).float()}


def regression_target(displacement: torch.Tensor) -> torch.Tensor:
    """log(d / median_tuple(d) + OFFSET) per group: what :func:`fit_head` regresses."""
    med = displacement.median(0).values.clamp_min(1e-12)
    return (displacement / med + OFFSET).log()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors. Ties are ranked by order, not averaged: exact
    for continuous values; where ties are many (an anchor with two levels) their arbitrary order
    pulls the value toward 0, not away from it."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else 0.0


def rank_correlations(head: Optional[AnchorHead], records: Sequence[dict], lam: Optional[Sequence] = None
                      ) -> list[float]:
    """Mean over records, per group, of the rank correlation between the anchor's 1/λ and the
    displacement: with ``head``, 1/λ ∝ exp(head); else ``lam`` (one (N,5) per record)."""
    rows = []
    with torch.no_grad():
        for i, r in enumerate(records):
            score = head(r["features"]) if head is not None else -lam[i].clamp_min(1e-12).log()
            rows.append([spearman(score[:, g], r["displacement"][:, g]) for g in range(len(GROUPS))])
    return torch.tensor(rows).mean(0).tolist() if rows else [0.0] * len(GROUPS)


def held_out_scenes(records: Sequence[dict]) -> set[str]:
    """The scenes whose tuples a fit holds out for its rank correlations: every third, by name."""
    return set(sorted({r["key"] for r in records})[::3])


def fit_head(train: Sequence[dict], steps: int = 3000, lr: float = 1e-3, batch: int = 8192, seed: int = 0,
             hidden: int = 64, val: Sequence[dict] = (), every: int = 250,
             progress: Optional[Callable[[dict], None]] = None,
             n_features: int = len(FEATURES)) -> tuple[AnchorHead, list[dict]]:
    """Fit a head on ``train`` records; returns it and a log (step, loss, train/val rank correlations).
    n_features: the records' feature width (the bundled :data:`FEATURES` unless an experiment adds some)."""
    if not train:
        raise ValueError("no training records")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.cat([r["features"] for r in train]).float()
    y = torch.cat([regression_target(r["displacement"]) for r in train]).float()
    if x.shape[1] != n_features:
        raise ValueError(f"records have {x.shape[1]} features, expected {n_features}")
    head = AnchorHead(n_features, hidden)
    head.mu.copy_(x.mean(0))
    head.sd.copy_(x.std(0) + 1e-6)
    opt = torch.optim.Adam(head.parameters(), lr)
    log = []
    for step in range(steps):
        idx = torch.randint(0, len(x), (min(batch, len(x)),), generator=gen)
        loss = ((head(x[idx]) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        if step % every == 0 or step == steps - 1:
            head.eval()
            rec = {"step": step, "loss": float(loss.detach()),
                   "train_rank": rank_correlations(head, train[:8]),
                   "val_rank": rank_correlations(head, val) if val else None}
            head.train()
            log.append(rec)
            if progress is not None:
                progress(rec)
    return head.eval(), log


__all__ = ["prepare_record", "regression_target", "spearman", "rank_correlations", "fit_head"]
