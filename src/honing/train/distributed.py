"""Process-group setup. Under ``torchrun`` (WORLD_SIZE > 1 in the environment) the loop joins a gloo
group (CPU) or nccl (CUDA) and wraps the model in DDP or FSDP2; alone it runs the same code with these
no-ops. Multi-node: torchrun's rendezvous (``--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT``)
sets the same variables, nothing else changes here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False
    backend: str = "none"
    device: object = field(default=None)  # where collective tensors live (nccl needs CUDA tensors)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            if self.backend == "nccl":
                td.barrier(device_ids=[self.device.index])
            else:
                td.barrier()

    def all_reduce_sum(self, values) -> list[float]:
        """Sum a few numbers over processes (float64 so token counts stay exact). ``values`` may be a list
        of numbers and 0-dim tensors (tensors stay on their device: one host read for the whole list)."""
        import torch

        if not self.enabled and not any(isinstance(v, torch.Tensor) for v in values):
            return list(values)
        device = self.device if self.device is not None else torch.device("cpu")
        t = torch.stack([v.detach().to(device, torch.float64) if isinstance(v, torch.Tensor)
                         else torch.tensor(float(v), dtype=torch.float64, device=device) for v in values])
        if self.enabled:
            import torch.distributed as td

            td.all_reduce(t, op=td.ReduceOp.SUM)
        return t.tolist()

    def close(self) -> None:
        if self.initialized_here:
            import torch.distributed as td

            td.destroy_process_group()
            self.initialized_here = False


def setup_distributed(device=None) -> DistContext:
    """Join the torchrun process group (nccl for a CUDA device, gloo otherwise); alone: a no-op context."""
    import torch

    device = device if device is not None else torch.device("cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device)
    import torch.distributed as td

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device.type == "cuda" else "gloo"
    created = False
    if not td.is_initialized():
        td.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        created = True
    else:
        backend = td.get_backend()
    return DistContext(rank=rank, world_size=world, local_rank=local, initialized_here=created,
                       backend=backend, device=device)
