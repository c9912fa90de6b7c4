"""Dot products of queries with gathered rows of a constant key table, without gathering the rows.

Pixel-contrast losses (ReCo/ACTION anatomical contrast, U2PL/MONA memory banks) compare each of R
queries with N sampled keys: ``out[r, n] = q[r] . table[index[r, n]]``. Gathering the keys first
builds an ``[R, N, D]`` tensor (4 classes x 256 queries x 512 negatives x 512 dims = 1 GB) that
autograd keeps until backward; multiplying by the whole table instead costs ``R x P x D`` operations
for P pixels. ``gather_dot`` computes only the R x N needed products, in row chunks, and its
backward recomputes the gathered rows chunk by chunk: memory O(chunk x N x D), compute
O(R x N x D), and only ``index`` is saved. The table is treated as a constant (no gradient).
"""
import torch


class _GatherDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, table, index, chunk):
        out = torch.empty(index.shape, dtype=queries.dtype, device=queries.device)
        for s in range(0, index.shape[0], chunk):
            keys = table[index[s:s + chunk]].to(queries.dtype)                   # [c, N, D]
            out[s:s + chunk] = torch.bmm(keys, queries[s:s + chunk].unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(table, index)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        table, index = ctx.saved_tensors
        grad_q = torch.empty((index.shape[0], table.shape[1]), dtype=grad_out.dtype, device=grad_out.device)
        for s in range(0, index.shape[0], ctx.chunk):
            keys = table[index[s:s + ctx.chunk]].to(grad_out.dtype)             # [c, N, D]
            grad_q[s:s + ctx.chunk] = torch.bmm(grad_out[s:s + ctx.chunk].unsqueeze(1), keys).squeeze(1)
        return grad_q, None, None, None


def gather_dot(queries: torch.Tensor, table: torch.Tensor, index: torch.Tensor, chunk: int = 32,
               dense_factor: int = 8) -> torch.Tensor:
    """``[R, N]`` with ``out[r, n] = queries[r] . table[index[r, n]]``; gradient to ``queries`` only.

    Args:
        queries: ``[R, D]``.
        table: ``[P, D]`` constant keys (detached here); any float dtype (rows are cast per chunk,
            so an fp16 memory bank is never copied whole).
        index: long ``[R, N]`` rows of ``table``.
        chunk: query rows processed at once (bounds the temporary ``[chunk, N, D]`` tensor).
        dense_factor: when the table has at most ``dense_factor x N`` rows, multiply by the whole
            table instead (``[R, P]`` similarities, then pick): a dense matrix product is much
            faster than gathering ``R x N`` rows, and its ``[R, P]`` output is then small. Pixel
            tables at 1/4 resolution take this path; 50k-entry memory banks take the chunked one.
    """
    if queries.ndim != 2 or table.ndim != 2 or index.ndim != 2 or index.shape[0] != queries.shape[0]:
        raise ValueError(f"gather_dot: expected queries [R, D], table [P, D], index [R, N]; got "
                         f"{tuple(queries.shape)}, {tuple(table.shape)}, {tuple(index.shape)}")
    table = table.detach()
    if index.numel() == 0:
        return queries.new_zeros(index.shape) + queries.sum() * 0
    if table.shape[0] <= dense_factor * index.shape[1]:
        return (queries @ table.to(queries.dtype).t()).gather(1, index)
    return _GatherDot.apply(queries, table, index, max(1, int(chunk)))
