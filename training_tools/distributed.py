"""One process or several under ``torchrun``: rank, device, and the few collectives training needs.

``torchrun --nproc-per-node N`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with
``WORLD_SIZE > 1`` the process group uses NCCL on CUDA and gloo on the CPU.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from KidneyTumorSegLib.inference import pick_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, values: list[float]) -> list[float]:
        """Element-wise mean of ``values`` over all processes."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(tensor)
        return (tensor / self.world_size).tolist()

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every process."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self._collective_device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def gather(self, value: float) -> list[float]:
        """Every process's ``value``, by rank."""
        if not self.active:
            return [value]
        tensor = torch.tensor([value], dtype=torch.float64, device=self._collective_device)
        out = [torch.zeros_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(out, tensor)
        return [float(t.item()) for t in out]

    @property
    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def setup_distributed(device_name: str = "auto") -> Distributed:
    """Join the process group when launched by torchrun with several processes; pick the device
    (``cuda:LOCAL_RANK`` on a GPU machine)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        logger.info("rank %d of %d joined (%s on %s)", rank, world_size, backend, device)
    return Distributed(rank, world_size, local_rank, device)


def teardown_distributed(context: Distributed) -> None:
    """Leave the process group (if this process joined one)."""
    if context.active and dist.is_initialized():
        dist.destroy_process_group()
