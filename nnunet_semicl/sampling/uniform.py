"""Uniform (naive) sampling with replacement: MONA's sampler and ReCo's query sampler."""
from typing import Optional

import torch

from nnunet_semicl.sampling.base import PixelSampler, Sample


class UniformSampler(PixelSampler):
    name = "uniform"

    def sample(self, mask: torch.Tensor, n: int, generator: Optional[torch.Generator]) -> Sample:
        candidates = mask.reshape(-1).nonzero(as_tuple=True)[0]
        pick = torch.randint(len(candidates), (n,), device=mask.device, generator=generator)
        return Sample(candidates.index_select(0, pick), torch.full((n,), 1.0 / n, device=mask.device))
