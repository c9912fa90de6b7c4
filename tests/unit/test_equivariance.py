"""Equivariance consistency of MONA/ARCO (methods.md 5.3b)."""
import math

import pytest
import torch

from nnunet_semicl.augment import apply_flips, random_smooth_grid, warp, warp_valid_mask
from nnunet_semicl.losses.equivariance import confident_foreground_mask, equivariance_loss


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_confident_foreground_mask():
    p = torch.tensor([[0.8, 0.1, 0.1],    # background
                      [0.1, 0.7, 0.2],    # foreground at the threshold
                      [0.2, 0.69, 0.11],  # foreground below
                      [0.05, 0.05, 0.9]]).t().reshape(1, 3, 2, 2)
    assert confident_foreground_mask(p).view(-1).tolist() == [False, True, False, True]
    assert confident_foreground_mask(p, threshold=0.6).view(-1).tolist() == [False, True, True, True]


def _naive(logits, target, mask):
    b, k = logits.shape[:2]
    total, count = 0.0, 0
    flat_l = logits.movedim(1, -1).reshape(-1, k).tolist()
    flat_t = target.movedim(1, -1).reshape(-1, k).tolist()
    for lo, t, m in zip(flat_l, flat_t, mask.reshape(-1).tolist()):
        if not m:
            continue
        z = math.log(sum(math.exp(v) for v in lo))
        total += sum(ti * (math.log(ti) - (li - z)) for ti, li in zip(t, lo) if ti > 0)
        count += 1
    return total / count


@pytest.mark.parametrize("spatial", [(4, 5), (3, 4, 2)])
def test_known_value_and_gradcheck(spatial):
    g = gen(1)
    logits = torch.randn(2, 4, *spatial, generator=g, dtype=torch.float64)
    target = torch.softmax(torch.randn(2, 4, *spatial, generator=g, dtype=torch.float64), 1)
    target[0, :, 0] = 0
    target[0, 1, 0] = 1                                              # a one-hot target (0 log 0 = 0)
    mask = torch.rand(2, *spatial, generator=g) < 0.6
    got = equivariance_loss(logits, target, mask)
    assert float(got) == pytest.approx(_naive(logits, target, mask), rel=1e-10)
    x = logits.clone().requires_grad_(True)
    small = (slice(None), slice(None)) + tuple(slice(0, 2) for _ in spatial)   # a 2^d corner keeps gradcheck fast
    assert torch.autograd.gradcheck(lambda v: equivariance_loss(v, target[small], mask[small[:1] + small[2:]]),
                                    (logits[small].clone().requires_grad_(True),))
    # the target is a constant: no gradient reaches it
    t = target.clone().requires_grad_(True)
    equivariance_loss(x, t, mask).backward()
    assert t.grad is None or float(t.grad.abs().sum()) == 0.0


def test_empty_mask_and_low_precision():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    loss = equivariance_loss(logits, target, torch.zeros(2, 4, 4, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    half = equivariance_loss(logits.detach().half(), target.half(), torch.ones(2, 4, 4, dtype=torch.bool))
    assert half.dtype == torch.float32 and math.isfinite(float(half))
    with pytest.raises(ValueError):
        equivariance_loss(logits, target[:, :2], torch.ones(2, 4, 4, dtype=torch.bool))


def _conv(dim, k, cin=3, cout=4, seed=2, bias=False):
    conv = {2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dim](cin, cout, k, padding=k // 2, bias=bias)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen(seed)) * 2)
    return conv


def _flip_loss(model, x, flips):
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    target = apply_flips(probs, flips)
    mask = apply_flips(confident_foreground_mask(probs, 0.5), flips)
    assert int(mask.sum()) > 10
    return equivariance_loss(model(apply_flips(x, flips)), target, mask)


@pytest.mark.parametrize("dim", [2, 3])
def test_zero_for_an_equivariant_map_under_flips_positive_otherwise(dim):
    spatial = (8, 9) if dim == 2 else (5, 6, 7)
    x = torch.randn(2, 3, *spatial, generator=gen(3))
    flips = torch.ones(2, dim, dtype=torch.bool)
    flips[1, 0] = False
    eq = _flip_loss(_conv(dim, 1), x, flips)                  # bias-free 1x1 conv commutes with flips
    assert eq.item() < 1e-6
    non = _flip_loss(_conv(dim, 3), x, flips)                 # random 3x3(x3) kernel: not flip-symmetric
    assert non.item() > 1e-2
    non.backward()


@pytest.mark.parametrize("dim", [2, 3])
def test_zero_under_a_smooth_warp_for_an_equivariant_map(dim):
    """A bias-free 1x1 conv commutes with nearest-neighbour resampling at any grid (augment.warp)."""
    spatial = (12, 10) if dim == 2 else (6, 7, 8)
    x = torch.randn(2, 3, *spatial, generator=gen(4))
    grid = random_smooth_grid(2, spatial, magnitude=0.1, scale=(0.8, 1.2), p_mirror=0.5, generator=gen(5))
    valid = warp_valid_mask(grid)

    def loss_for(model):
        with torch.no_grad():
            probs = torch.softmax(model(x), 1)
        target = warp(probs, grid, mode="nearest")
        conf = warp(confident_foreground_mask(probs, 0.5)[:, None].to(torch.uint8), grid)[:, 0].bool()
        mask = conf & valid
        assert int(mask.sum()) > 10
        return equivariance_loss(model(warp(x, grid, mode="nearest")), target, mask)

    assert loss_for(_conv(dim, 1)).item() < 1e-6
    assert loss_for(_conv(dim, 3)).item() > 1e-2
    # a bias breaks the equivariance where the warp samples outside the image, but the validity
    # mask removes exactly those pixels
    assert loss_for(_conv(dim, 1, bias=True)).item() < 1e-6
