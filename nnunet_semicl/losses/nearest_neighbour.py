"""MONA/ARCO "diversity" objective: pull an image's embedding toward its nearest neighbours (methods.md 5.3c).

A FIFO pool keeps the teacher embeddings of recent unlabeled images. For each image of the batch,
the ``k`` (5) pool entries nearest (cosine) to the query embedding (the teacher's by default, or the
student's) are its neighbours, and the loss ``mean(2 - 2 cos(student, neighbour))`` pulls the
*student* embedding toward them, so the objective trains the student (the paper: "maximize cosine
similarity with K nearest neighbours from a FIFO memory bank").

As released, the neighbours were found with the student embedding but the loss was the *teacher's*
distance to them; teacher and pool carry no gradient, so the term was a constant with zero
gradient. ``as_released=True`` reproduces that value (with a zero gradient) for documentation.

**Bounded memory.** The official pool stores K = 36 whole flattened representation maps
(496 x 256 x 256 floats each, about 4.7 GB). Ours stores a compact embedding per image:
:func:`image_embedding` average-pools the representation map to a ``grid`` per spatial axis (4 by
default), flattens and L2-normalises it. With D = 256 channels that is 256 x 16 = 4,096 floats per
2D image (36 entries: 0.59 MB) and 256 x 64 = 16,384 floats per 3D volume (36 entries: 2.4 MB).
Push the batch *after* computing the loss, so an image is never its own neighbour.
"""
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_semicl.losses.numerics import at_least_fp32, zero_with_graph
from nnunet_semicl.modules.heads import grid_pool
from nnunet_semicl.modules.queues import RingBuffer


def image_embedding(rep: torch.Tensor, grid: Union[int, Sequence[int]] = 4) -> torch.Tensor:
    """``[B, D, *spatial]`` -> ``[B, D * prod(grid)]``: adaptive average pooling to ``grid`` cells per
    axis, flattened and L2-normalised (fp32; keeps the gradient)."""
    with torch.autocast(device_type=rep.device.type, enabled=False):
        return F.normalize(grid_pool(at_least_fp32(rep), grid), dim=1)


def embedding_dim(channels: int, nd: int, grid: Union[int, Sequence[int]] = 4) -> int:
    """Length of :func:`image_embedding`'s output for ``channels`` x ``nd`` spatial axes."""
    size = (grid,) * nd if isinstance(grid, int) else tuple(grid)
    return int(channels) * math.prod(size)


class NearestNeighbourPool(nn.Module):
    """FIFO of ``size`` (36) L2-normalised image embeddings of length ``dim``, in registered buffers."""

    def __init__(self, size: int = 36, dim: int = 4096, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.dim = int(dim)
        self.queue = RingBuffer(size, (self.dim,), dtype=dtype)

    @property
    def size(self) -> int:
        return self.queue.size

    def __len__(self) -> int:
        return len(self.queue)

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, gather: bool = False) -> None:
        """Enqueue ``[B, dim]`` embeddings (detached, re-normalised)."""
        e = F.normalize(at_least_fp32(embeddings.detach()).reshape(-1, self.dim), dim=1)
        self.queue.push(e, gather=gather)

    def get(self) -> torch.Tensor:
        return self.queue.get()[0]

    def memory_bytes(self) -> int:
        return self.queue.memory_bytes()


def nearest_neighbour_loss(student_emb: torch.Tensor, teacher_emb: Optional[torch.Tensor],
                           pool: Union[NearestNeighbourPool, torch.Tensor], k: int = 5, query: str = "teacher",
                           as_released: bool = False) -> torch.Tensor:
    """``mean over images and their k nearest pool entries of (2 - 2 cos(student, neighbour))``; 0-d.

    Args:
        student_emb: ``[B, E]`` student embeddings (with gradient), e.g. :func:`image_embedding`.
        teacher_emb: ``[B, E]`` teacher embeddings (constant); needed for ``query='teacher'`` and for
            ``as_released``.
        pool: a :class:`NearestNeighbourPool` or an ``[M, E]`` tensor of entries.
        k: neighbours per image (5); at most the pool size.
        query: ``'teacher'`` (default) or ``'student'``: whose embedding selects the neighbours.
        as_released: the released code's value: neighbours of the student embedding, distance of the
            teacher embedding to them; zero gradient (kept in the graph as ``+ 0 * student``).

    An empty pool gives a zero that keeps the graph. fp32 (fp64 stays fp64), autocast off.
    """
    if query not in ("teacher", "student"):
        raise ValueError(f"query must be 'teacher' or 'student', got {query!r}")
    entries = pool.get() if isinstance(pool, NearestNeighbourPool) else pool
    with torch.autocast(device_type=student_emb.device.type, enabled=False):
        s = F.normalize(at_least_fp32(student_emb), dim=1)
        zero = zero_with_graph(s)
        if entries.shape[0] == 0 or s.shape[0] == 0 or k <= 0:
            return zero
        bank = F.normalize(entries.detach().to(device=s.device, dtype=s.dtype), dim=1)
        kk = min(int(k), bank.shape[0])
        if as_released or query == "teacher":
            if teacher_emb is None:
                raise ValueError("teacher_emb is required for query='teacher' and as_released=True")
            t = F.normalize(teacher_emb.detach().to(s.dtype), dim=1)
        q = s.detach() if (as_released or query == "student") else t
        nbr = (q @ bank.t()).topk(kk, dim=1).indices                               # [B, k]
        target = t if as_released else s
        cos = (target.unsqueeze(1) * bank[nbr]).sum(-1)                            # [B, k]
        loss = (2.0 - 2.0 * cos).mean()
        return loss + zero if as_released else loss
