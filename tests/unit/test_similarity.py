import pytest
import torch

from nnunet_semicl.losses.similarity import gather_dot, logsumexp_dot


@pytest.mark.parametrize("chunk,rows,dense", [(1, 11, 0), (3, 11, 0), (64, 11, 0), (3, 200, 0), (3, 200, 10 ** 6)])
def test_value_and_gradient_match_explicit_gather(chunk, rows, dense):
    torch.manual_seed(0)
    q = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    table = torch.randn(rows, 5, dtype=torch.float64)  # dense=0: the chunked path; 10**6: the dense one
    index = torch.randint(0, rows, (7, 4))
    out = gather_dot(q, table, index, chunk=chunk, dense_max_elements=dense)
    ref = (table[index] * q[:, None, :]).sum(-1)
    assert torch.allclose(out, ref)
    w = torch.randn(7, 4, dtype=torch.float64)
    (g,) = torch.autograd.grad((out * w).sum(), q)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), q)
    assert torch.allclose(g, g_ref)
    assert torch.autograd.gradcheck(lambda x: gather_dot(x, table, index, chunk, dense), (q,))


def test_table_gets_no_gradient_and_empty_index():
    q = torch.randn(3, 2, requires_grad=True)
    table = torch.randn(4, 2, requires_grad=True)
    gather_dot(q, table, torch.zeros(3, 2, dtype=torch.long)).sum().backward()
    assert table.grad is None and q.grad is not None
    empty = gather_dot(q, table, torch.zeros(3, 0, dtype=torch.long))
    assert empty.shape == (3, 0)
    with pytest.raises(ValueError):
        gather_dot(q, table, torch.zeros(2, 2, dtype=torch.long))


# ----------------------------------------------------------------------------- logsumexp_dot
def test_logsumexp_dot_matches_autograd_value_and_gradient():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(7, 5, generator=g, dtype=torch.float64) * 3
    keys = torch.randn(40, 5, generator=g, dtype=torch.float64) * 3    # large logits: the max shift matters
    a = q.clone().requires_grad_(True)
    ref = torch.logsumexp(a @ keys.T, dim=1)
    (ref * torch.arange(1.0, 8.0, dtype=torch.float64)).sum().backward()
    b = q.clone().requires_grad_(True)
    got = logsumexp_dot(b, keys)
    (got * torch.arange(1.0, 8.0, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(b.grad, a.grad)
    assert torch.autograd.gradcheck(lambda x: logsumexp_dot(x, keys), (q.clone().requires_grad_(True),))


def test_logsumexp_dot_keys_constant_and_empty():
    q = torch.randn(3, 4, requires_grad=True)
    keys = torch.randn(6, 4, requires_grad=True)
    logsumexp_dot(q, keys).sum().backward()
    assert keys.grad is None and q.grad is not None
    empty = logsumexp_dot(q, torch.zeros(0, 4))
    assert empty.shape == (3,) and bool(torch.isneginf(empty).all())
    with pytest.raises(ValueError):
        logsumexp_dot(q, torch.zeros(6, 5))


@pytest.mark.parametrize("dense", [0, 10 ** 6])
def test_rows_select_a_query_per_index_row(dense):
    """``rows``: each distinct query passed once; the same values and gradient as the repeated queries."""
    torch.manual_seed(0)
    q = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    table = torch.randn(30, 5, dtype=torch.float64)
    rows = torch.tensor([0, 2, 2, 1, 0, 3, 2])
    index = torch.randint(0, 30, (7, 6))
    out = gather_dot(q, table, index, chunk=3, dense_max_elements=dense, rows=rows)
    ref = gather_dot(q[rows], table, index, chunk=3, dense_max_elements=dense)
    assert torch.allclose(out, ref)
    w = torch.randn(7, 6, dtype=torch.float64)
    assert torch.allclose(*(torch.autograd.grad((o * w).sum(), q)[0] for o in (out, ref)))
    assert torch.autograd.gradcheck(lambda x: gather_dot(x, table, index, 3, dense, rows=rows), (q,))
    with pytest.raises(ValueError):
        gather_dot(q, table, index, rows=rows[:5])
