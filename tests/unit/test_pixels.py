"""Per-pixel helpers (modules/pixels.py): nearest resize of label maps, gathering rows of feature maps."""
import torch

from nnunet_semicl.modules.pixels import flatten_pixels, gather_pixels, resize_labels


def test_resize_labels_nearest_2d_and_3d_keeps_dtype():
    labels = torch.tensor([[[0, 1], [2, 3]]])
    up = resize_labels(labels, (4, 4))
    assert up.dtype == labels.dtype and up[0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert resize_labels(up, (2, 2)).tolist() == labels.tolist()
    mask = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    mask[0, 2:, :2, 2:] = True
    small = resize_labels(mask, (2, 2, 2))
    assert small.dtype == torch.bool and small[0].nonzero().tolist() == [[1, 0, 1]]
    assert resize_labels(labels, (2, 2)) is labels        # same size: no copy


def test_gather_and_flatten_pixels():
    feats = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)   # [B, C, H, W]
    # flat index b * H * W + y * W + x: pixel (b=1, y=0, x=1) is 5
    picked = gather_pixels(feats, torch.tensor([5, 0]))
    assert picked.tolist() == [feats[1, :, 0, 1].tolist(), feats[0, :, 0, 0].tolist()]
    assert flatten_pixels(feats).shape == (8, 3)
    mask = torch.zeros(2, 2, 2, dtype=torch.bool)
    mask[1, 0, 1] = True
    assert flatten_pixels(feats, mask).tolist() == [feats[1, :, 0, 1].tolist()]
