"""Bad input never corrupts a dataset, leaks a patient into validation, or trains a NaN model (issue 12).

Every refused command must leave the dataset, split and results folders byte-identical (compared by
checksums) and say what is wrong and how to fix it, without a traceback.
"""
import json
import os
import shutil
import sys

import pytest

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


def _phantom_image(folder, name, channels=1, truncate=False):
    import numpy as np
    import SimpleITK as sitk

    os.makedirs(folder, exist_ok=True)
    arr = np.random.RandomState(0).rand(*((channels,) if channels > 1 else ()), 1, 64, 64).astype(np.float32)
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
    from nnunet_semicl.data.splits import SplitError

    folder = str(tmp_path / "in")
    _phantom_image(folder, "u001_0000.nii.gz")
    _phantom_image(folder, "u002_0000.nii.gz")

    def broken_fingerprint(*a, **k):  # the last step of the commit fails (after files and dataset.json)
        raise SplitError("fingerprint failed")

    monkeypatch.setattr(unlabeled_images, "labeled_only_fingerprint", broken_fingerprint)
    before = tree_digest(small_raw, nnunet_dirs.preprocessed)
    with pytest.raises(SplitError, match="fingerprint failed"):
        unlabeled_images.add_unlabeled_images(UNL_ID, folder, prefix="unl_", verbose=False)
    assert tree_digest(small_raw, nnunet_dirs.preprocessed) == before
