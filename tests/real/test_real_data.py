"""Convert the real ACDC (SSL4MIS copy) and LA (UA-MT copy) files in ../shared/data, then run the stock
``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` and ``nnunet_semicl sync-plans`` on the result.

The shared copies are partial (SOURCES.md): ACDC lacks the 20 test patients, LA has 30 of the 80
training volumes and no test volume, so the conversions run with ``--allow-missing``; the tests
check that exactly those cases are missing. Skipped cleanly when ../shared/data is absent. Nothing
from the data is written into the repository: everything goes to pytest's tmp folders.

Cost on 2 CPU cores: ACDC (160 cases from 1312 slices + 20 volumes) converts in ~15-20 s,
verification + fingerprint + 2d planning take ~15 s (``--no_pp``); LA (30 volumes) converts in ~15 s,
verification + fingerprint + 3d_fullres planning (``--no_pp``) and the preprocessing of one volume follow.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnunet_semicl.dataset_conversion import protocols

pytestmark = pytest.mark.real_data

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ACDC_DIR = SHARED_DATA / "ACDC_ssl4mis"
LA_DIR = SHARED_DATA / "LA_uamt"


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_nnunet")
    env = {k: str(root / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setenv("nnUNet_def_n_proc", "2")
        mp.delenv("nnUNet_n_proc_DA", raising=False)  # 2.8.1 planning crashes with nnUNet_n_proc_DA=0
        mp.delenv("nnUNet_compile", raising=False)
        yield env


def _require(path: Path):
    if not path.is_dir():
        pytest.skip(f"{path} is not available (real data live in ../shared/data beside the checkout)")


def _load_json(path):
    with open(path) as f:
        return json.load(f)


def _read(path):
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def _plan_and_preprocess(dataset_id: int, config: str, preprocess: bool = True):
    """The stock command, as a user runs it (2 processes, the CPU-friendly settings of nnunet-notes 6.4)."""
    exe = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_plan_and_preprocess")
    cmd = [exe if os.path.isfile(exe) else "nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", config,
           "-np", "2", "-npfp", "2", "--verify_dataset_integrity", "--no_pbar"] + ([] if preprocess else ["--no_pp"])
    proc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "verify_dataset_integrity Done" in proc.stdout
    return proc


def _sync_and_check_settings(dataset_id: int, name: str, env: dict, config: str, expected_labeled: dict):
    from nnunet_semicl.cli import main as cli_main
    from nnunet_semicl.data.splits import resolve_case_sets

    cli_main(["sync-plans", str(dataset_id)])
    pre = os.path.join(env["nnUNet_preprocessed"], name)
    folds = _load_json(os.path.join(pre, "splits_final.json"))
    base = _load_json(os.path.join(pre, "nnUNetPlans.json"))
    for setting, labeled in expected_labeled.items():
        plans = _load_json(os.path.join(pre, f"nnUNetPlans_{setting}.json"))
        assert plans["plans_name"] == f"nnUNetPlans_{setting}"
        assert plans["semicl"]["split_file"] == f"splits_semicl_{setting}.json"
        assert plans["configurations"][config] == base["configurations"][config]
        sets = resolve_case_sets(plans, {}, pre, 0, folds[0]["train"])
        assert sets.labeled == tuple(sorted(labeled))
        assert len(sets.unlabeled) == len(folds[0]["train"]) - len(labeled)


# ------------------------------------------------------------------------------------------------
# ACDC
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def acdc(nnunet_env):
    _require(ACDC_DIR)
    from nnunet_semicl.dataset_conversion.acdc import convert_acdc

    return convert_acdc(str(ACDC_DIR), allow_missing=True, num_processes=2, verbose=False)


def test_acdc_real_conversion(acdc, nnunet_env):
    a = protocols.ACDC
    # the shared copy has every training/validation patient and none of the 20 test patients
    assert sorted(acdc["missing"]) == sorted(a.cases_of(a.test))
    assert acdc["n_train_cases"] == 160 and acdc["n_test_cases"] == 0
    assert (acdc["n_fold0_train"], acdc["n_fold0_val"]) == (140, 20)
    assert acdc["settings"] == ["1pct", "5pct", "10pct"] and not acdc["skipped_settings"]
    raw_ds = Path(acdc["dataset_dir"])
    dj = _load_json(raw_ds / "dataset.json")
    assert dj["numTraining"] == 160 and dj["labels"] == {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}

    import h5py

    # a training frame stacked back from its 2D slices (slice order 1..N, N > 9)
    case = "patient099_frame01"
    n = len(list((ACDC_DIR / "data").glob(f"{case}_slice_*.h5")))
    assert n > 9
    img, itk = _read(raw_ds / "imagesTr" / f"{case}_0000.nii.gz")
    lab, _ = _read(raw_ds / "labelsTr" / f"{case}.nii.gz")
    assert img.shape[0] == n
    for z in range(n):
        with h5py.File(ACDC_DIR / "data" / f"{case}_slice_{z + 1}.h5", "r") as f:
            np.testing.assert_array_equal(img[z], f["image"][()])
            np.testing.assert_array_equal(lab[z], f["label"][()])
    assert itk.GetSpacing() == pytest.approx((1.5, 1.5, 10.0))
    # a validation frame from its 3D volume
    case = "patient002_frame02"
    img, _ = _read(raw_ds / "imagesTr" / f"{case}_0000.nii.gz")
    lab, _ = _read(raw_ds / "labelsTr" / f"{case}.nii.gz")
    with h5py.File(ACDC_DIR / "data" / f"{case}.h5", "r") as f:
        np.testing.assert_array_equal(img, f["image"][()])
        np.testing.assert_array_equal(lab, f["label"][()])
    assert set(np.unique(lab)) == {0, 1, 2, 3}


def test_acdc_real_plan_and_preprocess(acdc, nnunet_env):
    name = acdc["dataset_name"]
    pre = os.path.join(nnunet_env["nnUNet_preprocessed"], name)
    folds_before = _load_json(os.path.join(pre, "splits_final.json"))
    # verification, fingerprint (reads every case) and planning; the 2d preprocessing of 160 cases
    # (~40 s) is left out for the time budget; LA below runs the full preprocessing
    _plan_and_preprocess(27, "2d", preprocess=False)
    assert _load_json(os.path.join(pre, "splits_final.json")) == folds_before  # nnU-Net keeps our split
    fp = _load_json(os.path.join(pre, "dataset_fingerprint.json"))
    assert len(fp["shapes_after_crop"]) == 160
    assert all(s == pytest.approx([10.0, 1.5, 1.5]) for s in fp["spacings"])
    plans = _load_json(os.path.join(pre, "nnUNetPlans.json"))
    assert plans["configurations"]["2d"]["spacing"] == pytest.approx([1.5, 1.5])
    p = lambda *n: [f"patient{i}" for i in n]
    _sync_and_check_settings(27, name, nnunet_env, "2d", {
        "1pct": protocols.ACDC.cases_of(p("099")),
        "5pct": protocols.ACDC.cases_of(p("099", "038", "050")),
        "10pct": protocols.ACDC.cases_of(p("099", "038", "050", "100", "058", "021", "049"))})


# ------------------------------------------------------------------------------------------------
# LA
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def la(nnunet_env):
    _require(LA_DIR)
    from nnunet_semicl.dataset_conversion.la import convert_la

    return convert_la(str(LA_DIR), allow_missing=True, num_processes=2, verbose=False)


def test_la_real_conversion(la, nnunet_env):
    present = sorted(p.name for p in (LA_DIR / "2018LA_Seg_Training Set").iterdir() if p.is_dir())
    assert present == sorted(protocols.LA_TRAIN_LIST[:30])  # SOURCES.md: the first 30 of train.list
    assert sorted(la["missing"]) == sorted(set(protocols.LA.all_groups) - set(present))
    assert la["n_train_cases"] == 30 and la["n_test_cases"] == 0
    # fold 0 validates on the LA_VAL volumes that are present (3 of 8), trains on the other 27
    assert (la["n_fold0_train"], la["n_fold0_val"]) == (27, 3)
    assert la["settings"] == ["1pct", "5pct", "10pct"]
    raw_ds = Path(la["dataset_dir"])
    import h5py

    case = protocols.LA_TRAIN_LIST[0]
    img, itk = _read(raw_ds / "imagesTr" / f"{case}_0000.nii.gz")
    lab, _ = _read(raw_ds / "labelsTr" / f"{case}.nii.gz")
    with h5py.File(LA_DIR / "2018LA_Seg_Training Set" / case / "mri_norm2.h5", "r") as f:
        np.testing.assert_array_equal(img, f["image"][()].transpose(2, 1, 0))
        np.testing.assert_array_equal(lab, f["label"][()].transpose(2, 1, 0))
    assert itk.GetSpacing() == pytest.approx((0.625, 0.625, 0.625))
    assert set(np.unique(lab)) == {0, 1}


def test_la_real_plan_and_preprocess(la, nnunet_env):
    name = la["dataset_name"]
    pre = os.path.join(nnunet_env["nnUNet_preprocessed"], name)
    # verification, fingerprint and planning of all 30 volumes; the 3d_fullres preprocessing of all of them
    # (~30 s) is left out for CI's 15-minute budget: one volume goes through nnU-Net's preprocessor below
    _plan_and_preprocess(28, "3d_fullres", preprocess=False)
    plans = _load_json(os.path.join(pre, "nnUNetPlans.json"))
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["spacing"] == pytest.approx([0.625] * 3)
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    raw_ds = Path(la["dataset_dir"])
    case = protocols.LA_TRAIN_LIST[0]
    data, seg, props = DefaultPreprocessor(verbose=False).run_case(
        [str(raw_ds / "imagesTr" / f"{case}_0000.nii.gz")], str(raw_ds / "labelsTr" / f"{case}.nii.gz"), manager,
        manager.get_configuration("3d_fullres"), str(raw_ds / "dataset.json"))
    assert data.shape[0] == 1 and data.shape[1:] == seg.shape[1:] and np.isfinite(data).all()
    assert set(np.unique(seg)) <= {-1, 0, 1} and (seg == 1).any()
    assert abs(float(data[seg >= 0].mean())) < 0.5   # z-score normalised
    _sync_and_check_settings(28, name, nnunet_env, "3d_fullres", {
        "1pct": protocols.LA_TRAIN_LIST[:1], "5pct": protocols.LA_TRAIN_LIST[:4],
        "10pct": protocols.LA_TRAIN_LIST[:8]})


def test_la_real_copy_fits_the_development_fold():
    """``benchmark accuracy --dataset la`` on the real copy: its default input is this copy, and fold 0 of
    ``convert-la --protocol dev`` (``protocols.LA_DEV``) finds its 5 validation volumes there, none labeled by any
    setting, leaving 21 unlabeled volumes to the 5pct setting (the splits on the ids: tests/unit/test_accuracy_la.py;
    the conversion: tests/integration/test_conversion.py)."""
    _require(LA_DIR)
    from nnunet_semicl.benchmarking.accuracy_datasets import DATASETS
    from nnunet_semicl.benchmarking.common import shared_data_folder

    la = DATASETS["la"]
    assert Path(shared_data_folder(la.shared_folder, la.shared_marker)) == LA_DIR
    present = sorted(p.name for p in (LA_DIR / la.shared_marker).iterdir() if p.is_dir())
    folds = protocols.make_folds(protocols.LA_DEV, present)
    assert folds[0]["val"] == sorted(protocols.LA_DEV_VAL) and len(folds[0]["train"]) == 25
    contents, skipped = protocols.make_settings(protocols.LA_DEV, folds)
    assert not skipped
    for content in contents:
        fold = content["folds"][0]
        assert not set(fold["labeled"]) & set(folds[0]["val"])
    five = {c["setting"]: c for c in contents}["5pct"]["folds"][0]
    assert five["labeled"] == sorted(protocols.LA_TRAIN_LIST[:4]) and len(five["unlabeled"]) == 21
