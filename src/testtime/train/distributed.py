"""One process or many: the torchrun environment, DDP and FSDP2 wrapping, and small collective helpers.

The same script runs alone or under ``torchrun --nproc_per_node=N``; torchrun sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``, and :func:`setup` then joins the process group (NCCL on GPUs, gloo on
CPU). Everything here is a no-op with one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "all_reduce_sum", "setup", "teardown", "unwrap", "wrap_model"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits.

    Attributes:
        rank: global rank.
        local_rank: rank on this machine (selects the GPU).
        world_size: number of processes.
        device: the device this process computes on.
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and shows the progress bar."""
        return self.rank == 0


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def world_size_from_env() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; choose this process's device."""
    world_size = world_size_from_env()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def teardown() -> None:
    """Leave the process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo, *, parallel: str) -> nn.Module:
    """Wrap for data parallelism: DDP, or FSDP2 with each block and then the root sharded.

    FSDP2 gathers a unit's parameters only around that unit's ``forward``; the blocks are the children of the
    model's first ``nn.ModuleList`` unless the model lists its units with ``fsdp_modules()`` (an empty list
    shards the root only, which suits models that read a block's parameters outside its ``forward``).

    Args:
        model: the model on ``info.device``.
        info: process placement.
        parallel: ``"ddp"`` or ``"fsdp"``.

    Returns:
        The wrapped model (the same object with one process).
    """
    if info.world_size == 1:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [info.device.index] if info.device.type == "cuda" else None
        # models whose forward can leave parameters unused (routed experts, optional heads) say so
        find_unused = bool(getattr(model, "ddp_find_unused_parameters", False))
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    units = model.fsdp_modules() if hasattr(model, "fsdp_modules") else _blocks(model)
    for module in units:
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: the children of the first ``nn.ModuleList`` found."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            return list(module)
    return []


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place, so nothing to unwrap)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (a copy; unchanged with one process)."""
    value = value.clone()
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value
