"""NNUNET_SEMICL_SEED: paired trainings. Before the warm-up gate a semi-supervised trainer takes LabeledOnly's step;
with the same seed (CPU, augmentation in-process) it must repeat LabeledOnly's training exactly."""
import pytest
import torch

from nnunet_semicl.modules.ema import unwrap
from tests.conftest import TRAIN_ENV
from tests.integration.nnunet_helpers import env, make_trainer, train_epochs

pytestmark = pytest.mark.integration

FOLD = 3  # a folder of its own (other tests train folds 0 and 1)


def _weights_after_warmup(phantom, trainer: str, seed: int):
    """Student weights after the 2 warm-up epochs of the 'phases' setting (the gate opens at their end)."""
    with env(**TRAIN_ENV, NNUNET_SEMICL_SEED=seed):
        t = make_trainer(phantom.id, "2d_tiny", FOLD, trainer, phantom.phases_plans)
        train_epochs(t, 2)
        for dl in (t.dataloader_train, t.dataloader_val, getattr(t, "dataloader_unlabeled", None)):
            getattr(dl, "_finish", lambda: None)()
        log = open(t.log_file).read()
    assert f"seeded from NNUNET_SEMICL_SEED={seed}" in log
    if trainer != "nnUNetTrainerLabeledOnly":
        assert t.unsup_gate_step == 4   # every step above was a warm-up step
    return {k: v.detach().clone() for k, v in unwrap(t.network).state_dict().items()}


def test_same_seed_repeats_labeled_only_warm_up_exactly(phantom):
    labeled_only = _weights_after_warmup(phantom, "nnUNetTrainerLabeledOnly", 7)
    action_pp = _weights_after_warmup(phantom, "nnUNetTrainerACTIONpp", 7)
    assert labeled_only.keys() == action_pp.keys()
    for k, v in labeled_only.items():
        assert torch.equal(v, action_pp[k]), k
    # the check can fail: another seed gives other weights
    other = _weights_after_warmup(phantom, "nnUNetTrainerACTIONpp", 8)
    assert any(not torch.equal(v, other[k]) for k, v in labeled_only.items())
