"""The shared machinery end to end on the synthetic phantoms, through nnU-Net's own entry points."""
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from nnunet_semicl import ext_trainer_path
from nnunet_semicl.errors import SplitError
from tests.conftest import TRAIN_ENV, run_cmd
from tests.integration.nnunet_helpers import env, make_trainer, output_folder, stock_train

pytestmark = pytest.mark.integration

BASELINES = ["nnUNetTrainerLabeledOnly", "nnUNetTrainerPseudoLabel", "nnUNetTrainerMeanTeacher"]


def test_trainers_found_by_stock_lookup_and_pickle():
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import nnunet_semicl.trainers.nnunet_semicl_trainers as shim
    assert os.path.normpath(ext_trainer_path()) in [os.path.normpath(p) for p in
                                                   os.environ["nnUNet_extTrainer"].split(os.pathsep)]
    for name in BASELINES:
        cls = recursive_find_trainer_class_by_name(name)
        assert cls is getattr(shim, name)                         # the same object as a normal import
        assert cls.__module__.startswith("nnunet_semicl.training.")  # real module path ...
        assert pickle.loads(pickle.dumps(cls)) is cls              # ... so it pickles (spawn workers)
    # the scanned folder holds only the re-export module (nnU-Net imports each module there top-level)
    modules = sorted(f for f in os.listdir(ext_trainer_path()) if f.endswith(".py"))
    assert modules == ["__init__.py", "nnunet_semicl_trainers.py"]


def test_autoregistration_and_ext_path_command():
    out = run_cmd(["nnunet_semicl_ext_path"]).stdout.strip()
    assert out == ext_trainer_path()
    probe = "import os; print(os.environ.get('nnUNet_extTrainer', ''))"
    kept = run_cmd([sys.executable, "-c", probe], env={"nnUNet_extTrainer": "/other/trainers"}).stdout.strip()
    assert kept.split(os.pathsep) == ["/other/trainers", ext_trainer_path()]  # user folders kept, ours appended
    off = run_cmd([sys.executable, "-c", probe], env={"nnUNet_extTrainer": "/x", "NNUNET_SEMICL_AUTOREGISTER": "0"})
    assert off.stdout.strip() == "/x"


def test_stock_train_predict_evaluate(phantom, tmp_path):
    """nnUNetv2_train -> nnUNetv2_predict -> nnUNetv2_evaluate_folder, as real console scripts."""
    trainer, cfg = "nnUNetTrainerPseudoLabel", "2d_tiny"
    run_cmd(["nnUNetv2_train", str(phantom.id), cfg, "0", "-tr", trainer, "-p", phantom.plans, "-device", "cpu"],
            env=TRAIN_ENV)
    folder = output_folder(phantom, trainer, cfg)
    ckpt = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == trainer
    semicl = ckpt["semicl"]
    assert {"teacher", "heads", "head_teachers", "state_modules", "global_step", "case_sets"} <= set(semicl)
    assert semicl["global_step"] == 2 * 3  # 2 epochs x 3 iterations from the setting's schedule override
    assert len(semicl["case_sets"]["labeled"]) == 4 and len(semicl["case_sets"]["unlabeled"]) == 12  # 2 of 8 patients
    log = ckpt["logging"]
    assert len(log["train_loss_sup"]) == 2 and np.all(np.isfinite(log["train_loss_sup"]))
    # epoch 0 is the supervised warm-up (no pseudo-label term); the gate opens at its limit (half of the
    # 6 iterations, after epoch 0's validation) and epoch 1 trains with the pseudo-labels
    assert semicl["unsup_gate_step"] == 3
    assert np.isnan(log["train_loss_unsup"][0]) and np.isfinite(log["train_loss_unsup"][1])
    assert os.path.isfile(os.path.join(folder, "progress.png"))
    assert os.path.isfile(os.path.join(folder, "validation", "summary.json"))
    # the teacher differs from the student (EMA) but has the same architecture
    assert set(semicl["teacher"]) == set(ckpt["network_weights"])
    assert any(not torch.equal(semicl["teacher"][k], ckpt["network_weights"][k]) for k in semicl["teacher"])

    pred = tmp_path / "pred"
    run_cmd(["nnUNetv2_predict", "-i", os.path.join(phantom.raw, "imagesTs"), "-o", str(pred), "-d",
             str(phantom.id), "-c", cfg, "-f", "0", "-tr", trainer, "-p", phantom.plans, "-device", "cpu",
             "-npp", "0", "-nps", "0", "--disable_progress_bar"])
    preds = sorted(os.listdir(pred))
    assert [p for p in preds if p.endswith(".nii.gz")] == sorted(
        f.replace("_0000.nii.gz", ".nii.gz") for f in os.listdir(os.path.join(phantom.raw, "imagesTs")))
    run_cmd(["nnUNetv2_evaluate_folder", os.path.join(phantom.raw, "labelsTs"), str(pred), "-djfile",
             os.path.join(folder, "..", "dataset.json"), "-pfile", os.path.join(folder, "..", "plans.json"),
             "-np", "1"])
    summary = json.load(open(pred / "summary.json"))
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0


def test_resume_restores_state_then_val_only(phantom):
    from nnunetv2.run.run_training import maybe_load_checkpoint, run_training

    trainer, cfg = "nnUNetTrainerMeanTeacher", "3d_fullres_tiny"
    with env(**TRAIN_ENV):
        t = make_trainer(phantom.id, cfg, 0, trainer, phantom.plans)
        t.num_epochs = 1   # stop after one of the setting's two epochs, as an interrupted run would
        t.run_training()
        ckpt = torch.load(os.path.join(t.output_folder, "checkpoint_final.pth"), map_location="cpu",
                          weights_only=False)
        os.replace(os.path.join(t.output_folder, "checkpoint_final.pth"),
                   os.path.join(t.output_folder, "checkpoint_latest.pth"))

        t2 = make_trainer(phantom.id, cfg, 0, trainer, phantom.plans, continue_training=True)
        maybe_load_checkpoint(t2, True, False)   # exactly what --c does
        for k, v in ckpt["semicl"]["teacher"].items():
            assert torch.equal(t2.teacher.model.state_dict()[k].cpu(), v), k
        opt = t2.optimizer.state_dict()
        for pid, st in ckpt["optimizer_state"]["state"].items():
            assert torch.equal(opt["state"][pid]["momentum_buffer"].cpu(), st["momentum_buffer"])
        assert t2.current_epoch == 1 and t2.global_step == 3
        assert t2.case_sets.labeled == tuple(ckpt["semicl"]["case_sets"]["labeled"])
        t2.run_training()                         # continues with epoch 1 of 2
        assert len(t2.logger.get_value("train_loss_cons", None)) == 2
        assert t2.global_step == 6

        run_training(str(phantom.id), cfg, 0, trainer, phantom.plans, only_run_validation=True,
                     device=torch.device("cpu"))  # what --val does
    summary = json.load(open(os.path.join(t2.output_folder, "validation", "summary.json")))
    assert "foreground_mean" in summary


@pytest.mark.parametrize("trainer,cfg", [("nnUNetTrainerLabeledOnly", "2d_tiny"),
                                         ("nnUNetTrainerMeanTeacher", "2d_tiny")])
def test_short_training_through_stock_entry_point(phantom, trainer, cfg):
    stock_train(phantom.id, cfg, 0, "-tr", trainer, "-p", phantom.plans)
    folder = output_folder(phantom, trainer, cfg)
    ckpt = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2
    lab = ckpt["semicl"]["case_sets"]["labeled"]
    assert len(lab) == 4 and all(c.split("_")[0] == lab[0].split("_")[0] or c.split("_")[0] == lab[2].split("_")[0]
                                 for c in lab)  # two patients, both frames each
    assert os.path.isfile(os.path.join(folder, "validation", "summary.json"))


def test_pretrained_weights_start_the_teacher(phantom):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    src = output_folder(phantom, "nnUNetTrainerLabeledOnly", "2d_tiny")
    weights = os.path.join(src, "checkpoint_final.pth")
    if not os.path.isfile(weights):
        stock_train(phantom.id, "2d_tiny", 0, "-tr", "nnUNetTrainerLabeledOnly", "-p", phantom.plans)
    with env(**TRAIN_ENV):
        t = make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainerPseudoLabel", phantom.plans)
        t.initialize()
        load_pretrained_weights(t.network, weights, verbose=False)   # what -pretrained_weights does
        t.on_train_start()
        try:
            student = t.network.state_dict()
            for k, v in t.teacher.model.state_dict().items():
                assert torch.equal(v, student[k]), k
        finally:
            t.on_train_end()


def test_non_finite_loss_names_the_cases(phantom):
    with env(**TRAIN_ENV):
        t = make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainerPseudoLabel", phantom.plans)
        t.disable_checkpointing = True
        t.on_train_start()
        try:
            batch = next(t.dataloader_train)
            batch["data"][0].fill_(float("nan"))
            with pytest.raises(FloatingPointError, match=batch["keys"][0]) as e:
                t.train_step(batch)
            assert "NaN/Inf" in str(e.value)
        finally:
            t.on_train_end()


def test_training_without_a_setting_explains_what_to_do(phantom):
    with env(**TRAIN_ENV):
        t = make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainerPseudoLabel", "nnUNetPlans")
        with pytest.raises(SplitError, match="nnunet_semicl split"):
            t.on_train_start()


def test_broken_split_file_is_reported_with_its_path(phantom):
    split = json.load(open(os.path.join(phantom.pre, f"splits_semicl_{phantom.setting}.json")))
    f0 = split["folds"][0]
    f0["unlabeled"].append(f0["labeled"][0])  # overlap
    bad = dict(split, setting="broken")
    from nnunet_semicl.data.setting_files import write_plans_variant
    from nnunet_semicl.files import save_json
    save_json(bad, os.path.join(phantom.pre, "splits_semicl_broken.json"))
    write_plans_variant(phantom.pre, "broken")
    with env(**TRAIN_ENV):
        t = make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainerPseudoLabel", "nnUNetPlans_broken")
        with pytest.raises(SplitError, match=r"splits_semicl_broken\.json, fold 0: cases both labeled and unlabeled"):
            t.on_train_start()


@pytest.mark.parametrize("args,msg", [
    (["--labeled-cases", "phantom777"], "phantom777"),
    (["--fraction", "1.5"], "argument --fraction: must be a fraction strictly between 0 and 1"),
    (["--labeled", "0"], "argument --labeled: must be a whole number >= 1"),
    (["--labeled", "50", "--group", r"phantom\d+"], "only"),
    (["--fraction", "0.2", "--group", r"nomatch\d+"], "does not match the group pattern"),
])
def test_split_command_errors(phantom, args, msg):
    p = run_cmd([sys.executable, "-m", "nnunet_semicl.cli", "split", str(phantom.id), *args, "--name", "err"],
                check=False)
    assert p.returncode == 2 and msg in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(phantom.pre, "splits_semicl_err.json"))  # nothing half-written


def test_split_command_unknown_dataset(nnunet_dirs):
    p = run_cmd([sys.executable, "-m", "nnunet_semicl.cli", "split", "999", "--labeled", "1"], check=False)
    assert p.returncode == 2 and "No dataset with id 999" in p.stderr, p.stderr
