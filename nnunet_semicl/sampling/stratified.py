"""ARCO's stratified (SG) and stratified-antithetic (SAG) samplers (methods.md sections 6.2-6.4).

Both follow the common interface of :mod:`nnunet_semicl.sampling.base`: ``sampler(mask, n, generator)``
returns ``Sample(index, weight)`` with flat indices of True entries of ``mask`` and weights summing to
1 such that ``sum(weight * h[index])`` is an unbiased estimate of the mean of ``h`` over the True
entries.

Strata (``strata=``):

* ``'spatial'`` (default; the paper's semantics, section 6.4). For a ``[B, *spatial]`` mask a stratum is
  (image b, grid cell): every spatial axis of size S is cut into G cells, cell j covering the
  coordinates ``ceil(j S / G) <= x < ceil((j + 1) S / G)``. The paper uses G x G = 16 cells in 2D; we
  use G = 2 (8 cells) in 3D, see :attr:`StratifiedSampler.default_grid`. A 1-D mask (a memory bank,
  in insertion order) is one "image" whose index range is cut into 16 equal contiguous blocks.
* ``'index'`` (the released code, section 6.3). The candidate list (True entries in raster order) is
  laid out row-major in an e x e square and the square is cut into G x G blocks of side ``floor(e/G)``,
  the last block row / column absorbing the remainder (G = 4). We take ``e = ceil(sqrt(N))`` so that
  every candidate lies in a block (the code's ``round`` leaves the last candidates out when e^2 < N).

Sampling (both modes): proportional allocation of the ``n`` draws over the strata with
largest-remainder rounding, then uniform draws with replacement inside each stratum. A draw in
stratum m gets the weight ``(|P_m| / |P|) / n_m`` (stratum share over its number of draws), which
makes the weighted sum exactly the SG estimator of Theorem 3.2, unbiased. Because an unbiased
estimate needs every non-empty stratum to be drawn at least once:

* when largest-remainder rounding gives a non-empty stratum zero draws (a tiny cell), each non-empty
  stratum first gets one draw and the remaining ``n - M`` are allocated proportionally;
* when ``n`` is smaller than the number M of non-empty strata, consecutive strata (in stratum order:
  image, then cell) are merged into at most ``n`` groups of about equal candidate counts.

SAG (``antithetic=True``): in each stratum ``ceil(n_m / 2)`` points are drawn and each is paired with
its point reflection ``p' = 2 c - p`` through the geometric centre c of its cell (of its block in index
mode); the pairs are then truncated to ``n_m``. A cell maps onto itself under the reflection, so p'
stays in the stratum. **Replacement rule** when p' is not a candidate (outside the class region or past
the end of the candidate list): the partner is drawn uniformly from the stratum's *unpaired*
candidates (those whose own reflection is not a candidate). This keeps every draw marginally uniform
over the stratum, so the estimator stays exactly unbiased: a paired candidate x is drawn as a partner
only as the reflection of p = R(x) (probability 1/|P_m|), an unpaired one with probability
``(|U_m|/|P_m|) (1/|U_m|) = 1/|P_m|``. (Resampling from the whole stratum instead would over-weight
the paired candidates; snapping to the nearest candidate would over-weight the region's border.)

The output order is shuffled by default (as the released code does): losses that reshape a long
draw into ``[anchors, negatives]`` rows then get a mix of strata in every row.

Everything is vectorised: strata are built from the flat indices with integer arithmetic, run-length
grouping, bincount and cumsum (no sort over all candidates); the only Python loop is over the (at
most 3) spatial axes.
"""
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from nnunet_semicl.sampling.base import PixelSampler, Sample

GridSpec = Union[None, int, Sequence[int], Dict[int, int]]

_RAND_HIGH = 2 ** 62  # random integers reduced modulo a stratum size: bias below size / 2^62


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
    total = int(sizes.sum())
    out = torch.zeros_like(sizes)
    if total == 0 or n == 0:
        return out
    num = sizes * n
    base = num // total
    rem = num - base * total               # exact remainders, in [0, total)
    rem = torch.where(sizes > 0, rem, torch.full_like(rem, -1))
    r = n - int(base.sum())                # < number of strata with a positive remainder
    if r > 0:
        order = torch.sort(rem, descending=True, stable=True).indices
        out[order[:r]] = 1
    return base + out


def _covering_allocation(sizes: torch.Tensor, n: int) -> torch.Tensor:
    """Proportional allocation that gives every non-empty stratum at least one draw (needs n >= M)."""
    alloc = proportional_allocation(sizes, n)
    nonempty = sizes > 0
    if bool((alloc[nonempty] > 0).all()):
        return alloc
    k = int(nonempty.sum())
    return nonempty.long() + proportional_allocation(sizes, n - k)


def _randbelow(high: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Uniform integers in [0, high) for a LongTensor of (positive) bounds."""
    r = torch.randint(0, _RAND_HIGH, high.shape, generator=generator, device=high.device)
    return r % high


def _owners(counts: torch.Tensor) -> torch.Tensor:
    """``repeat_interleave(arange(M), counts)`` via searchsorted (much faster on CPU)."""
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1]) if ends.numel() else 0
    return torch.searchsorted(ends, torch.arange(total, device=counts.device), right=True)


def stable_group_order(key: torch.Tensor) -> torch.Tensor:
    """``torch.argsort(key, stable=True)`` computed from the runs of equal consecutive values.

    Candidates come in raster order, so their stratum ids form long runs (a cell's pixels on one row
    are consecutive): sorting the R run values instead of the N candidates costs O(N + R log R)
    instead of O(N log N) (measured on 2 CPU cores for 1e7 candidates: SG took 2.7 s with full sorts).
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


def _dense_ids(key: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(key, return_inverse=True)`` ids and the group sizes, via the runs of ``key``."""
    run_value, run_of, run_len = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
    uniq, run_id = torch.unique(run_value, return_inverse=True)
    sizes = torch.zeros(uniq.numel(), dtype=torch.long, device=key.device).scatter_add_(0, run_id, run_len)
    return run_id[run_of], sizes


def _draw(cand: torch.Tensor, stratum: torch.Tensor, n: int, generator: Optional[torch.Generator],
          antithetic: bool = False, partner: Optional[torch.Tensor] = None, shuffle: bool = True) -> Sample:
    """Stratified (antithetic) draw of ``n`` candidates.

    ``cand`` [N]: flat indices of the candidates; ``stratum`` [N]: their stratum ids (any integers);
    ``partner`` [N]: for SAG, the candidate position of each candidate's reflection, -1 if none.
    Returns flat indices (values of ``cand``) and their weights.
    """
    device = cand.device
    N = cand.numel()
    sid, sizes = _dense_ids(stratum)
    if sizes.numel() > n:
        # fewer draws than strata: merge consecutive strata into <= n groups of about equal size
        before = torch.cumsum(sizes, 0) - sizes
        group = before * n // N
        _, group = torch.unique(group, return_inverse=True)
        sid = group[sid]
        sizes = torch.bincount(sid)
    M = sizes.numel()
    alloc = _covering_allocation(sizes.cpu(), n).to(device)
    share = sizes.double() / N
    start = torch.cumsum(sizes, 0) - sizes

    if not antithetic:
        owner = _owners(alloc)                      # [n]
        order = stable_group_order(sid)                                           # candidates grouped by stratum
        pos = order[start[owner] + _randbelow(sizes[owner], generator)]
        index = cand[pos]
        weight = share[owner] / alloc[owner]
    else:
        paired = partner >= 0
        # group by stratum, paired candidates first, unpaired ones at the end of each stratum block
        order = stable_group_order(sid * 2 + (~paired).long())
        unpaired_sizes = torch.bincount(sid[~paired], minlength=M)
        unpaired_start = start + sizes - unpaired_sizes
        half = (alloc + 1) // 2
        owner = _owners(half)                       # [sum half]
        base = order[start[owner] + _randbelow(sizes[owner], generator)]          # candidate positions
        has_partner = partner[base] >= 0
        # replacement rule: a uniform draw among the stratum's unpaired candidates (see module doc)
        n_unp = unpaired_sizes[owner].clamp_min(1)  # > 0 whenever some base point lacks a partner
        fallback = order[(unpaired_start[owner] + _randbelow(n_unp, generator)).clamp_max(N - 1)]
        second = torch.where(has_partner, partner[base], fallback)
        # truncate each stratum's pairs to n_m: keep the first floor(n_m/2) partners
        rank = torch.arange(owner.numel(), device=device) - (torch.cumsum(half, 0) - half)[owner]
        keep = rank < (alloc - half)[owner]
        pos = torch.cat([base, second[keep]])
        owner = torch.cat([owner, owner[keep]])
        index = cand[pos]
        weight = share[owner] / alloc[owner]

    weight = weight.to(torch.float32)
    if shuffle:
        perm = torch.randperm(index.numel(), generator=generator, device=device)
        index, weight = index[perm], weight[perm]
    return Sample(index, weight)


def _cell_bounds(x: torch.Tensor, size: int, g: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell id and [lo, hi) bounds of coordinates ``x`` on an axis of ``size`` cut into ``g`` cells."""
    cell = x * g // size
    lo = (cell * size + g - 1) // g
    hi = ((cell + 1) * size + g - 1) // g
    return cell, lo, hi


def index_strata(num: int, grid: int = 4, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Index-space strata of a candidate list of length ``num`` (the released code's layout, section 6.3).

    Positions 0..num-1 are laid out row-major in an e x e square, ``e = ceil(sqrt(num))``, cut into
    ``grid`` x ``grid`` blocks of side ``floor(e / grid)``; the last block row and column absorb the
    remainder. Returns ``(block, partner)``: the block id of every position and the position of its
    point reflection through the block centre (-1 when that falls past the end of the list).
    """
    e = math.isqrt(num)
    if e * e < num:
        e += 1
    i = torch.arange(num, device=device)
    r, c = i // e, i % e
    side = e // grid

    def block(v):
        if side == 0:
            j = torch.full_like(v, grid - 1)
        else:
            j = torch.clamp(v // side, max=grid - 1)
        lo = j * side
        hi = torch.where(j == grid - 1, torch.full_like(v, e), lo + side)
        return j, lo, hi

    br, rlo, rhi = block(r)
    bc, clo, chi = block(c)
    r2, c2 = rlo + rhi - 1 - r, clo + chi - 1 - c
    p2 = r2 * e + c2
    partner = torch.where(p2 < num, p2, torch.full_like(p2, -1))
    return br * grid + bc, partner


class StratifiedSampler(PixelSampler):
    """Stratified sampling (SG) or, with ``antithetic=True``, stratified antithetic sampling (SAG).

    Args:
        grid: cells per spatial axis in ``'spatial'`` mode: an int (every axis), a sequence (one per
            axis), a dict ``{number of spatial axes: cells per axis}``, or None for
            :attr:`default_grid`. In ``'index'`` mode an int G (default 4: 4 x 4 = 16 blocks, the
            released ``cut_count``).
        antithetic: SAG instead of SG.
        strata: ``'spatial'`` (paper semantics, default) or ``'index'`` (released code).
        shuffle: return the draws in random order (default True).
    """

    #: cells per axis by number of spatial axes: 16 cells in 2D (paper, ARCO Table 7), 8 in 3D
    #: (section 6.4 suggests 8-27; 8 keeps a few draws per cell for 256 anchors over a batch of 2-4
    #: volumes), 16 blocks for a 1-D memory bank (the released cut_count 4 x 4)
    default_grid = {1: 16, 2: 4, 3: 2}
    index_grid = 4

    def __init__(self, grid: GridSpec = None, antithetic: bool = False, strata: str = "spatial",
                 shuffle: bool = True):
        if strata not in ("spatial", "index"):
            raise ValueError(f"strata must be 'spatial' or 'index', got {strata!r}")
        self.grid = grid
        self.antithetic = bool(antithetic)
        self.strata = strata
        self.shuffle = shuffle
        self.name = ("sag" if antithetic else "sg") + ("" if strata == "spatial" else "_index")

    def grid_for(self, nd: int) -> Tuple[int, ...]:
        """Cells per axis for a mask with ``nd`` spatial axes (``'spatial'`` mode)."""
        g = self.grid
        if g is None:
            g = self.default_grid.get(nd, 2)
        elif isinstance(g, dict):
            g = g.get(nd, self.default_grid.get(nd, 2))
        if isinstance(g, int):
            g = (g,) * nd
        g = tuple(int(v) for v in g)
        if len(g) != nd or any(v < 1 for v in g):
            raise ValueError(f"grid {self.grid!r} does not fit a mask with {nd} spatial axes")
        return g

    def sample(self, mask: torch.Tensor, n: int, generator: Optional[torch.Generator]) -> Sample:
        flat_mask = mask.reshape(-1)
        cand = flat_mask.nonzero(as_tuple=True)[0]
        if self.strata == "index":
            g = self.index_grid if self.grid is None else self.grid
            if not isinstance(g, int) or g < 1:
                raise ValueError(f"index strata need an int grid >= 1, got {self.grid!r}")
            stratum, partner = index_strata(cand.numel(), g, device=cand.device)
            return _draw(cand, stratum, n, generator, self.antithetic, partner, self.shuffle)

        shape = tuple(mask.shape) if mask.ndim > 1 else (1, mask.shape[0])  # [N] -> one image
        spatial = shape[1:]
        grid = self.grid_for(len(spatial))
        # stratum id = image * cells + raveled cell id; offset = flat shift to the point reflection.
        # Both are built on the grid by broadcasting per-axis vectors (O(size) work per axis) and then
        # read at the candidates: a few passes over N instead of a dozen integer ops per axis.
        nd = len(spatial)
        stratum_map = torch.arange(shape[0], device=cand.device).view(-1, *([1] * nd))
        offset_map = torch.zeros((1,) * (nd + 1), dtype=torch.long, device=cand.device)
        stride = math.prod(spatial)
        for axis, (size, g) in enumerate(zip(spatial, grid)):
            stride //= size
            x = torch.arange(size, device=cand.device)
            cell, lo, hi = _cell_bounds(x, size, g)
            view = [1] * (nd + 1)
            view[axis + 1] = size
            stratum_map = stratum_map * g + cell.view(view)
            if self.antithetic:
                offset_map = offset_map + ((lo + hi - 1 - 2 * x) * stride).view(view)
        stratum = stratum_map.expand(shape).reshape(-1)[cand]
        partner = None
        if self.antithetic:
            refl = cand + offset_map.expand(shape).reshape(-1)[cand]   # stays inside the same image and cell
            # candidate position of the reflection, -1 when it is not a candidate (a lookup table over
            # the grid: O(N), where a binary search in the sorted candidates costs O(N log N))
            position = torch.full((flat_mask.numel(),), -1, dtype=torch.long, device=cand.device)
            position[cand] = torch.arange(cand.numel(), device=cand.device)
            partner = position[refl]
        return _draw(cand, stratum, n, generator, self.antithetic, partner, self.shuffle)

