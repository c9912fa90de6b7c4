"""The closed-form strata layouts behind the fast SG / SAG samplers (sampling/stratified.py).

The statistical contract (unbiasedness, variance, allocation) is tested in test_stratified.py; here
the index arithmetic is checked against naive per-pixel definitions on uneven grids.
"""
import math

import pytest
import torch

from nnunet_semicl.sampling.stratified import StratifiedSampler, _IndexLayout, _SpatialLayout, index_strata


def naive_cell(flat, shape, grid):
    """(image, cell id, coordinates, cell bounds) of flat indices, cells ceil(j S / G) <= x < ceil((j+1) S / G)."""
    b, coords, rest = [], [], flat.clone()
    for size in reversed(shape[1:]):
        coords.append(rest % size)
        rest = rest // size
    coords = coords[::-1]
    cell = torch.zeros_like(flat)
    bounds = []
    for x, size, g in zip(coords, shape[1:], grid):
        j = x * g // size
        cell = cell * g + j
        bounds.append(((j * size + g - 1) // g, ((j + 1) * size + g - 1) // g))
    return rest, cell, coords, bounds


@pytest.mark.parametrize("shape,grid", [((2, 7, 9, 5), (2, 3, 2)), ((3, 11, 13), (4, 3)), ((1, 37), (5,)),
                                        ((2, 10, 3), (4, 1)), ((2, 3, 4), (5, 2)), ((2, 8, 12), (4, 3)),
                                        ((1, 4, 6, 8), (2, 3, 2))])
def test_spatial_layout_matches_the_cells(shape, grid):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.7
    lay = _SpatialLayout(mask, grid)
    cells = math.prod(grid)
    # sizes per (image, cell) stratum
    cand = mask.reshape(-1).nonzero(as_tuple=True)[0]
    b, cell, coords, bounds = naive_cell(cand, shape, grid)
    expect = torch.bincount(b * cells + cell, minlength=shape[0] * cells)
    assert torch.equal(torch.tensor(lay.sizes), expect)
    # every (stratum, rank) pair locates a distinct candidate of that stratum
    stratum = torch.repeat_interleave(torch.tensor(lay.sizes))
    k = torch.arange(cand.numel()) - (torch.cumsum(torch.tensor(lay.sizes), 0) - torch.tensor(lay.sizes))[stratum]
    base, partner, has = lay.pair(stratum, k)
    assert torch.equal(lay.locate(stratum, k), base)
    assert torch.equal(base.sort().values, cand)
    bb, cb, xb, _ = naive_cell(base, shape, grid)
    assert torch.equal(bb * cells + cb, stratum)
    # the partner is the point reflection through the cell centre: lo + hi - 1 - x on every axis
    bp, cp, xp, _ = naive_cell(partner, shape, grid)
    _, _, _, bnd = naive_cell(base, shape, grid)
    assert torch.equal(bp, bb) and torch.equal(cp, cb)
    for x, y, (lo, hi) in zip(xb, xp, bnd):
        assert torch.equal(y, lo + hi - 1 - x)
    assert torch.equal(has, mask.reshape(-1)[partner])
    # the unpaired candidates are exactly those whose reflection is not a candidate
    usizes = torch.tensor(lay.unpaired_sizes())
    us = torch.repeat_interleave(usizes)
    uk = torch.arange(int(usizes.sum())) - (torch.cumsum(usizes, 0) - usizes)[us]
    unpaired = lay.locate_unpaired(us, uk)
    assert torch.equal(unpaired.sort().values, base[~has].sort().values)


@pytest.mark.parametrize("num", [1, 2, 3, 15, 17, 99, 101, 1000])
@pytest.mark.parametrize("grid", [1, 3, 4])
def test_index_layout_unpaired_ranks(num, grid):
    """Unpaired candidates (reflection past the end of the list) are ranks 0..u-1 of each block."""
    lay = _IndexLayout(num, grid, "cpu", cand=torch.arange(num))
    block, partner = index_strata(num, grid)
    assert torch.equal(torch.tensor(lay.sizes), torch.bincount(block, minlength=grid * grid))
    u = torch.tensor(lay.unpaired_sizes())
    ub = torch.repeat_interleave(u)
    uk = torch.arange(int(u.sum())) - (torch.cumsum(u, 0) - u)[ub]
    got = lay.locate_unpaired(ub, uk)
    assert torch.equal(got.sort().values, (partner < 0).nonzero(as_tuple=True)[0])


@pytest.mark.parametrize("strata", ["spatial", "index"])
@pytest.mark.parametrize("antithetic", [False, True])
def test_merged_strata_draw_from_their_group(strata, antithetic):
    """Strata that outnumber the draw units (n draws under SG, n // 2 pairs under SAG) even at one cell
    per image (spatial mode coarsens the grid first) merge consecutively into ``units`` groups of about
    equal size (group = candidates before the stratum x units // N); a unit per group (under SAG the
    odd draw goes to the largest group), weight = the group's share / its number of draws."""
    shape = (8, 12, 12)
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(3)) < 0.5
    cand = mask.reshape(-1).nonzero(as_tuple=True)[0]
    N, n = cand.numel(), 5
    unit = 2 if antithetic else 1
    units = n // unit
    if strata == "spatial":
        stratum = cand // (12 * 12)             # 8 images > units: one cell per image, images merged
        sizes = torch.bincount(stratum, minlength=8)
    else:
        stratum, _ = index_strata(N, 4)
        sizes = torch.bincount(stratum, minlength=16)
    stratum_of = dict(zip(cand.tolist(), stratum.tolist()))
    group = ((torch.cumsum(sizes, 0) - sizes) * units // N).tolist()
    gsize = [int(sizes[torch.tensor(group) == g].sum()) for g in range(units)]
    draws = [unit] * units
    draws[max(range(units), key=lambda g: (gsize[g], -g))] += n - unit * units
    for seed in range(20):
        a = StratifiedSampler(antithetic=antithetic, strata=strata, shuffle=False)(mask, n, torch.Generator().manual_seed(seed))
        groups = [group[stratum_of[i]] for i in a.index.tolist()]
        assert [groups.count(g) for g in range(units)] == draws
        expect = torch.tensor([gsize[g] / N / draws[g] for g in groups], dtype=torch.float64)
        assert torch.allclose(a.weight.double(), expect)
