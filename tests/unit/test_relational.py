"""ISD-style relational KL (losses/relational.py) and ACTION's relational heads (modules/relational_heads.py)."""
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_semicl.losses.relational import relational_kl_loss
from nnunet_semicl.modules.ema import EMATeacher
from nnunet_semicl.modules.queues import RingBuffer
from nnunet_semicl.modules.relational_heads import GlobalRelationalHead, LocalRelationalHead


# ---------------------------------------------------------------- independent reference (plain loops)
def _cos(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [x / s for x in e]


def _naive_kl(student, teacher, anchor_sets, tau_s, tau_t):
    """anchor_sets[n] is the list of anchors of row n."""
    total = 0.0
    for w, v, anchors in zip(student, teacher, anchor_sets):
        p_t = _softmax([_cos(v, q) / tau_t for q in anchors])
        p_s = _softmax([_cos(w, q) / tau_s for q in anchors])
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s) if pt > 0)
    return total / len(student)


def _tiny(n=3, d=4, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), torch.randn(k, d, generator=g),
            torch.randn(n, k, d, generator=g))


# ---------------------------------------------------------------- loss values
@pytest.mark.parametrize("tau_s,tau_t", [(0.1, 0.01), (0.1, 0.6), (1.0, 0.5)])
def test_known_value_shared_anchors(tau_s, tau_t):
    s, t, a, _ = _tiny()
    got = relational_kl_loss(s, t, a, tau_s, tau_t)
    want = _naive_kl(s.tolist(), t.tolist(), [a.tolist()] * 3, tau_s, tau_t)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert abs(float(got) - want) < 1e-4 * max(1.0, abs(want)), (float(got), want)


def test_known_value_per_row_anchors():
    s, t, _, a = _tiny()
    got = relational_kl_loss(s, t, a, 0.1, 0.01)
    want = _naive_kl(s.tolist(), t.tolist(), a.tolist(), 0.1, 0.01)
    assert abs(float(got) - want) < 1e-4 * max(1.0, abs(want))


def test_local_window_layout_broadcast_matches_loop():
    # student [B, nW, E], anchors [nW, K, E] (one queue per window position)
    g = torch.Generator().manual_seed(1)
    b, nw, k, e = 2, 3, 4, 5
    s, t = torch.randn(b, nw, e, generator=g), torch.randn(b, nw, e, generator=g)
    queue = torch.randn(k, nw, e, generator=g)
    got = relational_kl_loss(s, t, queue.permute(1, 0, 2), 0.1, 0.01)
    rows_s = [s[i, w].tolist() for i in range(b) for w in range(nw)]
    rows_t = [t[i, w].tolist() for i in range(b) for w in range(nw)]
    anchors = [queue[:, w].tolist() for i in range(b) for w in range(nw)]
    want = _naive_kl(rows_s, rows_t, anchors, 0.1, 0.01)
    assert abs(float(got) - want) < 1e-4 * max(1.0, abs(want))
    # the explicit per-row layout [B*nW, K, E] gives the same value
    per_row = queue.permute(1, 0, 2).unsqueeze(0).expand(b, -1, -1, -1).reshape(b * nw, k, e)
    assert torch.allclose(relational_kl_loss(s.reshape(-1, e), t.reshape(-1, e), per_row, 0.1, 0.01), got, atol=1e-6)


def test_zero_when_student_equals_teacher_at_equal_temperature_and_positive_otherwise():
    s, t, a, _ = _tiny()
    assert float(relational_kl_loss(s, s.clone(), a, 0.2, 0.2)) == pytest.approx(0.0, abs=1e-6)
    assert float(relational_kl_loss(s, t, a, 0.2, 0.2)) > 1e-3
    # scale invariance (cosine similarities)
    assert torch.allclose(relational_kl_loss(3 * s, t, 0.5 * a), relational_kl_loss(s, t, a), atol=1e-6)


def test_defaults_are_the_papers_values():
    s, t, a, _ = _tiny()
    defaults = inspect.signature(relational_kl_loss).parameters
    assert (defaults["tau_student"].default, defaults["tau_teacher"].default) == (0.1, 0.01)
    assert torch.allclose(relational_kl_loss(s, t, a), relational_kl_loss(s, t, a, 0.1, 0.01))


# ---------------------------------------------------------------- gradients
def test_gradcheck_float64_student():
    s, t, a, ar = (x.double() for x in _tiny(n=3, d=4, k=5, seed=2))
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: relational_kl_loss(x, t, a, 0.1, 0.01), (s,))
    assert torch.autograd.gradcheck(lambda x: relational_kl_loss(x, t, ar, 0.5, 0.3), (s,))


def test_gradient_reaches_student_only():
    s, t, a, _ = _tiny()
    s.requires_grad_(True)
    t.requires_grad_(True)
    a.requires_grad_(True)
    relational_kl_loss(s, t, a).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert t.grad is None and a.grad is None


# ---------------------------------------------------------------- edge cases and numerics
def test_empty_queue_is_zero_and_keeps_graph():
    s, t, _, _ = _tiny()
    s.requires_grad_(True)
    for anchors in (torch.zeros(0, 4), torch.zeros(3, 0, 4)):
        loss = relational_kl_loss(s, t, anchors)
        assert torch.isfinite(loss) and loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.equal(s.grad, torch.zeros_like(s))
        s.grad = None
    # no rows
    e = torch.zeros(0, 4, requires_grad=True)
    assert relational_kl_loss(e, e.detach(), torch.randn(2, 4)).item() == 0.0


def test_extreme_temperature_is_finite():
    s, t, a, _ = _tiny()
    s.requires_grad_(True)
    loss = relational_kl_loss(100 * s, t, a, 1e-3, 1e-4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_shape_errors():
    s, t, a, _ = _tiny()
    with pytest.raises(ValueError):
        relational_kl_loss(s, t[:2], a)
    with pytest.raises(ValueError):
        relational_kl_loss(s, t, a[:, :3])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_fp32_result(dtype):
    s, t, a, _ = _tiny(n=8, d=16, k=36, seed=3)
    s16, t16, a16 = s.to(dtype), t.to(dtype), a.to(dtype)
    got = relational_kl_loss(s16, t16, a16, 0.1, 0.01)
    want = relational_kl_loss(s16.float(), t16.float(), a16.float(), 0.1, 0.01)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)


def test_autocast_does_not_lower_the_similarity_precision():
    s, t, a, _ = _tiny(n=8, d=64, k=36, seed=4)
    want = relational_kl_loss(s, t, a, 0.1, 0.01)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = relational_kl_loss(s, t, a, 0.1, 0.01)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- global head
@pytest.mark.parametrize("spatial", [(4, 5), (2, 3, 4)])
def test_global_head_shapes_and_value(spatial):
    torch.manual_seed(0)
    head = GlobalRelationalHead(in_channels=6, dim=8)
    x = torch.randn(3, 6, *spatial)
    z = head.project(x)
    w = head(x)
    assert z.shape == (3, 8) and w.shape == (3, 8)
    # no nonlinearity by default: project = two affine maps of the global average
    l1, l2 = head.projector.net[0], head.projector.net[1]
    pooled = x.reshape(3, 6, -1).mean(-1)
    assert torch.allclose(z, l2(l1(pooled)), atol=1e-6)
    assert torch.allclose(w, head.predictor.net[1](head.predictor.net[0](z)), atol=1e-6)
    assert head.projector.net[0].out_features == 6                  # hidden defaults to in_channels


def test_global_head_options_and_ema_twin():
    head = GlobalRelationalHead(4, 3, hidden=7, predictor=False)
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(head(x), head.project(x))
    assert head.projector.net[0].out_features == 7
    act = GlobalRelationalHead(4, 3, activation=True)
    assert any(isinstance(m, torch.nn.ReLU) for m in act.modules())
    assert act(x).shape == (2, 3)
    student = GlobalRelationalHead(4, 3)
    teacher = EMATeacher(student, momentum=0.99)
    with torch.no_grad():
        assert torch.allclose(teacher.model.project(x), student.project(x))
    with pytest.raises(ValueError):
        student.project(torch.randn(2, 5, 3, 3))


# ---------------------------------------------------------------- local head
def _naive_local_project(head, x):
    """Explicit loops over windows with torch's adaptive average pooling."""
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    geo = head.geometry(spatial)
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[len(spatial)]
    import itertools
    ranges = [range(n) for (_, _, n, _) in geo]
    out = []
    for pos in itertools.product(*ranges):
        sl = tuple(slice(p * stride, p * stride + side) for p, (side, stride, _, _) in zip(pos, geo))
        win = x[(slice(None), slice(None)) + sl]
        pooled = pool(win, tuple(cells for (_, _, _, cells) in geo))          # [B, C, c1..]
        cells = pooled.reshape(b, c, -1).transpose(1, 2)                       # [B, P, C]
        mapped = head.projector(cells).transpose(1, 2)                         # [B, C, P]
        out.append(mapped.reshape(b, -1))
    return torch.stack(out, dim=1)


def _expected_layout(spatial, fraction, pooled, c):
    nw, p = 1, 1
    for s in spatial:
        side = max(1, int(math.floor(s * fraction + 0.5)))
        stride = max(1, side // 2)
        nw *= (s - side) // stride + 1
        p *= min(pooled, side)
    return nw, c * p


@pytest.mark.parametrize("spatial,fraction,pooled", [
    ((12, 10), 0.5, 4),      # 6x5 windows, stride 3x2, pooled bins overlap (5 -> 4 cells)
    ((16, 16), 0.25, 4),     # 2D paper geometry scaled down (side 4, stride 2)
    ((5, 16, 16), 0.25, 4),  # anisotropic 3D patch: side 1 along the first axis
    ((6, 7, 9), 0.5, 2),
])
def test_local_head_matches_window_loop(spatial, fraction, pooled):
    torch.manual_seed(0)
    c = 3
    head = LocalRelationalHead(c, window_fraction=fraction, pooled=pooled)
    x = torch.randn(2, c, *spatial, requires_grad=True)
    z = head.project(x)
    nw, e = head.window_layout(spatial)
    assert (nw, e) == _expected_layout(spatial, fraction, pooled, c)
    assert z.shape == (2, nw, e)
    assert torch.allclose(z, _naive_local_project(head, x), atol=1e-5)
    w = head(x)
    assert w.shape == (2, nw, e)
    w.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_local_head_layouts_of_the_paper_geometries():
    head = LocalRelationalHead(4, window_fraction=0.25, pooled=8)
    # 2D: 64x64 windows at stride 32 over 256x256; every window that fits: 7x7
    assert head.window_layout((256, 256)) == (49, 4 * 64)
    # 3D: 20^3 windows at stride 10 over 112x112x80 via per-axis fractions, pooled to 4^3
    head3 = LocalRelationalHead(2, window_fraction=(20 / 112, 20 / 112, 0.25), pooled=4)
    assert [g[0] for g in head3.geometry((112, 112, 80))] == [20, 20, 20]
    assert head3.window_layout((112, 112, 80)) == (10 * 10 * 7, 2 * 64)
    assert LocalRelationalHead(4).window_layout((5, 16, 16)) == (5 * 7 * 7, 4 * 1 * 4 * 4)
    with pytest.raises(ValueError):
        LocalRelationalHead(2, window_fraction=(0.25, 0.25)).window_layout((8, 8, 8))
    with pytest.raises(ValueError):
        LocalRelationalHead(2, window_fraction=0.0)


def test_local_head_predictor_is_per_cell():
    torch.manual_seed(1)
    head = LocalRelationalHead(3, window_fraction=0.5, pooled=2)
    x = torch.randn(2, 3, 8, 8)
    z = head.project(x)
    b, nw, e = z.shape
    cells = z.reshape(b, nw, 3, -1).transpose(-1, -2)                    # [B, nW, P, C]
    want = head.predictor(cells).transpose(-1, -2).reshape(b, nw, e)
    assert torch.allclose(head(x), want, atol=1e-6)
    assert torch.equal(LocalRelationalHead(3, 0.5, 2, predictor=False).predict(z), z)


@pytest.mark.parametrize("spatial", [(16, 16), (5, 16, 16)])
def test_local_distillation_with_a_queue_end_to_end(spatial):
    """Teacher windows fill a RingBuffer [K, nW, E]; the student is distilled against it."""
    torch.manual_seed(2)
    c = 3
    student = LocalRelationalHead(c)
    teacher = EMATeacher(student)
    nw, e = student.window_layout(spatial)
    queue = RingBuffer(6, (nw, e))
    x = torch.randn(2, c, *spatial, requires_grad=True)
    with torch.no_grad():
        tz = teacher.model.project(x)
    # empty queue: zero with graph
    items, _ = queue.get()
    loss0 = relational_kl_loss(student(x), tz, items.permute(1, 0, 2))
    assert loss0.item() == 0.0 and loss0.requires_grad
    for _ in range(2):
        queue.push(tz + 0.1 * torch.randn_like(tz))
    items, _ = queue.get()
    assert items.shape == (4, nw, e)
    loss = relational_kl_loss(student(x), tz, items.permute(1, 0, 2))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_local_head_under_autocast_runs():
    head = LocalRelationalHead(2)
    x = torch.randn(1, 2, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = head(x)
        loss = relational_kl_loss(z, z.detach(), torch.randn(3, z.shape[1], z.shape[2]).permute(1, 0, 2))
    assert z.shape == (1, 49, 32) and loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("spatial", [(8, 8), (4, 8, 8)])
def test_global_head_cells_separate_instance_normed_images(spatial):
    """Instance norm makes every image's global average the same: the 1-cell embedding cannot tell images
    apart (flat relational distributions), the 2-cell one can."""
    torch.manual_seed(0)
    x = torch.nn.functional.leaky_relu(torch.nn.functional.instance_norm(torch.randn(6, 4, *spatial)
                                                                         + torch.linspace(-3, 3, spatial[-1])))
    x[3:] = x[3:].flip(-1)                     # same statistics, another layout
    flat = GlobalRelationalHead(4, 16, pool_cells=1)
    cells = GlobalRelationalHead(4, 16, pool_cells=2, spatial_dims=len(spatial))
    assert cells.projector.net[0].in_features == 4 * 2 ** len(spatial)
    def spread(z):
        z = torch.nn.functional.normalize(z, dim=1)
        return float((z @ z.t()).min())
    with torch.no_grad():
        assert spread(flat.project(x)) > 0.99                  # every pair nearly identical
        assert spread(cells.project(x)) < 0.9
    with pytest.raises(ValueError):
        cells.project(torch.randn(2, 4, 4, 4, 4) if len(spatial) == 2 else torch.randn(2, 4, 8, 8))  # wrong axes
