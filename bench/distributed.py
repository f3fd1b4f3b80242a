"""Sharding a sweep across torchrun processes: whole batches of sample indices per rank, gathered on rank 0.

`torchrun --nproc_per_node=N -m bench run SUITE` starts N copies of the sweep. Every rank runs every cell on its share
of the batches (batch k goes to rank k mod N), so each batch is exactly the batch a single process would draw: with
per-sample seeds even samplers whose steps depend on the whole batch (rk45's error control) give the same samples.
Rank 0 gathers the samples, computes the metrics and alone writes records. Backends: gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Ranks", "batch_shard"]


def batch_shard(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """The sample indices of rank `rank`: batches rank, rank + world, ... of range(n) cut into `batch_size` pieces."""
    starts = range(rank * batch_size, n, world * batch_size)
    return [i for lo in starts for i in range(lo, min(lo + batch_size, n))]


@dataclass
class Ranks:
    """This process's place in the run (rank 0 of 1 without torchrun) and the few collectives the sweep needs."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> Ranks:
        """Join the torchrun process group when WORLD_SIZE > 1; the device of this rank (cuda -> cuda:LOCAL_RANK)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested, but CUDA is not available here")
        if world == 1:
            return cls(0, 1, dev)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(
                "nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None
            )
        return cls(dist.get_rank(), dist.get_world_size(), dev)

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def shard(self, n: int, batch_size: int) -> list[int]:
        return batch_shard(n, batch_size, self.rank, self.world)

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def nfe_mean(self, nfe: float, n: int) -> float:
        """Mean NFE per sample over all ranks, from this rank's mean over its n samples."""
        if self.world == 1:
            return nfe
        totals = torch.tensor([nfe * n, float(n)], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(totals)
        return float(totals[0] / totals[1])

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0 (in rank order), None elsewhere. Tensors should be on the CPU."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
