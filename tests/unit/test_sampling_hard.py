"""Hard-query / hard-negative-class samplers of ReCo-style anatomical contrast (sampling/hard.py)."""
import math

import pytest
import torch
from scipy import stats

from nnunet_semicl.sampling.hard import (class_pixel_table, hard_query_mask, sample_negative_classes,
                                         sample_pixels_of_classes)


def test_hard_query_mask_matches_loop():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 5, 4), generator=g)
    valid = torch.rand(2, 5, 4, generator=g) > 0.3
    prob = torch.softmax(3 * torch.randn(2, 3, 5, 4, generator=g), dim=1)
    for cls in range(3):
        for thr in (0.5, 0.97):
            got = hard_query_mask(labels, valid, prob, cls, thr)
            assert got.dtype == torch.bool and got.shape == labels.shape
            for b in range(2):
                for i in range(5):
                    for j in range(4):
                        want = bool(valid[b, i, j]) and int(labels[b, i, j]) == cls and float(prob[b, cls, i, j]) < thr
                        assert bool(got[b, i, j]) == want


def test_hard_query_mask_3d_and_shape_check():
    labels = torch.zeros(1, 2, 3, 4, dtype=torch.long)
    valid = torch.ones_like(labels, dtype=torch.bool)
    prob = torch.full((1, 2, 2, 3, 4), 0.5)
    prob[0, 0, 1] = 0.99
    m = hard_query_mask(labels, valid, prob, 0, 0.97)
    assert int(m.sum()) == 12 and not bool(m[0, 1].any())
    with pytest.raises(ValueError):
        hard_query_mask(labels, valid, prob[:, :, :1], 0, 0.97)


def test_negative_classes_follow_softmax_of_similarity():
    # prototype cosines / tau as in ReCo's relation graph; class 0 is the query class (masked out)
    tau = 0.5
    cos = torch.tensor([1.0, 0.9, 0.2, -0.5, 0.6])
    logits = (cos / tau).clone()
    logits[0] = float("-inf")
    expected = torch.softmax(logits, 0)
    g = torch.Generator().manual_seed(1)
    draws = sample_negative_classes(logits, 200, 500, g)           # 100k draws
    assert draws.shape == (200, 500) and draws.dtype == torch.long
    assert not bool((draws == 0).any())                             # -inf never drawn
    freq = torch.bincount(draws.reshape(-1), minlength=5).double() / draws.numel()
    # standard error <= sqrt(0.25 / 1e5) = 0.0016; 0.008 is five standard errors
    assert torch.allclose(freq, expected.double(), atol=0.008), (freq, expected)
    # every query row is drawn from the same distribution (rows are not e.g. constant)
    assert int(draws[:, 0].unique().numel()) == 4


def test_negative_classes_per_query_logits():
    g = torch.Generator().manual_seed(2)
    logits = torch.tensor([[0.0, 0.0, float("-inf")], [2.0, float("-inf"), 0.0]])
    draws = sample_negative_classes(logits, 2, 20000, g)
    f0 = torch.bincount(draws[0], minlength=3).double() / 20000
    f1 = torch.bincount(draws[1], minlength=3).double() / 20000
    assert torch.allclose(f0, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64), atol=0.015)
    p = math.exp(2) / (math.exp(2) + 1)
    assert torch.allclose(f1, torch.tensor([p, 0.0, 1 - p], dtype=torch.float64), atol=0.015)


def test_negative_classes_reproducible_and_edge_sizes():
    logits = torch.randn(4)
    a = sample_negative_classes(logits, 8, 16, torch.Generator().manual_seed(3))
    b = sample_negative_classes(logits, 8, 16, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert sample_negative_classes(logits, 0, 16).shape == (0, 16)
    with pytest.raises(ValueError):
        sample_negative_classes(torch.zeros(0), 2, 3)
    # low-precision logits are handled in fp32
    assert sample_negative_classes(logits.half(), 3, 5).shape == (3, 5)


def test_class_pixel_table_groups_pixels():
    pc = torch.tensor([2, -1, 0, 2, 2, 0, -1, 3])
    idx, off, cnt = class_pixel_table(pc, 5)
    assert cnt.tolist() == [2, 0, 3, 1, 0]
    for c in range(5):
        got = sorted(idx[off[c]:off[c] + cnt[c]].tolist())
        assert got == [i for i, v in enumerate(pc.tolist()) if v == c]


def test_pixels_of_classes_valid_and_uniform():
    g = torch.Generator().manual_seed(4)
    # a [2, 6, 7] grid with classes of very different sizes and invalid (-1) pixels
    pc = torch.randint(0, 3, (2, 6, 7), generator=g)
    pc[0, :2] = -1
    pc[1, 0, :3] = 3                                                # a 3-pixel class
    flat = pc.reshape(-1)
    request = torch.tensor([0, 1, 2, 3]).repeat_interleave(30000).view(4, 100, 300)
    out = sample_pixels_of_classes(flat, request, g)
    assert out.shape == request.shape and out.dtype == torch.long
    assert torch.equal(flat[out], request)                          # right class, never an invalid pixel
    for c in range(4):
        members = (flat == c).nonzero(as_tuple=True)[0]
        hits = torch.bincount(out[c].reshape(-1), minlength=flat.numel())[members].double()
        assert int(hits.sum()) == 30000
        # uniform over the class's pixels: chi-square goodness of fit
        expected = 30000 / len(members)
        chi2 = float(((hits - expected) ** 2 / expected).sum())
        p_value = stats.chi2.sf(chi2, df=len(members) - 1)
        assert p_value > 1e-4, (c, p_value)
        assert float(hits.min()) > 0.8 * expected and float(hits.max()) < 1.2 * expected


def test_pixels_of_absent_class_is_minus_one_and_reproducible():
    flat = torch.tensor([0, 0, 2, -1, 2])
    out = sample_pixels_of_classes(flat, torch.tensor([[1, 0], [2, 5]]), torch.Generator().manual_seed(0))
    assert out[0, 0] == -1 and out[1, 1] == -1
    assert int(out[0, 1]) in (0, 1) and int(out[1, 0]) in (2, 4)
    r = torch.tensor([0, 2] * 50)
    a = sample_pixels_of_classes(flat, r, torch.Generator().manual_seed(9))
    b = sample_pixels_of_classes(flat, r, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    assert sample_pixels_of_classes(flat, torch.zeros(0, dtype=torch.long)).numel() == 0
    assert sample_pixels_of_classes(torch.full((4,), -1), torch.tensor([0, 1])).tolist() == [-1, -1]
