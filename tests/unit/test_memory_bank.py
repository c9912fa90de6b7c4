"""Per-class memory banks and the U2PL-style memory-bank contrast (MONA/ARCO, methods.md 5.3a)."""
import math

import numpy as np
import pytest
import torch

from nnunet_semicl.losses.memory_bank_contrast import (class_ranks, memory_bank_contrast_from_indices,
                                                       memory_bank_contrast_loss, negative_mask, percentile,
                                                       pixel_entropy, reliability_masks)
from nnunet_semicl.modules.memory_bank import ClassMemoryBank
from nnunet_semicl.sampling.stratified import StratifiedSampler
from nnunet_semicl.sampling.uniform import UniformSampler


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Recording:
    """Wraps a sampler and keeps every draw (to recompute the loss independently)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def __call__(self, mask, n, generator=None):
        out = self.inner(mask, n, generator)
        self.calls.append((mask.clone(), n, out))
        return out


# ------------------------------------------------------------------------------------------------
# the bank
# ------------------------------------------------------------------------------------------------
def test_bank_defaults_fifo_and_state_dict():
    bank = ClassMemoryBank(4, 8)
    assert bank.sizes == [50000, 30000, 30000, 30000]
    assert bank.counts() == [0, 0, 0, 0] and bank.get(2).shape == (0, 8)
    assert bank.memory_bytes() == (50000 + 3 * 30000) * 8 * 4

    small = ClassMemoryBank(3, 2, sizes=[4, 3, 5])
    feats = torch.arange(20, dtype=torch.float32).view(10, 2)
    labels = torch.tensor([0, 1, 1, 2, 1, 1, -1, 0, 1, 3])
    small.push(feats, labels)
    assert small.counts() == [2, 3, 1]                                  # -1 and 3 ignored
    assert torch.equal(small.get(0), feats[[0, 7]])
    assert torch.equal(small.get(1), feats[[4, 5, 8]])                 # 5 pushed, newest 3 kept, oldest first
    assert torch.equal(small.get(2), feats[[3]])
    small.push_class(2, torch.ones(6, 2))
    assert small.counts()[2] == 5 and torch.equal(small.get(2), torch.ones(5, 2))

    fresh = ClassMemoryBank(3, 2, sizes=[4, 3, 5])
    fresh.load_state_dict(small.state_dict())
    for c in range(3):
        assert torch.equal(fresh.get(c), small.get(c))
    fresh.push_class(1, torch.full((1, 2), 7.0))
    small.push_class(1, torch.full((1, 2), 7.0))
    assert torch.equal(fresh.get(1), small.get(1))                     # the write pointer came along too
    with pytest.raises(ValueError):
        ClassMemoryBank(3, 2, sizes=[1, 2])


# ------------------------------------------------------------------------------------------------
# the pieces
# ------------------------------------------------------------------------------------------------
def test_percentile_matches_numpy():
    x = torch.randn(1001, generator=gen(1))
    for q in [0, 3.7, 20, 50, 80, 99.9, 100]:
        assert float(percentile(x, q)) == pytest.approx(float(np.percentile(x.numpy(), q)), abs=1e-6)


def test_reliability_masks_against_numpy():
    g = gen(2)
    ent = torch.rand(3, 5, 6, generator=g)
    is_labeled = torch.tensor([True, False, False])
    valid = torch.rand(3, 5, 6, generator=g) < 0.9
    alpha = 20.0
    rel, unrel = reliability_masks(ent, is_labeled, alpha, valid)
    values = ent[1:][valid[1:]].numpy()
    lo, hi = np.percentile(values, alpha), np.percentile(values, 100 - alpha)
    for b in range(3):
        for i in range(5):
            for j in range(6):
                v = bool(valid[b, i, j])
                e = float(ent[b, i, j])
                if b == 0:
                    assert bool(rel[b, i, j]) == v and bool(unrel[b, i, j]) == v
                else:
                    assert bool(rel[b, i, j]) == (v and e <= lo + 1e-7)
                    assert bool(unrel[b, i, j]) == (v and e >= hi - 1e-7)
    # about alpha percent of the unlabeled valid pixels on each side
    n_unl = int(valid[1:].sum())
    assert abs(int(rel[1:].sum()) - alpha / 100 * n_unl) <= 2
    assert pixel_entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0]]).t().unsqueeze(0))[0].tolist() == \
        pytest.approx([math.log(2), 0.0])


def test_class_ranks():
    p = torch.tensor([0.1, 0.5, 0.2, 0.2]).view(1, 4, 1)
    assert class_ranks(p).view(-1).tolist() == [3, 0, 1, 2]  # ties: lower class index ranks first


def _naive_negative(c, labels, is_labeled, probs, unrel, rule, thr=0.97, low=3, high=20):
    b, k, h, w = probs.shape
    out = torch.zeros(b, h, w, dtype=torch.bool)
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                p = probs[bi, :, i, j].tolist()
                order = sorted(range(k), key=lambda x: (-p[x], x))
                rank = order.index(c)
                lab = int(labels[bi, i, j])
                if bool(is_labeled[bi]):
                    cond = rank < low and lab != c
                else:
                    cond = low <= rank < high
                ok = bool(unrel[bi, i, j]) and p[c] < thr and cond
                if rule == "as_released":
                    ok = ok and lab == c
                out[bi, i, j] = ok
    return out


@pytest.mark.parametrize("rule", ["intended", "as_released"])
def test_negative_rule_against_a_loop(rule):
    g = gen(3)
    k = 6
    probs = torch.softmax(3 * torch.randn(3, k, 4, 5, generator=g), 1)
    labels = torch.randint(0, k, (3, 4, 5), generator=g)
    is_labeled = torch.tensor([True, False, False])
    unrel = torch.rand(3, 4, 5, generator=g) < 0.7
    ranks = class_ranks(probs)
    total = 0
    for c in range(k):
        m = negative_mask(c, labels, is_labeled, probs, ranks, unrel, rule)
        assert torch.equal(m, _naive_negative(c, labels, is_labeled, probs, unrel, rule))
        total += int(m.sum())
    if rule == "intended":
        assert total > 0


# ------------------------------------------------------------------------------------------------
# the loss for drawn indices
# ------------------------------------------------------------------------------------------------
def _naive_class_loss(anchors, positive, bank, neg_index, tau, aw=None, nw=None):
    a_n, k_n = neg_index.shape
    total, wsum = 0.0, 0.0
    for a in range(a_n):
        q = anchors[a].tolist()

        def cos(u):
            dot = sum(x * y for x, y in zip(q, u))
            return dot / (math.sqrt(sum(x * x for x in q)) * math.sqrt(sum(y * y for y in u)))

        pos = math.exp(cos(positive.tolist()) / tau)
        neg = 0.0
        for j in range(k_n):
            scale = 1.0 if nw is None else float(nw[a, j]) * nw.numel()
            neg += scale * math.exp(cos(bank[int(neg_index[a, j])].tolist()) / tau)
        loss = -math.log(pos / (pos + neg))
        wa = 1.0 if aw is None else float(aw[a])
        total += wa * loss
        wsum += wa
    return total / wsum


def test_from_indices_matches_a_loop_and_gradcheck():
    g = gen(4)
    anchors = torch.randn(5, 3, generator=g, dtype=torch.float64)
    positive = torch.randn(3, generator=g, dtype=torch.float64)
    bank = torch.randn(7, 3, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 7, (5, 4), generator=g)
    got = memory_bank_contrast_from_indices(anchors, positive, bank, idx, 0.5)
    assert float(got) == pytest.approx(_naive_class_loss(anchors, positive, bank, idx, 0.5), rel=1e-10)
    aw = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    nw = torch.rand(5, 4, generator=g, dtype=torch.float64) + 0.1
    nw = nw / nw.sum()
    got_w = memory_bank_contrast_from_indices(anchors, positive, bank, idx, 0.5, aw, nw)
    assert float(got_w) == pytest.approx(_naive_class_loss(anchors, positive, bank, idx, 0.5, aw, nw), rel=1e-10)
    # equal weights are the plain loss
    flat = torch.full((5, 4), 1 / 20, dtype=torch.float64)
    assert float(memory_bank_contrast_from_indices(anchors, positive, bank, idx, 0.5, torch.full((5,), 0.2,
                 dtype=torch.float64), flat)) == pytest.approx(float(got), rel=1e-12)
    a = anchors.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: memory_bank_contrast_from_indices(x, positive, bank, idx, 0.5, aw, nw),
                                    (a,))


# ------------------------------------------------------------------------------------------------
# the full loss
# ------------------------------------------------------------------------------------------------
def _setup(k=3, b=2, h=4, w=5, d=4, seed=5):
    g = gen(seed)
    student = torch.randn(b, d, h, w, generator=g, requires_grad=True)
    teacher = torch.randn(b, d, h, w, generator=g)
    logits = 2 * torch.randn(b, k, h, w, generator=g)
    probs = torch.softmax(logits, 1)
    labels = probs.argmax(1)
    labels[0] = torch.randint(0, k, (h, w), generator=g)       # image 0 labeled: ground truth
    is_labeled = torch.tensor([True] + [False] * (b - 1))
    entropy = torch.rand(b, h, w, generator=g)
    return student, teacher, labels, is_labeled, probs, entropy


def test_full_loss_matches_an_independent_computation():
    k, d = 4, 4
    student, teacher, labels, is_labeled, probs, entropy = _setup(k=k, d=d, b=3)
    bank = ClassMemoryBank(k, d, sizes=50)
    pre = torch.randn(5, d, generator=gen(6))
    bank.push(pre, torch.tensor([0, 1, 1, 2, 3]))                 # earlier entries
    rec = Recording(UniformSampler())
    alpha = 40.0
    loss = memory_bank_contrast_loss(student, teacher, labels, is_labeled, probs, entropy, alpha, bank, rec,
                                     gen(7), num_anchors=6, num_negatives=5)

    # independent recomputation
    b, _, h, w = student.shape
    unl = entropy[1:].reshape(-1).numpy()
    lo, hi = np.percentile(unl, alpha), np.percentile(unl, 100 - alpha)
    tfeat = teacher.permute(0, 2, 3, 1).reshape(-1, d)
    sfeat = student.detach().permute(0, 2, 3, 1).reshape(-1, d)
    expected_bank = {c: list(pre[[i for i, l in enumerate([0, 1, 1, 2, 3]) if l == c]]) for c in range(k)}
    reliable, unreliable = [], []
    for f in range(b * h * w):
        bi, rest = divmod(f, h * w)
        e = float(entropy.view(-1)[f])
        lab = bool(is_labeled[bi])
        reliable.append(lab or e <= lo)
        unreliable.append(lab or e >= hi)
    p_flat = probs.permute(0, 2, 3, 1).reshape(-1, k)
    l_flat = labels.reshape(-1)
    for c in range(k):  # enqueue (intended rule), pixel by pixel in raster order
        for f in range(b * h * w):
            bi = f // (h * w)
            pr = p_flat[f].tolist()
            rank = sorted(range(k), key=lambda x: (-pr[x], x)).index(c)
            cond = (rank < 3 and int(l_flat[f]) != c) if bool(is_labeled[bi]) else (3 <= rank < 20)
            if unreliable[f] and pr[c] < 0.97 and cond:
                expected_bank[c].append(tfeat[f])
    for c in range(k):
        assert torch.allclose(bank.get(c), torch.stack(expected_bank[c]) if expected_bank[c] else torch.zeros(0, d))

    losses, call = [], 0
    for c in range(k):
        pos = [f for f in range(b * h * w) if reliable[f] and int(l_flat[f]) == c]
        anchors = [f for f in pos if float(p_flat[f, c]) > 0.3]
        if not anchors or not expected_bank[c]:
            continue
        mask_a, n_a, draw_a = rec.calls[call]
        mask_n, n_n, draw_n = rec.calls[call + 1]
        call += 2
        assert sorted(mask_a.reshape(-1).nonzero()[:, 0].tolist()) == anchors and n_a == 6
        assert mask_n.numel() == len(expected_bank[c]) and n_n == 30
        positive = torch.stack([tfeat[f] for f in pos]).mean(0)
        losses.append(_naive_class_loss(sfeat[draw_a.index], positive, torch.stack(expected_bank[c]),
                                        draw_n.index.view(6, 5), 0.5))
    assert call == len(rec.calls) and len(losses) >= 2
    assert loss.item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)

    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert teacher.grad is None


def test_absent_classes_and_empty_bank_are_finite_with_graph():
    student, teacher, labels, is_labeled, probs, entropy = _setup()
    bank = ClassMemoryBank(3, 4, sizes=10)
    # no update: every bank empty -> zero with graph
    loss = memory_bank_contrast_loss(student, teacher, labels, is_labeled, probs, entropy, 20.0, bank,
                                     update_bank=False)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))
    # no valid pixel at all (everything ignored) -> zero with graph
    stats = {}
    loss = memory_bank_contrast_loss(student, teacher, labels, is_labeled, probs, entropy, 20.0, bank,
                                     valid=torch.zeros_like(labels, dtype=torch.bool), stats=stats)
    assert loss.item() == 0.0 and loss.requires_grad and stats["valid_classes"] == 0
    # only one class present: the others are skipped, the loss stays finite
    bank.push_class(1, torch.randn(3, 4))
    one = torch.ones_like(labels)
    loss = memory_bank_contrast_loss(student, teacher, one, is_labeled, probs, entropy, 20.0, bank, stats=stats,
                                     update_bank=False)
    assert math.isfinite(loss.item()) and stats["valid_classes"] <= 1


def test_intended_rule_fills_the_bank_on_two_classes_as_released_does_not():
    """2 classes (LA-like): with the released rule the bank never receives anything (section 5.3a)."""
    g = gen(8)
    b, d, h, w = 4, 4, 8, 8
    student = torch.randn(b, d, h, w, generator=g, requires_grad=True)
    teacher = torch.randn(b, d, h, w, generator=g)
    probs = torch.softmax(torch.randn(b, 2, h, w, generator=g), 1)
    labels = probs.argmax(1)
    labels[:2] = torch.randint(0, 2, (2, h, w), generator=g)
    is_labeled = torch.tensor([True, True, False, False])
    entropy = pixel_entropy(probs)
    filled = {}
    for rule in ["intended", "as_released"]:
        bank = ClassMemoryBank(2, d, sizes=1000)
        for it in range(3):
            loss = memory_bank_contrast_loss(student, teacher, labels, is_labeled, probs, entropy, 20.0, bank,
                                             generator=gen(it), negative_rule=rule, num_anchors=16, num_negatives=8)
            assert math.isfinite(loss.item())
        filled[rule] = bank.counts()
    assert filled["as_released"] == [0, 0]
    assert min(filled["intended"]) > 0
    # with a filled bank the loss is positive and trains the student
    bank = ClassMemoryBank(2, d, sizes=1000)
    loss = memory_bank_contrast_loss(student, teacher, labels, is_labeled, probs, entropy, 20.0, bank,
                                     num_anchors=16, num_negatives=8)
    assert loss.item() > 0
    loss.backward()
    assert float(student.grad.abs().sum()) > 0


@pytest.mark.parametrize("sampler", [StratifiedSampler(), StratifiedSampler(antithetic=True),
                                     StratifiedSampler(strata="index")])
def test_with_stratified_samplers_2d_and_3d(sampler):
    for spatial in [(6, 7), (3, 4, 5)]:
        g = gen(9)
        b, d, k = 2, 4, 3
        student = torch.randn(b, d, *spatial, generator=g, requires_grad=True)
        teacher = torch.randn(b, d, *spatial, generator=g)
        probs = torch.softmax(torch.randn(b, k, *spatial, generator=g), 1)
        labels = probs.argmax(1)
        is_labeled = torch.tensor([True, False])
        bank = ClassMemoryBank(k, d, sizes=200)
        stats = {}
        loss = memory_bank_contrast_loss(student, teacher, labels, is_labeled, probs, pixel_entropy(probs), 20.0,
                                         bank, sampler, gen(10), num_anchors=32, num_negatives=16, stats=stats)
        assert math.isfinite(loss.item()) and loss.item() > 0 and stats["valid_classes"] >= 1
        loss.backward()
        assert float(student.grad.abs().sum()) > 0


def test_uniform_weights_equal_the_unweighted_loss_and_bad_inputs_raise():
    student, teacher, labels, is_labeled, probs, entropy = _setup()
    bank_a = ClassMemoryBank(3, 4, sizes=100)
    bank_b = ClassMemoryBank(3, 4, sizes=100)
    la = memory_bank_contrast_loss(student, teacher, labels, is_labeled, probs, entropy, 30.0, bank_a,
                                   generator=gen(11), num_anchors=8, num_negatives=4, use_weights=True)
    lb = memory_bank_contrast_loss(student, teacher, labels, is_labeled, probs, entropy, 30.0, bank_b,
                                   generator=gen(11), num_anchors=8, num_negatives=4, use_weights=False)
    assert la.item() == pytest.approx(lb.item(), rel=1e-6)
    with pytest.raises(ValueError):
        memory_bank_contrast_loss(student, teacher, labels, is_labeled, probs, entropy, 30.0, bank_a,
                                  negative_rule="faithful")
    with pytest.raises(ValueError):
        memory_bank_contrast_loss(student, teacher, labels, is_labeled, probs, entropy, 30.0,
                                  ClassMemoryBank(4, 4, sizes=10))
    with pytest.raises(ValueError):
        memory_bank_contrast_loss(student, teacher[:, :, :3], labels, is_labeled, probs, entropy, 30.0, bank_a)
