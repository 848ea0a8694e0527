"""Process-group setup. Under ``torchrun`` (WORLD_SIZE > 1 in the environment) the loop joins a gloo
group (CPU) or nccl (CUDA) and wraps the model in DDP; alone it runs the same code with these no-ops."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over processes (float64 so token counts stay exact)."""
        if not self.enabled:
            return list(values)
        import torch
        import torch.distributed as td

        t = torch.tensor(values, dtype=torch.float64)
        td.all_reduce(t, op=td.ReduceOp.SUM)
        return t.tolist()

    def close(self) -> None:
        if self.initialized_here:
            import torch.distributed as td

            td.destroy_process_group()


def setup_distributed() -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch
    import torch.distributed as td

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    created = False
    if not td.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        td.init_process_group(backend=backend)
        created = True
    return DistContext(rank=rank, world_size=world, local_rank=local, initialized_here=created)
