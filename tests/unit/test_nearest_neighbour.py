"""Nearest-neighbour (diversity) objective of MONA/ARCO (methods.md 5.3c)."""
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_semicl.losses.nearest_neighbour import (NearestNeighbourPool, embedding_dim, image_embedding,
                                                    nearest_neighbour_loss)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _cos(u, v):
    u, v = u.tolist(), v.tolist()
    return sum(a * b for a, b in zip(u, v)) / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _naive(student, query, pool, k, target=None):
    target = student if target is None else target
    total, count = 0.0, 0
    for i in range(student.shape[0]):
        sims = [(_cos(query[i], pool[j]), j) for j in range(pool.shape[0])]
        nbrs = [j for _, j in sorted(sims, key=lambda t: -t[0])[:k]]
        for j in nbrs:
            total += 2 - 2 * _cos(target[i], pool[j])
            count += 1
    return total / count


def test_image_embedding_shapes_and_values():
    g = gen(1)
    rep = torch.randn(2, 5, 8, 12, generator=g, requires_grad=True)
    e = image_embedding(rep, 4)
    assert e.shape == (2, 5 * 16) and e.shape[1] == embedding_dim(5, 2, 4)
    assert torch.allclose(e.norm(dim=1), torch.ones(2))
    # cell (1, 2) of channel 3 is the mean of rows 2-3, columns 6-8
    raw = rep.detach()[:, 3, 2:4, 6:9].mean(dim=(1, 2))
    pooled = F.adaptive_avg_pool2d(rep.detach(), 4).reshape(2, -1)
    assert torch.allclose(pooled[:, 3 * 16 + 1 * 4 + 2], raw)
    assert torch.allclose(e, F.normalize(pooled, dim=1))
    e.sum().backward()
    assert rep.grad is not None
    e3 = image_embedding(torch.randn(3, 4, 5, 6, 7, generator=g), 2)
    assert e3.shape == (3, 4 * 8) and e3.shape[1] == embedding_dim(4, 3, 2)


def test_pool_fifo_state_and_memory():
    pool = NearestNeighbourPool(size=3, dim=4)
    assert len(pool) == 0 and pool.get().shape == (0, 4)
    x = torch.randn(5, 4, generator=gen(2))
    pool.push(x[:2])
    pool.push(x[2:])
    assert len(pool) == 3
    assert torch.allclose(pool.get(), F.normalize(x[2:], dim=1))   # newest 3, oldest first, normalised
    fresh = NearestNeighbourPool(size=3, dim=4)
    fresh.load_state_dict(pool.state_dict())
    assert torch.equal(fresh.get(), pool.get())
    # bounded memory: 36 entries of a 256-channel map pooled to 4 x 4 (2D) / 4 x 4 x 4 (3D)
    assert NearestNeighbourPool(36, embedding_dim(256, 2)).memory_bytes() == 36 * 256 * 16 * 4   # 0.59 MB
    assert NearestNeighbourPool(36, embedding_dim(256, 3)).memory_bytes() < 2.5e6                # vs ~4.7 GB


@pytest.mark.parametrize("query", ["teacher", "student"])
def test_known_value_and_gradient(query):
    g = gen(3)
    student = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 6, generator=g, dtype=torch.float64)
    bank = torch.randn(8, 6, generator=g, dtype=torch.float64)
    loss = nearest_neighbour_loss(student, teacher, bank, k=5, query=query)
    q = teacher if query == "teacher" else student.detach()
    assert loss.item() == pytest.approx(_naive(student.detach(), q, bank, 5), rel=1e-10)
    loss.backward()
    assert float(student.grad.abs().sum()) > 1e-3                         # it trains the student
    assert torch.autograd.gradcheck(lambda s: nearest_neighbour_loss(s, teacher, bank, 5, query), (student,))


def test_as_released_has_the_released_value_and_no_gradient():
    g = gen(4)
    student = torch.randn(3, 6, generator=g, requires_grad=True)
    teacher = torch.randn(3, 6, generator=g)
    pool = NearestNeighbourPool(size=10, dim=6)
    pool.push(torch.randn(10, 6, generator=g))
    loss = nearest_neighbour_loss(student, teacher, pool, k=5, as_released=True)
    # neighbours of the student, distance of the teacher
    expected = _naive(student.detach(), student.detach(), pool.get(), 5, target=teacher)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))
    fixed = nearest_neighbour_loss(student, teacher, pool, k=5)
    student.grad = None
    fixed.backward()
    assert float(student.grad.abs().sum()) > 1e-3


def test_end_to_end_from_representation_maps_2d_and_3d():
    for spatial in [(16, 16), (8, 8, 8)]:
        g = gen(5)
        rep_s = torch.randn(2, 8, *spatial, generator=g, requires_grad=True)
        rep_t = rep_s.detach() + 0.1 * torch.randn(2, 8, *spatial, generator=g)
        pool = NearestNeighbourPool(36, embedding_dim(8, len(spatial)))
        empty = nearest_neighbour_loss(image_embedding(rep_s), image_embedding(rep_t), pool)
        assert empty.item() == 0.0 and empty.requires_grad           # empty pool: zero with graph
        empty.backward()
        assert torch.equal(rep_s.grad, torch.zeros_like(rep_s))
        pool.push(image_embedding(torch.randn(3, 8, *spatial, generator=g)))   # fewer entries than k
        loss = nearest_neighbour_loss(image_embedding(rep_s), image_embedding(rep_t), pool)
        assert 0 < loss.item() < 4
        rep_s.grad = None
        loss.backward()
        assert float(rep_s.grad.abs().sum()) > 0
        pool.push(image_embedding(rep_t))                            # after the loss, as documented
        assert len(pool) == 5


def test_bad_arguments():
    s = torch.randn(2, 4)
    with pytest.raises(ValueError):
        nearest_neighbour_loss(s, None, torch.randn(3, 4))          # the teacher query needs the teacher
    with pytest.raises(ValueError):
        nearest_neighbour_loss(s, s, torch.randn(3, 4), query="pool")
    assert nearest_neighbour_loss(s, None, torch.randn(3, 4), query="student").item() >= 0
