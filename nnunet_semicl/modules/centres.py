"""ACTION++ class centres: closed-form regular simplex and online adaptive allocation.

Spec: ``docs/methods.md`` (shared) sections 4.3 and 4.4.

* :func:`simplex_centres` replaces the official offline optimisation of the uniformity loss (and its
  missing ``optimal_{K}_{d}.npy`` files) by its exact minimiser for ``d >= K - 1``: K unit vectors
  forming a regular simplex, pairwise cosine ``-1/(K-1)`` (spec 4.3, "closed form").
* :func:`assign_centres` solves the one-to-one class -> centre assignment that maximises the summed
  cosine between running class centroids and centres (spec 4.4.2), with SciPy's Hungarian solver.
* :class:`AdaptiveCentreAllocation` keeps the running centroids and the current assignment in
  registered buffers, so ``state_dict()`` saves them and ``--c`` resumes them (spec 4.4).
"""
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from nnunet_semicl.modules.distributed import concat_all_gather


def simplex_centres(num_classes: int, dim: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[K, d]`` unit vectors forming a regular simplex centred at the origin (spec 4.3).

    Construction (closed form): the K standard basis vectors of R^K, centred on their mean, lie in
    the (K-1)-dimensional hyperplane orthogonal to the all-ones vector; their coordinates in the
    Helmert orthonormal basis of that hyperplane are the Helmert columns, and after normalisation
    every pair has cosine exactly ``-1/(K-1)``. Those (K-1)-dimensional points are then embedded
    into R^d by a random orthonormal map ``[K-1, d]`` drawn from ``seed`` (QR of a seeded Gaussian
    matrix, signs fixed so the map is unique), which preserves all inner products. Computed in
    float64 on the CPU, hence identical on every machine and rank for a given seed.

    ``K = 2`` gives two antipodal points. Raises ``ValueError`` when ``K < 2`` or ``d < K - 1`` (a
    regular K-simplex does not fit in fewer than K-1 dimensions).
    """
    k, d = int(num_classes), int(dim)
    if k < 2:
        raise ValueError(f"simplex_centres needs at least 2 classes, got num_classes={num_classes}")
    if d < k - 1:
        raise ValueError(f"a regular simplex of {k} points needs dim >= {k - 1}, got dim={dim}")
    # Helmert basis of {x in R^K : sum x = 0}: h_j = (1, ..., 1, -j, 0, ..., 0) / sqrt(j (j + 1)),
    # j = 1..K-1 (j ones). Point i (centred e_i) has coordinates (h_1[i], ..., h_{K-1}[i]).
    j = torch.arange(1, k, dtype=torch.float64)                       # [K-1]
    i = torch.arange(k, dtype=torch.float64).unsqueeze(1)             # [K, 1]
    helmert = torch.where(i < j, 1.0, torch.where(i == j, -j, 0.0)) / torch.sqrt(j * (j + 1))  # [K, K-1]
    # |e_i - 1/K| = sqrt((K-1)/K); after this the rows are unit vectors.
    points = helmert / np.sqrt((k - 1) / k)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    gauss = torch.randn(d, k - 1, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)                                     # q: [d, K-1], orthonormal columns
    sign = torch.sign(torch.diagonal(r))
    q = q * torch.where(sign == 0, torch.ones_like(sign), sign)        # unique (Haar-distributed) map
    centres = points @ q.T                                             # [K, d]
    centres = centres / centres.norm(dim=1, keepdim=True)              # exact unit norm after rounding
    return centres.to(dtype)


def assign_centres(centroids: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Optimal one-to-one assignment ``pi`` maximising ``sum_c centroids[c] . centres[pi(c)]`` (spec 4.4.2).

    ``centroids`` is ``[K, d]``, ``centres`` ``[M, d]`` with ``M >= K``; returns a LongTensor ``[K]``
    on ``centroids``' device with distinct entries in ``[0, M)``. For unit vectors this equals the
    paper's ``min sum_c |psi_pi(c) - phi_c|^2``. Uses ``scipy.optimize.linear_sum_assignment`` on the
    (tiny) K x M similarity matrix, in float64 on the CPU.
    """
    if centroids.dim() != 2 or centres.dim() != 2 or centroids.shape[1] != centres.shape[1]:
        raise ValueError(f"assign_centres expects [K, d] and [M, d], got {tuple(centroids.shape)} "
                         f"and {tuple(centres.shape)}")
    k, m = centroids.shape[0], centres.shape[0]
    if m < k:
        raise ValueError(f"need at least as many centres as centroids, got {m} < {k}")
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=centroids.device)
    sim = (centroids.detach().double().cpu() @ centres.detach().double().cpu().T).numpy()
    rows, cols = linear_sum_assignment(sim, maximize=True)
    out = np.empty(k, dtype=np.int64)
    out[rows] = cols
    return torch.from_numpy(out).to(centroids.device)


class AdaptiveCentreAllocation(nn.Module):
    """Running class centroids and their adaptive assignment to fixed simplex centres (spec 4.4).

    Buffers (all saved by ``state_dict()``):

    * ``centres`` ``[K, d]``: the fixed centres psi (``simplex_centres(K, d, seed)`` unless given).
    * ``centroids`` ``[K, d]``: running unit centroids phi of each class's anchor features.
    * ``seen`` ``[K]`` bool: whether a class has had anchors yet.
    * ``assignment`` ``[K]`` long: class c -> index of its centre (identity until the first update).

    Unseen classes: a class that has never had anchors has no centroid, so it takes no part in the
    optimisation. The assignment is solved for the seen classes against all K centres (rectangular
    Hungarian problem); the unseen classes then receive the remaining centres in ascending class and
    centre order. This is deterministic and loses nothing: an unseen class has no anchors, so its
    centre is only ever a negative key (all K centres are keys of every anchor), and from the
    moment it is seen it joins the optimisation. (The official code instead starts every centroid at
    a random unit vector and includes it in the assignment.)

    Args:
        num_classes: K, background included.
        dim: feature dimension d (needs d >= K - 1).
        eta: centroid momentum; ``phi <- normalise((1 - eta) phi + eta mean)`` with eta = 0.1 (spec 4.4.1).
        seed: seed of the simplex embedding.
        centres: optional ``[K, d]`` centres to use instead of the simplex (normalised here).
    """

    def __init__(self, num_classes: int, dim: int, eta: float = 0.1, seed: int = 0,
                 centres: Optional[torch.Tensor] = None):
        super().__init__()
        if not 0.0 < eta <= 1.0:
            raise ValueError(f"eta must be in (0, 1], got {eta}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.eta = float(eta)
        if centres is None:
            centres = simplex_centres(self.num_classes, self.dim, seed=seed)
        elif tuple(centres.shape) != (self.num_classes, self.dim):
            raise ValueError(f"centres must be [{self.num_classes}, {self.dim}], got {tuple(centres.shape)}")
        self.register_buffer("centres", F.normalize(centres.detach().float().clone(), dim=1))
        self.register_buffer("centroids", torch.zeros(self.num_classes, self.dim))
        self.register_buffer("seen", torch.zeros(self.num_classes, dtype=torch.bool))
        self.register_buffer("assignment", torch.arange(self.num_classes, dtype=torch.long))

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor, gather: bool = False) -> torch.Tensor:
        """Momentum-update the centroids of the classes present, then re-solve the assignment.

        ``features`` ``[n, d]`` (the student's anchor features; normalised here, no gradient is
        kept) and ``labels`` ``[n]``; labels outside ``[0, K)`` (e.g. an ignore label) are skipped.
        With ``gather=True`` the anchors of all ranks are used, so every rank keeps identical
        centroids and assignment under DDP. Returns the new ``assignment``.
        """
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be [n, {self.dim}], got {tuple(features.shape)}")
        if labels.shape != features.shape[:1]:
            raise ValueError(f"labels must be [{features.shape[0]}], got {tuple(labels.shape)}")
        if gather:
            features = concat_all_gather(features.detach().contiguous())
            labels = concat_all_gather(labels.contiguous())
        dev = self.centroids.device
        features = features.detach().to(dev, torch.float32)
        labels = labels.to(dev, torch.long)
        keep = (labels >= 0) & (labels < self.num_classes)
        features, labels = features[keep], labels[keep]
        z = F.normalize(features, dim=1)
        sums = torch.zeros_like(self.centroids).index_add_(0, labels, z)          # [K, d]
        counts = torch.bincount(labels, minlength=self.num_classes)               # [K]
        present = counts > 0
        batch_mean = F.normalize(sums / counts.clamp(min=1).unsqueeze(1), dim=1)  # spec 4.4.1
        momentum = F.normalize((1.0 - self.eta) * self.centroids + self.eta * batch_mean, dim=1)
        new = torch.where(self.seen.unsqueeze(1), momentum, batch_mean)           # first sighting: the mean
        self.centroids.copy_(torch.where(present.unsqueeze(1), new, self.centroids))
        self.seen.logical_or_(present)
        self._reassign()
        return self.assignment

    @torch.no_grad()
    def _reassign(self) -> None:
        seen = self.seen.cpu()
        if not bool(seen.any()):
            return  # keep the initial identity
        seen_idx = seen.nonzero(as_tuple=True)[0]
        unseen_idx = (~seen).nonzero(as_tuple=True)[0]
        chosen = assign_centres(self.centroids[seen_idx.to(self.centroids.device)], self.centres).cpu()
        free = torch.ones(self.num_classes, dtype=torch.bool)
        free[chosen] = False
        new = torch.empty(self.num_classes, dtype=torch.long)
        new[seen_idx] = chosen
        new[unseen_idx] = free.nonzero(as_tuple=True)[0]
        self.assignment.copy_(new.to(self.assignment.device))

    def assigned_centres(self) -> torch.Tensor:
        """``[K, d]``: row c is the centre currently assigned to class c (nu for class-c anchors)."""
        return self.centres[self.assignment]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, eta={self.eta}"
