import math

import torch

from nnunet_semicl.losses.pseudo_label_losses import confidence_masked_ce, confidence_weighted_ce, pseudo_labels


def naive(logits, labels, conf, valid, thr):
    b, k = logits.shape[:2]
    vals = []
    for i in range(b):
        n_valid = int(valid[i].sum())
        rho = float(((conf[i] >= thr) & valid[i]).sum()) / max(n_valid, 1)
        for idx in valid[i].nonzero():
            idx = tuple(idx.tolist())
            logp = torch.log_softmax(logits[i][(slice(None),) + idx], dim=0)
            ce = -float(logp[labels[i][idx]])
            if ce > 0:   # the official mean: every pixel with a positive CE, whatever its image's rho
                vals.append(rho * ce)
    return sum(vals) / len(vals) if vals else 0.0


def test_known_value_against_loop():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 6)
    labels = torch.randint(0, 4, (3, 5, 6))
    conf = torch.rand(3, 5, 6) * 0.2 + 0.85
    valid = torch.rand(3, 5, 6) > 0.2
    got = confidence_weighted_ce(logits, labels, conf, valid, threshold=0.97 - 0.1)
    assert math.isclose(float(got), naive(logits, labels, conf, valid, 0.87), rel_tol=1e-5)


def test_all_low_confidence_gives_finite_zero_with_graph():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 4))
    conf = torch.full((2, 4, 4), 0.5)
    loss = confidence_weighted_ce(logits, labels, conf, None, threshold=0.97)
    assert float(loss.detach()) == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_class_absent_and_invalid_pixels_ignored():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 3, 3, 3, requires_grad=True)  # 3D
    labels = torch.zeros(2, 3, 3, 3, dtype=torch.long)         # only class 0 present
    conf = torch.ones(2, 3, 3, 3)
    valid = torch.zeros(2, 3, 3, 3, dtype=torch.bool)
    valid[0, 0] = True
    loss = confidence_weighted_ce(logits, labels, conf, valid)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    assert torch.all(logits.grad[1] == 0) and torch.all(logits.grad[0, :, 1:] == 0)


def test_pseudo_labels_fp32_from_fp16():
    logits = (torch.randn(2, 3, 4, 4) * 20).half()
    probs, lab, conf = pseudo_labels(logits)
    assert probs.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(2, 4, 4), atol=1e-5)
    assert torch.equal(lab, logits.float().argmax(1))


def test_images_without_confident_pixels_count_in_the_mean():
    # image 0 fully confident, image 1 not at all: the loss is half of image 0's mean CE (official mean),
    # not image 0's mean CE (a mean over weighted > 0 only would be 2x larger)
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    conf = torch.stack([torch.ones(4, 4), torch.zeros(4, 4)])
    got = confidence_weighted_ce(logits, labels, conf, None, threshold=0.97)
    ce0 = torch.nn.functional.cross_entropy(logits[:1], labels[:1])
    assert math.isclose(float(got), float(ce0) / 2, rel_tol=1e-5)


def test_pixel_masked_ce_known_value_and_only_confident_pixels_get_gradient():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 5))
    conf = torch.rand(2, 4, 5)
    valid = torch.rand(2, 4, 5) > 0.25
    loss = confidence_masked_ce(logits, labels, conf, valid, threshold=0.5)
    expected, n_valid = 0.0, int(valid.sum())
    for idx in valid.nonzero():
        b, i, j = idx.tolist()
        if conf[b, i, j] >= 0.5:
            expected -= float(torch.log_softmax(logits[b, :, i, j].detach(), 0)[labels[b, i, j]])
    assert math.isclose(float(loss.detach()), expected / n_valid, rel_tol=1e-5)
    loss.backward()
    no_loss = ~(valid & (conf >= 0.5))
    assert float(logits.grad.abs().sum(1)[no_loss].max()) == 0.0
    assert float(logits.grad.abs().sum(1)[~no_loss].min()) > 0.0
    # the per-image weight of the official loss trains unconfident pixels too
    logits.grad = None
    confidence_weighted_ce(logits, labels, conf, valid, threshold=0.5).backward()
    assert float(logits.grad.abs().sum(1)[valid & (conf < 0.5)].min()) > 0.0


def test_pixel_masked_ce_without_confident_pixels_is_zero_with_graph():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = confidence_masked_ce(logits, torch.zeros(2, 4, 4, dtype=torch.long), torch.full((2, 4, 4), 0.5),
                                threshold=0.97)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0
