"""ReCo-style anatomical contrast (losses/anatomical.py)."""
import inspect
import math

import pytest
import torch

from nnunet_semicl.losses.anatomical import (anatomical_contrast_from_indices, anatomical_contrast_loss,
                                             class_prototypes, draw_anatomical_samples)


# ---------------------------------------------------------------- independent reference (plain loops)
def _cos(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _pixel_rows(rep):
    """rep [B, D, *spatial] -> list of per-pixel feature lists in flat [B, *spatial] order."""
    d = rep.shape[1]
    return rep.detach().double().movedim(1, -1).reshape(-1, d).tolist()


def _naive_prototypes(rep, labels, valid, k):
    rows = _pixel_rows(rep)
    lab, val = labels.reshape(-1).tolist(), valid.reshape(-1).tolist()
    protos, counts = [], []
    for c in range(k):
        members = [rows[i] for i in range(len(rows)) if val[i] and lab[i] == c]
        counts.append(len(members))
        protos.append([sum(col) / len(members) for col in zip(*members)] if members else [0.0] * rep.shape[1])
    return protos, counts


def _naive_loss(rep, prototypes, classes, query_index, negative_index, tau):
    rows = _pixel_rows(rep)
    per_class = []
    for m, c in enumerate(classes):
        losses = []
        for i, qi in enumerate(query_index[m]):
            q = rows[qi]
            logits = [_cos(q, prototypes[c]) / tau] + [_cos(q, rows[ni]) / tau for ni in negative_index[m][i]]
            mx = max(logits)
            lse = mx + math.log(sum(math.exp(x - mx) for x in logits))
            losses.append(lse - logits[0])
        per_class.append(sum(losses) / len(losses))
    return sum(per_class) / len(per_class)


def _batch(spatial=(6, 6), b=2, d=5, k=4, present=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    rep = torch.randn(b, d, *spatial, generator=g)
    labels = torch.randint(0, present, (b, *spatial), generator=g)
    valid = torch.rand(b, *spatial, generator=g) > 0.2
    prob = torch.softmax(4 * torch.randn(b, k, *spatial, generator=g), dim=1)
    return rep, labels, valid, prob


# ---------------------------------------------------------------- deterministic part
def test_prototypes_match_loop():
    rep, labels, valid, prob = _batch()
    pc = torch.where(valid, labels, torch.full_like(labels, -1))
    protos, counts = class_prototypes(rep, pc, 4)
    want_p, want_c = _naive_prototypes(rep, labels, valid, 4)
    assert counts.tolist() == want_c and want_c[3] == 0
    assert torch.allclose(protos.double(), torch.tensor(want_p, dtype=torch.float64), atol=1e-6)
    assert not protos.requires_grad


def test_known_value_from_indices():
    g = torch.Generator().manual_seed(1)
    rep = torch.randn(1, 3, 4, 4, generator=g)
    protos = torch.randn(3, 3, generator=g)
    classes = torch.tensor([0, 2])
    q_idx = torch.randint(0, 16, (2, 5), generator=g)
    n_idx = torch.randint(0, 16, (2, 5, 7), generator=g)
    for tau in (0.5, 0.1):
        got = anatomical_contrast_from_indices(rep, protos, classes, q_idx, n_idx, tau)
        want = _naive_loss(rep, protos.tolist(), classes.tolist(), q_idx.tolist(), n_idx.tolist(), tau)
        assert got.dtype == torch.float32 and got.dim() == 0
        assert abs(float(got) - want) < 1e-5 * max(1.0, want), (float(got), want)


def test_from_indices_empty_keeps_graph():
    rep = torch.randn(1, 3, 4, 4, requires_grad=True)
    e = torch.zeros(0, dtype=torch.long)
    loss = anatomical_contrast_from_indices(rep, torch.randn(2, 3), e, e.view(0, 4), e.view(0, 4, 2))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(rep.grad, torch.zeros_like(rep))


def test_gradcheck_float64_through_queries():
    # queries on pixels 0..7, negatives on pixels 8..15 (disjoint), so the input only moves queries
    g = torch.Generator().manual_seed(2)
    base = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    protos = torch.randn(2, 3, generator=g, dtype=torch.float64)
    classes = torch.tensor([0, 1])
    q_idx = torch.randint(0, 8, (2, 4), generator=g)
    n_idx = torch.randint(8, 16, (2, 4, 6), generator=g)
    q_mask = torch.zeros(16, dtype=torch.bool)
    q_mask[:8] = True
    q_mask = q_mask.view(1, 1, 4, 4)

    def f(x):
        rep = torch.where(q_mask, x, base)
        return anatomical_contrast_from_indices(rep, protos, classes, q_idx, n_idx, 0.5)

    x = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert f(x).dtype == torch.float64
    assert torch.autograd.gradcheck(f, (x,))


def test_gradient_only_through_queries_not_keys_or_prototypes():
    rep, labels, valid, prob = _batch(seed=3)
    rep.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    pc = torch.where(valid, labels, torch.full_like(labels, -1))
    protos, counts = class_prototypes(rep, pc, 4)
    classes, q_idx, n_idx = draw_anatomical_samples(labels, valid, prob, protos, counts, 0.97, 0.5, 8, 16, g)
    protos.requires_grad_(True)                   # even a grad-requiring prototype receives none
    anatomical_contrast_from_indices(rep, protos, classes, q_idx, n_idx, 0.5).backward()
    assert protos.grad is None
    grad_rows = rep.grad.movedim(1, -1).reshape(-1, rep.shape[1]).abs().sum(-1)
    touched = torch.zeros_like(grad_rows, dtype=torch.bool)
    touched[q_idx.reshape(-1)] = True
    assert float(grad_rows[touched].sum()) > 0
    assert float(grad_rows[~touched].abs().sum()) == 0.0        # negatives/prototypes: no gradient


# ---------------------------------------------------------------- full loss vs the naive computation on the same draws
@pytest.mark.parametrize("spatial", [(6, 6), (3, 4, 5)])
def test_full_loss_matches_naive_on_same_draws(spatial):
    rep, labels, valid, prob = _batch(spatial=spatial, seed=4)
    q, n, tau, thr = 16, 24, 0.5, 0.97
    pc = torch.where(valid, labels, torch.full_like(labels, -1))
    protos, counts = class_prototypes(rep, pc, 4)
    classes, q_idx, n_idx = draw_anatomical_samples(labels, valid, prob, protos, counts, thr, tau, q, n,
                                                    torch.Generator().manual_seed(7))
    # the draws obey the method's rules
    flat_lab, flat_val = labels.reshape(-1), valid.reshape(-1)
    flat_prob = prob.movedim(1, -1).reshape(-1, 4)
    assert q_idx.shape == (len(classes), q) and n_idx.shape == (len(classes), q, n)
    for m, c in enumerate(classes.tolist()):
        qi = q_idx[m]
        assert bool(flat_val[qi].all()) and bool((flat_lab[qi] == c).all())
        assert bool((flat_prob[qi, c] < thr).all())                                  # hard queries
        ni = n_idx[m].reshape(-1)
        assert bool(flat_val[ni].all()) and not bool((flat_lab[ni] == c).any())       # other classes
        assert not bool((flat_lab[ni] == 3).any())                                    # absent class never
    rep.requires_grad_(True)
    got = anatomical_contrast_loss(rep, labels, valid, prob, thr, tau, q, n, torch.Generator().manual_seed(7))
    want_p, _ = _naive_prototypes(rep, labels, valid, 4)
    want = _naive_loss(rep, want_p, classes.tolist(), q_idx.tolist(), n_idx.tolist(), tau)
    assert abs(got.item() - want) < 1e-5 * max(1.0, want), (got.item(), want)
    got.backward()
    assert torch.isfinite(rep.grad).all() and float(rep.grad.abs().sum()) > 0


def test_negative_classes_drawn_by_prototype_similarity():
    # class features are constant per class: prototypes e1, e1+e2 (cos 0.707 to e1) and e3 (cos 0)
    d = 3
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 10).view(1, 30)
    rep = torch.zeros(1, d, 30)
    rep[0, 0, :10] = 1.0
    rep[0, 0, 10:20] = 1.0
    rep[0, 1, 10:20] = 1.0
    rep[0, 2, 20:] = 1.0
    valid = torch.ones_like(labels, dtype=torch.bool)
    prob = torch.full((1, 3, 30), 1 / 3)
    pc = torch.where(valid, labels, torch.full_like(labels, -1))
    protos, counts = class_prototypes(rep, pc, 3)
    tau = 0.5
    classes, q_idx, n_idx = draw_anatomical_samples(labels, valid, prob, protos, counts, 0.97, tau, 64, 512,
                                                    torch.Generator().manual_seed(5))
    assert classes.tolist() == [0, 1, 2]
    neg_cls = labels.reshape(-1)[n_idx[0].reshape(-1)]                       # negatives of class 0
    freq = torch.bincount(neg_cls, minlength=3).double() / neg_cls.numel()
    e1, e2 = math.exp(math.cos(math.pi / 4) / tau), math.exp(0.0 / tau)
    expected = torch.tensor([0.0, e1 / (e1 + e2), e2 / (e1 + e2)], dtype=torch.float64)
    # 32768 draws: standard error < 0.003; tolerance 0.015
    assert torch.allclose(freq, expected, atol=0.015), (freq, expected)
    # pixels of a drawn class are uniform over that class (any valid pixel, hard or not)
    hits = torch.bincount(n_idx[0].reshape(-1), minlength=30)[10:20].double()
    assert float(hits.min()) > 0.85 * float(hits.mean()) and float(hits.max()) < 1.15 * float(hits.mean())


# ---------------------------------------------------------------- edge cases
def _assert_zero_with_graph(loss, rep):
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(rep.grad, torch.zeros_like(rep))
    rep.grad = None


def test_one_class_only_no_valid_pixels_and_no_hard_queries_give_zero_with_graph():
    rep, labels, valid, prob = _batch(seed=5)
    rep.requires_grad_(True)
    _assert_zero_with_graph(anatomical_contrast_loss(rep, torch.zeros_like(labels), valid, prob), rep)
    _assert_zero_with_graph(anatomical_contrast_loss(rep, labels, torch.zeros_like(valid), prob), rep)
    confident = torch.nn.functional.one_hot(labels, 4).movedim(-1, 1).float()          # prob 1 on the label
    _assert_zero_with_graph(anatomical_contrast_loss(rep, labels, valid, confident), rep)


def test_class_without_hard_queries_is_skipped_and_average_is_over_contributing_classes():
    rep, labels, valid, prob = _batch(seed=6)
    prob = prob.clone()
    # class 1 is confidently predicted everywhere it occurs: it contributes no query but stays a negative
    is1 = (labels == 1).unsqueeze(1)
    prob = torch.where(is1, torch.nn.functional.one_hot(torch.ones_like(labels), 4).movedim(-1, 1).float(), prob)
    g_seed = 11
    pc = torch.where(valid, labels, torch.full_like(labels, -1))
    protos, counts = class_prototypes(rep, pc, 4)
    classes, q_idx, n_idx = draw_anatomical_samples(labels, valid, prob, protos, counts, 0.97, 0.5, 8, 8,
                                                    torch.Generator().manual_seed(g_seed))
    assert classes.tolist() == [0, 2]
    flat_lab = labels.reshape(-1)
    assert bool((flat_lab[n_idx.reshape(-1)] == 1).any())          # class 1 still serves as a negative
    got = anatomical_contrast_loss(rep, labels, valid, prob, 0.97, 0.5, 8, 8, torch.Generator().manual_seed(g_seed))
    want_p, _ = _naive_prototypes(rep, labels, valid, 4)
    want = _naive_loss(rep, want_p, [0, 2], q_idx.tolist(), n_idx.tolist(), 0.5)
    assert abs(float(got) - want) < 1e-5 * max(1.0, want)


def test_ignore_label_on_valid_pixels_is_excluded():
    rep, labels, valid, prob = _batch(seed=7)
    lab_ign = labels.clone()
    lab_ign[0, 0] = 255
    lab_ign[1, 1] = -1
    keep = valid & (lab_ign >= 0) & (lab_ign < 4)
    a = anatomical_contrast_loss(rep, lab_ign, valid, prob, generator=torch.Generator().manual_seed(0),
                                 num_queries=8, num_negatives=8)
    b = anatomical_contrast_loss(rep, labels, keep, prob, generator=torch.Generator().manual_seed(0),
                                 num_queries=8, num_negatives=8)
    assert torch.isfinite(a) and torch.allclose(a, b)


def test_shape_mismatch_raises():
    rep, labels, valid, prob = _batch()
    with pytest.raises(ValueError):
        anatomical_contrast_loss(rep, labels[:, :3], valid, prob)


def test_defaults_and_3d_paper_sizes():
    defaults = inspect.signature(anatomical_contrast_loss).parameters
    assert tuple(defaults[k].default for k in ("strong_threshold", "tau", "num_queries", "num_negatives")) == \
        (0.97, 0.5, 256, 512)
    rep, labels, valid, prob = _batch(spatial=(4, 8, 8), b=2, d=16, seed=8)
    rep.requires_grad_(True)
    loss = anatomical_contrast_loss(rep, labels, valid, prob, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0 and torch.isfinite(rep.grad).all()


# ---------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_fp32_accurate_loss(dtype):
    rep, labels, valid, prob = _batch(d=32, seed=9)
    rep16, prob16 = rep.to(dtype), prob.to(dtype)
    got = anatomical_contrast_loss(rep16, labels, valid, prob16, tau=0.1, num_queries=32, num_negatives=64,
                                   generator=torch.Generator().manual_seed(3))
    want = anatomical_contrast_loss(rep16.float(), labels, valid, prob16.float(), tau=0.1, num_queries=32,
                                    num_negatives=64, generator=torch.Generator().manual_seed(3))
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)


def test_autocast_does_not_lower_precision():
    rep, labels, valid, prob = _batch(d=64, seed=10)
    kw = dict(tau=0.07, num_queries=32, num_negatives=64)
    want = anatomical_contrast_loss(rep, labels, valid, prob, generator=torch.Generator().manual_seed(1), **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = anatomical_contrast_loss(rep, labels, valid, prob, generator=torch.Generator().manual_seed(1), **kw)
    assert got.dtype == torch.float32 and torch.allclose(got, want, rtol=1e-5, atol=1e-6)
