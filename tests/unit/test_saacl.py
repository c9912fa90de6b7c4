"""ACTION++ SAACL loss and anchor sampling (spec 4.5)."""
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_semicl.losses.saacl import saacl_loss, sample_class_anchors
from nnunet_semicl.modules.centres import simplex_centres


# ----------------------------------------------------------------------------- reference (plain loops)
def _unit(x):
    return x / torch.sqrt(sum(x[j] * x[j] for j in range(len(x))))


def _dot(a, b):
    return sum(a[j] * b[j] for j in range(len(a)))


def reference_saacl(anchors, labels, views, queue, queue_labels, centres, tau, lam):
    """Spec 4.5 written out anchor by anchor, key by key (float64, differentiable w.r.t. anchors)."""
    n, m = anchors.shape[0], queue.shape[0]
    total = 0.0
    for i in range(n):
        z = _unit(anchors[i])
        keys = [_unit(views[i])] + [_unit(queue[j]) for j in range(m)] + [_unit(c) for c in centres]
        logits = [_dot(z, k) / tau for k in keys]
        log_norm = torch.log(sum(torch.exp(l) for l in logits))
        log_s = [l - log_norm for l in logits]
        y = int(labels[i])
        positives = [0] + [1 + j for j in range(m) if int(queue_labels[j]) == y]   # P_i minus nu_i
        nu = 1 + m + y
        size_p = len(positives) + 1                                                # |P_i| includes nu_i
        total = total - (sum(log_s[p] for p in positives) + lam * log_s[nu]) / size_p
    return total / n


def _example(seed=0, n=5, d=3, m=6, k=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(n, d, generator=g, dtype=dtype)
    labels = torch.randint(k, (n,), generator=g)
    views = torch.randn(n, d, generator=g, dtype=dtype)
    queue = torch.randn(m, d, generator=g, dtype=dtype)
    queue_labels = torch.randint(-1, k, (m,), generator=g)   # -1: an unfilled / ignored entry
    centres = torch.randn(k, d, generator=g, dtype=dtype)
    return anchors, labels, views, queue, queue_labels, centres


# ----------------------------------------------------------------------------- known values
def test_known_value_hand_computed():
    # one anchor on e1, view on e1, queue [e2 (same class), -e1 (other class)], centres e1 (assigned), e2
    z = torch.tensor([[1.0, 0.0]])
    y = torch.tensor([0])
    q = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    ql = torch.tensor([0, 1])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau, lam = 0.5, 0.2
    # logits over [view, q0, q1, c0, c1] = [1, 0, -1, 1, 0] / 0.5
    logits = [2.0, 0.0, -2.0, 2.0, 0.0]
    lse = math.log(sum(math.exp(v) for v in logits))
    expected = -((2.0 - lse) + (0.0 - lse) + lam * (2.0 - lse)) / 3.0
    got = saacl_loss(z, y, z.clone(), q, ql, c, tau=tau, lambda_a=lam)
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lam", [0.2, 0.0, 1.0])
def test_matches_loop_reference(seed, lam):
    a, y, v, q, ql, c = _example(seed)
    tau = 0.3 + 0.2 * seed
    expected = reference_saacl(a, y, v, q, ql, c, tau, lam)
    got = saacl_loss(a.float(), y, v.float(), q.float(), ql, c.float(), tau=tau, lambda_a=lam)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


def test_gradient_matches_loop_reference():
    a, y, v, q, ql, c = _example(seed=11, n=4, d=5, m=7, k=4)
    a_ref = a.clone().requires_grad_(True)
    reference_saacl(a_ref, y, v, q, ql, c, 0.2, 0.2).backward()
    a32 = a.float().requires_grad_(True)
    saacl_loss(a32, y, v.float(), q.float(), ql, c.float(), tau=0.2, lambda_a=0.2).backward()
    torch.testing.assert_close(a32.grad.double(), a_ref.grad, rtol=1e-4, atol=1e-5)


def dense_saacl(anchors, labels, views, queue, queue_labels, centres, tau, lam):
    """Spec 4.5 with the full [n, m] log-softmax and same-class mask (the form before issue 11's speed-up)."""
    z, v, q, c = (F.normalize(t, dim=1) for t in (anchors, views, queue, centres))
    log_s = torch.log_softmax(torch.cat([(z * v).sum(1, keepdim=True), z @ q.T, z @ c.T], 1) / tau, 1)
    m = q.shape[0]
    same = (queue_labels.unsqueeze(0) == labels.unsqueeze(1)).to(z.dtype)
    log_centre = log_s[:, 1 + m:].gather(1, labels.unsqueeze(1)).squeeze(1)
    return (-(log_s[:, 0] + (log_s[:, 1:1 + m] * same).sum(1) + lam * log_centre) / (2.0 + same.sum(1))).mean()


@pytest.mark.parametrize("tau", [0.07, 0.5, 1.0])
def test_matches_dense_form_at_training_size(tau):
    # the per-class queue sums must give the dense form's value and gradient at a realistic size: a long
    # queue with labels outside [0, K) (negatives only) and a class that no anchor has
    g = torch.Generator().manual_seed(7)
    n, m, d, k = 96, 3000, 32, 4
    anchors = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k - 1, (n,), generator=g)              # class 3 has queue entries, no anchor
    views = anchors + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    queue = torch.randn(m, d, generator=g, dtype=torch.float64)
    queue_labels = torch.randint(-1, k + 1, (m,), generator=g)        # -1 and k: negatives only
    centres = simplex_centres(k, d).double()
    a_ref = anchors.clone().requires_grad_(True)
    expected = dense_saacl(a_ref, labels, views, queue, queue_labels, centres, tau, 0.2)
    expected.backward()
    a = anchors.float().requires_grad_(True)
    got = saacl_loss(a, labels, views.float(), queue.float(), queue_labels, centres.float(), tau=tau, lambda_a=0.2)
    got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(a.grad.double(), a_ref.grad, rtol=1e-3, atol=1e-7)


def test_only_anchors_get_gradient():
    a, y, v, q, ql, c = [t.float() if t.is_floating_point() else t for t in _example(seed=2)]
    a.requires_grad_(True)
    v.requires_grad_(True)
    q.requires_grad_(True)
    c.requires_grad_(True)
    saacl_loss(a, y, v, q, ql, c, tau=0.1).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert v.grad is None and q.grad is None and c.grad is None


def test_lambda_zero_removes_centre_term():
    a, y, v, q, ql, c = _example(seed=3)
    a, v, q, c = a.float(), v.float(), q.float(), c.float()
    tau = 0.4
    l0 = saacl_loss(a, y, v, q, ql, c, tau=tau, lambda_a=0.0)
    l2 = saacl_loss(a, y, v, q, ql, c, tau=tau, lambda_a=0.2)
    # independent: the centre term alone is -(1/n) sum_i log s_{i nu_i} / |P_i|
    z = F.normalize(a, dim=1)
    logits = torch.cat([(z * F.normalize(v, dim=1)).sum(1, keepdim=True), z @ F.normalize(q, dim=1).T,
                        z @ F.normalize(c, dim=1).T], 1) / tau
    log_s = logits.log_softmax(1)
    size_p = 2 + (ql[None, :] == y[:, None]).sum(1)
    centre_term = -(log_s[torch.arange(len(y)), 1 + q.shape[0] + y] / size_p).mean()
    assert (l2 - l0).item() == pytest.approx(0.2 * centre_term.item(), rel=1e-5)
    assert l0.item() == pytest.approx(float(reference_saacl(*_example(seed=3), tau, 0.0)), rel=1e-5)
    # with lambda_a = 0, moving the assigned centre's *label* changes nothing except the denominators:
    # swapping which centre row is "assigned" (rows permuted) leaves the loss unchanged
    l0_perm = saacl_loss(a, y, v, q, ql, c.flip(0), tau=tau, lambda_a=0.0)
    assert l0_perm.item() == pytest.approx(l0.item(), rel=1e-6)
    l2_perm = saacl_loss(a, y, v, q, ql, c.flip(0), tau=tau, lambda_a=0.2)
    assert abs(l2_perm.item() - l2.item()) > 1e-4


# ----------------------------------------------------------------------------- behaviour
def _cos(x, y):
    return F.cosine_similarity(x, y, dim=1)


def test_gradient_pulls_anchors_to_their_assigned_centres():
    k, d, n = 4, 16, 64
    psi = simplex_centres(k, d, seed=0)
    perm = torch.tensor([2, 0, 3, 1])
    assigned = psi[perm]                      # row c = centre assigned to class c (not the identity)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % k
    anchors = torch.randn(n, d, generator=g)
    views = anchors + 0.1 * torch.randn(n, d, generator=g)
    empty_q, empty_l = torch.zeros(0, d), torch.zeros(0, dtype=torch.long)
    a = anchors.clone().requires_grad_(True)
    saacl_loss(a, y, views, empty_q, empty_l, assigned, tau=0.1, lambda_a=0.2).backward()
    stepped = anchors - 0.5 * a.grad
    before, after = _cos(anchors, assigned[y]), _cos(stepped, assigned[y])
    assert bool((after > before).all()), (after - before)
    # and more than toward any other centre
    gain_assigned = (after - before).mean()
    for shift in range(1, k):
        other = assigned[(y + shift) % k]
        assert gain_assigned > (_cos(stepped, other) - _cos(anchors, other)).mean()


def test_gradient_with_class_structured_queue_pulls_to_centres():
    # a queue that already clusters around the assigned centres (later in training)
    k, d, n, m = 3, 8, 30, 60
    psi = simplex_centres(k, d, seed=1)
    g = torch.Generator().manual_seed(1)
    ql = torch.arange(m) % k
    queue = psi[ql] + 0.3 * torch.randn(m, d, generator=g)
    y = torch.arange(n) % k
    anchors = torch.randn(n, d, generator=g)
    views = anchors + 0.1 * torch.randn(n, d, generator=g)
    gains = {}
    for lam in (0.0, 0.2):
        a = anchors.clone().requires_grad_(True)
        saacl_loss(a, y, views, queue, ql, psi, tau=0.2, lambda_a=lam).backward()
        gains[lam] = _cos(anchors - 0.2 * a.grad, psi[y]) - _cos(anchors, psi[y])
    assert bool((gains[0.2] > 0).all())
    assert gains[0.2].mean() > gains[0.0].mean()   # the centre term adds pull


def test_empty_queue_single_class_and_empty_anchors():
    d = 6
    g = torch.Generator().manual_seed(4)
    c = simplex_centres(3, d)
    empty_q, empty_l = torch.zeros(0, d), torch.zeros(0, dtype=torch.long)
    a = torch.randn(8, d, generator=g, requires_grad=True)
    y = torch.zeros(8, dtype=torch.long)    # single class
    loss = saacl_loss(a, y, a.detach() + 0.01, empty_q, empty_l, c, tau=0.07)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(a.grad).all()
    # empty queue, known value: keys = [view, K centres], |P| = 2
    a64, v64 = a.detach().double(), a.detach().double() + 0.01
    ref = reference_saacl(a64, y, v64, empty_q.double(), empty_l, c.double(), 0.07, 0.2)
    assert loss.item() == pytest.approx(float(ref), rel=1e-4)
    # no anchors: zero that keeps the graph
    a0 = torch.zeros(0, d, requires_grad=True)
    z = saacl_loss(a0, torch.zeros(0, dtype=torch.long), torch.zeros(0, d), empty_q, empty_l, c, tau=0.1)
    assert z.item() == 0.0 and z.requires_grad
    z.backward()
    assert a0.grad is not None and a0.grad.shape == (0, d)


def test_fp16_inputs_do_not_overflow_at_low_tau():
    g = torch.Generator().manual_seed(5)
    a = (torch.randn(16, 32, generator=g) * 50).half()
    v = a.clone()
    q = (torch.randn(40, 32, generator=g) * 50).half()
    loss = saacl_loss(a, torch.arange(16) % 4, v, q, torch.arange(40) % 4,
                      simplex_centres(4, 32).half(), tau=0.01)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_autocast_does_not_lower_precision():
    a, y, v, q, ql, c = [t.float() if t.is_floating_point() else t for t in _example(seed=6, n=8, d=16, m=20, k=4)]
    plain = saacl_loss(a, y, v, q, ql, c, tau=0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = saacl_loss(a, y, v, q, ql, c, tau=0.07)
    assert amp.dtype == torch.float32
    assert amp.item() == pytest.approx(plain.item(), rel=1e-6)


def test_invalid_arguments():
    a, y, v, q, ql, c = [t.float() if t.is_floating_point() else t for t in _example(seed=0)]
    with pytest.raises(ValueError):
        saacl_loss(a, y, v, q, ql, c, tau=0.0)
    with pytest.raises(ValueError):
        saacl_loss(a, y, v[:-1], q, ql, c, tau=0.1)
    with pytest.raises(ValueError):
        saacl_loss(a, y, v, q[:, :2], ql, c, tau=0.1)
    with pytest.raises(ValueError):
        saacl_loss(a, y, v, q, ql[:-1], c, tau=0.1)
    with pytest.raises(ValueError):
        saacl_loss(a, y[:-1], v, q, ql, c, tau=0.1)
    with pytest.raises(ValueError):
        saacl_loss(a, y, v, q, ql, c[:, :2], tau=0.1)


# ----------------------------------------------------------------------------- anchor sampling
def _label_map():
    # B=2, 2D 6x6; classes 0 (most), 1 (a block), 2 (tiny), ignore 255 in a corner
    lab = torch.zeros(2, 6, 6, dtype=torch.long)
    lab[0, 1:4, 1:4] = 1
    lab[1, 5, 5] = 2
    lab[1, 0, 0:2] = 255
    return lab


def test_sample_class_anchors_per_class():
    lab = _label_map()
    valid = lab != 255
    valid[0, 1, :] = False          # also mask out 3 class-1 pixels (e.g. padding): never drawn
    g = torch.Generator().manual_seed(0)
    idx, al = sample_class_anchors(lab, valid, n_per_class=50, generator=g)
    assert idx.dtype == torch.long and idx.shape == al.shape == (150,)
    flat, fvalid = lab.reshape(-1), valid.reshape(-1)
    assert bool(fvalid[idx].all())
    assert torch.equal(flat[idx], al)
    assert torch.bincount(al, minlength=3).tolist() == [50, 50, 50]
    assert set(idx[al == 2].tolist()) == {int((flat == 2).nonzero()[0])}   # the single class-2 pixel
    assert set(idx[al == 1].tolist()) <= set(((flat == 1) & fvalid).nonzero()[:, 0].tolist())
    assert len(set(idx[al == 1].tolist())) > 3                           # 6 valid class-1 pixels
    # deterministic for a seeded generator
    idx2, _ = sample_class_anchors(lab, valid, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, idx2)


def test_sample_class_anchors_uniform_within_class():
    lab = _label_map()
    g = torch.Generator().manual_seed(1)
    n = 9000
    idx, al = sample_class_anchors(lab, lab != 255, n_per_class=n, generator=g)
    cls1 = idx[al == 1]
    counts = torch.bincount(cls1, minlength=lab.numel())[(lab.reshape(-1) == 1)]
    assert counts.numel() == 9 and counts.sum() == n
    # each of the 9 class-1 pixels expects 1000 draws; sd ~ 30, allow 5 sd
    assert bool(((counts - n / 9).abs() < 150).all()), counts


def test_sample_class_anchors_fallback_and_empty():
    lab = torch.zeros(1, 4, 4, 4, dtype=torch.long)   # 3D, one class only
    lab[0, 0] = 3
    valid = lab == 0                                   # only class 0 valid -> one class present
    idx, al = sample_class_anchors(lab, valid, n_per_class=64, generator=torch.Generator().manual_seed(2))
    assert idx.shape == (64,) and bool(valid.reshape(-1)[idx].all()) and bool((al == 0).all())
    # two classes but the fallback is keyed on valid pixels only
    idx, al = sample_class_anchors(lab, None, n_per_class=64, generator=torch.Generator().manual_seed(2))
    assert idx.shape == (128,) and torch.bincount(al).tolist()[::3] == [64, 64]
    # nothing valid
    idx, al = sample_class_anchors(lab, torch.zeros_like(valid), n_per_class=64)
    assert idx.numel() == 0 and al.numel() == 0 and idx.dtype == torch.long
    with pytest.raises(ValueError):
        sample_class_anchors(lab, valid.long())
