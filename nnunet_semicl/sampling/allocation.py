"""Allocation arithmetic of the stratified samplers (``sampling/stratified.py``): proportional allocation with
largest-remainder rounding, merging strata into groups that get a draw, and the integer helpers that draw ranks
inside groups without sorting. Pure torch / numpy, no nnU-Net."""
from typing import Optional

import numpy as np
import torch

RAND_HIGH = 2 ** 62  # random integers reduced modulo a stratum size: bias below size / 2^62


def largest_remainder(sizes: np.ndarray, n: int) -> np.ndarray:
    """Proportional allocation on a small int64 array (see :func:`proportional_allocation`)."""
    total = int(sizes.sum())
    if total == 0 or n == 0:
        return np.zeros_like(sizes)
    num = sizes * n
    base = num // total
    r = n - int(base.sum())                # < number of strata with a positive remainder
    if r > 0:
        rem = np.where(sizes > 0, num - base * total, -1)                    # exact remainders, in [0, total)
        base[np.argsort(-rem, kind="stable")[:r]] += 1                       # ties: lower index first
    return base


def proportional_allocation(sizes, n: int) -> torch.Tensor:
    """Split ``n`` draws over strata of the given ``sizes`` proportionally (largest-remainder rounding).

    ``n_m = floor(n |P_m| / |P|)`` plus one for the ``n - sum floor`` strata with the largest
    remainders (ties: lower stratum index first). Integer arithmetic only, so the result sums exactly
    to ``n`` (when any stratum is non-empty) and empty strata always get 0.
    """
    sizes = torch.as_tensor(sizes, dtype=torch.long)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if bool((sizes < 0).any()):
        raise ValueError("stratum sizes must be non-negative")
    return torch.from_numpy(largest_remainder(sizes.numpy().astype(np.int64), n))


def covering_allocation(sizes: np.ndarray, n: int) -> np.ndarray:
    """Proportional allocation that gives every non-empty stratum at least one draw (needs n >= M)."""
    alloc = largest_remainder(sizes, n)
    nonempty = sizes > 0
    if bool((alloc[nonempty] > 0).all()):
        return alloc
    return nonempty + largest_remainder(sizes, n - int(nonempty.sum()))


def merge_groups(sizes: np.ndarray, n: int) -> Optional[np.ndarray]:
    """The group of every stratum when the ``M`` non-empty strata outnumber the ``n`` draws, else None.

    Consecutive strata are merged into at most ``n`` groups of about equal candidate counts
    (group = candidates before the stratum x n // N, numbered consecutively).
    """
    if int((sizes > 0).sum()) <= n:
        return None
    key = (np.cumsum(sizes) - sizes) * n // int(sizes.sum())
    return np.concatenate([[0], np.cumsum(key[1:] != key[:-1])])


def group_sums(values: np.ndarray, group: Optional[np.ndarray]) -> np.ndarray:
    if group is None:
        return values
    out = np.zeros(int(group[-1]) + 1, dtype=np.int64)
    np.add.at(out, group, values)
    return out


def exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    return np.cumsum(x) - x


def rand_below(high: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Uniform integers in [0, high) for a LongTensor of (positive) bounds."""
    r = torch.randint(0, RAND_HIGH, high.shape, generator=generator, device=high.device)
    return torch.fmod(r, high)   # = r % high for non-negative values, and faster


def gather_at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` for 1-D tensors (index_select: several times faster than ``[]`` on CPU)."""
    return values.index_select(0, index)


def to_device(a: np.ndarray, device) -> torch.Tensor:
    """A small numpy array as a tensor on ``device`` (one copy; torch.tensor of lists is slower)."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def owners(counts: torch.Tensor) -> torch.Tensor:
    """``repeat_interleave(arange(M), counts)``: the stratum of every draw, grouped."""
    return torch.repeat_interleave(counts)


def stable_group_order(key: torch.Tensor) -> torch.Tensor:
    """``torch.argsort(key, stable=True)`` computed from the runs of equal consecutive values.

    Data in raster order often come in long runs of equal keys (a class region's pixels on one row):
    sorting the R run values instead of the N entries costs O(N + R log R) instead of O(N log N).
    """
    n = key.numel()
    run_value, run_of, run_len = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
    run_order = torch.argsort(run_value, stable=True)
    sorted_len = run_len[run_order]
    dest_start = torch.empty_like(run_len)
    dest_start[run_order] = torch.cumsum(sorted_len, 0) - sorted_len   # where each run goes, grouped by key
    run_start = torch.cumsum(run_len, 0) - run_len
    i = torch.arange(n, device=key.device)
    order = torch.empty(n, dtype=torch.long, device=key.device)
    order[dest_start[run_of] + (i - run_start[run_of])] = i
    return order
