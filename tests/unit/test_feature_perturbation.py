"""UniMatch's feature perturbation: channel dropout on a U-Net's skip features (modules/feature_perturbation.py)."""
import pytest
import torch

from nnunet_semicl.modules.feature_perturbation import channel_dropout
from tests.unit.trainer_classes import configured


def _skips(dim: int, requires_grad: bool = False):
    """A U-Net's skip list (full resolution first), positive so a dropped channel is exactly 0."""
    return [(torch.rand(4, c, *([s] * dim)) + 0.5).requires_grad_(requires_grad)
            for c, s in ((8, 16), (16, 8), (32, 4))]


@pytest.mark.parametrize("dim", [2, 3])
def test_whole_channels_dropped_at_rate_p_and_the_rest_rescaled(dim):
    g = torch.Generator().manual_seed(0)
    p = 0.3
    skips = _skips(dim)
    out = channel_dropout(skips, p, generator=g)
    assert [o.shape for o in out] == [s.shape for s in skips]
    dropped = []
    for x, y in zip(skips, out):
        flat_x, flat_y = x.flatten(2), y.flatten(2)
        zero = (flat_y == 0).all(-1)                                    # [B, C]: whole channels, never parts
        assert torch.equal(zero, (flat_y == 0).any(-1))
        kept = ~zero
        assert torch.allclose(flat_y[kept], flat_x[kept] / (1 - p))
        dropped.append(zero.float().flatten())
    rate = float(torch.cat(dropped).mean())                             # 4 x 56 channels
    assert abs(rate - p) < 0.08
    # per sample: the masks of the samples of a batch differ (Dropout2d / Dropout3d draw per sample and channel)
    assert not torch.equal(out[-1][0].flatten(1) == 0, out[-1][1].flatten(1) == 0)


def test_identity_without_dropout_or_outside_training():
    skips = _skips(2)
    for out in (channel_dropout(skips, 0.0), channel_dropout(skips, 0.5, training=False)):
        assert all(o is s for o, s in zip(out, skips))


def test_matches_torch_dropout_statistics_and_keeps_dtype():
    x = [torch.ones(64, 32, 3, 3, 3, dtype=torch.float64)]
    y = channel_dropout(x, 0.5, generator=torch.Generator().manual_seed(1))[0]
    assert y.dtype == torch.float64
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}
    assert abs(float(y.mean()) - 1.0) < 0.05                            # unbiased: E[y] = x


def test_gradients_flow_through_the_kept_channels_only():
    skips = _skips(3, requires_grad=True)
    out = channel_dropout(skips, 0.5, generator=torch.Generator().manual_seed(2))
    sum(o.sum() for o in out).backward()
    for x, y in zip(skips, out):
        kept = (y.detach().flatten(2) != 0).all(-1)
        grad = x.grad.flatten(2)
        assert torch.all(grad[kept] == 2.0) and torch.all(grad[~kept] == 0.0)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_probability_outside_zero_to_one_is_refused(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        channel_dropout(_skips(2), p)


# ---- the setting keys in the trainers' term tables (no nnU-Net state: the class arithmetic only) -----------------
_configured = configured   # the class's term table as a training would run it


def test_fp_is_a_term_of_every_semi_supervised_trainer_only_when_its_weight_is_positive():
    from nnunet_semicl.training.action_pp import nnUNetTrainerACTIONpp, nnUNetTrainerACTIONpp_paper
    from nnunet_semicl.training.mean_teacher import nnUNetTrainerMeanTeacher
    from nnunet_semicl.training.mona import nnUNetTrainerARCO_SAG, nnUNetTrainerMONA
    from nnunet_semicl.training.pseudo_label import nnUNetTrainerPseudoLabel

    for cls in (nnUNetTrainerPseudoLabel, nnUNetTrainerMeanTeacher, nnUNetTrainerACTIONpp,
                nnUNetTrainerACTIONpp_paper, nnUNetTrainerMONA, nnUNetTrainerARCO_SAG):
        default = _configured(cls)
        assert cls.feature_perturbation_weight == 0.0 and cls.feature_perturbation_dropout == 0.5
        assert "fp" not in default.active_terms() and "fp" not in default.loss_terms, cls.__name__
        on = _configured(cls, feature_perturbation_weight=0.5)
        assert on.active_terms()["fp"] == 0.5 and "fp" in on.loss_terms, cls.__name__
    # a phased method computes it with the pseudo-label term, in fine-tuning: none, no term
    assert "fp" not in _configured(nnUNetTrainerMONA, feature_perturbation_weight=0.5,
                                   local_phase_fraction=1.0).active_terms()
