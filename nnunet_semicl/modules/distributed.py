"""Small helpers for code that must behave the same with and without torch.distributed."""
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0 (identity without a process group).

    Every rank must pass the same shape except along dim 0; sizes are exchanged first so that ranks
    with different numbers of rows (e.g. a class present on one rank only) still work. No gradient.
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return tensor
    world = dist.get_world_size()
    n_local = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(n_local) for _ in range(world)]
    dist.all_gather(sizes, n_local)
    sizes = [int(s.item()) for s in sizes]
    n_max = max(sizes)
    padded = tensor.new_zeros((n_max, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:s] for g, s in zip(gathered, sizes)], dim=0)


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters and buffers (heads are created per rank)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


@torch.no_grad()
def average_gradients(parameters) -> None:
    """All-reduce-average the gradients of ``parameters`` across ranks, in one flat bucket.

    nnU-Net's multi-GPU path wraps only ``self.network`` in DistributedDataParallel; our heads live
    outside it. Averaging their gradients explicitly after ``backward`` works whatever way the heads
    were called (several methods per step, some unused in a phase). A parameter without a gradient
    on this rank contributes zeros so that all ranks run the same collective.
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n
