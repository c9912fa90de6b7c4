"""On-device strong augmentation of an unlabeled batch together with its pseudo-labels.

Everything works on ``[B, C, *spatial]`` tensors with 2 or 3 spatial axes, per sample, vectorised
(no Python loop over pixels; at most a loop over the few spatial axes).

The order follows ReCo/ACTION (methods.md section 2.5): mix (CutMix), then colour jitter and blur
on the image only, then geometry. Unlike the official code, the geometric part (flips, rot90, a
smooth random warp) moves the image *and* every per-pixel target (pseudo-label, confidence, teacher
probabilities, validity mask) identically, so the student is never asked to predict an unwarped
label on a warped image.
"""
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def _rand(shape, generator, device):
    return torch.rand(shape, generator=generator, device=device)


def _bcast(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B] -> [B, 1, 1, ...] with ``ndim`` dims."""
    return v.view(-1, *([1] * (ndim - 1)))


# ----------------------------------------------------------------------------------------------
# photometric (image only)
# ----------------------------------------------------------------------------------------------
def colour_jitter(x: torch.Tensor, p: float = 0.5, brightness: Tuple[float, float] = (0.75, 1.25),
                  contrast: Tuple[float, float] = (0.75, 1.25), generator=None) -> torch.Tensor:
    """Per-image multiplicative brightness and contrast around the image mean, each image with prob ``p``."""
    b = x.shape[0]
    apply = _rand((b,), generator, x.device) < p
    br = brightness[0] + (brightness[1] - brightness[0]) * _rand((b,), generator, x.device)
    co = contrast[0] + (contrast[1] - contrast[0]) * _rand((b,), generator, x.device)
    br = torch.where(apply, br, torch.ones_like(br))
    co = torch.where(apply, co, torch.ones_like(co))
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    return (x - mean) * _bcast(co, x.ndim) + mean * _bcast(br, x.ndim)


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """[B] sigmas -> [B, 2r+1] normalised 1-D kernels."""
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].clamp_min(1e-3)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, p: float = 0.5, sigma: Tuple[float, float] = (0.15, 1.15),
                  generator=None) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma (in voxels), each image with prob ``p``.

    Implemented as a grouped convolution per spatial axis (one kernel per image), so images with
    different sigmas are blurred in one call. Images not selected get a delta kernel.
    """
    b, c = x.shape[:2]
    nd = x.ndim - 2
    apply = _rand((b,), generator, x.device) < p
    s = sigma[0] + (sigma[1] - sigma[0]) * _rand((b,), generator, x.device)
    radius = max(1, int(math.ceil(3 * sigma[1])))
    k = _gaussian_kernels(s, radius)
    delta = torch.zeros_like(k)
    delta[:, radius] = 1
    k = torch.where(apply[:, None], k, delta).to(x.dtype)
    k = k.repeat_interleave(c, dim=0)  # [B*C, K]
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    y = x.reshape(1, b * c, *x.shape[2:])
    for axis in range(nd):
        shape = [b * c, 1] + [1] * nd
        shape[2 + axis] = 2 * radius + 1
        pad = [0] * (2 * nd)
        # F.pad lists pads from the last axis backwards
        pad[2 * (nd - 1 - axis)] = radius
        pad[2 * (nd - 1 - axis) + 1] = radius
        y = conv(F.pad(y, pad, mode="replicate"), k.view(shape), groups=b * c)
    return y.view_as(x)


# ----------------------------------------------------------------------------------------------
# mixing
# ----------------------------------------------------------------------------------------------
def cutmix_masks(batch: int, spatial: Sequence[int], area: float = 0.5, p: float = 1.0,
                 generator=None, device=None) -> torch.Tensor:
    """Boolean ``[B, *spatial]`` boxes covering ``area`` of each image (each side ``area ** (1/dim)``).

    A sample gets an empty box with probability ``1 - p``.
    """
    nd = len(spatial)
    side = area ** (1.0 / nd)
    masks = torch.ones((batch, *spatial), dtype=torch.bool, device=device)
    for axis, size in enumerate(spatial):
        length = max(1, int(round(size * side)))
        start = (_rand((batch,), generator, device) * (size - length + 1)).long()
        pos = torch.arange(size, device=device)
        inside = (pos[None] >= start[:, None]) & (pos[None] < (start + length)[:, None])  # [B, size]
        view = [batch] + [1] * nd
        view[1 + axis] = size
        masks &= inside.view(view)
    keep = _rand((batch,), generator, device) < p
    return masks & _bcast(keep, nd + 1)


def copy_paste_masks(batch: int, spatial: Sequence[int], side: float = 2.0 / 3.0, generator=None,
                     device=None) -> torch.Tensor:
    """Where a labeled image is shown in each of ``batch`` labeled/unlabeled copy-paste mixes (BCP).

    Each mask is a box with sides ``side`` x the patch; even samples show the labeled image inside
    the box (labeled into unlabeled), odd samples outside it (unlabeled into labeled), so both
    directions of bidirectional copy-paste occur in every batch. ``[B, *spatial]`` bool.
    """
    box = cutmix_masks(batch, spatial, side ** len(spatial), 1.0, generator, device)
    outward = torch.arange(batch, device=box.device) % 2 == 1
    return torch.where(_bcast(outward, box.ndim), ~box, box)


def cutmix(tensors: Dict[str, torch.Tensor], box: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Paste, inside ``box``, the content of the next sample in the batch (roll by one).

    Every tensor is ``[B, ...spatial]`` or ``[B, C, *spatial]``; all are mixed with the same boxes.
    """
    out = {}
    for k, t in tensors.items():
        other = torch.roll(t, shifts=1, dims=0)
        m = box if t.ndim == box.ndim else box[:, None]
        out[k] = torch.where(m, other, t)
    return out


# ----------------------------------------------------------------------------------------------
# geometry (applied identically to the image and all per-pixel targets)
# ----------------------------------------------------------------------------------------------
def identity_grid(batch: int, spatial: Sequence[int], device, dtype=torch.float32) -> torch.Tensor:
    """``[B, *spatial, dim]`` sampling grid in grid_sample's (x, y[, z]) convention (align_corners=False)."""
    axes = [(torch.arange(s, device=device, dtype=dtype) * 2 + 1) / s - 1 for s in spatial]
    mesh = torch.meshgrid(*axes, indexing="ij")  # spatial order (z, y, x)
    grid = torch.stack(mesh[::-1], dim=-1)       # grid_sample wants (x, y, z)
    return grid.unsqueeze(0).expand(batch, *grid.shape).clone()


def random_smooth_grid(batch: int, spatial: Sequence[int], magnitude: float = 0.05, control_points: int = 4,
                       scale: Tuple[float, float] = (1.0, 1.0), p_mirror: float = 0.0,
                       generator=None, device=None, max_rotation: float = 0.0) -> torch.Tensor:
    """A random smooth deformation: optional rotation, isotropic scaling and mirroring plus a displacement field.

    The rotation is uniform in ``[-max_rotation, max_rotation]`` radians, in the plane of the last two
    spatial axes (in-plane in 3D), in normalised coordinates (a true rotation on square patches). The displacement is Gaussian noise of std ``magnitude`` (in
    normalised [-1, 1] units) on a coarse grid of ``control_points`` per axis, upsampled (bi/trilinear)
    to full resolution, which makes it smooth; ``magnitude=0``, ``scale=(1, 1)`` and no rotation give
    the identity.
    """
    nd = len(spatial)
    grid = identity_grid(batch, spatial, device)
    if max_rotation > 0:
        angle = (_rand((batch,), generator, device) * 2 - 1) * max_rotation
        cos, sin = angle.cos().view(batch, *([1] * nd)), angle.sin().view(batch, *([1] * nd))
        gx, gy = grid[..., 0], grid[..., 1]   # grid_sample order: x = last axis, y = second to last
        grid = torch.cat([torch.stack([cos * gx - sin * gy, sin * gx + cos * gy], dim=-1), grid[..., 2:]], dim=-1)
    s = scale[0] + (scale[1] - scale[0]) * _rand((batch,), generator, device)
    grid = grid * s.view(batch, *([1] * nd), 1)
    if p_mirror > 0:
        flip = (_rand((batch, nd), generator, device) < p_mirror).float() * -2 + 1  # +-1 per axis
        grid = grid * flip.view(batch, *([1] * nd), nd)
    if magnitude > 0:
        coarse = torch.randn((batch, nd, *([control_points] * nd)), generator=generator, device=device) * magnitude
        mode = "bilinear" if nd == 2 else "trilinear"
        disp = F.interpolate(coarse, size=tuple(spatial), mode=mode, align_corners=True)
        grid = grid + disp.movedim(1, -1)
    return grid


def warp(x: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Resample ``x`` ([B, C, *spatial], any dtype) at ``grid``; outside the image gives 0.

    Integer tensors (labels) are resampled with nearest neighbour and keep their dtype.
    """
    if not x.dtype.is_floating_point:
        y = F.grid_sample(x.float(), grid.to(torch.float32), mode="nearest", padding_mode="zeros",
                          align_corners=False)
        return y.round().to(x.dtype)
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="zeros", align_corners=False)


def warp_valid_mask(grid: torch.Tensor) -> torch.Tensor:
    """``[B, *spatial]`` bool: which output voxels sample from inside the input image."""
    return (grid.abs() <= 1).all(dim=-1)


def random_flips(batch: int, nd: int, p: float = 0.5, generator=None, device=None) -> torch.Tensor:
    """``[B, nd]`` bool: which spatial axes to flip for each sample."""
    return _rand((batch, nd), generator, device) < p


def apply_flips(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip each sample of ``x`` ([B, ...spatial] or [B, C, *spatial]) along its selected axes."""
    nd = flips.shape[1]
    first = x.ndim - nd
    for axis in range(nd):
        sel = flips[:, axis]
        if bool(sel.any()):
            flipped = torch.flip(x, dims=(first + axis,))
            x = torch.where(_bcast(sel, x.ndim), flipped, x)
    return x


# ----------------------------------------------------------------------------------------------
# the composed strong view
# ----------------------------------------------------------------------------------------------
@dataclass
class StrongViewParams:
    """The random draws of one strong view, so that the same view can be replayed on other tensors."""
    nd: int = 2                            # number of spatial axes
    box: Optional[torch.Tensor] = None     # [B, *spatial] bool CutMix boxes (None: no mixing)
    flips: Optional[torch.Tensor] = None   # [B, nd] bool
    grid: Optional[torch.Tensor] = None    # [B, *spatial, nd] sampling grid (None: no warp)


@dataclass
class StrongAugmentation:
    """The student's strong view of an unlabeled batch (defaults: ReCo/ACTION, methods.md 2.5).

    ``__call__(image, targets)`` returns the augmented image, the augmented targets and ``valid``
    (``[B, *spatial]`` bool: False where the warp sampled outside the image). ``targets`` maps names
    to per-pixel tensors (``[B, *spatial]`` labels/masks or ``[B, C, *spatial]`` maps); integer and
    bool targets are resampled with nearest neighbour, float ones bilinearly.

    ``sample`` + ``apply`` do the same in two steps and expose the draws; ``replay`` applies the
    draws' mixing and geometry to another per-pixel tensor at *any* resolution (e.g. a teacher's
    low-resolution feature map computed on the weak view), without another forward pass.
    """
    p_cutmix: float = 1.0
    cutmix_area: float = 0.5
    p_colour: float = 0.5
    brightness: Tuple[float, float] = (0.75, 1.25)
    contrast: Tuple[float, float] = (0.75, 1.25)
    p_blur: float = 0.5
    blur_sigma: Tuple[float, float] = (0.15, 1.15)
    p_flip: float = 0.0              # nnU-Net's weak pipeline already mirrors; extra flips are optional
    p_warp: float = 0.5
    warp_magnitude: float = 0.03
    warp_control_points: int = 4
    warp_scale: Tuple[float, float] = (1.0, 1.0)

    def sample(self, image: torch.Tensor, generator=None) -> StrongViewParams:
        b = image.shape[0]
        spatial = tuple(image.shape[2:])
        nd = len(spatial)
        dev = image.device
        params = StrongViewParams(nd=nd)
        if self.p_cutmix > 0 and b > 1:
            params.box = cutmix_masks(b, spatial, self.cutmix_area, self.p_cutmix, generator, dev)
        if self.p_flip > 0:
            params.flips = random_flips(b, nd, self.p_flip, generator, dev)
        if self.p_warp > 0:
            grid = random_smooth_grid(b, spatial, self.warp_magnitude, self.warp_control_points,
                                      self.warp_scale, 0.0, generator, dev)
            use = _rand((b,), generator, dev) < self.p_warp
            params.grid = torch.where(use.view(b, *([1] * nd), 1), grid, identity_grid(b, spatial, dev))
        return params

    def apply(self, params: StrongViewParams, image: torch.Tensor, targets: Dict[str, torch.Tensor],
              generator=None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        b, spatial = image.shape[0], tuple(image.shape[2:])
        targets = dict(targets)
        # 1. mix
        if params.box is not None:
            mixed = cutmix({"__image__": image, **targets}, params.box)
            image = mixed.pop("__image__")
            targets = mixed
        # 2. photometric, image only
        image = colour_jitter(image, self.p_colour, self.brightness, self.contrast, generator)
        image = gaussian_blur(image, self.p_blur, self.blur_sigma, generator)
        # 3. geometry, identical for image and targets
        valid = torch.ones((b, *spatial), dtype=torch.bool, device=image.device)
        if params.flips is not None:
            image = apply_flips(image, params.flips)
            targets = {k: apply_flips(t, params.flips) for k, t in targets.items()}
        if params.grid is not None:
            image = warp(image, params.grid)
            targets = {k: _warp_target(t, params.grid) for k, t in targets.items()}
            valid = warp_valid_mask(params.grid)
        return image, targets, valid

    def __call__(self, image: torch.Tensor, targets: Dict[str, torch.Tensor], generator=None
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        return self.apply(self.sample(image, generator), image, targets, generator)

    @staticmethod
    def replay(params: StrongViewParams, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mix and move ``x`` (``[B, ...spatial]`` or ``[B, C, *spatial]``, any resolution) like the image.

        Returns ``(moved, valid)``; boxes are resized with nearest neighbour and the warp's grid
        (normalised coordinates) bilinearly, so a low-resolution map follows the full-resolution view.
        """
        nd = params.nd
        size = tuple(x.shape[-nd:])
        if params.box is not None:
            box = params.box
            if tuple(box.shape[1:]) != size:
                box = F.interpolate(box[:, None].float(), size=size, mode="nearest")[:, 0].bool()
            x = cutmix({"x": x}, box)["x"]
        if params.flips is not None:
            x = apply_flips(x, params.flips)
        valid = torch.ones((x.shape[0], *size), dtype=torch.bool, device=x.device)
        if params.grid is not None:
            grid = params.grid
            if tuple(grid.shape[1:-1]) != size:
                mode = "bilinear" if nd == 2 else "trilinear"
                grid = F.interpolate(grid.movedim(-1, 1), size=size, mode=mode, align_corners=False).movedim(1, -1)
            x = _warp_target(x, grid)
            valid = warp_valid_mask(grid)
        return x, valid


def _warp_target(t: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    nd = grid.shape[-1]
    squeeze = t.ndim == nd + 1  # [B, *spatial] -> add a channel axis
    x = t[:, None] if squeeze else t
    if x.dtype == torch.bool:
        y = warp(x.to(torch.uint8), grid).bool()
    else:
        y = warp(x, grid)
    return y[:, 0] if squeeze else y
