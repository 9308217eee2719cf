"""Several processes, GPUs or machines through torchrun (torch.distributed); no launcher of our own.

    torchrun --nproc-per-node 2 -m clipviz explain --images photos/ "a dog" --manifest m.jsonl

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process it starts. A folder run then joins
the process group (NCCL on CUDA, gloo on the CPU), takes its shard of the images (image i goes to
rank i mod WORLD_SIZE, over the one list every rank builds alike), writes its own outputs (names
are per image, so ranks never clash) and its own manifest part, and rank 0 merges the parts after
a barrier (clipviz.manifest.merge).
"""

import os
from dataclasses import dataclass

from .errors import ClipvizError


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: rank, world size and local rank (a single process: 0, 1, 0)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self):
        return self.world > 1

    def shard(self, count):
        """The indices of ``count`` items this rank takes: i with i mod world == rank."""
        return list(range(self.rank, count, self.world))


def from_environment():
    """Ranks from torchrun's RANK, WORLD_SIZE, LOCAL_RANK (Ranks() when they are not set)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Ranks()
    try:
        ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ClipvizError(f"RANK={os.environ['RANK']!r} WORLD_SIZE={os.environ['WORLD_SIZE']!r}: not whole "
                           "numbers; start clipviz with torchrun, or unset them") from None
    if not 0 <= ranks.rank < ranks.world:
        raise ClipvizError(f"RANK={ranks.rank} is not below WORLD_SIZE={ranks.world}: start clipviz with torchrun")
    return ranks


def device_for(ranks, device):
    """The device of this rank: ``device`` as given, except that "cuda" (or nothing, on a machine
    with CUDA) under torchrun means this process's own GPU, cuda:LOCAL_RANK."""
    if not ranks.distributed:
        return device
    import torch
    if device in (None, "cuda") and torch.cuda.is_available():
        return f"cuda:{ranks.local_rank}"
    return device or "cpu"


class ProcessGroup:
    """The default process group for a run: NCCL when the device is CUDA, gloo otherwise; left on exit.
    A no-op for a single process."""

    def __init__(self, ranks, device):
        self.ranks = ranks
        self.cuda = str(device or "cpu").startswith("cuda")

    def __enter__(self):
        if self.ranks.distributed:
            import torch
            import torch.distributed as dist
            if self.cuda:
                torch.cuda.set_device(self.ranks.local_rank)
            dist.init_process_group("nccl" if self.cuda else "gloo")
        return self

    def __exit__(self, *exc):
        if self.ranks.distributed:
            import torch.distributed as dist
            dist.destroy_process_group()
        return False

    def all_agree(self, ok):
        """True if ``ok`` on every rank (an all-reduce of the minimum); every rank must call it."""
        if not self.ranks.distributed:
            return bool(ok)
        import torch
        import torch.distributed as dist
        flag = torch.tensor([1 if ok else 0], device=f"cuda:{self.ranks.local_rank}" if self.cuda else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def barrier(self):
        if self.ranks.distributed:
            import torch.distributed as dist
            dist.barrier(device_ids=[self.ranks.local_rank] if self.cuda else None)
