"""Data-parallel plumbing: torchrun's environment, gloo/NCCL, the collectives training needs.

Launched by torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the processes form a gloo
(CPU) or NCCL (CUDA) group; each rank reads its own shard of the data, gradients are averaged with
one all-reduce per step, rank 0 logs and checkpoints. A single process needs none of it: every
function here is then a no-op or the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from diff3r_cli.errors import UserError


@dataclass
class Dist:
    """This process's place in the group (rank 0 of 1 without torchrun) and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed(device: str | None) -> Dist:
    """Detect torchrun's environment; init gloo (CPU) or NCCL (CUDA). Single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA GPU is visible", fix="use --device cpu")
    dev = torch.device(f"cuda:{local}" if device == "cuda" else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world)
    return Dist(rank, world, local, dev)


def set_threads(threads: int | None, dist: Dist) -> None:
    """CPU threads of this process: as asked, else the cores split between the local processes."""
    if threads:
        torch.set_num_threads(int(threads))
    elif dist.enabled and dist.device.type == "cpu":
        # K CPU processes each using every core thrash badly: split the cores between them.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def broadcast_module(module: torch.nn.Module, dist: Dist) -> None:
    """Every rank starts from rank 0's parameters and buffers (as DDP does)."""
    if not dist.enabled:
        return
    for p in module.parameters():
        if p.requires_grad:
            torch.distributed.broadcast(p.data, 0)
    for bf in module.buffers():
        torch.distributed.broadcast(bf.data, 0)


def all_reduce_grads(params: list[torch.nn.Parameter], dist: Dist) -> None:
    """Average gradients over ranks with one flat all-reduce (missing grads count as zero)."""
    if not dist.enabled:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= dist.world
    i = 0
    for p in params:
        n = p.numel()
        p.grad = flat[i:i + n].view_as(p).clone()
        i += n


def all_reduce_sum(values: list[float], dist: Dist) -> list[float]:
    """Sum a few numbers over ranks (float64)."""
    if not dist.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device if dist.device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, dist: Dist) -> bool:
    """True on every rank when it is true on any (so that all ranks stop at the same step)."""
    return bool(all_reduce_sum([float(flag)], dist)[0] > 0) if dist.enabled else flag


def gather_objects(obj: Any, dist: Dist) -> list:
    """Every rank's ``obj``, in rank order (a list of one without a group)."""
    if not dist.enabled:
        return [obj]
    gathered: list = [None] * dist.world
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def barrier(dist: Dist) -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.enabled:
        torch.distributed.barrier()


__all__ = ["Dist", "setup_distributed", "set_threads", "broadcast_module", "all_reduce_grads", "all_reduce_sum",
           "any_rank", "gather_objects", "barrier"]
