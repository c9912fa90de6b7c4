"""RepresentationHead: equal to 'upsample, concatenate, 1x1 conv' in 1D, 2D and 3D; 2D maps on the CPU come out
channels-last (its fast layout there), with the same values and gradients."""
import pytest
import torch
import torch.nn.functional as F

from nnunet_semicl.modules.heads import RepresentationHead
from nnunet_semicl.modules.pixels import pixel_major


def _reference(head: RepresentationHead, features):
    """The head as the papers write it: every tap upsampled to the finest, concatenated, then two 1x1 convs."""
    target = features[-1].shape[2:]
    up = [f if tuple(f.shape[2:]) == tuple(target) else F.interpolate(f, size=target, mode=head.mode,
                                                                        align_corners=False) for f in features]
    weight = torch.cat([p.weight for p in head.proj], dim=1)
    x = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[head.dim](torch.cat(up, 1), weight, head.bias)
    return head.out(head.act(x))


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("activation", [False, True])
def test_head_equals_upsample_concat_conv(dim, activation):
    torch.manual_seed(0)
    head = RepresentationHead([12, 8, 6], 10, 7, dim, activation=activation).double()
    sizes = [2, 4, 8]
    feats = [torch.randn(3, c, *([s] * dim), dtype=torch.float64, requires_grad=True)
             for c, s in zip([12, 8, 6], sizes)]
    out = head(feats)
    ref = _reference(head, feats)
    assert out.shape == (3, 7, *([8] * dim))
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((out * g).sum(), feats + list(head.parameters()))
    ref_grads = torch.autograd.grad((ref * g).sum(), feats + list(head.parameters()))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_2d_cpu_maps_are_channels_last():
    x = torch.randn(2, 5, 4, 4)
    assert pixel_major(x).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(pixel_major(x), x)
    x3 = torch.randn(2, 5, 4, 4, 4)
    assert pixel_major(x3) is x3                       # 3D: no measured gain, left as it is
    head = RepresentationHead([8, 4], 6, 6, 2, activation=False)
    out = head([torch.randn(2, 8, 4, 4), torch.randn(2, 4, 8, 8)])
    assert out.is_contiguous(memory_format=torch.channels_last)   # flattens to [pixels, D] without a copy
