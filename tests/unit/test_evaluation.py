"""Paper-style evaluation: metrics against hand-computed values on small masks, conventions, folders."""
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_semicl.errors import EvaluationError
from nnunet_semicl.evaluation import aggregate, binary_metrics, crop_to_union, evaluate_folders, paper_table


def _square(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


# ------------------------------------------------------------------------------------------------
# hand-computed values
# ------------------------------------------------------------------------------------------------
def test_shifted_square_by_hand():
    """Reference: 3x3 square; prediction: the same square shifted one column.

    Dice 2*6/18, Jaccard 6/12. Surfaces (4-connectivity erosion) are the 8 border pixels of each
    square. Prediction border -> reference border: the 3 pixels of the new column and the middle of
    the left column are 1 column away, the other 4 touch: distances [0,0,0,0,1,1,1,1]. The reverse is
    the mirror image. ASD = 4/8 = 0.5 voxel, HD95 = 95th percentile of eight 0s and eight 1s = 1.
    With spacing (2.0, 0.5) mm the one-column distances are 0.5 mm (a row step of 2 mm is never
    nearer): ASD 0.25 mm, HD95 0.5 mm.
    """
    ref = _square((7, 7), (1, 4), (1, 4))
    pred = _square((7, 7), (1, 4), (2, 5))
    m = binary_metrics(pred, ref, spacing=(2.0, 0.5))
    assert m["dice"] == pytest.approx(2 * 6 / 18)
    assert m["jaccard"] == pytest.approx(0.5)
    assert m["asd_voxel"] == pytest.approx(0.5)
    assert m["hd95_voxel"] == pytest.approx(1.0)
    assert m["asd_mm"] == pytest.approx(0.25)
    assert m["hd95_mm"] == pytest.approx(0.5)
    assert (m["n_pred"], m["n_ref"]) == (9, 9)


def test_asd_is_directed_prediction_to_reference():
    """Prediction = reference square + one stray pixel at distance sqrt(3^2+3^2) from the nearest corner.

    ASD (prediction -> reference): 8 border pixels at 0 and the stray at sqrt(18): sqrt(18)/9.
    HD95 pools both directions: 16 zeros and sqrt(18); numpy's linear 95th percentile sits at rank
    0.95*16 = 15.2, i.e. 0.2 * sqrt(18). Dice 18/19, Jaccard 9/10. Swapping the arguments gives
    ASD 0 (every reference border pixel lies on the prediction's border).
    """
    ref = _square((8, 8), (1, 4), (1, 4))
    pred = ref.copy()
    pred[6, 6] = True
    m = binary_metrics(pred, ref)
    assert m["asd_voxel"] == pytest.approx(math.sqrt(18) / 9)
    assert m["hd95_voxel"] == pytest.approx(0.2 * math.sqrt(18))
    assert m["dice"] == pytest.approx(18 / 19)
    assert m["jaccard"] == pytest.approx(0.9)
    assert binary_metrics(ref, pred)["asd_voxel"] == pytest.approx(0.0)


def test_identical_masks_3d_anisotropic():
    ref = np.zeros((4, 9, 9), bool)
    ref[1:3, 2:7, 2:7] = True
    m = binary_metrics(ref, ref, spacing=(10.0, 1.5, 1.5))
    assert m["dice"] == 1.0 and m["jaccard"] == 1.0
    assert m["hd95_mm"] == 0.0 and m["asd_mm"] == 0.0 and m["asd_voxel"] == 0.0


def test_slice_shift_in_mm_uses_z_spacing():
    """A 3D block moved by one slice: every moved surface voxel is one slice (10 mm) from the reference."""
    ref = np.zeros((6, 8, 8), bool)
    ref[1:3, 2:6, 2:6] = True
    pred = np.roll(ref, 1, axis=0)
    m = binary_metrics(pred, ref, spacing=(10.0, 1.5, 1.5))
    # pred slices 2 and 3; reference slices 1 and 2 (both fully surface, 2 slices thick).
    # slice 2 of pred coincides with reference slice 2 (distance 0), slice 3 is 10 mm away.
    assert m["asd_mm"] == pytest.approx(5.0)
    assert m["asd_voxel"] == pytest.approx(0.5)
    assert m["hd95_mm"] == pytest.approx(10.0)
    assert m["dice"] == pytest.approx(0.5)


def test_crop_is_exact_against_uncropped_medpy():
    from medpy.metric import binary
    from scipy.ndimage import binary_dilation

    rng = np.random.RandomState(0)
    for i in range(6):
        a = np.zeros((10, 30, 28), bool)
        b = np.zeros_like(a)
        # objects touching the array border in some trials
        a[rng.randint(0, 10), rng.randint(0, 30), rng.randint(0, 28)] = True
        b[rng.randint(0, 10), rng.randint(0, 30), rng.randint(0, 28)] = True
        a, b = binary_dilation(a, iterations=2 + i % 3), binary_dilation(b, iterations=3)
        sp = (5.0, 1.2, 0.8)
        m = binary_metrics(a, b, sp)
        assert m["hd95_mm"] == pytest.approx(binary.hd95(a, b, voxelspacing=sp))
        assert m["asd_mm"] == pytest.approx(binary.asd(a, b, voxelspacing=sp))
        assert m["asd_voxel"] == pytest.approx(binary.asd(a, b))
        pa, pb = crop_to_union(a, b)
        assert pa.sum() == a.sum() and pb.sum() == b.sum()


# ------------------------------------------------------------------------------------------------
# empty masks
# ------------------------------------------------------------------------------------------------
def test_empty_prediction_nan_convention():
    ref = _square((6, 6), (1, 3), (1, 3))
    m = binary_metrics(np.zeros_like(ref), ref)
    assert m["dice"] == 0.0 and m["jaccard"] == 0.0
    assert all(math.isnan(m[k]) for k in ("hd95_mm", "asd_mm", "hd95_voxel", "asd_voxel"))


def test_empty_reference_nan_convention():
    pred = _square((6, 6), (1, 3), (1, 3))
    m = binary_metrics(pred, np.zeros_like(pred))
    assert m["dice"] == 0.0 and m["jaccard"] == 0.0 and math.isnan(m["asd_voxel"]) and math.isnan(m["hd95_mm"])


def test_both_empty_nan_convention():
    z = np.zeros((5, 5), bool)
    m = binary_metrics(z, z)
    assert all(math.isnan(m[k]) for k in ("dice", "jaccard", "hd95_mm", "asd_mm", "hd95_voxel", "asd_voxel"))


@pytest.mark.parametrize("case", ["pred_empty", "ref_empty", "both_empty"])
def test_ssl4mis_convention_scores_zero(case):
    sq = _square((6, 6), (1, 3), (1, 3))
    z = np.zeros_like(sq)
    pred, ref = {"pred_empty": (z, sq), "ref_empty": (sq, z), "both_empty": (z, z)}[case]
    m = binary_metrics(pred, ref, convention="ssl4mis")
    assert all(m[k] == 0.0 for k in ("dice", "jaccard", "hd95_mm", "asd_mm", "hd95_voxel", "asd_voxel"))


def test_unknown_convention_and_shape_mismatch():
    with pytest.raises(EvaluationError):
        binary_metrics(np.ones((2, 2)), np.ones((2, 2)), convention="zero")
    with pytest.raises(EvaluationError, match="shape"):
        binary_metrics(np.ones((2, 2)), np.ones((2, 3)))


def test_aggregate_counts_undefined_and_averages_class_means():
    nan = float("nan")
    mk = lambda d, a: {"dice": d, "jaccard": d, "hd95_mm": a, "asd_mm": a, "hd95_voxel": a, "asd_voxel": a}
    per_case = {"c1": {"1": mk(0.8, 1.0), "2": mk(0.6, 3.0)},
                "c2": {"1": mk(0.0, nan), "2": mk(1.0, 1.0)}}
    per_class, avg = aggregate(per_case, [1, 2])
    assert per_class["1"]["dice"]["mean"] == pytest.approx(0.4)
    assert per_class["1"]["asd_voxel"] == {"mean": 1.0, "std": 0.0, "n": 1, "n_undefined": 1}
    assert per_class["2"]["asd_voxel"]["mean"] == pytest.approx(2.0)
    assert avg["dice"]["mean"] == pytest.approx((0.4 + 0.8) / 2)
    assert avg["asd_voxel"]["mean"] == pytest.approx((1.0 + 2.0) / 2) and avg["asd_voxel"]["n_undefined"] == 1
    # std over cases of each case's class mean: c1 (1+3)/2 = 2, c2 1 (only class 2 defined)
    assert avg["asd_voxel"]["std"] == pytest.approx(np.std([2.0, 1.0]))


# ------------------------------------------------------------------------------------------------
# folders, JSON, markdown, command line
# ------------------------------------------------------------------------------------------------
def _write(arr, path, spacing=(1.5, 1.5, 10.0)):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, path)


@pytest.fixture
def acdc_like(tmp_path):
    """Two cases with 3 classes; case b has no LV prediction."""
    raw = tmp_path / "Dataset999_X"
    ref_dir, pred_dir = raw / "labelsTs", tmp_path / "pred"
    ref_dir.mkdir(parents=True)
    pred_dir.mkdir()
    (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "RV": 1, "MLV": 2, "LVC": 3},
                                                  "file_ending": ".nii.gz", "channel_names": {"0": "x"},
                                                  "numTraining": 0}))
    ref = np.zeros((2, 8, 8), np.uint8)
    ref[:, 1:4, 1:4] = 1
    ref[:, 5:7, 1:3] = 2
    ref[:, 5:7, 5:7] = 3
    pred = ref.copy()
    pred[:, 1:4, 1:4] = 0
    pred[:, 1:4, 2:5] = 1  # RV shifted one column (in-plane spacing 1.5 mm)
    _write(ref, str(ref_dir / "a.nii.gz"))
    _write(pred, str(pred_dir / "a.nii.gz"))
    pred_b = ref.copy()
    pred_b[pred_b == 3] = 0
    _write(ref, str(ref_dir / "b.nii.gz"))
    _write(pred_b, str(pred_dir / "b.nii.gz"))
    _write(ref, str(pred_dir / "extra.nii.gz"))  # a prediction without reference: reported, not evaluated
    return ref_dir, pred_dir, ref, pred


def test_evaluate_folders(acdc_like, tmp_path):
    ref_dir, pred_dir, ref, pred = acdc_like
    out = tmp_path / "res" / "summary.json"
    res = evaluate_folders(str(pred_dir), str(ref_dir), output=str(out), method_name="Mine", verbose=False)
    assert res["labels"] == {"1": "RV", "2": "MLV", "3": "LVC"}
    assert res["n_cases"] == 2 and res["ignored_predictions"] == ["extra"]
    rv_a = res["per_case"]["a"]["1"]
    expected = binary_metrics(pred == 1, ref == 1, spacing=(10.0, 1.5, 1.5))
    for k in ("dice", "jaccard", "hd95_mm", "asd_mm", "hd95_voxel", "asd_voxel"):
        assert rv_a[k] == pytest.approx(expected[k])
    assert rv_a["dice"] == pytest.approx(2 / 3)
    assert res["per_case"]["a"]["2"]["dice"] == 1.0 and res["per_case"]["b"]["3"]["dice"] == 0.0
    assert math.isnan(res["per_case"]["b"]["3"]["asd_voxel"])
    assert res["per_class"]["3"]["dice"]["mean"] == pytest.approx(0.5)
    assert res["per_class"]["3"]["asd_voxel"]["n_undefined"] == 1
    assert res["average"]["dice"]["mean"] == pytest.approx(((2 / 3 + 1) / 2 + 1 + 0.5) / 3)
    data = json.loads(out.read_text())  # valid JSON, NaN written as null
    assert data["per_case"]["b"]["3"]["asd_voxel"] is None
    assert data["convention"] == "nan" and "medpy" in data["library"]
    md = (tmp_path / "res" / "summary.md").read_text()
    assert "| Method | Avg | RV | Myo | LV |" in md
    row = [l for l in md.splitlines() if l.startswith("| Mine |")][0]
    assert f"{100 * res['per_class']['2']['dice']['mean']:.2f}/" in row
    assert "undefined" in md and "| a |" in md


def test_evaluate_ssl4mis_convention_and_paper_table(acdc_like, tmp_path):
    ref_dir, pred_dir, _, _ = acdc_like
    res = evaluate_folders(str(pred_dir), str(ref_dir), output=str(tmp_path / "s.json"), convention="ssl4mis",
                           verbose=False)
    assert res["per_case"]["b"]["3"]["asd_voxel"] == 0.0
    assert res["per_class"]["3"]["asd_voxel"]["n_undefined"] == 0
    table = paper_table(res)
    assert table.splitlines()[0] == "| Method | Avg | RV | Myo | LV |"


def test_evaluate_errors(acdc_like, tmp_path):
    ref_dir, pred_dir, ref, _ = acdc_like
    os.remove(pred_dir / "b.nii.gz")
    with pytest.raises(EvaluationError, match="no prediction.*b"):
        evaluate_folders(str(pred_dir), str(ref_dir), verbose=False)
    _write(np.zeros((2, 8, 9)), str(pred_dir / "b.nii.gz"))
    with pytest.raises(EvaluationError, match="size"):
        evaluate_folders(str(pred_dir), str(ref_dir), verbose=False)
    _write(ref, str(pred_dir / "b.nii.gz"), spacing=(1.0, 1.0, 10.0))
    with pytest.raises(EvaluationError, match="spacing"):
        evaluate_folders(str(pred_dir), str(ref_dir), num_processes=2, verbose=False)


def test_evaluate_command_line(acdc_like, tmp_path, capsys, monkeypatch):
    from nnunet_semicl.cli import main as cli_main

    ref_dir, pred_dir, _, _ = acdc_like
    # -d: reference = $nnUNet_raw/<Dataset>/labelsTs, names from its dataset.json
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    cli_main(["evaluate", "-d", "999", "-p", str(pred_dir), "-o", str(tmp_path / "d.json"), "--name", "X", "-q"])
    md = (tmp_path / "d.md").read_text()
    assert "| Method | Avg | RV | Myo | LV |" in md and "| X |" in md
    out = tmp_path / "cli.json"
    cli_main(["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "-o", str(out), "--labels", "1", "3", "-q"])
    data = json.loads(out.read_text())
    assert sorted(data["per_class"]) == ["1", "3"] and data["labels"] == {"1": "RV", "3": "LVC"}
    with pytest.raises(SystemExit) as e:
        cli_main(["evaluate", "-p", str(tmp_path / "none"), "-r", str(ref_dir), "-q"])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_truncated_prediction_is_refused_with_its_name(acdc_like):
    ref_dir, pred_dir, _, _ = acdc_like
    path = pred_dir / "b.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EvaluationError, match=r"b\.nii\.gz: .*truncated"):
        evaluate_folders(str(pred_dir), str(ref_dir), verbose=False)


# ------------------------------------------------------------------------------------------------
# predictions that are not label maps of the dataset (issue 31, row 10)
# ------------------------------------------------------------------------------------------------
def test_a_label_the_dataset_does_not_define_is_warned_about(acdc_like, tmp_path, capsys):
    ref_dir, pred_dir, _, pred = acdc_like
    foreign = pred.copy()
    foreign[0, 0, :] = 7
    _write(foreign, str(pred_dir / "a.nii.gz"))
    res = evaluate_folders(str(pred_dir), str(ref_dir), output=str(tmp_path / "r.json"), verbose=False)
    err = capsys.readouterr().err
    assert "WARNING" in err and "label(s) [7]" in err and "does not define" in err and "(a)" in err
    assert any("[7]" in w and "does not define" in w for w in res["warnings"])
    assert json.loads((tmp_path / "r.json").read_text())["warnings"] == res["warnings"]


def test_a_float_prediction_with_soft_values_is_refused_naming_the_file(acdc_like, tmp_path):
    ref_dir, pred_dir, _, pred = acdc_like
    soft = sitk.GetImageFromArray(pred.astype(np.float32) + 0.4)
    soft.SetSpacing((1.5, 1.5, 10.0))
    sitk.WriteImage(soft, str(pred_dir / "b.nii.gz"))
    with pytest.raises(EvaluationError, match=r"b\.nii\.gz holds non-integer values \(0\.4, 1\.4, 2\.4"):
        evaluate_folders(str(pred_dir), str(ref_dir), output=str(tmp_path / "r.json"), verbose=False)
    assert not (tmp_path / "r.json").exists()
    whole = sitk.GetImageFromArray(pred.astype(np.float32))     # float type, whole values: a label map
    whole.SetSpacing((1.5, 1.5, 10.0))
    sitk.WriteImage(whole, str(pred_dir / "b.nii.gz"))
    res = evaluate_folders(str(pred_dir), str(ref_dir), output=str(tmp_path / "r.json"), verbose=False)
    assert res["per_case"]["b"]["1"]["dice"] == pytest.approx(2 / 3)


def test_labels_the_dataset_does_not_define_are_refused(acdc_like, tmp_path, capsys):
    from nnunet_semicl.cli import main as cli_main

    ref_dir, pred_dir, _, _ = acdc_like
    out = tmp_path / "l.json"
    with pytest.raises(SystemExit) as e:
        cli_main(["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "-o", str(out), "--labels", "1", "9", "-q"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--labels 9: not a label of" in err and "1 RV, 2 MLV, 3 LVC" in err
    assert not out.exists()


def test_evaluate_prints_and_records_whether_the_unsupervised_terms_ran(acdc_like, tmp_path, capsys):
    """A run whose warm-up gate never opened is LabeledOnly training under a method's name: evaluate says so,
    from the fold's semicl_training_summary.json (the prediction folder's parent, or -m/--model)."""
    ref_dir, pred_dir, _, _ = acdc_like
    summary = {"trainer": "nnUNetTrainerACTIONpp", "unsupervised_terms_ran": False, "unsup_gate_step": None,
               "message": "WARNING: the unsupervised terms never turned on (...)"}
    (pred_dir.parent / "semicl_training_summary.json").write_text(json.dumps(summary))
    res = evaluate_folders(str(pred_dir), str(ref_dir), output=str(tmp_path / "r.json"))
    assert res["training"]["unsupervised_terms_ran"] is False
    assert "Training (nnUNetTrainerACTIONpp): WARNING: the unsupervised terms never turned on" in capsys.readouterr().out
    assert json.load(open(tmp_path / "r.json"))["training"]["trainer"] == "nnUNetTrainerACTIONpp"
    model = tmp_path / "fold_0"
    model.mkdir()
    (model / "semicl_training_summary.json").write_text(json.dumps({**summary, "unsupervised_terms_ran": True}))
    res = evaluate_folders(str(pred_dir), str(ref_dir), output=str(tmp_path / "r2.json"), verbose=False,
                           model_folder=str(model))
    assert res["training"]["unsupervised_terms_ran"] is True         # -m wins over the parent folder
