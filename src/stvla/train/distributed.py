"""Training on several processes, GPUs or machines, launched by `torchrun` with no other change to the
command:

    torchrun --nproc_per_node 4 $(which stvla) train --policy st --dataset DIR --init CKPT --device cuda

PyTorch's own engine: `torch.distributed` (nccl on GPUs, gloo on CPU) and DistributedDataParallel. The
launcher is detected from its environment (WORLD_SIZE, RANK, LOCAL_RANK). Every rank draws the same
global batch (`--batch_size` stays the global batch: the data order, the augmentation and the loss
curve do not depend on the number of processes) and trains on its own disjoint share; the loss of a
share is normalised by the global batch's counts, so the all-reduced gradient equals the one-process
gradient. Rank 0 alone writes logs, checkpoints, the config and the progress bar; the others wait at
a barrier wherever they would otherwise read a half-written file (the caches, a checkpoint).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from stvla import features as F
from stvla.devices import torch_device


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run."""

    rank: int = 0  # this process, 0..world-1
    world: int = 1  # processes in the run
    local_rank: int = 0  # this process on its machine (its GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def start(device: str, timeout_minutes: float = 30.0) -> tuple[Ranks, torch.device]:
    """Join the process group when launched by torchrun (else a run of one); this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), torch_device(device)
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    target = torch_device(device)
    if target.type == "cuda":  # one GPU per process: the launcher's local rank picks it
        target = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return ranks, target


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def stop(ranks: Ranks, together: bool = True) -> None:
    """Leave the process group; `together` (a run that finished on every rank) first waits for all, so that
    no rank tears its side down while another still uses it (gloo aborted a process otherwise, now and then)."""
    if ranks.distributed and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def shard(policy: torch.nn.Module, ranks: Ranks, device: torch.device) -> None:
    """FSDP2 (`--fsdp`): every block of every ModuleList (trunk layers, encoder stages, a PaliGemma
    backbone's decoder layers) and then the policy itself sharded over the ranks: parameters, gradients
    and optimiser state split instead of replicated, gathered a block at a time when used."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (ranks.world,))
    for blocks in [m for m in policy.modules() if isinstance(m, torch.nn.ModuleList)]:
        for block in blocks:
            if any(True for _ in block.parameters()):
                fully_shard(block, mesh=mesh)
    fully_shard(policy, mesh=mesh)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP) tensor gathered whole, on every rank (a collective); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(value: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """A whole tensor split as a sharded parameter is (an optimiser state being loaded); else as it is."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(parameter, DTensor) and value.shape == parameter.shape:
        return distribute_tensor(value.to(parameter.device), parameter.device_mesh, parameter.placements)
    return value


def share_of_batch(batch: dict[str, Any], ranks: Ranks) -> dict[str, Any]:
    """This rank's disjoint share of the global batch (every `world`-th sample from `rank`), with the
    global batch's counts of what the loss averages over, divided by the world size: each share's loss is
    then its part of the global mean, and DDP's average of the shares' gradients is the global gradient."""
    if not ranks.distributed:
        return batch
    size = len(batch[F.ACTION])
    if size % ranks.world:
        raise ValueError(f"--batch_size {size} does not split over {ranks.world} processes: make it a multiple")
    share = {key: value[ranks.rank::ranks.world] for key, value in batch.items()}
    share[F.LOSS_COUNT_ACTIONS] = (~batch[F.ACTION_IS_PAD]).sum().float() / ranks.world
    if F.TRACE_MASK in batch:
        share[F.LOSS_COUNT_TRACES] = batch[F.TRACE_MASK].sum().float() / ranks.world
    return share


def sum_over_ranks(value: float, ranks: Ranks, device: torch.device) -> float:
    """A figure summed over the ranks (the loss: each share's is its part of the global mean)."""
    if not ranks.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())
