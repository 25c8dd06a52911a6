"""The few ``torch.distributed`` helpers training needs: set-up from torchrun's environment, rank queries,
collectives that are no-ops in a single process, and the deterministic sharding of global batches.

Under ``torchrun --nproc_per_node=N smelib train ...`` every process runs the same code; :func:`setup` reads
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, picks NCCL for CUDA and gloo for CPU, and returns a :class:`DistContext`.
Rank 0 alone logs, writes checkpoints and run records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "all_gather_object", "all_reduce_mean", "barrier", "broadcast_object", "setup", "shard",
           "teardown"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``local_rank`` and whether it set up a group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device_type: str) -> DistContext:
    """Join the process group torchrun describes (if any); a no-op context in a plain single process.

    Args:
        device_type: ``"cuda"`` selects NCCL, anything else gloo.
    """
    world = env_world_size()
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, False)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistContext(rank, world, local_rank, True)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in a single process."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(ctx: DistContext, value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; the input is untouched)."""
    if not ctx.distributed:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def shard(batch: list[Any], ctx: DistContext) -> list[Any]:
    """This rank's contiguous slice of a global batch (the batch size must divide evenly by the world size).

    Rank r of W gets elements ``[r*b, (r+1)*b)`` with ``b = len(batch) / W``: every element of the global batch
    is seen by exactly one rank, so the ranks together see exactly what a single process would.
    """
    if not ctx.distributed:
        return batch
    per = len(batch) // ctx.world_size
    return batch[ctx.rank * per : (ctx.rank + 1) * per]
