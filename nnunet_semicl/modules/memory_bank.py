"""Per-class FIFO memory banks of negative features (U2PL-style, used by MONA/ARCO; methods.md 5.3a).

One :class:`~nnunet_semicl.modules.queues.RingBuffer` per class, all registered buffers, so the banks
move with ``.to(device)`` and are saved by ``state_dict()`` (``--c``). The official code keeps the
banks on the CPU as Python lists; ours are fixed-size ring buffers on the training device (section
11), and they start empty (the official banks start with one dummy vector, zeros in 2D and randn in
3D, which then serves as the "negative" while the bank is otherwise empty).
"""
from typing import List, Sequence, Union

import torch
from torch import nn

from nnunet_semicl.modules.queues import RingBuffer

#: section 5.3a: 30,000 entries per class, 50,000 for the background class (class 0)
DEFAULT_CLASS_SIZE = 30000
DEFAULT_BACKGROUND_SIZE = 50000


class ClassMemoryBank(nn.Module):
    """``num_classes`` FIFO banks of ``dim``-dimensional features.

    Args:
        num_classes: K (background included, as class 0).
        dim: feature dimension.
        sizes: capacity per class: an int (every class) or a sequence of K ints; None gives
            50,000 for class 0 and 30,000 for every other class (section 5.3a).
        dtype: storage dtype (float32 by default; float16 halves the memory).
    """

    def __init__(self, num_classes: int, dim: int, sizes: Union[None, int, Sequence[int]] = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if sizes is None:
            sizes = [DEFAULT_BACKGROUND_SIZE] + [DEFAULT_CLASS_SIZE] * (num_classes - 1)
        elif isinstance(sizes, int):
            sizes = [sizes] * num_classes
        sizes = [int(s) for s in sizes]
        if len(sizes) != num_classes:
            raise ValueError(f"need {num_classes} bank sizes, got {len(sizes)}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.sizes = sizes
        self.banks = nn.ModuleList([RingBuffer(s, (self.dim,), dtype=dtype) for s in sizes])

    @torch.no_grad()
    def push_class(self, c: int, features: torch.Tensor, gather: bool = False) -> None:
        """Enqueue ``features`` [n, dim] into class ``c``'s bank (detached; oldest entries drop out)."""
        self.banks[c].push(features.detach().reshape(-1, self.dim), gather=gather)

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor, gather: bool = False) -> None:
        """Enqueue rows of ``features`` [n, dim] into the banks named by ``labels`` [n] (values 0..K-1).

        Rows with a label outside 0..K-1 (e.g. -1) are ignored. One boolean selection per class.
        """
        features = features.detach().reshape(-1, self.dim)
        labels = labels.reshape(-1).to(features.device)
        for c in range(self.num_classes):
            sel = labels == c
            if gather or bool(sel.any()):  # under DDP every rank must join the gather
                self.push_class(c, features[sel], gather=gather)

    def storage(self, c: int):
        """Class ``c``'s entries in storage order (no copy) and the storage position of the oldest."""
        return self.banks[c].storage()

    def get(self, c: int) -> torch.Tensor:
        """Class ``c``'s valid entries [len, dim], oldest first."""
        return self.banks[c].get()[0]

    def counts(self) -> List[int]:
        return [len(b) for b in self.banks]

    @torch.no_grad()
    def reset(self) -> None:
        for b in self.banks:
            b.reset()

    def memory_bytes(self) -> int:
        return sum(b.memory_bytes() for b in self.banks)
