"""Fixed-size FIFO ring buffers kept on the device.

Everything lives in registered buffers, so a queue moves with ``.to(device)`` and is saved and
restored through ``state_dict()`` (nnU-Net checkpoints, ``--c``); a buffer that is not full yet saves only
its filled rows (MONA/ARCO's empty banks would add ~290 MB to every checkpoint of a short run). Pushing is
vectorised: no Python loop over items. Under torch.distributed, ``push(..., gather=True)`` enqueues the
items of all ranks so that every rank keeps an identical queue.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from nnunet_semicl.modules.distributed import concat_all_gather


class RingBuffer(nn.Module):
    """A FIFO of ``size`` items of shape ``item_shape`` (optionally each with an integer label).

    ``get()`` returns the ``len(self)`` valid items, oldest first.
    """

    def __init__(self, size: int, item_shape: Sequence[int], with_labels: bool = False,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if size <= 0:
            raise ValueError(f"RingBuffer size must be positive, got {size}")
        self.size = int(size)
        self.item_shape = tuple(int(s) for s in item_shape)
        self.with_labels = with_labels
        self.register_buffer("items", torch.zeros((self.size, *self.item_shape), dtype=dtype))
        self.register_buffer("labels", torch.full((self.size,), -1, dtype=torch.long) if with_labels
                             else torch.zeros(0, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))    # next write position
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # number of valid items

    def __len__(self) -> int:
        return int(self.count.item())

    @torch.no_grad()
    def push(self, items: torch.Tensor, labels: Optional[torch.Tensor] = None, gather: bool = False) -> None:
        if tuple(items.shape[1:]) != self.item_shape:
            raise ValueError(f"RingBuffer expects items of shape (n, {self.item_shape}), got {tuple(items.shape)}")
        if self.with_labels != (labels is not None):
            raise ValueError("labels must be given exactly when the buffer was created with_labels=True")
        if labels is not None and tuple(labels.shape) != (items.shape[0],):
            raise ValueError(f"RingBuffer: got {items.shape[0]} items but labels of shape {tuple(labels.shape)}")
        if gather:
            items = concat_all_gather(items.contiguous())
            if labels is not None:
                labels = concat_all_gather(labels.contiguous())
        n = items.shape[0]
        if n == 0:
            return
        if n > self.size:  # only the newest `size` items can survive
            items, n = items[-self.size:], self.size
            labels = labels[-self.size:] if labels is not None else None
        idx = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size
        self.items[idx.to(self.items.device)] = items.to(self.items.dtype)
        if labels is not None:
            self.labels[idx.to(self.labels.device)] = labels.to(torch.long)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.count.copy_(torch.clamp(self.count + n, max=self.size))

    def get(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Valid items (and labels), oldest first."""
        c = len(self)
        if c < self.size:
            items, labels = self.items[:c], (self.labels[:c] if self.with_labels else None)
        else:
            order = (self.ptr + torch.arange(self.size, device=self.ptr.device)) % self.size
            items = self.items[order.to(self.items.device)]
            labels = self.labels[order.to(self.labels.device)] if self.with_labels else None
        return items, labels

    def storage(self) -> Tuple[torch.Tensor, int]:
        """The valid items *in storage order* (a view, no copy) and the storage position of the oldest.

        Item ``i`` in insertion order (oldest first) is ``view[(offset + i) % len(view)]``; use this
        instead of :meth:`get` to index a large buffer without reordering (copying) it.
        """
        c = len(self)
        if c < self.size:
            return self.items[:c], 0
        return self.items, int(self.ptr.item())

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        c = len(self)
        if c < self.size:   # rows >= count are unused (pushes fill from row 0 until the first wrap)
            for name in ("items", "labels") if self.with_labels else ("items",):
                # a clone: torch.save writes a view's whole storage
                destination[prefix + name] = destination[prefix + name][:c].clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        rows, ptr, count = (state_dict.get(prefix + k) for k in ("items", "ptr", "count"))
        # a compact save has ptr == count == its rows (< its size); a full buffer has ptr < count, so one of
        # another size still fails on the shapes below
        if rows is not None and ptr is not None and count is not None and rows.dim() == self.items.dim() \
                and int(ptr) == int(count) == rows.shape[0] < self.size:
            for name in ("items", "labels") if self.with_labels else ("items",):
                key, buf = prefix + name, getattr(self, name)
                saved = state_dict.get(key)
                if saved is not None and saved.shape[0] == rows.shape[0] and saved.shape[1:] == buf.shape[1:]:
                    padded = torch.zeros_like(buf) if name == "items" else torch.full_like(buf, -1)
                    padded[:saved.shape[0]] = saved.to(buf.dtype)
                    state_dict[key] = padded
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def memory_bytes(self) -> int:
        """Bytes of the item storage (the capacity, whatever the fill)."""
        return self.items.numel() * self.items.element_size()

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the buffer. The attributes ``items``, ``labels``, ``ptr`` and ``count`` are its private
        state: other code empties it with this and fills it with :meth:`push` (pushing ``size`` items
        after a reset leaves them in storage order, oldest first), never by writing them."""
        self.items.zero_()
        if self.with_labels:
            self.labels.fill_(-1)
        self.ptr.zero_()
        self.count.zero_()
