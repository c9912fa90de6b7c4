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

  **The grid follows the draws** (issue 27): with many images most (image, cell) strata would get a
  single draw, which SAG cannot pair. The unit of allocation is one draw under SG and one antithetic
  pair under SAG (``n // 2`` units), and the grid is coarsened, halving (rounding up) the cells of the
  axis with the most cells (ties: the last such axis; 4 x 4 -> 4 x 2 -> 2 x 2 -> 2 x 1 -> 1 x 1,
  2 x 2 x 2 -> 2 x 2 x 1 -> ...), until the non-empty strata are no more than the units. Every
  stratum then gets at least one unit: under SAG an even number of draws, all paired (an odd ``n``
  adds one unpaired draw to the largest stratum). For 256 anchors: 16 images of 32 x 32 get 4 x 2
  cells (one pair each), 112 images one cell each; a small class region keeps finer cells. Only
  when even whole images outnumber the units are consecutive images merged (below). The grid
  depends on the mask, not on the draws, so the estimator stays unbiased.
* ``'index'`` (the released code, section 6.3). The candidate list (True entries in raster order) is
  laid out row-major in an e x e square and the square is cut into G x G blocks of side ``floor(e/G)``,
  the last block row / column absorbing the remainder (G = 4). We take ``e = ceil(sqrt(N))`` so that
  every candidate lies in a block (the code's ``round`` leaves the last candidates out when e^2 < N).

Sampling (both modes): proportional allocation of the ``n`` draws (SAG: ``n // 2`` pairs) over the
strata with largest-remainder rounding, then uniform draws with replacement inside each stratum. A
draw in stratum m gets the weight ``(|P_m| / |P|) / n_m`` (stratum share over its number of draws),
which makes the weighted sum exactly the SG estimator of Theorem 3.2, unbiased. Because an unbiased
estimate needs every non-empty stratum to be drawn at least once:

* when largest-remainder rounding gives a non-empty stratum zero units (a tiny cell), each non-empty
  stratum first gets one unit and the remaining ``units - M`` are allocated proportionally;
* when the units are fewer than the number M of non-empty strata (spatial mode: at one cell per
  image; index mode: 16 blocks), consecutive strata (in stratum order: image, then cell) are merged
  into at most ``units`` groups of about equal candidate counts.

SAG (``antithetic=True``): in each stratum ``ceil(n_m / 2)`` points are drawn and each is paired with
its point reflection ``p' = 2 c - p`` through the geometric centre c of its cell (of its block in index
mode); the pairs are then truncated to ``n_m`` (only the odd draw of an odd ``n`` is cut). A cell
maps onto itself under the reflection, so p' stays in the stratum. **Replacement rule** when p' is
not a candidate (outside the class region or past the end of the candidate list): the partner is
drawn uniformly from the stratum's *unpaired* candidates (those whose own reflection is not a
candidate). This keeps every draw marginally uniform over the stratum, so the estimator stays
exactly unbiased: a paired candidate x is drawn as a partner only as the reflection of p = R(x)
(probability 1/|P_m|), an unpaired one with probability ``(|U_m|/|P_m|) (1/|U_m|) = 1/|P_m|``.
(Resampling from the whole stratum instead would over-weight the paired candidates; snapping to
the nearest candidate would over-weight the region's border.)

The output order is shuffled by default (as the released code does): losses that reshape a long
draw into ``[anchors, negatives]`` rows then get a mix of strata in every row.

Cost: O(N) for the candidate mask (one ``nonzero``, as uniform sampling needs; when the draws may
not cover the default grid's strata, one more read of the mask, a max over each cell, tells which
strata are non-empty, and the coarser grids' are ORs of these while the halved axis has an even
number of cells) plus O(n + strata) for the draws; no sort and no per-candidate stratum id.

* Index strata are read off the candidate list in closed form: inside a block the candidates are
  a prefix of its row-major ranks (the list ends in the block's last non-empty row), so a block's
  size, the position of its k-th candidate and the rank of its point reflection (``area - 1 - k``:
  the reflection reverses the row-major order of a rectangle) are integer formulas.
* Spatial strata are made contiguous by one copy of the mask in cell-major order
  (image, cell, position inside the cell; skipped when only the first axis is cut, e.g. a 1-D
  bank); its ``nonzero`` lists the candidates grouped by stratum, and the stratum sizes are binary
  searches of the stratum boundaries in that list. The reflection of a cell's k-th position in
  the cell-major layout is its ``(volume - 1 - k)``-th one (again a reversal).
* A draw is a rank among the candidates in stratum order (strata merged into groups are
  consecutive, so a group is a range of ranks), mapped to a flat index at the n drawn points only.
"""
import itertools
import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from nnunet_semicl.sampling.allocation import (covering_allocation, exclusive_cumsum, gather_at, group_sums,
                                               merge_groups, owners, rand_below, to_device)
from nnunet_semicl.sampling.base import PixelSampler, Sample

GridSpec = Union[None, int, Sequence[int], Dict[int, int]]



class _IndexLayout:
    """Index strata (section 6.3) of a candidate list of length ``num``: G x G blocks of an e x e square.

    Per block (in block-id order ``br * G + bc``): ``sizes`` candidates, which are the row-major ranks
    ``0 .. size-1`` of the block; rank k sits at list position ``(rlo + k // w) * e + clo + k % w``;
    its point reflection is rank ``area - 1 - k`` (a candidate when ``< size``); the candidates whose
    reflection is not one are ranks ``0 .. u-1`` with ``u = min(area - size, size)``.
    ``cand`` (optional): the candidates' flat indices, which the sampler's methods return.
    """

    def __init__(self, num: int, grid: int, device, cand: Optional[torch.Tensor] = None):
        e = math.isqrt(num)
        if e * e < num:
            e += 1
        side = e // grid
        lo = [j * side for j in range(grid)]
        ext = [side] * (grid - 1) + [e - lo[-1]]       # the last block row / column absorbs the rest
        last = (num - 1) // e                           # the last row of the square, with `tail` entries
        tail = num - last * e
        start, w, area, size = [], [], [], []
        for r0, h in zip(lo, ext):
            full_rows = max(0, min(r0 + h, last) - r0)
            for c0, wd in zip(lo, ext):
                start.append(r0 * e + c0)
                w.append(max(wd, 1))                    # an empty block (w = 0) is never drawn from
                area.append(h * wd)
                size.append(full_rows * wd + (min(max(tail - c0, 0), wd) if r0 <= last < r0 + h else 0))
        self.e, self.cand, self.device = e, cand, device
        self.sizes = np.array(size, dtype=np.int64)
        self._unpaired = np.minimum(np.array(area) - self.sizes, self.sizes)
        self._start, self._w, self._gap, self._last, self._size = to_device(
            np.array([start, w, [e - v for v in w], [a - 1 for a in area], size], dtype=np.int64), device)

    def position(self, block: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        """List position of the ``rank``-th entry of ``block``."""
        # (rlo + k // w) e + clo + k % w  =  start + k + (k // w)(e - w)
        return gather_at(self._start, block) + rank + torch.div(rank, gather_at(self._w, block), rounding_mode="floor") \
            * gather_at(self._gap, block)

    def reflection(self, block: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        """Rank of the point reflection of the ``rank``-th entry of ``block`` (a candidate iff < size)."""
        return gather_at(self._last, block) - rank

    # the sampler's protocol: (stratum, rank inside the stratum) -> flat index
    def locate(self, block: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return gather_at(self.cand, self.position(block, k))

    def pair(self, block: torch.Tensor, k: torch.Tensor):
        refl = self.reflection(block, k)
        has = refl < gather_at(self._size, block)
        return self.locate(block, k), self.locate(block, torch.where(has, refl, torch.zeros_like(refl))), has

    def unpaired_sizes(self) -> np.ndarray:
        return self._unpaired

    def locate_unpaired(self, block: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self.locate(block, k)                    # the unpaired candidates are ranks 0 .. u-1


def index_strata(num: int, grid: int = 4, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Index-space strata of a candidate list of length ``num`` (the released code's layout, section 6.3).

    Positions 0..num-1 are laid out row-major in an e x e square, ``e = ceil(sqrt(num))``, cut into
    ``grid`` x ``grid`` blocks of side ``floor(e / grid)``; the last block row and column absorb the
    remainder. Returns ``(block, partner)``: the block id of every position and the position of its
    point reflection through the block centre (-1 when that falls past the end of the list).
    O(num): the sampler itself only evaluates the closed forms of ``_IndexLayout`` (from which this
    is built) at the drawn ranks.
    """
    lay = _IndexLayout(num, grid, device)
    size = torch.from_numpy(lay.sizes).to(device)
    block = torch.repeat_interleave(size)
    rank = torch.arange(num, device=device) - (torch.cumsum(size, 0) - size)[block]
    refl = lay.reflection(block, rank)
    has = refl < size[block]
    pos = lay.position(block, rank)
    out_block = torch.empty(num, dtype=torch.long, device=device)
    out_partner = torch.empty(num, dtype=torch.long, device=device)
    out_block[pos] = block
    out_partner[pos] = torch.where(has, lay.position(block, torch.where(has, refl, 0 * refl)), torch.full_like(pos, -1))
    return out_block, out_partner


class _SpatialGeometry(NamedTuple):
    cells: int
    start: torch.Tensor                   # [cells] start of each cell in an image's cell-major order
    refl: torch.Tensor                    # [cells] 2 start + volume - 1
    split: Optional[Tuple[list, list]]    # cells of equal size: (view shape, permutation) to cell-major
    to_flat: Optional[torch.Tensor]       # [P] raster position of each cell-major position (None: identity)
    refl_table: Optional[torch.Tensor]    # [P] cell-major position of each one's reflection (built lazily)


class _SpatialLayout:
    """(image, cell) strata of a ``[B, *spatial]`` mask (stratum id ``b * cells + cell``, cells in raster order).

    ``grouped``: the mask as ``[B, P]`` with each image's pixels in cell-major order (by cell, then in
    raster order inside the cell): a view when only the first spatial axis is cut, else one copy (a
    permutation of axes when every axis divides evenly, else a gather through the cached ``to_flat``).
    ``q``: the grouped positions of the candidates (ascending, hence grouped by stratum). The
    reflection of grouped position r through the centre of its cell c is ``2 start[c] + vol[c] - 1 - r``
    (the point reflection reverses the cell's raster order).
    """

    _cache: Dict[tuple, _SpatialGeometry] = {}

    def __init__(self, mask: torch.Tensor, grid: Tuple[int, ...]):
        B, spatial = mask.shape[0], tuple(mask.shape[1:])
        self.B, self.P, self.device, self.grid = B, math.prod(spatial), mask.device, grid
        key = (spatial, grid, str(mask.device))
        if key not in self._cache:
            if len(self._cache) >= 32:
                self._cache.clear()
            self._cache[key] = self._geometry(spatial, grid, mask.device)
        self.geo = geo = self._cache[key]
        self.key = key
        if geo.to_flat is None:
            self.grouped = mask.reshape(B, self.P)
        elif geo.split is not None:
            view, perm = geo.split
            self.grouped = mask.reshape(B, *view).permute(0, *perm).reshape(B, self.P)
        else:
            self.grouped = mask.reshape(B, self.P).gather(1, geo.to_flat.expand(B, -1))   # (index_select: slower)
        self.q = self.grouped.reshape(-1).nonzero(as_tuple=True)[0]
        self.sizes, self.qstart = self._stratum_sizes(self.q)

    @staticmethod
    def _geometry(spatial, grid, device) -> _SpatialGeometry:
        cells = _cells(spatial, grid)
        vol = torch.tensor([math.prod(b - a for a, b in c) for c in cells])
        start = torch.cumsum(vol, 0) - vol
        split = to_flat = None
        if any(g > 1 for g in grid[1:]):   # else the raster order already is the cell-major order
            raster = torch.arange(math.prod(spatial)).reshape(spatial)
            to_flat = torch.cat([raster[tuple(slice(a, b) for a, b in c)].reshape(-1) for c in cells]).to(device)
            if all(s % g == 0 for s, g in zip(spatial, grid)):
                nd = len(spatial)
                view = [v for s, g in zip(spatial, grid) for v in (g, s // g)]
                split = (view, [1 + 2 * a for a in range(nd)] + [2 + 2 * a for a in range(nd)])
        return _SpatialGeometry(len(cells), start.to(device), (2 * start + vol - 1).to(device), split, to_flat, None)

    def _stratum_sizes(self, positions: torch.Tensor):
        """Candidates per stratum (a list) and where each stratum starts in ``positions`` (device)."""
        bounds = (torch.arange(self.B, device=self.device)[:, None] * self.P + self.geo.start).reshape(-1)
        first = torch.searchsorted(positions, bounds)
        return torch.diff(first, append=first.new_full((1,), positions.numel())).cpu().numpy(), first

    def _flat(self, q: torch.Tensor, stratum: torch.Tensor) -> torch.Tensor:
        if self.geo.to_flat is None:
            return q
        bp = torch.div(stratum, self.geo.cells, rounding_mode="floor") * self.P
        return bp + gather_at(self.geo.to_flat, q - bp)

    # the sampler's protocol: (stratum, rank inside the stratum) -> flat index
    def locate(self, stratum: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self._flat(gather_at(self.q, gather_at(self.qstart, stratum) + k), stratum)

    def pair(self, stratum: torch.Tensor, k: torch.Tensor):
        q = gather_at(self.q, gather_at(self.qstart, stratum) + k)
        b = torch.div(stratum, self.geo.cells, rounding_mode="floor")
        q2 = 2 * b * self.P + gather_at(self.geo.refl, stratum - b * self.geo.cells) - q    # b P + refl[c] - (q - b P)
        return self._flat(q, stratum), self._flat(q2, stratum), gather_at(self.grouped.reshape(-1), q2)

    def unpaired_sizes(self) -> np.ndarray:
        geo = self.geo
        if geo.refl_table is None:
            cell = torch.repeat_interleave(torch.diff(geo.start, append=geo.start.new_full((1,), self.P)))
            geo = geo._replace(refl_table=gather_at(geo.refl, cell) - torch.arange(self.P, device=self.device))
            self._cache[self.key] = self.geo = geo
        flipped = self.grouped.gather(1, geo.refl_table.expand(self.B, -1))
        self.u = (self.grouped & ~flipped).reshape(-1).nonzero(as_tuple=True)[0]
        sizes, self.ustart = self._stratum_sizes(self.u)
        return sizes

    def locate_unpaired(self, stratum: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self._flat(gather_at(self.u, gather_at(self.ustart, stratum) + k), stratum)


def _draws_per_unit(n: int, antithetic: bool) -> int:
    """The unit of allocation: SAG allocates antithetic pairs (so every draw has its partner), SG draws."""
    return 2 if antithetic and n >= 2 else 1


def _cell_bounds(size: int, g: int) -> list:
    """``(lo, hi)`` of the g cells of an axis of the given size: ceil(j S / G) <= x < ceil((j+1) S / G)."""
    lo = [(j * size + g - 1) // g for j in range(g)]
    return list(zip(lo, lo[1:] + [size]))


def _cells(spatial: Sequence[int], grid: Sequence[int]) -> list:
    """Every cell as one ``(lo, hi)`` per axis, in raster order."""
    return list(itertools.product(*[_cell_bounds(size, g) for size, g in zip(spatial, grid)]))


def _occupied_cells(mask: torch.Tensor, grid: Tuple[int, ...]) -> np.ndarray:
    """``[B, *grid]``: whether each (image, cell) holds a candidate.

    One max over the cells of the last axis reads the mask once (uint8: faster than ``any``); the
    other axes then reduce small tensors.
    """
    x = mask.view(torch.uint8)
    for axis in range(mask.ndim - 1, 0, -1):
        none = torch.zeros_like(x.select(axis, 0))    # a cell of width 0 (more cells than pixels)
        x = torch.stack([x.narrow(axis, lo, hi - lo).amax(dim=axis) if hi > lo else none
                         for lo, hi in _cell_bounds(mask.shape[axis], grid[axis - 1])], axis)
    return x.bool().cpu().numpy()


def _coarser(grid: Tuple[int, ...]) -> Tuple[int, ...]:
    """Halve (rounding up) the cells of the axis with the most cells (ties: the last such axis)."""
    axis = max(range(len(grid)), key=lambda a: (grid[a], a))
    return grid[:axis] + ((grid[axis] + 1) // 2,) + grid[axis + 1:]


def _draw(layout, n: int, generator: Optional[torch.Generator], antithetic: bool, shuffle: bool) -> Sample:
    """Stratified (antithetic) draw of ``n`` candidates of a layout (see the module doc)."""
    device = layout.device
    sizes = layout.sizes
    N = int(sizes.sum())
    unit = _draws_per_unit(n, antithetic)
    units = n // unit
    group = merge_groups(sizes, units)
    gsize = group_sums(sizes, group)
    alloc = unit * covering_allocation(gsize, units)
    alloc[int(np.argmax(gsize))] += n - unit * units   # odd n under SAG: one unpaired draw, in the largest group
    half = (alloc + 1) // 2
    gstart_d, gsize_d, alloc_d, half_d = to_device(np.stack([exclusive_cumsum(gsize), gsize, alloc, half]), device)
    wg = to_device((gsize / N / np.maximum(alloc, 1)).astype(np.float32), device)   # weight of a group's draw

    def stratum_and_rank(owner, stratum_sizes, gstart, gsize):
        """A uniform draw in each owner's group: (its stratum, its rank inside the stratum)."""
        k = rand_below(gather_at(gsize, owner), generator)
        if group is None:
            return owner, k
        rank = gather_at(gstart, owner) + k                  # among the candidates in stratum order
        ends, starts = to_device(np.stack([np.cumsum(stratum_sizes), exclusive_cumsum(stratum_sizes)]), device)
        stratum = torch.searchsorted(ends, rank, right=True)
        return stratum, rank - gather_at(starts, stratum)

    if not antithetic:
        owner = owners(alloc_d)
        if shuffle:   # draws are i.i.d. inside a group: shuffling the owners shuffles the sample
            owner = gather_at(owner, torch.randperm(owner.numel(), generator=generator, device=device))
        index = layout.locate(*stratum_and_rank(owner, sizes, gstart_d, gsize_d))
        return Sample(index, gather_at(wg, owner))

    owner = owners(half_d)
    stratum, k = stratum_and_rank(owner, sizes, gstart_d, gsize_d)
    base, second, has = layout.pair(stratum, k)
    if not bool(has.all()):
        # replacement rule: a uniform draw among the group's unpaired candidates (see module doc),
        # only for the bases without partner (each is itself unpaired, so its group has some)
        usizes = layout.unpaired_sizes()
        usize = group_sums(usizes, group)
        ustart_d, usize_d = to_device(np.stack([exclusive_cumsum(usize), usize]), device)
        lone = (~has).nonzero(as_tuple=True)[0]
        second = second.clone()
        second[lone] = layout.locate_unpaired(*stratum_and_rank(gather_at(owner, lone), usizes, ustart_d, usize_d))
    # truncate each group's pairs to n_m: keep the first floor(n_m/2) partners (of the base draws
    # half_start[g] .. half_start[g] + n_keep[g] - 1)
    n_keep = alloc - half
    n_keep_d, shift = to_device(np.stack([n_keep, exclusive_cumsum(half) - exclusive_cumsum(n_keep)]), device)
    keep_owner = owners(n_keep_d)
    keep = torch.arange(keep_owner.numel(), device=device) + gather_at(shift, keep_owner)
    index = torch.cat([base, gather_at(second, keep)])
    weight = gather_at(wg, torch.cat([owner, keep_owner]))
    if shuffle:
        perm = torch.randperm(index.numel(), generator=generator, device=device)
        index, weight = gather_at(index, perm), gather_at(weight, perm)
    return Sample(index, weight)


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
        if self.strata == "index":
            g = self.index_grid if self.grid is None else self.grid
            if not isinstance(g, int) or g < 1:
                raise ValueError(f"index strata need an int grid >= 1, got {self.grid!r}")
            cand = mask.reshape(-1).nonzero(as_tuple=True)[0]
            layout = _IndexLayout(cand.numel(), g, cand.device, cand)
        else:
            if mask.ndim == 1:
                mask = mask[None]               # [N] -> one image with a 1-D extent
            layout = self.spatial_layout(mask, n)
        return _draw(layout, n, generator, self.antithetic, self.shuffle)

    def spatial_layout(self, mask: torch.Tensor, n: int) -> "_SpatialLayout":
        """The (image, cell) strata for ``n`` draws from ``mask`` (``[B, *spatial]``); ``.grid``: cells per axis.

        Starting from :meth:`grid_for`, the grid is coarsened (:func:`_coarser`) while the non-empty
        strata outnumber the draw units (pairs under SAG), so that every stratum gets a unit.
        """
        grid = self.grid_for(mask.ndim - 1)
        units = n // _draws_per_unit(n, self.antithetic)
        if mask.shape[0] * math.prod(grid) > units:     # else every stratum gets a unit at this grid
            occupied = _occupied_cells(mask, grid)
            while max(grid) > 1 and np.count_nonzero(occupied) > units:
                coarse = _coarser(grid)
                axis = next(a for a in range(len(grid)) if coarse[a] != grid[a])
                if grid[axis] % 2 == 0:   # cells 2j and 2j+1 make the coarse cell j
                    occupied = occupied.reshape(*occupied.shape[:axis + 1], coarse[axis], 2,
                                                *occupied.shape[axis + 2:]).any(axis + 2)
                else:                     # an odd count does not nest: look at the coarse cells anew
                    occupied = _occupied_cells(mask, coarse)
                grid = coarse
        return _SpatialLayout(mask, grid)
