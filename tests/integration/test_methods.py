"""ACTION, ACTION++, MONA and ARCO trainers on the synthetic phantoms: every phase, resume, predict."""
import glob
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.conftest import TRAIN_ENV
from tests.integration.nnunet_helpers import env, make_trainer, output_folder, stock_train, train_epochs

pytestmark = pytest.mark.integration

# trainer -> {epoch: terms that must be finite in that epoch} for the 4-epoch "phases" setting (2 iterations per
# epoch). The defaults compute no unsupervised term, relational pre-training included (MONA/ARCO), before the warm-up
# gate opens (here at its limit, the end of epoch 1); ACTION's defaults have no phases: the relational distillation
# runs alongside the fine-tuning terms from the gate; the papers' recipes have the pre-training terms from iteration 0. ARCO-SAG differs from ARCO only in its sampler (unit-tested): its real step runs
# in the mixed-precision test below, its stock training and prediction in test_resenc.py.
FINETUNE_MONA = {"sup", "unsup", "contrast", "eqv", "nn"}
PHASE_TERMS = {
    "nnUNetTrainerACTIONpp": {0: {"sup"}, 1: {"sup"}, 2: {"sup", "unsup", "anco", "saacl", "global", "local"}},
    "nnUNetTrainerARCO": {0: {"sup"}, 1: {"sup"}, 2: FINETUNE_MONA},
    "nnUNetTrainerACTION_paper": {0: {"sup", "global"}, 1: {"sup", "global", "local"}, 2: {"sup", "unsup", "anco"}},
    "nnUNetTrainerMONA_paper": {0: {"sup", "global", "local"}, 2: FINETUNE_MONA},
}


def predict_one(model_folder, image, out_dir):
    """Stock prediction from the trained model folder (the code path of nnUNetv2_predict: strict load)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, (0,), "checkpoint_final.pth")
    os.makedirs(out_dir, exist_ok=True)
    predictor.predict_from_files([[image]], [os.path.join(out_dir, "case")], save_probabilities=False,
                                 overwrite=True, num_processes_preprocessing=1, num_processes_segmentation_export=1)
    return sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out_dir, "case.nii.gz")))


@pytest.mark.parametrize("trainer,cfg", [(t, "2d_tiny") for t in sorted(PHASE_TERMS)]
                         + [("nnUNetTrainerACTIONpp", "3d_fullres_tiny")])
def test_method_trains_every_phase_through_stock_entry_and_predicts(phantom, trainer, cfg, tmp_path):
    stock_train(phantom.id, cfg, 0, "-tr", trainer, "-p", phantom.phases_plans)
    folder = output_folder(phantom, trainer, cfg, plans=phantom.phases_plans)
    ckpt = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    log = ckpt["logging"]
    for epoch, terms in PHASE_TERMS[trainer].items():
        finite = {k[len("train_loss_"):] for k, v in log.items()
                  if k.startswith("train_loss_") and np.isfinite(v[epoch])}
        assert finite == terms, (epoch, finite)
    assert ckpt["semicl"]["global_step"] == 4 * 2
    heads = {k.split(".")[0] for k in ckpt["semicl"]["heads"]}
    assert heads == {"global", "local", "rep"} and {k.split(".")[0] for k in ckpt["semicl"]["head_teachers"]}
    # the class-collapse guard is part of every method's state (not of the papers' recipe), and the gate opened
    if not trainer.endswith("_paper"):
        assert ckpt["semicl"]["state_modules"]["alignment.initialised"]
        assert ckpt["semicl"]["unsup_gate_step"] == 4
    else:
        assert ckpt["semicl"]["unsup_gate_step"] == 0
    assert ckpt["semicl"]["unsupervised_terms_ran"]
    summary = json.load(open(os.path.join(folder, "semicl_training_summary.json")))
    assert summary["unsupervised_terms_ran"] and summary["trainer"] == trainer
    assert summary["message"] in open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()
    seg = predict_one(os.path.dirname(folder), os.path.join(phantom.raw, "imagesTs", "phantom010_frame01_0000.nii.gz"),
                      str(tmp_path / "pred"))
    assert seg.shape == (10, 64, 64) and set(np.unique(seg)) <= {0, 1, 2, 3}
    if trainer == "nnUNetTrainerACTIONpp" and cfg == "2d_tiny":
        check_gradients_command(phantom, trainer, cfg, folder, tmp_path)


def check_gradients_command(phantom, trainer, cfg, folder, tmp_path):
    """``benchmark gradients`` on the trained model: a norm for every term the fine-tuning computes, and the
    results folder left exactly as it was."""
    from nnunet_semicl.cli import build_parser
    from tests.integration.nnunet_helpers import tree_digest

    before = tree_digest(os.path.dirname(folder))
    out = tmp_path / "gradients.json"
    args = build_parser().parse_args(["benchmark", "gradients", "-d", str(phantom.id), "-c", cfg, "-tr", trainer,
                                      "-p", phantom.phases_plans, "--batches", "1", "--at", "0.5",
                                      "--json", str(out)])
    with env(**TRAIN_ENV):
        args.benchmark_run(args)
    terms = json.load(open(out))["points"]["0.5"]["terms"]
    assert set(terms) == {"sup", "unsup", "anco", "saacl", "global", "local"}
    assert terms["global"]["decoder"] == 0.0 and terms["global"]["encoder"] > 0   # a bottleneck term
    assert terms["sup"]["heads"] == 0.0 and terms["anco"]["heads"] > 0
    assert tree_digest(os.path.dirname(folder)) == before


@pytest.mark.parametrize("settings,heads,state", [
    ({}, {"global", "local", "rep"}, {"global_queue", "local_queue", "saacl_queue", "centres"}),
    ({"relational_in_finetune": False}, {"rep"}, {"saacl_queue", "centres"}),             # no distillation
    ({"relational_in_finetune": False, "global_phase_fraction": 0.5, "local_phase_fraction": 0.5},
     {"global", "local"}, {"global_queue", "local_queue"}),                                # pre-training only
])
def test_only_what_a_configuration_uses_is_built(phantom, settings, heads, state):
    """No head, EMA twin or queue for a term no phase runs (issue 27 item 8)."""
    with env(**TRAIN_ENV):
        t = make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainerACTIONpp", phantom.phases_plans)
        for k, v in settings.items():
            setattr(t, k, v)
        t.initialize()
    assert set(t.heads) == heads and set(t.head_teachers) == heads
    assert set(t.state_modules) - {"alignment"} == state


def _assert_state_equal(saved: dict, module_state: dict, what: str):
    assert set(saved) == set(module_state), what
    for k, v in saved.items():
        assert torch.equal(module_state[k].cpu(), v.cpu()), f"{what}: {k}"


@pytest.mark.parametrize("trainer,cfg,stop", [
    # the papers' recipe (relational terms from iteration 0: queues filled), interrupted at the boundary into
    # fine-tuning (0 global, 1 local); the defaults' relational terms wait for the gate (test above)
    ("nnUNetTrainerACTION_paper", "2d_tiny", 2),
    ("nnUNetTrainerACTIONpp", "3d_fullres_tiny", 3),  # inside fine-tuning: SAACL queue, centroids, ATS position
    ("nnUNetTrainerARCO", "2d_tiny", 3),          # inside fine-tuning, after the warm-up: banks and NN pool
])
def test_resume_restores_every_state_across_phases(phantom, trainer, cfg, stop):
    from nnunetv2.run.run_training import maybe_load_checkpoint

    fold = 1  # its own output folder: --c prefers a checkpoint_final.pth, e.g. one left by the fold-0 tests
    with env(**TRAIN_ENV):
        t = make_trainer(phantom.id, cfg, fold, trainer, phantom.phases_plans)
        train_epochs(t, stop)
        ckpt = torch.load(os.path.join(t.output_folder, "checkpoint_latest.pth"), map_location="cpu",
                          weights_only=False)
        for dl in (t.dataloader_train, t.dataloader_val, t.dataloader_unlabeled):
            getattr(dl, "_finish", lambda: None)()

        t2 = make_trainer(phantom.id, cfg, fold, trainer, phantom.phases_plans, continue_training=True)
        maybe_load_checkpoint(t2, True, False)                 # what --c does
        s = ckpt["semicl"]
        _assert_state_equal(s["teacher"], t2.teacher.model.state_dict(), "teacher")
        _assert_state_equal(s["heads"], t2.heads.state_dict(), "heads")
        for name, sd in s["head_teachers"].items():
            _assert_state_equal(sd, t2.head_teachers[name].model.state_dict(), f"head teacher {name}")
        _assert_state_equal(s["state_modules"], t2.state_modules.state_dict(), "queues/banks/centres")
        assert t2.current_epoch == stop and t2.global_step == stop * 2 and t2.phase() == "finetune"
        assert t.unsup_gate_step is not None and t2.unsup_gate_step == t.unsup_gate_step   # warm-up not redone
        # the papers' recipe: relational terms from iteration 0; the default: beside the fine-tuning terms
        if trainer in ("nnUNetTrainerACTION_paper", "nnUNetTrainerACTIONpp"):
            assert len(t2.state_modules["global_queue"]) > 0 and len(t2.state_modules["local_queue"]) > 0
        if trainer == "nnUNetTrainerACTIONpp":
            assert len(t2.state_modules["saacl_queue"]) > 0 and bool(t2.state_modules["centres"].seen.any())
            assert torch.equal(t2.state_modules["centres"].assignment, t.state_modules["centres"].assignment)
            assert t2.ats_temperature() == t.ats_temperature()  # same schedule position
        if trainer == "nnUNetTrainerARCO":
            assert sum(t2.state_modules["bank"].counts()) > 0 and len(t2.state_modules["nn_pool"]) > 0
        opt = t2.optimizer.state_dict()["state"]
        for pid, st in ckpt["optimizer_state"]["state"].items():
            assert torch.equal(opt[pid]["momentum_buffer"].cpu(), st["momentum_buffer"])
        t2.run_training()                                      # finishes the remaining epochs
        assert t2.current_epoch == 4 and t2.global_step == 8
        if trainer == "nnUNetTrainerACTION_paper":  # the resumed run did the phase switch itself
            assert "Fine-tuning starts; teacher re-initialised" in open(t2.log_file).read()
        log = t2.logger.get_value("train_losses", None)
        assert len(log) == 4 and np.all(np.isfinite(log))


@pytest.mark.parametrize("trainer", ["nnUNetTrainerACTIONpp", "nnUNetTrainerARCO", "nnUNetTrainerARCO_SAG"])
def test_fine_tuning_step_under_mixed_precision(phantom, trainer, monkeypatch):
    """The CUDA branch wraps the step in autocast; here the same code path runs under CPU bf16 autocast
    (no GPU in CI): every loss term stays finite because similarity maths is done in fp32."""
    import nnunet_semicl.training.semi_supervised as semi

    with env(**TRAIN_ENV):
        t = make_trainer(phantom.id, "2d_tiny", 2, trainer, phantom.phases_plans)
        t.disable_checkpointing = True
        t.on_train_start()
        t.labeled_copy_paste = True   # opt-in: checked here on the real step
        seen = []
        original = t.compute_losses
        t.compute_losses = lambda ctx: (seen.append(ctx), original(ctx))[1]
        try:
            t.current_epoch = 3
            t.global_step = 6
            t.unsup_gate_step = 0   # warm-up over: the fine-tuning terms are on
            t.on_train_epoch_start()
            monkeypatch.setattr(semi, "dummy_context", lambda: torch.autocast("cpu", dtype=torch.bfloat16))
            outs = [t.train_step(next(t.dataloader_train)) for _ in range(2)]
        finally:
            t.on_train_end()
    _check_labeled_copy_paste(seen[-1])
    finite = {k for k, v in outs[-1].items() if np.isfinite(v)}
    expected = {"loss", "train_loss_sup", "train_loss_unsup"} | (
        {"train_loss_anco", "train_loss_saacl", "train_loss_global", "train_loss_local"}
        if trainer == "nnUNetTrainerACTIONpp"
        else {"train_loss_contrast", "train_loss_eqv", "train_loss_nn"})
    assert finite == expected


def _check_labeled_copy_paste(ctx):
    """Once the unsupervised terms are on, each unlabeled image shares its patch with a labeled one
    (bidirectional copy-paste) and the pasted pixels carry the ground truth at full confidence."""
    n_u, n_l = ctx.x_weak.shape[0], ctx.n_labeled
    source = torch.arange(n_u) % n_l
    mask = ctx.paste_mask
    assert mask is not None and mask.shape == (n_u, *ctx.x_weak.shape[2:])
    assert 0.2 < float(mask.float().mean()) < 0.8                     # boxes of (2/3)^2 inside or outside
    assert torch.equal(ctx.x_weak[:, 0][mask], ctx.x_labeled[source][:, 0][mask].to(ctx.x_weak.dtype))
    gt = ctx.labeled_target_full()[source]
    assert torch.equal(ctx.pseudo_label[mask], gt[mask].to(ctx.pseudo_label.dtype))
    assert float(ctx.confidence[mask].min()) == 1.0
