"""Every trainer on nnU-Net's recommended residual-encoder preset (nnUNetResEncUNetMPlans), then prediction.

One planning step (``-pl nnUNetPlannerResEncM``, 2d) on the phantoms, a tiny configuration inherited from
the ResEnc plans, a setting with a 1 epoch x 2 iterations schedule; each trainer trains in-process
(one epoch runs the methods' fine-tuning phase, where the feature taps and heads work) and its
checkpoint predicts a test image through nnU-Net's predictor (strict load of the plain network).
"""
import os

import numpy as np
import pytest
import torch

from tests.conftest import TRAIN_ENV, cli_in_process, run_cmd
from tests.integration.nnunet_helpers import env, make_trainer

pytestmark = pytest.mark.integration

PLANS = "nnUNetResEncUNetMPlans"
TRAINERS = ["nnUNetTrainerLabeledOnly", "nnUNetTrainerPseudoLabel", "nnUNetTrainerMeanTeacher",
            "nnUNetTrainerACTION", "nnUNetTrainerACTIONpp", "nnUNetTrainerMONA", "nnUNetTrainerARCO",
            "nnUNetTrainerARCO_SAG"]


@pytest.fixture(scope="module")
def resenc(phantom):
    run_cmd(["nnUNetv2_plan_and_preprocess", "-d", str(phantom.id), "-pl", "nnUNetPlannerResEncM", "-c", "2d",
             "-npfp", "1", "-np", "1"])
    cli_in_process("tiny-config", phantom.id, "-c", "2d", "--plans", PLANS)
    cli_in_process("split", phantom.id, "--fraction", "0.2", "--group", r"phantom\d+", "--name", phantom.setting,
                   "--plans", PLANS, "--epochs", "1", "--iterations", "2", "--val-iterations", "1")
    return f"{PLANS}_{phantom.setting}"


def predict_in_process(model_folder, image_file):
    """nnU-Net's predictor on one image, in this process (no worker pools): strict load of checkpoint_final."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, (0,), "checkpoint_final.pth")
    image, props = SimpleITKIO().read_images([image_file])
    return predictor.predict_single_npy_array(image, props, None, None, False)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_on_resenc_plans_trains_and_predicts(phantom, resenc, trainer):
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    with env(**TRAIN_ENV):
        t = make_trainer(phantom.id, "2d_tiny", 0, trainer, resenc)
        if trainer != "nnUNetTrainerLabeledOnly":
            t.unsup_gate_step = 0   # no warm-up: both iterations run the method's full step on ResEnc
        t.run_training()
    assert isinstance(t._unwrapped_network(), ResidualEncoderUNet)
    ckpt = torch.load(os.path.join(t.output_folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 1
    losses = ckpt["logging"]["train_losses"]
    assert len(losses) == 1 and np.isfinite(losses[0])
    if trainer != "nnUNetTrainerLabeledOnly":
        assert ckpt["semicl"]["global_step"] == 2
        unsup = {k for k, v in ckpt["logging"].items()
                 if k.startswith("train_loss_") and k != "train_loss_sup" and np.isfinite(v[0])}
        assert unsup, "no unsupervised term ran on the ResEnc network"
    seg = predict_in_process(os.path.dirname(t.output_folder),
                             os.path.join(phantom.raw, "imagesTs", "phantom010_frame01_0000.nii.gz"))
    assert seg.shape == (10, 64, 64) and set(np.unique(seg)) <= {0, 1, 2, 3}
