"""Multi-process training under `torchrun`: which process this is, and the few collectives
the pruner needs so that every rank holds the same masks, scores and λ."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Procs:
    """This process's place among the `world` processes of a run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main process writes files and prints progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Procs()  # one process, no torchrun


def resolve_device(name: str, procs: Procs | None = None) -> torch.device:
    """cpu | cuda | cuda:N | auto; under torchrun each process takes its LOCAL_RANK's GPU."""
    from ..errors import TaperpruneError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TaperpruneError("--device cuda was asked for, but no CUDA GPU is available here")
    if name == "cuda" and procs is not None and procs.active:
        name = f"cuda:{procs.local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def from_environment(device_type: str) -> Procs:
    """Join the process group torchrun set up (WORLD_SIZE > 1), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Procs()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Procs(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def mean(procs: Procs, value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all processes (in place; a no-op when alone)."""
    if procs.active:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= procs.world
    return value


def any_flag(procs: Procs, flag: bool) -> bool:
    """True on every process when it is true on any (e.g. a signal reached one of them)."""
    if not procs.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_buffers(procs: Procs, model: nn.Module) -> None:
    """Give every process rank 0's buffers (BN statistics estimated on its own shard)."""
    if procs.active:
        for buf in model.buffers():
            dist.broadcast(buf, 0)


def barrier(procs: Procs) -> None:
    if procs.active:
        dist.barrier()


def wrap(procs: Procs, model: nn.Module, device: torch.device) -> nn.Module:
    """The module to run forward/backward through: DDP when several processes train."""
    if not procs.active:
        return model
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def spread(procs: Procs, value: torch.Tensor) -> float:
    """max over processes − min over processes, elementwise, then the largest (0 when alone)."""
    if not procs.active:
        return 0.0
    hi, lo = value.detach().double().clone(), value.detach().double().clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max()) if hi.numel() else 0.0


def finish(procs: Procs, ok: bool) -> None:
    """Leave the process group (gloo threads left running abort the process at exit)."""
    if procs.active and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()
