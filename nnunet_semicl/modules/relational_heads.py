"""Projection heads of ACTION's relational (ISD-style) distillation (methods.md sections 3.2, 3.3).

* :class:`GlobalRelationalHead` (stage i): the bottleneck average-pooled to a few cells per axis, a
  projector and a student-only predictor, one embedding per image.
* :class:`LocalRelationalHead` (stage ii): overlapping windows over the output logits, each
  average-pooled to a few cells and mapped per cell, one embedding per window.

The trainer keeps an EMA twin of each head (``modules.ema.EMATeacher``); the teacher calls only
``project`` (``teacher.model.project(x)``), the student ``forward`` = ``predict(project(x))``.
Both are dimension-agnostic (``[B, C, *spatial]`` with 1, 2 or 3 spatial axes).
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from nnunet_semicl.modules.heads import MLP, grid_pool


class GlobalRelationalHead(nn.Module):
    """Bottleneck ``[B, C, *spatial]`` -> average pool to ``pool_cells`` per axis -> projector -> ``[B, dim]``.

    Why cells and not ISD's global average: nnU-Net normalises every stage per image and channel
    (instance norm), so the global average of a stage's output is nearly the same for every image
    and all embeddings coincide: the relational distributions over the queue are flat and the
    distillation loss is ~0 (measured: the ``global`` term logged 0.0000 on ACDC). Pooling to a few
    cells keeps where things are, which instance norm does not remove.

    Args:
        in_channels: channels C of the bottleneck feature map.
        dim: embedding size (paper: 512 in 2D, 128 in 3D).
        hidden: projector width (default ``in_channels``, as the official 256 -> 256 -> d).
        pool_cells: cells per spatial axis of the pooling (1: ISD's global average).
        predictor: build the student predictor (two Linear layers dim -> dim -> dim); without it
            ``predict`` is the identity.
        activation: put BatchNorm1d + ReLU between the Linear layers (ISD's MLP). The official ACTION
            code has no nonlinearity, so the default is False (then each head is an affine map).
            With True, training needs more than one image per batch (BatchNorm1d).
    """

    def __init__(self, in_channels: int, dim: int, hidden: Optional[int] = None, predictor: bool = True,
                 activation: bool = False, pool_cells: int = 1, spatial_dims: int = 2):
        super().__init__()
        hidden = int(in_channels if hidden is None else hidden)
        self.in_channels, self.dim, self.hidden = int(in_channels), int(dim), hidden
        self.pool_cells, self.spatial_dims = int(pool_cells), int(spatial_dims)
        pooled = self.in_channels * self.pool_cells ** (self.spatial_dims if self.pool_cells > 1 else 0)
        self.projector = MLP([pooled, hidden, self.dim], activation=activation)
        self.predictor = MLP([self.dim, self.dim, self.dim], activation=activation) if predictor else nn.Identity()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[1] != self.in_channels or (self.pool_cells > 1 and x.dim() - 2 != self.spatial_dims):
            raise ValueError(f"GlobalRelationalHead expects [B, {self.in_channels}, *spatial]"
                             + (f" with {self.spatial_dims} spatial axes" if self.pool_cells > 1 else "")
                             + f", got {tuple(x.shape)}")
        return self.projector(grid_pool(x, self.pool_cells) if self.pool_cells > 1 else x.flatten(2).mean(-1))

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        return self.predictor(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(self.project(x))


def _window_geometry(size: int, fraction: float, pooled: int) -> Tuple[int, int, int, int]:
    """(side, stride, number of windows, cells) along one axis."""
    side = max(1, int(math.floor(size * fraction + 0.5)))   # round half up
    side = min(side, size)
    stride = max(1, side // 2)
    n = (size - side) // stride + 1
    cells = min(pooled, side)
    return side, stride, n, cells


def _window_pool_matrix(size: int, side: int, stride: int, n: int, cells: int,
                        device, dtype) -> torch.Tensor:
    """``[n * cells, size]`` matrix: row (w, i) averages cell i of window w (adaptive-pool bins).

    Adaptive average pooling of ``side`` positions into ``cells`` bins uses bin
    ``[floor(i*side/cells), ceil((i+1)*side/cells))``; window w starts at ``w * stride``.
    """
    w = torch.arange(n, device=device).view(n, 1)
    i = torch.arange(cells, device=device).view(1, cells)
    start = w * stride + torch.div(i * side, cells, rounding_mode="floor")
    end = w * stride + torch.div((i + 1) * side + cells - 1, cells, rounding_mode="floor")
    start, end = start.reshape(-1, 1), end.reshape(-1, 1)
    pos = torch.arange(size, device=device).view(1, size)
    inside = (pos >= start) & (pos < end)
    return inside.to(dtype) / (end - start).to(dtype)


class LocalRelationalHead(nn.Module):
    """Output logits ``[B, C, *spatial]`` -> one embedding per local window ``[B, nW, E]``.

    Per spatial axis of size S, windows have side ``max(1, round(S * window_fraction))`` and stride
    ``max(1, side // 2)`` (every window that fits entirely; ``nW`` is the product over axes). Each
    window is adaptive-average-pooled to ``min(pooled, side)`` cells per axis, then a per-cell 1x1 map
    C -> 2C -> C (no nonlinearity, as the official code) is applied and the cells are flattened
    channel-major: ``E = C * prod(cells)``. The student predictor is a further per-cell C -> C -> C
    map.

    Pooling is done with one small averaging matrix per axis (separable, exact adaptive-pool bins),
    so no window is ever materialised and there is no Python loop over windows.

    Args:
        num_classes: channels C of the logits.
        window_fraction: window side as a fraction of each axis (0.25: 64 of 256 in the 2D paper), or
            one fraction per spatial axis (e.g. ``(0.25, 0.18, 0.18)`` for the 3D paper's 20 of
            80 x 112 x 112).
        pooled: cells per axis and window (the official code: 8 in 2D, 4 in 3D).
        predictor: build the student predictor (otherwise ``predict`` is the identity).
    """

    def __init__(self, num_classes: int, window_fraction: Union[float, Sequence[float]] = 0.25, pooled: int = 4,
                 predictor: bool = True):
        super().__init__()
        fractions = [window_fraction] if isinstance(window_fraction, (int, float)) else list(window_fraction)
        if not fractions or not all(0.0 < float(f) <= 1.0 for f in fractions):
            raise ValueError(f"window_fraction must be in (0, 1] (or a sequence of such), got {window_fraction}")
        if pooled < 1:
            raise ValueError(f"pooled must be >= 1, got {pooled}")
        c = int(num_classes)
        self.num_classes, self.pooled = c, int(pooled)
        self.window_fraction = float(window_fraction) if isinstance(window_fraction, (int, float)) \
            else tuple(float(f) for f in window_fraction)
        self.projector = nn.Sequential(nn.Linear(c, 2 * c), nn.Linear(2 * c, c))
        self.predictor = nn.Sequential(nn.Linear(c, c), nn.Linear(c, c)) if predictor else nn.Identity()

    def geometry(self, spatial_shape: Sequence[int]) -> List[Tuple[int, int, int, int]]:
        """Per axis: (side, stride, number of windows, cells)."""
        fr = self.window_fraction
        if isinstance(fr, tuple):
            if len(fr) != len(spatial_shape):
                raise ValueError(f"window_fraction has {len(fr)} entries, the logits {len(spatial_shape)} spatial axes")
        else:
            fr = (fr,) * len(spatial_shape)
        return [_window_geometry(int(s), f, self.pooled) for s, f in zip(spatial_shape, fr)]

    def window_layout(self, spatial_shape: Sequence[int]) -> Tuple[int, int]:
        """``(num_windows, embedding_dim)`` for logits of this spatial shape (to size a queue)."""
        geo = self.geometry(spatial_shape)
        return math.prod(g[2] for g in geo), self.num_classes * math.prod(g[3] for g in geo)

    def pool_windows(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, *spatial]`` -> ``[B, nW, C, P]``: cell averages (P = cells per window)."""
        b, c = x.shape[:2]
        spatial = x.shape[2:]
        geo = self.geometry(spatial)
        y = x
        for axis, (size, (side, stride, n, cells)) in enumerate(zip(spatial, geo)):
            m = _window_pool_matrix(size, side, stride, n, cells, x.device, x.dtype)
            # contract spatial axis `axis` with m: size -> n * cells, kept in place
            y = (y.movedim(2 + axis, -1) @ m.t()).movedim(-1, 2 + axis)
        # y: [B, C, n1*c1, n2*c2, ...] -> [B, C, n1, c1, n2, c2, ...]
        split = [b, c]
        for _, _, n, cells in geo:
            split += [n, cells]
        y = y.reshape(split)
        d = len(geo)
        win_axes = [2 + 2 * k for k in range(d)]
        cell_axes = [3 + 2 * k for k in range(d)]
        y = y.permute(0, *win_axes, 1, *cell_axes)                    # [B, n1.., C, c1..]
        num_windows = math.prod(g[2] for g in geo)
        return y.reshape(b, num_windows, c, -1)

    def _per_cell(self, mlp: nn.Module, z: torch.Tensor) -> torch.Tensor:
        # z: [B, nW, C, P]; apply a channel map per cell
        return mlp(z.transpose(-1, -2)).transpose(-1, -2)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[1] != self.num_classes:
            raise ValueError(f"LocalRelationalHead expects [B, {self.num_classes}, *spatial], got {tuple(x.shape)}")
        z = self._per_cell(self.projector, self.pool_windows(x))       # [B, nW, C, P]
        return z.flatten(2)                                            # [B, nW, C * P]

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        if isinstance(self.predictor, nn.Identity):
            return z
        b, nw, e = z.shape
        cells = z.reshape(b, nw, self.num_classes, e // self.num_classes)
        return self._per_cell(self.predictor, cells).flatten(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(self.project(x))
