"""``nnunet_semicl split --set KEY=VALUE`` reaches the trainer nnU-Net builds: applied, logged, recorded in the fold
folder; a key of another trainer is skipped by LabeledOnly; a bad type stops the trainer (docs/splits.md)."""
import json
import os

import pytest

from nnunet_semicl.data.overrides import OVERRIDES_FILE
from nnunet_semicl.errors import SplitError
from tests.conftest import cli_in_process
from tests.integration.nnunet_helpers import make_trainer


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
