"""``nnunet_semicl split --set KEY=VALUE`` reaches the trainer nnU-Net builds: applied, logged, recorded in the fold
folder; a key of another trainer is skipped by LabeledOnly; a bad type stops the trainer (docs/splits.md)."""
import json
import os

import numpy as np
import pytest
import torch

from nnunet_semicl.data.overrides import OVERRIDES_FILE
from nnunet_semicl.errors import SplitError
from tests.conftest import TRAIN_ENV, cli_in_process
from tests.integration.nnunet_helpers import env, make_trainer


def test_set_keys_reach_the_trainer_its_log_and_the_results_folder(phantom):
    cli_in_process("split", phantom.id, "--fraction", "0.2", "--group", r"phantom\d+", "--name", "setkeys",
                   "--epochs", "2", "--set", "confidence_threshold=0.9", "--set", "distribution_alignment=false",
                   "--set", "unsup_momentum=0.9")
    try:
        t = make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainerACTIONpp", "nnUNetPlans_setkeys")
        assert (t.num_epochs, t.confidence_threshold, t.unsup_momentum) == (2, 0.9, 0.9)
        assert t.distribution_alignment is False
        record = json.load(open(os.path.join(t.output_folder, OVERRIDES_FILE)))
        assert record["trainer"] == "nnUNetTrainerACTIONpp" and record["setting"] == "setkeys"
        assert record["overrides"]["confidence_threshold"] == {"default": 0.97, "value": 0.9}
        assert "confidence_threshold: 0.97 -> 0.9" in open(t.log_file).read()

        lo = make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainerLabeledOnly", "nnUNetPlans_setkeys")
        assert lo.num_epochs == 2 and not hasattr(lo, "confidence_threshold")
        record = json.load(open(os.path.join(lo.output_folder, OVERRIDES_FILE)))
        assert set(record["not_applied"]) == {"confidence_threshold", "distribution_alignment", "unsup_momentum"}

        path = os.path.join(phantom.pre, "nnUNetPlans_setkeys.json")   # a hand-edited block is checked the same way
        plans = json.load(open(path))
        plans["semicl"]["trainer"]["ema_momentum"] = True
        json.dump(plans, open(path, "w"))
        with pytest.raises(SplitError, match="ema_momentum must be a number"):
            make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainerACTIONpp", "nnUNetPlans_setkeys")
    finally:   # later tests (sync-plans) see every setting of the session
        for f in ("nnUNetPlans_setkeys.json", "splits_semicl_setkeys.json"):
            if os.path.exists(os.path.join(phantom.pre, f)):
                os.remove(os.path.join(phantom.pre, f))


def _grad_norm(module) -> float:
    grads = [p.grad.detach().double().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def test_feature_perturbation_trains_encoder_and_decoder_only_when_set(phantom):
    """``--set feature_perturbation_weight=0.5`` (UniMatch's FP branch) adds a finite term ``fp`` whose gradient
    reaches the network's encoder and decoder, read after the decoder taps so they keep the step's features;
    without the key no ``fp`` term is computed or logged."""
    from nnunet_semicl.modules.ema import unwrap
    from nnunet_semicl.modules.feature_taps import FeatureTaps, unet_tap_modules

    # threshold 0: an untrained teacher's pixels all count (rho = 1), so the term has a gradient
    cli_in_process("split", phantom.id, "--fraction", "0.2", "--group", r"phantom\d+", "--name", "fp", "--epochs",
                   "2", "--iterations", "2", "--val-iterations", "1", "--set", "feature_perturbation_weight=0.5",
                   "--set", "confidence_threshold=0", "--set", "rampup_fraction=0")
    try:
        with env(**TRAIN_ENV):
            for plans, weight in (("nnUNetPlans_fp", 0.5), (phantom.plans, 0.0)):
                t = make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainerPseudoLabel", plans)
                t.disable_checkpointing = True
                t.on_train_start()
                try:
                    t.unsup_gate_step = 0   # warm-up over: the unsupervised terms are on
                    t.on_train_epoch_start()
                    assert t.feature_perturbation_weight == weight
                    assert ("fp" in t.loss_terms) == (weight > 0)
                    assert ("train_loss_fp" in t.logger.local_logger.my_fantastic_logging) == (weight > 0)
                    if weight > 0:
                        # the contrastive methods' decoder taps (PseudoLabel has none: attached here)
                        t.student_taps = FeatureTaps(unet_tap_modules(t.network))
                        ctx = t.prepare_step(next(t.dataloader_train), next(t.dataloader_unlabeled))
                        step_features = ctx.features
                        t.optimizer.zero_grad(set_to_none=True)
                        terms = t.step_losses(ctx)
                        assert set(terms) == {"sup", "unsup", "fp"} and torch.isfinite(terms["fp"])
                        assert ctx.features is step_features
                        with pytest.raises(RuntimeError, match="no forward pass"):
                            t.student_taps.features   # the FP forward's features were not left for any term
                        terms["fp"].backward()
                        network = unwrap(t.network)
                        for part in (network.encoder, network.decoder):
                            assert 0 < _grad_norm(part) < float("inf")
                        t.student_taps.remove()
                        t.student_taps = None
                    out = t.train_step(next(t.dataloader_train))
                    assert ("train_loss_fp" in out) == (weight > 0)
                    assert np.isfinite(out["train_loss_unsup"]) and np.isfinite(out.get("train_loss_fp", 0.0))
                finally:
                    t.on_train_end()
    finally:
        for f in ("nnUNetPlans_fp.json", "splits_semicl_fp.json"):
            if os.path.exists(os.path.join(phantom.pre, f)):
                os.remove(os.path.join(phantom.pre, f))
