"""Bad input never corrupts a dataset, leaks a patient into validation, or trains a NaN model (issue 12).

Every refused command must leave the dataset, split and results folders byte-identical (compared by
checksums) and say what is wrong and how to fix it, without a traceback.
"""
import json
import os
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import run_cmd
from tests.integration.nnunet_helpers import env, make_trainer, tree_digest

pytestmark = pytest.mark.integration

BARE_ID = 992


@pytest.fixture(scope="module")
def bare(phantom):
    """A copy of the phantom's preprocessed folder without any split file (as right after planning)."""
    name = f"Dataset{BARE_ID}_SemiCLBare"
    dst = os.path.join(phantom.dirs.preprocessed, name)
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    for f in ("dataset.json", "nnUNetPlans.json", "dataset_fingerprint.json"):
        shutil.copy2(os.path.join(phantom.pre, f), dst)
    shutil.copytree(os.path.join(phantom.pre, "gt_segmentations"), os.path.join(dst, "gt_segmentations"))
    return dst


def split(*args, check=False):
    return run_cmd([sys.executable, "-m", "nnunet_semicl.cli", "split", *map(str, args)], check=check)


def assert_refused(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)


@pytest.mark.parametrize("args,needles", [
    (["--labeled-cases", "nosuchcase"], ["nosuchcase"]),
    (["--labeled", "2", "--group", "("], ["--group '('", "not a valid regular expression"]),
    (["--labeled", "2", "--group", "phantom(01)?"], ["phantom(01)?", "capture group", "(?:...)"]),
    (["--labeled", "2", "--group", "phantom(00)?"], ["phantom(00)?", "Only 1 annotated patients"]),
    (["--labeled", "2", "--group", "x*"], ["matches an empty string"]),
    (["--labeled", "2", "--epochs", "0"], ["--epochs", ">= 1", "got 0"]),
    (["--labeled", "2", "--iterations", "-5"], ["--iterations", "got -5"]),
    (["--labeled", "2", "--val-iterations", "0"], ["--val-iterations"]),
    (["--labeled", "2", "--save-every", "0"], ["--save-every"]),
    (["--labeled", "2", "--plans", "nnUNetResEncUNetLPlans"], ["nnUNetResEncUNetLPlans.json does not exist"]),
])
def test_refused_split_writes_nothing(bare, args, needles):
    before = tree_digest(bare)
    assert_refused(split(BARE_ID, *args, "--name", "bad"), *needles)
    assert tree_digest(bare) == before
    assert not os.path.exists(os.path.join(bare, "splits_final.json"))


def test_group_refuses_a_case_level_splits_final(bare):
    case_level = os.path.join(bare, "splits_final.json")
    try:
        split(BARE_ID, "--labeled", "2", "--name", "cases", check=True)   # 5 folds over cases
        folds = json.load(open(case_level))
        patient = lambda c: c.split("_")[0]
        separated = {patient(c) for c in folds[0]["val"]} & {patient(c) for c in folds[0]["train"]}
        assert separated  # the situation of the issue: a patient's frames on both sides of fold 0
        before = tree_digest(bare)
        p = split(BARE_ID, "--labeled", "2", "--group", r"phantom\d+", "--name", "grouped")
        assert_refused(p, case_level, "fold 0", sorted(separated)[0], "Delete it")
        assert tree_digest(bare) == before
        # the fix the message gives works: without the case-level file, the folds are made over patients
        os.remove(case_level)
        split(BARE_ID, "--labeled", "2", "--group", r"phantom\d+", "--name", "grouped", check=True)
        for f in json.load(open(case_level)):
            assert not {patient(c) for c in f["val"]} & {patient(c) for c in f["train"]}
    finally:
        for f in os.listdir(bare):
            if f.startswith("splits_") or f.startswith("nnUNetPlans_"):
                os.remove(os.path.join(bare, f))


def test_short_schedules_save_checkpoints_often_enough(phantom):
    p = split(phantom.id, "--fraction", "0.2", "--group", r"phantom\d+", "--name", "save3", "--epochs", "30",
              "--iterations", "1", "--save-every", "3", check=True)
    assert p.returncode == 0
    block = json.load(open(os.path.join(phantom.pre, "nnUNetPlans_save3.json")))["semicl"]
    assert block["trainer"]["save_every"] == 3
    with env(nnUNet_n_proc_DA=0):
        assert make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainerLabeledOnly", "nnUNetPlans_save3").save_every == 3
        # without --save-every: scaled to the schedule (2 epochs -> every epoch), nnU-Net's 50 otherwise
        assert make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainerLabeledOnly", phantom.plans).save_every == 1
        assert make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainer", phantom.plans).save_every == 50


# ------------------------------------------------------------------------------------------------
# add-unlabeled
# ------------------------------------------------------------------------------------------------
UNL_ID = 993


@pytest.fixture(scope="module")
def small_raw(nnunet_dirs):
    from nnunet_semicl.dataset_conversion.synthetic import generate_dataset

    raw = generate_dataset(nnunet_dirs.raw, UNL_ID, name="SemiCLAddBad", n_patients=3, n_test_patients=0, dim=2,
                           verbose=False, overwrite=True)
    return raw


def _phantom_image(folder, name, channels=1, truncate=False, seed=0):
    import numpy as np
    import SimpleITK as sitk

    os.makedirs(folder, exist_ok=True)
    arr = np.random.RandomState(seed).rand(*((channels,) if channels > 1 else ()), 1, 64, 64).astype(np.float32)
    path = os.path.join(folder, name)
    sitk.WriteImage(sitk.GetImageFromArray(arr), path, useCompression=True)
    if truncate:
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    return path


def add_unlabeled(*args):
    return run_cmd([sys.executable, "-m", "nnunet_semicl.cli", "add-unlabeled", str(UNL_ID), *map(str, args),
                    "-np", "1"], check=False)


@pytest.mark.parametrize("kind", ["4d", "truncated", "prefix", "badname"])
def test_refused_add_unlabeled_leaves_the_dataset_as_it_was(small_raw, nnunet_dirs, tmp_path, kind):
    folder = str(tmp_path / "in")
    good = _phantom_image(folder, "u001_0000.nii.gz")
    args, needles = ["-i", folder], []
    if kind == "4d":
        bad = _phantom_image(folder, "u002_0000.nii.gz", channels=2)
        needles = [bad, "2 channel(s)", "one channel per file"]
    elif kind == "truncated":
        bad = _phantom_image(folder, "u002_0000.nii.gz", truncate=True)
        needles = [bad, "truncated"]
    elif kind == "prefix":
        args += ["--prefix", "../x"]
        needles = ["--prefix '../x'", "letters, digits"]
    else:
        shutil.copy(good, os.path.join(folder, "u 003_0000.nii.gz"))
        needles = ["u 003_0000.nii.gz", "Rename"]
    before = tree_digest(small_raw, nnunet_dirs.preprocessed)
    assert_refused(add_unlabeled(*args), *needles)
    assert tree_digest(small_raw, nnunet_dirs.preprocessed) == before


def test_add_unlabeled_rolls_back_when_committing_fails(small_raw, nnunet_dirs, tmp_path, monkeypatch):
    from nnunet_semicl.data import unlabeled_images
    from nnunet_semicl.errors import InputError

    folder = str(tmp_path / "in")
    _phantom_image(folder, "u001_0000.nii.gz")
    _phantom_image(folder, "u002_0000.nii.gz", seed=1)  # (another scan: a copy would be refused as a duplicate)

    def broken_fingerprint(*a, **k):  # a step of the change fails (after the lock and the staging folders)
        raise InputError("fingerprint failed")

    monkeypatch.setattr(unlabeled_images, "labeled_only_fingerprint", broken_fingerprint)
    before = tree_digest(small_raw, nnunet_dirs.preprocessed)
    with pytest.raises(InputError, match="fingerprint failed"):
        unlabeled_images.add_unlabeled_images(UNL_ID, folder, prefix="unl_", verbose=False)
    assert tree_digest(small_raw, nnunet_dirs.preprocessed) == before


# ------------------------------------------------------------------------------------------------
# non-finite input: every trainer stops at the first batch that holds it, naming the case(s)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nan_plans(phantom):
    """``nanPlans_20pct``: the phantom's 2d data (a copy) with NaN in one frame of each labeled patient of fold 0."""
    import numpy as np
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    from nnunet_semicl.data.setting_files import write_plans_variant
    from nnunet_semicl.files import save_json

    plans = json.load(open(os.path.join(phantom.pre, "nnUNetPlans.json")))
    plans["plans_name"] = "nanPlans"
    for cfg in plans["configurations"].values():
        if "data_identifier" in cfg:
            cfg["data_identifier"] = cfg["data_identifier"].replace("nnUNetPlans_", "nanPlans_")
    save_json(plans, os.path.join(phantom.pre, "nanPlans.json"))
    src, dst = os.path.join(phantom.pre, "nnUNetPlans_2d"), os.path.join(phantom.pre, "nanPlans_2d")
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    labeled = json.load(open(os.path.join(phantom.pre, f"splits_semicl_{phantom.setting}.json")))["folds"][0]["labeled"]
    nan_cases = sorted({c.split("_")[0]: c for c in labeled}.values())   # one frame of each labeled patient
    ds = nnUNetDatasetBlosc2(dst, nan_cases)
    for k in nan_cases:
        data, seg, _, props = ds.load_case(k)
        data, seg = np.full(data.shape, np.nan, np.float32), np.asarray(seg[:])
        for f in (".b2nd", "_seg.b2nd", ".pkl"):
            os.remove(os.path.join(dst, k + f))
        nnUNetDatasetBlosc2.save_case(data, seg, props, os.path.join(dst, k), chunks=data.shape, blocks=data.shape)
    write_plans_variant(phantom.pre, phantom.setting, "nanPlans", overwrite=True,
                        trainer_overrides={"num_epochs": 1, "num_iterations_per_epoch": 4,
                                           "num_val_iterations_per_epoch": 1})
    return SimpleNamespace(plans=f"nanPlans_{phantom.setting}", nan_cases=nan_cases,
                           finite_labeled=sorted(set(labeled) - set(nan_cases)))


@pytest.mark.parametrize("trainer", ["nnUNetTrainerLabeledOnly", "nnUNetTrainerACTIONpp", "nnUNetTrainerACTION"])
def test_nan_input_stops_training_naming_the_cases(phantom, nan_plans, trainer):
    from tests.integration.nnunet_helpers import output_folder, stock_train

    with pytest.raises(FloatingPointError) as e:
        stock_train(phantom.id, "2d_tiny", 0, "-tr", trainer, "-p", nan_plans.plans)
    msg = str(e.value)
    named = [c for c in nan_plans.nan_cases if c in msg]
    assert named and "NaN/Inf" in msg and "labeled batch" in msg, msg
    assert not any(c in msg for c in nan_plans.finite_labeled), msg   # per case, not the whole batch
    folder = output_folder(phantom, trainer, "2d_tiny", plans=nan_plans.plans)
    assert not os.path.exists(os.path.join(folder, "checkpoint_final.pth"))


def test_nan_check_names_only_the_non_finite_samples(phantom):
    with env(nnUNet_n_proc_DA=0):
        t = make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainerLabeledOnly", phantom.plans)
        t.initialize()
        x = torch.zeros(3, 1, 8, 8)
        x[1, 0, 2, 2] = float("inf")
        with pytest.raises(FloatingPointError) as e:
            t.check_finite_input({"data": x, "keys": ["a_case", "b_case", "c_case"]}, "unlabeled")
        assert "['b_case']" in str(e.value) and "unlabeled batch" in str(e.value)
        t.check_finite_input({"data": torch.zeros(2, 1, 4, 4), "keys": ["a", "b"]})  # finite: no error


# ------------------------------------------------------------------------------------------------
# checkpoints: damaged files, the fall-back of --c, a kill while saving, safe loading
# ------------------------------------------------------------------------------------------------
def test_damaged_checkpoint_latest_is_named_and_best_is_offered(phantom):
    from nnunetv2.run.run_training import maybe_load_checkpoint

    from nnunet_semicl.training.labeled_only import CheckpointError

    trainer = "nnUNetTrainerLabeledOnly"
    with env(nnUNet_n_proc_DA=0):
        t = make_trainer(phantom.id, "2d_tiny", 1, trainer, phantom.plans)
        t.initialize()
        folder = t.output_folder
        os.makedirs(folder, exist_ok=True)
        for f in os.listdir(folder):
            if f.startswith("checkpoint_"):
                os.remove(os.path.join(folder, f))
        t.current_epoch = 3
        t.save_checkpoint(os.path.join(folder, "checkpoint_best.pth"))
        t.current_epoch = 6
        latest = os.path.join(folder, "checkpoint_latest.pth")
        t.save_checkpoint(latest)
        data = open(latest, "rb").read()
        open(latest, "wb").write(data[: len(data) // 2])

        t2 = make_trainer(phantom.id, "2d_tiny", 1, trainer, phantom.plans, continue_training=True)
        with pytest.raises(CheckpointError) as e:
            maybe_load_checkpoint(t2, True, False)          # what --c does
        msg = str(e.value)
        assert latest in msg and "checkpoint_best.pth" in msg and f"mv {latest}" in msg and "without --c" in msg
        os.replace(latest, latest + ".damaged")              # the fix the message gives
        t3 = make_trainer(phantom.id, "2d_tiny", 1, trainer, phantom.plans, continue_training=True)
        maybe_load_checkpoint(t3, True, False)
        assert t3.current_epoch == 4
        log = open(t3.log_file).read()
        assert "no checkpoint_latest.pth" in log and "continuing from checkpoint_best.pth" in log and "epoch 3" in log


KILL_WHILE_SAVING = r"""
import os, signal, sys, torch
from nnunet_semicl.training import labeled_only
path = sys.argv[1]
labeled_only.save_atomically({"network_weights": {"w": torch.arange(5)}, "current_epoch": 1}, path)
real_save = torch.save
def dying_save(obj, f, *a, **k):           # half of the new checkpoint reaches the disk, then SIGKILL
    import io
    buf = io.BytesIO()
    real_save(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
labeled_only.save_atomically({"network_weights": {"w": torch.zeros(1000)}, "current_epoch": 2}, path)
"""


def test_a_kill_while_saving_leaves_the_previous_checkpoint(tmp_path):
    import signal

    from nnunet_semicl.training.labeled_only import CheckpointError, read_checkpoint

    path = str(tmp_path / "checkpoint_latest.pth")
    p = run_cmd([sys.executable, "-c", KILL_WHILE_SAVING, path], check=False)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr)
    ckpt = read_checkpoint(path)
    assert ckpt["current_epoch"] == 1 and torch.equal(ckpt["network_weights"]["w"], torch.arange(5))
    assert os.path.isfile(path + ".tmp")      # the interrupted save went to the temporary file ...
    with pytest.raises(CheckpointError, match="checkpoint_latest.pth.tmp"):
        read_checkpoint(path + ".tmp")         # ... which is incomplete


class _Payload:
    def __reduce__(self):
        return (open, (os.environ["SEMICL_TEST_MARKER"], "w"))


def test_checkpoints_are_loaded_without_running_code(tmp_path, monkeypatch):
    """``NNUNET_SEMICL_WARM_START`` and --c load with weights_only=True: a pickled payload is refused."""
    from nnunet_semicl.training.labeled_only import CheckpointError, read_checkpoint

    marker = tmp_path / "code_ran"
    monkeypatch.setenv("SEMICL_TEST_MARKER", str(marker))
    path = str(tmp_path / "evil.pth")
    torch.save({"network_weights": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        read_checkpoint(path)
    assert not marker.exists()
    import inspect

    from nnunet_semicl.benchmarking import warm_start
    assert "read_checkpoint(" in inspect.getsource(warm_start._WarmStart.initialize)


def test_plans_copied_from_another_dataset_are_refused(phantom, bare, monkeypatch):
    """Issue 31 row 6: `nnUNetv2_train 992 ... -p <plans copied from the phantom>` trained the phantom's data."""
    from nnunet_semicl.training.compatibility import IncompatibleRunError

    copied = os.path.join(bare, "nnUNetPlans_copied.json")
    shutil.copy2(os.path.join(phantom.pre, phantom.plans + ".json"), copied)
    try:
        with env(nnUNet_n_proc_DA=0):
            monkeypatch.setattr(sys, "argv", ["/venv/bin/nnUNetv2_train", str(BARE_ID), "2d_tiny", "0", "-p",
                                              "nnUNetPlans_copied"])
            with pytest.raises(IncompatibleRunError, match=f"belong to {phantom.name}.*not to Dataset{BARE_ID}"):
                make_trainer(BARE_ID, "2d_tiny", 0, "nnUNetTrainerLabeledOnly", "nnUNetPlans_copied")
            monkeypatch.setattr(sys, "argv", ["/venv/bin/nnUNetv2_train", str(phantom.id), "2d_tiny", "0"])
            make_trainer(phantom.id, "2d_tiny", 0, "nnUNetTrainerLabeledOnly", phantom.plans)   # its own: fine
    finally:
        os.remove(copied)
