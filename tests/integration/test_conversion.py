"""ACDC / LA converters on synthetic mock trees of every input layout (built here, in tmp dirs).

Each layout is converted and checked voxel for voxel (and for geometry) against the arrays the mock
was built from; the protocol's folds and labeled settings are checked against methods.md 7.1 / 7.2;
every error case of the issue has a test. The trees hold all 100 protocol patients / volumes with
tiny arrays, so the real id lists are exercised and each test takes about a second.
"""
import glob
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_semicl.dataset_conversion import protocols
from nnunet_semicl.dataset_conversion.acdc import convert_acdc, parse_info_cfg
from nnunet_semicl.errors import ConversionError
from nnunet_semicl.dataset_conversion.la import convert_la
from nnunet_semicl.data.splits import resolve_case_sets

pytestmark = pytest.mark.integration

ACDC_PATIENTS = protocols.ACDC.all_groups
LA_IDS = protocols.LA.all_groups


@pytest.fixture
def env(tmp_path, monkeypatch):
    paths = {k: str(tmp_path / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, v in paths.items():
        monkeypatch.setenv(k, v)
    return paths


def _read(path):
    img = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(img), img


def _write(arr, path, spacing_xyz=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, path)
    return img


def _write_h5(path, image, label):
    """An SSL4MIS / UA-MT HDF5 file: datasets ``image`` and ``label``."""
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
        f.create_dataset("label", data=label)


def _set_label_voxel(path, value):
    """Write ``value`` into the first voxel of the label file ``path`` (keeping its geometry)."""
    ref = sitk.ReadImage(path)
    arr = sitk.GetArrayFromImage(ref)
    arr[0, 0, 0] = value
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(ref)
    sitk.WriteImage(out, path)


def _assert_same_geometry(images, ref):
    for o in images:
        assert o.GetSpacing() == pytest.approx(ref.GetSpacing())
        assert o.GetOrigin() == pytest.approx(ref.GetOrigin())
        assert o.GetDirection() == pytest.approx(ref.GetDirection())


def _frames_of(p: int):
    """(ED, ES) frame numbers of mock patient number p: ED 1, ES varies like the real data."""
    return 1, 8 + p % 7


# ------------------------------------------------------------------------------------------------
# mock trees
# ------------------------------------------------------------------------------------------------
def make_official_acdc(root, patients=ACDC_PATIENTS):
    """training/patientXXX/{Info.cfg, patientXXX_frameYY[_gt].nii.gz}; returns {case: (image, label, img)}."""
    rng = np.random.RandomState(0)
    expected = {}
    for pat in patients:
        p = int(pat[-3:])
        d = os.path.join(root, "training", pat)
        os.makedirs(d)
        ed, es = _frames_of(p)
        with open(os.path.join(d, "Info.cfg"), "w") as f:
            f.write(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n")
        shape = (2 + p % 2, 5, 4 + p % 3)
        spacing = (1.25 + 0.01 * p, 1.25 + 0.01 * p, 5.0 + p % 5)
        origin = (float(p), -2.0, 3.5)
        direction = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
        for suffix, frame in (("_frame01", ed), ("_frame02", es)):
            img = rng.randint(0, 300, size=shape).astype(np.int16)
            lab = rng.randint(0, 4, size=shape).astype(np.uint8)
            base = os.path.join(d, f"{pat}_frame{frame:02d}")
            written = _write(img, base + ".nii.gz", spacing, origin, direction)
            _write(lab, base + "_gt.nii.gz", spacing, origin, direction)
            expected[pat + suffix] = (img, lab, written)
        # a decoy: an unannotated frame that must not be picked
        _write(np.zeros(shape, np.int16), os.path.join(d, f"{pat}_frame05.nii.gz"), spacing, origin, direction)
    # the official testing/ folder (patients 101-150) is not part of the protocol
    d = os.path.join(root, "testing", "patient101")
    os.makedirs(d)
    with open(os.path.join(d, "Info.cfg"), "w") as f:
        f.write("ED: 1\nES: 9\n")
    _write(np.zeros((2, 3, 3), np.int16), os.path.join(d, "patient101_frame01.nii.gz"))
    return expected


def make_ssl4mis_acdc(root, n_slices_099=11):
    """data/ with 3D volumes for val/test patients and 2D slices for training patients, plus the lists."""
    rng = np.random.RandomState(1)
    data = os.path.join(root, "data")
    os.makedirs(data)
    expected = {}
    slice_entries = []
    for pat in ACDC_PATIENTS:
        p = int(pat[-3:])
        for suffix in ("_frame01", "_frame02"):
            case = pat + suffix
            nz = n_slices_099 if pat == "patient099" else 2 + p % 3
            shape = (nz, 6, 5 + p % 2)
            img = rng.rand(*shape).astype(np.float32)
            lab = rng.randint(0, 4, size=shape).astype(np.uint8)
            expected[case] = (img, lab)
            if pat in protocols.ACDC.train:
                order = rng.permutation(nz)  # the real train_slices.list is not in slice order
                for z in order:
                    _write_h5(os.path.join(data, f"{case}_slice_{z + 1}.h5"), img[z], lab[z])
                    slice_entries.append(f"{case}_slice_{z + 1}")
            else:
                _write_h5(os.path.join(data, f"{case}.h5"), img, lab)
    for name, groups in (("train.list", protocols.ACDC.train), ("val.list", protocols.ACDC.val),
                         ("test.list", protocols.ACDC.test)):
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(protocols.ACDC.cases_of(groups)) + "\n")
    with open(os.path.join(root, "train_slices.list"), "w") as f:
        f.write("\n".join(slice_entries) + "\n")
    return expected


def make_la_challenge(root, ids=LA_IDS):
    """Training Set/<ID>/{lgemri.nrrd, laendo.nrrd (0/255)} with non-trivial geometry."""
    rng = np.random.RandomState(2)
    expected = {}
    for i, case in enumerate(ids):
        d = os.path.join(root, "Training Set", case)
        os.makedirs(d)
        shape = (3, 5 + i % 2, 4)
        img = rng.randint(0, 255, size=shape).astype(np.uint8)
        lab = (rng.rand(*shape) > 0.6).astype(np.uint8) * 255
        spacing, origin = (0.625, 0.625, 1.25), (10.0 + i, -5.0, 2.0)
        direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
        written = _write(img, os.path.join(d, "lgemri.nrrd"), spacing, origin, direction)
        _write(lab, os.path.join(d, "laendo.nrrd"), spacing, origin, direction)
        expected[case] = (img, (lab > 0).astype(np.uint8), written)
    return expected


def make_la_uamt(root, ids=LA_IDS):
    """2018LA_Seg_Training Set/<ID>/mri_norm2.h5 with (X, Y, Z) arrays, plus train.list / test.list."""
    rng = np.random.RandomState(3)
    expected = {}
    for i, case in enumerate(ids):
        d = os.path.join(root, "2018LA_Seg_Training Set", case)
        os.makedirs(d)
        shape_xyz = (6 + i % 2, 5, 4)
        img = rng.randn(*shape_xyz).astype(np.float32)
        lab = (rng.rand(*shape_xyz) > 0.5).astype(np.uint8)
        _write_h5(os.path.join(d, "mri_norm2.h5"), img, lab)
        expected[case] = (img, lab)
    with open(os.path.join(root, "train.list"), "w") as f:
        f.write("\n".join(protocols.LA_TRAIN_LIST) + "\n")
    with open(os.path.join(root, "test.list"), "w") as f:
        f.write("\n".join(protocols.LA_TEST) + "\n")
    return expected


def _case_file(raw_ds, case, role, kind):
    folder = {("train", "image"): "imagesTr", ("train", "label"): "labelsTr",
              ("test", "image"): "imagesTs", ("test", "label"): "labelsTs"}[(role, kind)]
    return os.path.join(raw_ds, folder, f"{case}_0000.nii.gz" if kind == "image" else f"{case}.nii.gz")


def _load_json(path):
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------
# protocol data
# ------------------------------------------------------------------------------------------------
def test_protocol_lists_match_the_spec():
    a = protocols.ACDC
    a.check()
    assert (len(a.train), len(a.val), len(a.test)) == (70, 10, 20)
    assert sorted(int(p[-3:]) for p in a.test) == [1, 7, 8, 11, 13, 22, 24, 33, 52, 59, 64, 65, 66, 68, 75, 80, 81,
                                                   83, 84, 93]
    assert sorted(int(p[-3:]) for p in a.val) == [2, 19, 28, 30, 39, 45, 78, 82, 85, 87]
    assert sorted(a.all_groups) == [f"patient{i:03d}" for i in range(1, 101)]
    s = dict(a.settings)
    assert s["1pct"] == ("patient099",)
    assert s["5pct"] == ("patient099", "patient038", "patient050")
    assert [p[-3:] for p in s["10pct"]] == ["099", "038", "050", "100", "058", "021", "049"]
    # the labeled patients are the first of the SSL4MIS train.list order
    for ids in s.values():
        assert a.train[:len(ids)] == ids
    la = protocols.LA
    la.check()
    assert len(protocols.LA_TRAIN_LIST) == 80 and len(la.test) == 20
    assert la.test[0] == "UPT6DX9IQY9JAZ7HJKA7" and la.test[-1] == "ZQPMJ4XEC5A4BISD45P1"
    assert protocols.LA_VAL == protocols.LA_TRAIN_LIST[9::10] and len(la.train) == 72
    s = dict(la.settings)
    assert s["1pct"] == ("06SR5RBREL16DQ6M8LWS",)
    assert s["5pct"][1:] == ("0RZDK210BSMWAA6467LU", "1D7CUD1955YZPGK8XHJX", "1GU15S0GJ6PFNARO469W")
    assert s["10pct"][4:] == ("1MHBF3G6DCPWHSKG7XCP", "23X6SY44VT9KFHR7S7OC", "2XL5HSFSE93RMOJDRGR4",
                              "38CWS74285MFGZZXR09Z")
    assert not set(protocols.LA_VAL) & set(s["10pct"])


def test_parse_info_cfg(tmp_path):
    p = tmp_path / "Info.cfg"
    p.write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    assert parse_info_cfg(str(p)) == {"ED": 1, "ES": 12}
    p.write_text("Group: DCM\n")
    with pytest.raises(ConversionError, match="ED"):
        parse_info_cfg(str(p))


# ------------------------------------------------------------------------------------------------
# ACDC
# ------------------------------------------------------------------------------------------------
def _check_acdc_protocol_files(env, n_folds=1):
    raw_ds = os.path.join(env["nnUNet_raw"], "Dataset027_ACDC")
    pre = os.path.join(env["nnUNet_preprocessed"], "Dataset027_ACDC")
    dj = _load_json(os.path.join(raw_ds, "dataset.json"))
    assert dj["labels"] == {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
    assert dj["numTraining"] == 160 and dj["file_ending"] == ".nii.gz" and dj["channel_names"] == {"0": "cineMRI"}
    assert len(os.listdir(os.path.join(raw_ds, "imagesTr"))) == 160
    assert len(os.listdir(os.path.join(raw_ds, "labelsTr"))) == 160
    assert sorted(os.listdir(os.path.join(raw_ds, "labelsTs"))) == sorted(
        f"{c}.nii.gz" for c in protocols.ACDC.cases_of(protocols.ACDC.test))
    assert len(os.listdir(os.path.join(raw_ds, "imagesTs"))) == 40
    folds = _load_json(os.path.join(pre, "splits_final.json"))
    assert len(folds) == n_folds
    if n_folds == 1:
        assert folds[0]["train"] == sorted(protocols.ACDC.cases_of(protocols.ACDC.train))
        assert folds[0]["val"] == sorted(protocols.ACDC.cases_of(protocols.ACDC.val))
    for name, n_pat in (("1pct", 1), ("5pct", 3), ("10pct", 7)):
        s = _load_json(os.path.join(pre, f"splits_semicl_{name}.json"))
        assert s["setting"] == name and s["group_regex"] == protocols.ACDC_GROUP_REGEX
        expected = sorted(protocols.ACDC.cases_of(dict(protocols.ACDC.settings)[name]))
        assert s["all"]["labeled"] == expected and len(s["all"]["unlabeled"]) == 160 - 2 * n_pat
        for k, f in enumerate(s["folds"]):
            assert len(f["labeled"]) == 2 * n_pat
            assert sorted(f["labeled"] + f["unlabeled"]) == folds[k]["train"]
            if n_folds == 1:
                assert f["labeled"] == expected
    return raw_ds, pre, folds


def test_acdc_official_voxel_for_voxel(tmp_path, env):
    src = tmp_path / "ACDC"
    expected = make_official_acdc(str(src))
    summary = convert_acdc(str(src), verbose=False)
    assert summary["layout"] == "official" and summary["n_train_cases"] == 160 and summary["n_test_cases"] == 40
    raw_ds, pre, folds = _check_acdc_protocol_files(env)
    info = _load_json(os.path.join(raw_ds, "conversion_info.json"))
    for case, (img, lab, ref_img) in expected.items():
        role = "test" if case[:10] in protocols.ACDC.test else "train"
        out_img, out_img_itk = _read(_case_file(raw_ds, case, role, "image"))
        out_lab, out_lab_itk = _read(_case_file(raw_ds, case, role, "label"))
        np.testing.assert_array_equal(out_img, img)
        np.testing.assert_array_equal(out_lab, lab)
        _assert_same_geometry((out_img_itk, out_lab_itk), ref_img)  # geometry of the official files is kept
        # frame01 = ED, frame02 = ES; the real frame number is recorded
        ed, es = _frames_of(int(case[7:10]))
        assert info["cases"][case]["phase"] == ("ED" if case.endswith("01") else "ES")
        assert info["cases"][case]["source_frame"] == (ed if case.endswith("01") else es)
    assert "patient101_frame01" not in info["cases"]
    # -p nnUNetPlans_5pct resolves to the protocol's labeled patients (the foundation's split reader)
    plans = {"plans_name": "nnUNetPlans_5pct", "semicl": {"setting": "5pct", "split_file": "splits_semicl_5pct.json"}}
    sets = resolve_case_sets(plans, {}, pre, 0, folds[0]["train"])
    assert sets.labeled == tuple(sorted(protocols.ACDC.cases_of(("patient099", "patient038", "patient050"))))
    assert len(sets.unlabeled) == 134


def test_acdc_ssl4mis_volumes_and_slices(tmp_path, env):
    src = tmp_path / "ACDC_ssl4mis"
    expected = make_ssl4mis_acdc(str(src))
    summary = convert_acdc(str(src), num_processes=2, verbose=False)  # also exercises the spawn pool
    assert summary["layout"] == "ssl4mis"
    raw_ds, _, _ = _check_acdc_protocol_files(env)
    for case, (img, lab) in expected.items():
        role = "test" if case[:10] in protocols.ACDC.test else "train"
        out_img, itk = _read(_case_file(raw_ds, case, role, "image"))
        out_lab, _ = _read(_case_file(raw_ds, case, role, "label"))
        np.testing.assert_array_equal(out_img, img)  # slices stacked in slice order 1..N (11 > 9 for patient099)
        np.testing.assert_array_equal(out_lab, lab)
        assert itk.GetSpacing() == pytest.approx((1.5, 1.5, 10.0))  # the documented default, (z, y, x) = (10, 1.5, 1.5)
    assert expected["patient099_frame01"][0].shape[0] == 11


def test_acdc_ssl4mis_spacing_override(tmp_path, env):
    src = tmp_path / "ACDC_ssl4mis"
    make_ssl4mis_acdc(str(src), n_slices_099=3)
    convert_acdc(str(src), spacing=(8.0, 1.25, 1.3), verbose=False)
    raw_ds = os.path.join(env["nnUNet_raw"], "Dataset027_ACDC")
    _, itk = _read(_case_file(raw_ds, "patient002_frame01", "train", "image"))
    assert itk.GetSpacing() == pytest.approx((1.3, 1.25, 8.0))


def test_acdc_cv_keeps_patients_together(tmp_path, env):
    src = tmp_path / "ACDC"
    make_official_acdc(str(src))
    summary = convert_acdc(str(src), cv_folds=5, verbose=False)
    assert summary["n_folds"] == 5
    _, pre, folds = _check_acdc_protocol_files(env, n_folds=5)
    non_test = sorted(protocols.ACDC.cases_of(protocols.ACDC.train + protocols.ACDC.val))
    assert sorted(c for f in folds for c in f["val"]) == non_test  # every non-test case validated exactly once
    for f in folds:
        assert {c[:10] for c in f["train"]}.isdisjoint({c[:10] for c in f["val"]})
    s = _load_json(os.path.join(pre, "splits_semicl_5pct.json"))
    protocol_ids = {"patient099", "patient038", "patient050"}
    for f_split, f in zip(s["folds"], folds):
        groups = {c[:10] for c in f_split["labeled"]}
        assert len(groups) == 3 and groups <= {c[:10] for c in f["train"]}
        train_groups = {c[:10] for c in f["train"]}
        # the protocol's patients are labeled wherever they are training patients of the fold
        assert protocol_ids & train_groups <= groups
        if protocol_ids <= train_groups:
            assert groups == protocol_ids


# ------------------------------------------------------------------------------------------------
# LA
# ------------------------------------------------------------------------------------------------
def _check_la_protocol_files(env, n_folds=1):
    raw_ds = os.path.join(env["nnUNet_raw"], "Dataset028_LA")
    pre = os.path.join(env["nnUNet_preprocessed"], "Dataset028_LA")
    dj = _load_json(os.path.join(raw_ds, "dataset.json"))
    assert dj["labels"] == {"background": 0, "left_atrium": 1} and dj["numTraining"] == 80
    assert len(os.listdir(os.path.join(raw_ds, "imagesTr"))) == 80
    assert sorted(os.listdir(os.path.join(raw_ds, "labelsTs"))) == sorted(f"{c}.nii.gz" for c in protocols.LA_TEST)
    folds = _load_json(os.path.join(pre, "splits_final.json"))
    assert len(folds) == n_folds
    if n_folds == 1:
        assert folds[0]["val"] == sorted(protocols.LA_VAL) and len(folds[0]["train"]) == 72
    for name, n in (("1pct", 1), ("5pct", 4), ("10pct", 8)):
        s = _load_json(os.path.join(pre, f"splits_semicl_{name}.json"))
        assert s["all"]["labeled"] == sorted(protocols.LA_TRAIN_LIST[:n]) and len(s["all"]["unlabeled"]) == 80 - n
        for k, f in enumerate(s["folds"]):
            assert len(f["labeled"]) == n and sorted(f["labeled"] + f["unlabeled"]) == folds[k]["train"]
            if n_folds == 1:
                assert f["labeled"] == sorted(protocols.LA_TRAIN_LIST[:n])
    return raw_ds, pre, folds


def test_la_challenge_nrrd_voxel_for_voxel(tmp_path, env):
    src = tmp_path / "LA2018"
    expected = make_la_challenge(str(src))
    summary = convert_la(str(src), verbose=False)
    assert summary["layout"] == "challenge"
    raw_ds, _, _ = _check_la_protocol_files(env)
    for case, (img, lab, ref_img) in expected.items():
        role = "test" if case in protocols.LA_TEST else "train"
        out_img, oi = _read(_case_file(raw_ds, case, role, "image"))
        out_lab, ol = _read(_case_file(raw_ds, case, role, "label"))
        np.testing.assert_array_equal(out_img, img)
        np.testing.assert_array_equal(out_lab, lab)  # 255 -> 1
        _assert_same_geometry((oi, ol), ref_img)


def test_la_uamt_h5_axis_order_and_spacing(tmp_path, env):
    src = tmp_path / "LA_uamt"
    expected = make_la_uamt(str(src))
    summary = convert_la(str(src), verbose=False)
    assert summary["layout"] == "uamt"
    raw_ds, _, _ = _check_la_protocol_files(env)
    for case, (img_xyz, lab_xyz) in expected.items():
        role = "test" if case in protocols.LA_TEST else "train"
        out_img, oi = _read(_case_file(raw_ds, case, role, "image"))
        out_lab, _ = _read(_case_file(raw_ds, case, role, "label"))
        np.testing.assert_array_equal(out_img, img_xyz.transpose(2, 1, 0))  # (X, Y, Z) -> array (z, y, x)
        np.testing.assert_array_equal(out_lab, lab_xyz.transpose(2, 1, 0))
        assert oi.GetSize() == img_xyz.shape  # sitk size is (x, y, z)
        assert oi.GetSpacing() == pytest.approx((0.625, 0.625, 0.625))


def test_la_uamt_spacing_override_and_cv(tmp_path, env):
    src = tmp_path / "LA_uamt"
    make_la_uamt(str(src))
    convert_la(str(src), spacing=[0.7], cv_folds=5, num_processes=2, verbose=False)
    raw_ds, pre, folds = _check_la_protocol_files(env, n_folds=5)
    _, oi = _read(_case_file(raw_ds, protocols.LA_TRAIN_LIST[0], "train", "image"))
    assert oi.GetSpacing() == pytest.approx((0.7, 0.7, 0.7))
    assert sorted(c for f in folds for c in f["val"]) == sorted(protocols.LA_TRAIN_LIST)
    # exactly nnU-Net's own default 5-fold split of the 80 training volumes
    from sklearn.model_selection import KFold

    ids = sorted(protocols.LA_TRAIN_LIST)
    nnunet_folds = [{"train": [ids[i] for i in tr], "val": [ids[i] for i in va]}
                    for tr, va in KFold(5, shuffle=True, random_state=12345).split(ids)]
    assert folds == nnunet_folds
    s = _load_json(os.path.join(pre, "splits_semicl_10pct.json"))
    order = list(protocols.LA_TRAIN_LIST)
    for f_split, f in zip(s["folds"], folds):
        # the first 8 training volumes of the fold, in train.list order
        assert f_split["labeled"] == sorted([c for c in order if c in set(f["train"])][:8])


# ------------------------------------------------------------------------------------------------
# errors, overwrite, partial input, command line
# ------------------------------------------------------------------------------------------------
def _no_partial_output(env, name):
    raw = env["nnUNet_raw"]
    assert not os.path.exists(os.path.join(raw, name))
    assert not glob.glob(os.path.join(raw, ".semicl_partial_*"))


def test_error_missing_ground_truth(tmp_path, env):
    src = tmp_path / "ACDC"
    make_official_acdc(str(src))
    _, es = _frames_of(38)
    gt = src / "training" / "patient038" / f"patient038_frame{es:02d}_gt.nii.gz"
    os.remove(gt)
    with pytest.raises(ConversionError, match="missing ground truth") as e:
        convert_acdc(str(src), verbose=False)
    assert str(gt) in str(e.value) and "patient038_frame02" in str(e.value)
    _no_partial_output(env, "Dataset027_ACDC")


def test_error_missing_info_cfg(tmp_path, env):
    src = tmp_path / "ACDC"
    make_official_acdc(str(src), patients=ACDC_PATIENTS)
    os.remove(src / "training" / "patient021" / "Info.cfg")
    with pytest.raises(ConversionError, match="Info.cfg") as e:
        convert_acdc(str(src), verbose=False)
    assert os.path.join("patient021", "Info.cfg") in str(e.value)


def test_error_label_shape_mismatch(tmp_path, env):
    src = tmp_path / "ACDC"
    make_official_acdc(str(src))
    gt = src / "training" / "patient050" / "patient050_frame01_gt.nii.gz"
    ref = sitk.ReadImage(str(gt))
    _write(np.zeros((ref.GetSize()[2], 9, 9), np.uint8), str(gt), ref.GetSpacing(), ref.GetOrigin(),
           ref.GetDirection())
    with pytest.raises(ConversionError, match="does not match its image") as e:
        convert_acdc(str(src), verbose=False)
    assert "size" in str(e.value) and str(gt) in str(e.value)
    _no_partial_output(env, "Dataset027_ACDC")


def test_error_label_geometry_mismatch(tmp_path, env):
    src = tmp_path / "LA"
    make_la_challenge(str(src))
    lab = src / "Training Set" / protocols.LA_TEST[3] / "laendo.nrrd"
    img = sitk.ReadImage(str(lab))
    img.SetSpacing((0.625, 0.625, 2.5))
    sitk.WriteImage(img, str(lab))
    with pytest.raises(ConversionError, match="spacing") as e:
        convert_la(str(src), num_processes=2, verbose=False)  # raised in a worker, reported by the parent
    assert str(lab) in str(e.value)
    _no_partial_output(env, "Dataset028_LA")


def test_error_h5_shape_mismatch(tmp_path, env):
    src = tmp_path / "LA_uamt"
    make_la_uamt(str(src))
    f5 = src / "2018LA_Seg_Training Set" / protocols.LA_TRAIN_LIST[5] / "mri_norm2.h5"
    with h5py.File(f5, "r+") as f:
        del f["label"]
        f.create_dataset("label", data=np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ConversionError, match="shape") as e:
        convert_la(str(src), verbose=False)
    assert str(f5) in str(e.value)


@pytest.mark.parametrize("make, convert, label_file, bad_value", [
    (make_official_acdc, convert_acdc, os.path.join("training", "patient070", "patient070_frame01_gt.nii.gz"), 5),
    (make_la_challenge, convert_la, os.path.join("Training Set", protocols.LA_TRAIN_LIST[0], "laendo.nrrd"), 128),
], ids=["acdc", "la"])
def test_error_unexpected_label_values(tmp_path, env, make, convert, label_file, bad_value):
    src = tmp_path / "src"
    make(str(src))
    gt = src / label_file
    _set_label_voxel(str(gt), bad_value)
    with pytest.raises(ConversionError, match=rf"unexpected values \[{bad_value}\]") as e:
        convert(str(src), verbose=False)
    assert str(gt) in str(e.value)


def test_error_slice_gap(tmp_path, env):
    src = tmp_path / "ACDC_ssl4mis"
    make_ssl4mis_acdc(str(src))
    os.remove(src / "data" / "patient099_frame01_slice_2.h5")
    # listed in train_slices.list but absent
    with pytest.raises(ConversionError, match="slice_2") as e:
        convert_acdc(str(src), verbose=False)
    assert "train_slices.list" in str(e.value)
    # without the list: detected as a gap in the series
    os.remove(src / "train_slices.list")
    with pytest.raises(ConversionError, match="gap") as e:
        convert_acdc(str(src), verbose=False)
    assert "patient099_frame01_slice_2.h5" in str(e.value)
    _no_partial_output(env, "Dataset027_ACDC")


def test_error_protocol_id_absent_and_allow_missing(tmp_path, env):
    src = tmp_path / "ACDC"
    make_official_acdc(str(src), patients=[p for p in ACDC_PATIENTS if p not in ("patient050", "patient001")])
    with pytest.raises(ConversionError, match="--allow-missing") as e:
        convert_acdc(str(src), verbose=False)
    assert "patient050_frame01" in str(e.value) and "patient001_frame02" in str(e.value)
    _no_partial_output(env, "Dataset027_ACDC")
    summary = convert_acdc(str(src), allow_missing=True, verbose=False)
    assert summary["n_train_cases"] == 158 and summary["n_test_cases"] == 38
    # patient050 is labeled in 5pct and 10pct: those settings are not the protocol's any more -> skipped
    assert summary["settings"] == ["1pct"] and set(summary["skipped_settings"]) == {"5pct", "10pct"}
    pre = os.path.join(env["nnUNet_preprocessed"], "Dataset027_ACDC")
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(pre, "splits_semicl_*.json"))) == [
        "splits_semicl_1pct.json"]


def test_la_dev_protocol_validates_on_five_unlabeled_volumes(tmp_path, env):
    """``convert-la --protocol dev --allow-missing`` on the development copy's 30 volumes (the first 30 ids of
    train.list): fold 0 validates on LA_DEV_VAL (5 volumes, none labeled by 1pct / 5pct / 10pct), the 5pct setting
    labels the first 4 ids of train.list and every other volume is unlabeled; the papers' default keeps LA_VAL."""
    from tests.conftest import cli_in_process

    src = tmp_path / "LA_uamt"
    make_la_uamt(str(src), ids=protocols.LA_TRAIN_LIST[:30])
    cli_in_process("convert-la", "-i", src, "--allow-missing", "--protocol", "dev", "-np", "1", "-q")
    pre = os.path.join(env["nnUNet_preprocessed"], "Dataset028_LA")
    folds = _load_json(os.path.join(pre, "splits_final.json"))
    val = protocols.LA_DEV_VAL
    assert len(val) >= 5 and set(val) <= set(protocols.LA_TRAIN_LIST[:30]) and set(protocols.LA_VAL[:3]) <= set(val)
    assert folds == [{"train": sorted(set(protocols.LA_TRAIN_LIST[:30]) - set(val)), "val": sorted(val)}]
    for name, n in (("1pct", 1), ("5pct", 4), ("10pct", 8)):
        f = _load_json(os.path.join(pre, f"splits_semicl_{name}.json"))["folds"][0]
        assert f["labeled"] == sorted(protocols.LA_TRAIN_LIST[:n]) and not set(f["labeled"]) & set(val)
        assert sorted(f["unlabeled"]) == sorted(set(folds[0]["train"]) - set(f["labeled"]))
    assert len(f["unlabeled"]) == 30 - 5 - 8
    info = _load_json(os.path.join(env["nnUNet_raw"], "Dataset028_LA", "conversion_info.json"))
    assert info["protocol"] == protocols.LA_DEV.name
    # the papers' protocol (the default) is unchanged: 3 of LA_VAL's 8 volumes are in the copy
    cli_in_process("convert-la", "-i", src, "--allow-missing", "--overwrite", "-np", "1", "-q")
    assert _load_json(os.path.join(pre, "splits_final.json"))[0]["val"] == sorted(protocols.LA_VAL[:3])


def test_la_id_absent(tmp_path, env):
    src = tmp_path / "LA_uamt"
    make_la_uamt(str(src), ids=LA_IDS[:30] + LA_IDS[40:])
    with pytest.raises(ConversionError) as e:
        convert_la(str(src), verbose=False)
    assert LA_IDS[30] in str(e.value) and "--allow-missing" in str(e.value)


def test_refuses_to_overwrite(tmp_path, env):
    src = tmp_path / "LA_uamt"
    make_la_uamt(str(src))
    convert_la(str(src), verbose=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_la(str(src), verbose=False)
    marker = os.path.join(env["nnUNet_raw"], "Dataset028_LA", "marker.txt")
    open(marker, "w").close()
    convert_la(str(src), overwrite=True, cv_folds=5, verbose=False)
    assert not os.path.exists(marker)
    assert len(_load_json(os.path.join(env["nnUNet_preprocessed"], "Dataset028_LA", "splits_final.json"))) == 5


def test_overwrite_removes_stale_settings(tmp_path, env):
    src = tmp_path / "LA_uamt"
    make_la_uamt(str(src))
    convert_la(str(src), verbose=False)
    pre = os.path.join(env["nnUNet_preprocessed"], "Dataset028_LA")
    assert os.path.isfile(os.path.join(pre, "splits_semicl_5pct.json"))
    # the 4th labeled volume disappears: 5pct and 10pct cannot be made any more
    shutil.rmtree(src / "2018LA_Seg_Training Set" / protocols.LA_TRAIN_LIST[3])
    summary = convert_la(str(src), allow_missing=True, overwrite=True, verbose=False)
    assert summary["settings"] == ["1pct"]
    assert sorted(os.listdir(pre)) == ["splits_final.json", "splits_semicl_1pct.json"]


def test_refuses_different_split_files_before_converting(tmp_path, env):
    src = tmp_path / "LA_uamt"
    make_la_uamt(str(src))
    pre = os.path.join(env["nnUNet_preprocessed"], "Dataset028_LA")
    os.makedirs(pre)
    with open(os.path.join(pre, "splits_final.json"), "w") as f:
        json.dump([{"train": ["a"], "val": ["b"]}], f)
    with pytest.raises(FileExistsError, match="splits_final.json"):
        convert_la(str(src), verbose=False)
    _no_partial_output(env, "Dataset028_LA")


def test_refuses_dataset_id_clash(tmp_path, env):
    src = tmp_path / "LA_uamt"
    make_la_uamt(str(src), ids=LA_IDS[:3])
    os.makedirs(os.path.join(env["nnUNet_raw"], "Dataset028_Other"))
    with pytest.raises(ConversionError, match="--id"):
        convert_la(str(src), allow_missing=True, verbose=False)


def test_no_data_found(tmp_path, env):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="No ACDC data"):
        convert_acdc(str(tmp_path / "empty"), verbose=False)
    with pytest.raises(ConversionError, match="No LA data"):
        convert_la(str(tmp_path / "empty"), verbose=False)


def test_cli_commands(tmp_path, env, capsys):
    from nnunet_semicl.cli import main as cli_main
    from nnunet_semicl.dataset_conversion import la as la_module

    src = tmp_path / "LA_uamt"
    make_la_uamt(str(src))
    cli_main(["convert-la", "-i", str(src), "--id", "128", "-np", "1", "-q"])
    assert os.path.isfile(os.path.join(env["nnUNet_raw"], "Dataset128_LA", "imagesTs", f"{LA_IDS[-1]}_0000.nii.gz"))
    with pytest.raises(SystemExit) as e:
        la_module.main(["-i", str(src), "--id", "128", "-q"])
    assert e.value.code == 2 and "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["convert-acdc", "-i", str(tmp_path / "nowhere"), "-q"])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_truncated_input_file_is_refused_with_its_name(tmp_path, env):
    src = tmp_path / "ACDC"
    make_official_acdc(str(src))
    path = os.path.join(str(src), "training", "patient099", "patient099_frame01.nii.gz")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=r"patient099_frame01\.nii\.gz: .*truncated"):
        convert_acdc(str(src), num_processes=1, verbose=False)
    _no_partial_output(env, "Dataset027_ACDC")


def test_staging_folder_of_a_killed_conversion_is_removed(tmp_path, env):
    import subprocess

    src = tmp_path / "LA_uamt"
    make_la_uamt(str(src))
    raw = env["nnUNet_raw"]
    done = subprocess.Popen(["true"])
    done.wait()                                        # a process that no longer exists (as after SIGKILL)
    alive = subprocess.Popen(["sleep", "60"])          # a conversion that still runs
    try:
        stale = os.path.join(raw, f".semicl_partial_Dataset028_LA_{done.pid}")
        running = os.path.join(raw, f".semicl_partial_Dataset028_LA_{alive.pid}")
        for d in (stale, running):
            os.makedirs(os.path.join(d, "imagesTr"))
            open(os.path.join(d, "imagesTr", "half_written_0000.nii.gz"), "wb").write(b"\x1f\x8b")
        convert_la(str(src), num_processes=1, verbose=False)
        assert not os.path.exists(stale)
        assert os.path.isdir(running)                  # never another live process's folder
        assert os.path.isdir(os.path.join(raw, "Dataset028_LA"))
    finally:
        alive.kill()
        alive.wait()
