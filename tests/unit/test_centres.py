"""ACTION++ class centres (spec 4.3, 4.4): simplex geometry, Hungarian assignment, adaptive allocation."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from nnunet_semicl.modules.centres import AdaptiveCentreAllocation, assign_centres, simplex_centres


def _check_simplex(c: torch.Tensor, k: int, d: int, atol: float = 1e-6):
    assert c.shape == (k, d)
    c = c.double()
    torch.testing.assert_close(c.norm(dim=1), torch.ones(k, dtype=torch.float64), atol=atol, rtol=0)
    gram = c @ c.T
    expected = torch.full((k, k), -1.0 / (k - 1), dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    torch.testing.assert_close(gram, expected, atol=atol, rtol=0)
    torch.testing.assert_close(c.sum(0), torch.zeros(d, dtype=torch.float64), atol=atol * k, rtol=0)


@pytest.mark.parametrize("k", range(2, 9))
def test_simplex_geometry(k):
    for d in sorted({k - 1, k, k + 3, 16, 128}):
        if d < k - 1:
            continue
        _check_simplex(simplex_centres(k, d), k, d)


def test_simplex_dtype_and_float64_exactness():
    c = simplex_centres(4, 496)
    assert c.dtype == torch.float32
    c64 = simplex_centres(4, 496, dtype=torch.float64)
    _check_simplex(c64, 4, 496, atol=1e-12)
    torch.testing.assert_close(c, c64.float())


def test_simplex_k2_antipodal():
    for d in (1, 2, 128):
        c = simplex_centres(2, d, seed=3).double()
        torch.testing.assert_close(c[0], -c[1], atol=1e-12, rtol=0)
        assert abs(float(c[0].norm()) - 1.0) < 1e-6


def test_simplex_seed_determinism():
    a, b = simplex_centres(4, 32, seed=7), simplex_centres(4, 32, seed=7)
    assert torch.equal(a, b)
    c = simplex_centres(4, 32, seed=8)
    assert (a - c).abs().max() > 1e-2
    _check_simplex(c, 4, 32)


@pytest.mark.parametrize("k,d", [(1, 4), (0, 4), (4, 2), (5, 3), (9, 7)])
def test_simplex_invalid(k, d):
    with pytest.raises(ValueError):
        simplex_centres(k, d)


def _brute_force(sim: torch.Tensor):
    k, m = sim.shape
    best, best_perm = -float("inf"), None
    for perm in itertools.permutations(range(m), k):
        v = float(sum(sim[i, perm[i]] for i in range(k)))
        if v > best:
            best, best_perm = v, perm
    return best, best_perm


@pytest.mark.parametrize("seed", range(6))
def test_assignment_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    k = 2 + seed % 5  # K = 2..6
    d = 8
    phi = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    psi = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    pi = assign_centres(phi, psi)
    assert pi.dtype == torch.long and sorted(pi.tolist()) == list(range(k))
    sim = phi @ psi.T
    best, _ = _brute_force(sim)
    got = float(sim[torch.arange(k), pi].sum())
    assert got == pytest.approx(best, abs=1e-12)


def test_assignment_rectangular_and_recovers_permutation():
    psi = simplex_centres(5, 16, seed=1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    phi = F.normalize(psi[perm] + 0.05 * torch.randn(5, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    assert assign_centres(phi, psi).tolist() == perm.tolist()
    # 2 centroids, 5 centres: distinct centres, the optimum of the rectangular problem
    pi = assign_centres(phi[:2], psi)
    assert pi.tolist() == perm[:2].tolist()
    with pytest.raises(ValueError):
        assign_centres(phi, psi[:3])


def test_allocation_initial_state():
    alloc = AdaptiveCentreAllocation(4, 16)
    assert alloc.assignment.tolist() == [0, 1, 2, 3]
    assert not alloc.seen.any()
    torch.testing.assert_close(alloc.centres, simplex_centres(4, 16))
    torch.testing.assert_close(alloc.assigned_centres(), alloc.centres)
    assert set(dict(alloc.named_buffers())) == {"centres", "centroids", "seen", "assignment"}


def test_allocation_momentum_update_by_hand():
    k, d = 3, 4
    alloc = AdaptiveCentreAllocation(k, d, eta=0.1)
    # step 1: class 0 seen with two (unnormalised) features, class 2 with one; class 1 absent
    f1 = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, -5.0]])
    y1 = torch.tensor([0, 0, 2])
    alloc.update(f1, y1)
    s2 = 2 ** -0.5
    phi0 = torch.tensor([s2, s2, 0.0, 0.0])        # mean of e1, e2 -> normalised
    phi2 = torch.tensor([0.0, 0.0, 0.0, -1.0])
    torch.testing.assert_close(alloc.centroids[0], phi0)
    torch.testing.assert_close(alloc.centroids[2], phi2)
    torch.testing.assert_close(alloc.centroids[1], torch.zeros(d))  # absent: untouched
    assert alloc.seen.tolist() == [True, False, True]
    # step 2: class 0 only, feature along e3
    alloc.update(torch.tensor([[0.0, 0.0, 7.0, 0.0]]), torch.tensor([0]))
    expected0 = 0.9 * phi0 + 0.1 * torch.tensor([0.0, 0.0, 1.0, 0.0])
    expected0 = expected0 / expected0.norm()
    torch.testing.assert_close(alloc.centroids[0], expected0)
    torch.testing.assert_close(alloc.centroids[2], phi2)             # absent this step: untouched
    torch.testing.assert_close(alloc.centroids[1], torch.zeros(d))
    # labels outside [0, K) are ignored
    before = alloc.centroids.clone()
    alloc.update(torch.randn(3, d), torch.tensor([-1, 3, 255]))
    torch.testing.assert_close(alloc.centroids, before)


def test_allocation_assignment_follows_centroids_and_unseen_classes():
    k, d = 4, 8
    alloc = AdaptiveCentreAllocation(k, d, seed=2)
    psi = alloc.centres
    # class 0's features point at centre 2, class 3's at centre 0; classes 1, 2 unseen
    feats = torch.cat([psi[2].expand(5, d), psi[0].expand(3, d)]) * 3.0
    labels = torch.tensor([0] * 5 + [3] * 3)
    pi = alloc.update(feats, labels)
    assert pi[0].item() == 2 and pi[3].item() == 0
    # unseen classes take the remaining centres in ascending order
    assert pi[1].item() == 1 and pi[2].item() == 3
    assert sorted(pi.tolist()) == list(range(k))
    torch.testing.assert_close(alloc.assigned_centres(), psi[pi])
    # now every class is seen near a permuted centre: the assignment recovers it (after warm momentum)
    perm = torch.tensor([1, 3, 0, 2])
    for _ in range(60):
        alloc.update(psi[perm].repeat(2, 1), torch.arange(k).repeat(2))
    assert alloc.assignment.tolist() == perm.tolist()


def test_allocation_update_no_grad_and_shape_checks():
    alloc = AdaptiveCentreAllocation(3, 5)
    f = torch.randn(6, 5, requires_grad=True)
    alloc.update(f, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert not alloc.centroids.requires_grad
    with pytest.raises(ValueError):
        alloc.update(torch.randn(6, 4), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError):
        alloc.update(torch.randn(6, 5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError):
        AdaptiveCentreAllocation(5, 3)  # d < K - 1


def test_allocation_state_dict_round_trip():
    a = AdaptiveCentreAllocation(4, 8, seed=5)
    psi = a.centres
    a.update(torch.cat([psi[3], psi[2], psi[1]]).view(3, 8), torch.tensor([0, 1, 2]))
    assert a.assignment.tolist() != [0, 1, 2, 3]
    b = AdaptiveCentreAllocation(4, 8, seed=99)  # different centres before loading
    b.load_state_dict(a.state_dict())
    for name in ("centres", "centroids", "seen", "assignment"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(b.assigned_centres(), a.assigned_centres())
    # both continue identically
    f, y = torch.randn(10, 8, generator=torch.Generator().manual_seed(0)), torch.arange(10) % 4
    a.update(f, y)
    b.update(f, y)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.assignment, b.assignment)
