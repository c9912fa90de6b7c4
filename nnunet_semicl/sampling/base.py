"""The common sampler interface.

A sampler draws ``n`` positions among the True entries of a boolean ``mask``:

* ``mask`` is ``[B, *spatial]`` for pixels/voxels of a batch (B images), or ``[N]`` for a plain index
  set such as a memory bank (one "image" with a 1-D extent, in insertion order).
* It returns ``Sample(index, weight)``: ``index`` is a LongTensor of flat indices into
  ``mask.reshape(-1)`` (every one a True entry), and ``weight`` a float tensor of the same length
  that sums to 1, such that ``sum(weight * h[index])`` is an unbiased estimate of the mean of ``h``
  over the True entries. Uniform sampling gives equal weights ``1/n``.
* An empty mask returns empty tensors; ``n`` larger than the number of candidates is allowed
  (sampling is with replacement, as in ReCo/U2PL).
* No Python loop over pixels or anchors: everything is vectorised on the mask's device.
"""
from typing import NamedTuple, Optional

import torch


class Sample(NamedTuple):
    index: torch.Tensor   # long [n]
    weight: torch.Tensor  # float [n], sums to 1 (empty when nothing could be drawn)


def empty_sample(device) -> Sample:
    return Sample(torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device))


class PixelSampler:
    """Base class; subclasses implement :meth:`sample`."""

    name = "base"

    def __call__(self, mask: torch.Tensor, n: int, generator: Optional[torch.Generator] = None) -> Sample:
        if mask.dtype != torch.bool:
            raise TypeError(f"{type(self).__name__}: mask must be bool, got {mask.dtype}")
        if n <= 0 or not bool(mask.any()):
            return empty_sample(mask.device)
        return self.sample(mask, int(n), generator)

    def sample(self, mask: torch.Tensor, n: int, generator: Optional[torch.Generator]) -> Sample:
        raise NotImplementedError
