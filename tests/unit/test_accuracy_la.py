"""``nnunet_semicl benchmark accuracy --dataset la``: the 3D CPU configuration (inherited from ``3d_fullres``), the
development copy's split (``protocols.LA_DEV``), the option handling and the table's LA columns (about a second:
one forward pass of the configured network). The conversion itself: tests/integration/test_conversion.py; on the
real copy: tests/real/test_real_data.py."""
import json

import pytest

from nnunet_semicl.benchmarking import accuracy, accuracy_datasets, accuracy_runs, accuracy_table, common
from nnunet_semicl.dataset_conversion import protocols
from nnunet_semicl.errors import InputError


def _la_plans():
    """A 3d_fullres configuration as nnU-Net 2.8.1 plans the UA-MT LA copy (0.625 mm, 88 x 143 x 193 voxels)."""
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
                            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 6,
                            "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4 + [[1, 2, 2]], "n_conv_per_stage": [2] * 6,
                            "n_conv_per_stage_decoder": [2] * 5, "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    return {"configurations": {"3d_fullres": {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [96, 128, 192], "median_image_size_in_voxels": [88.0, 143.0, 193.0],
        "spacing": [0.625, 0.625, 0.625], "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False], "architecture": arch}}}


def _opts(*options):
    from nnunet_semicl.cli import build_parser
    return accuracy.resolve_options(build_parser().parse_args(["benchmark", "accuracy", *options]))


def test_la_configuration_is_inherited_from_3d_fullres():
    plans = _la_plans()
    opts = _opts("--dataset", "la")
    assert opts["dataset"] == "la" and opts["configuration"] == "3d_cpu" and opts["spacing"] == 1.25
    cfg = accuracy.reduced_configuration(plans, opts)
    # 1.25 mm isotropic with its own preprocessed data; the UA-MT crops become about 44 x 72 x 97 voxels
    assert cfg["inherits_from"] == "3d_fullres" and cfg["data_identifier"] == "nnUNetPlans_3d_cpu"
    assert cfg["spacing"] == [1.25] * 3 and cfg["median_image_size_in_voxels"] == [44.0, 71.5, 96.5]
    assert cfg["patch_size"] == [32, 64, 64] and cfg["batch_size"] == 2
    kw = cfg["architecture"]["arch_kwargs"]
    assert kw["n_stages"] == 5 and kw["features_per_stage"] == [16, 32, 64, 128, 256]
    assert kw["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert kw["kernel_sizes"] == [[3, 3, 3]] * 5 and kw["n_conv_per_stage"] == [2] * 5
    assert kw["n_conv_per_stage_decoder"] == [2] * 4
    # the patch is divisible by the total stride and the bottleneck is 4 x 4 x 4
    total = accuracy_datasets.total_strides(kw["strides"], 3)
    assert total == [8, 16, 16] and [p // t for p, t in zip(cfg["patch_size"], total)] == [4, 4, 4]
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["n_stages"] == 6  # parent untouched
    assert accuracy_runs.schedule_overrides(opts) == {"num_epochs": 30, "num_iterations_per_epoch": 50,
                                                      "num_val_iterations_per_epoch": 10, "save_every": 5}


def test_la_configuration_builds_in_nnunet():
    """nnU-Net's PlansManager resolves the inherited configuration and builds a network that maps the patch to
    full-resolution logits."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = _la_plans()
    plans.update(dataset_name="Dataset028_LA", plans_name="nnUNetPlans", transpose_forward=[0, 1, 2],
                 transpose_backward=[0, 1, 2], original_median_spacing_after_transp=[0.625] * 3,
                 image_reader_writer="SimpleITKIO", experiment_planner_used="ExperimentPlanner",
                 label_manager="LabelManager", foreground_intensity_properties_per_channel={})
    plans["configurations"]["3d_cpu"] = accuracy.reduced_configuration(plans, _opts("--dataset", "la"))
    cm = PlansManager(plans).get_configuration("3d_cpu")
    assert cm.data_identifier == "nnUNetPlans_3d_cpu" and cm.spacing == [1.25] * 3 and cm.batch_size == 2
    assert cm.patch_size == [32, 64, 64] and cm.normalization_schemes == ["ZScoreNormalization"]
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 1, 2, deep_supervision=False)
    with torch.no_grad():
        assert net(torch.zeros(1, 1, *cm.patch_size)).shape == (1, 2, 32, 64, 64)


def test_acdc_configuration_unchanged_by_the_table():
    acdc, la = accuracy_datasets.DATASETS["acdc"], accuracy_datasets.DATASETS["la"]
    opts = _opts()
    assert opts["dataset"] == "acdc" and opts["configuration"] == "2d_cpu" and opts["spacing"] is None
    assert (opts["epochs"], opts["iterations"], opts["batch_size"]) == (36, 50, 8)
    assert (acdc.parent, la.parent) == ("2d", "3d_fullres") and acdc.dataset_id == 27 and la.dataset_id == 28
    assert la.converter == ("convert-la", "--allow-missing", "--protocol", "dev")


def test_la_options():
    opts = _opts("--dataset", "la", "--spacing", "1.5")
    assert opts["configuration"] == "3d_1p5mm"
    cfg = accuracy.reduced_configuration(_la_plans(), opts)
    # another spacing: the median image (36.7 x 59.6 x 80.4 at 1.5 mm) rounded up to the total stride 8 x 16 x 16
    assert cfg["patch_size"] == [40, 64, 96] and cfg["data_identifier"] == "nnUNetPlans_3d_1p5mm"
    assert cfg["spacing"] == [1.5] * 3
    opts = _opts("--dataset", "la", "--patch-size", "32", "48", "64", "--batch-size", "3", "--seeds", "1", "2")
    cfg = accuracy.reduced_configuration(_la_plans(), opts)
    assert cfg["patch_size"] == [32, 48, 64] and cfg["batch_size"] == 3 and opts["seeds"] == [1, 2]
    assert [r.plans_setting for r in accuracy_runs.plan_runs(opts)] == ["5pct_s1"] * 8 + ["5pct_s2"] * 8
    smoke = _opts("--dataset", "la", "--smoke", "--runs", "2")
    assert (smoke["epochs"], smoke["iterations"], smoke["trainers"], smoke["runs"]) == (
        1, 2, ["nnUNetTrainerLabeledOnly"], 2)
    with pytest.raises(InputError, match="LA protocol is 3D, give 3 values"):
        _opts("--dataset", "la", "--patch-size", "64", "64")
    with pytest.raises(InputError, match="ACDC protocol is 2D"):
        _opts("--patch-size", "32", "64", "64")
    with pytest.raises(InputError, match="not divisible"):
        accuracy.reduced_configuration(_la_plans(), _opts("--dataset", "la", "--patch-size", "36", "64", "64"))
    with pytest.raises(SystemExit) as e:   # argparse: an unknown dataset
        _opts("--dataset", "brats")
    assert e.value.code == 2


def test_la_option_error_exits_2_before_writing(tmp_path):
    from nnunet_semicl.cli import build_parser

    work = tmp_path / "work"
    args = build_parser().parse_args(["benchmark", "accuracy", "--dataset", "la", "-i", str(tmp_path), "--workdir",
                                      str(work), "--patch-size", "64", "64"])
    with pytest.raises(SystemExit) as e:
        accuracy.run(args)
    assert e.value.code == 2 and not work.exists()


def test_la_development_split():
    """5pct labels the first 4 of train.list; fold 0 validates on >= 5 volumes of the development copy (the first 30
    ids) that no setting labels; every other volume of the copy is unlabeled; the papers' protocol is unchanged."""
    dev, papers = protocols.LA_DEV, protocols.LA
    dev.check()
    copy = protocols.LA_TRAIN_LIST[:30]
    assert dict(dev.settings)["5pct"] == protocols.LA_TRAIN_LIST[:4] and dev.settings == papers.settings
    labeled_by_any = {v for _, ids in dev.settings for v in ids}
    assert len(dev.val) >= 5 and set(dev.val) <= set(copy) and not set(dev.val) & labeled_by_any
    folds = protocols.make_folds(dev, copy)
    assert folds[0]["val"] == sorted(dev.val)
    contents, skipped = protocols.make_settings(dev, folds)
    fold = {c["setting"]: c for c in contents}["5pct"]["folds"][0]
    assert fold["labeled"] == sorted(protocols.LA_TRAIN_LIST[:4]) and not skipped
    assert sorted(fold["unlabeled"]) == sorted(set(copy) - set(dev.val) - set(protocols.LA_TRAIN_LIST[:4]))
    assert len(fold["unlabeled"]) == 21
    # the papers' protocol: 8 validation volumes of the 80, 3 of them in the copy; same test set
    assert papers.val == protocols.LA_VAL and len(papers.train) == 72 and dev.test == papers.test
    assert protocols.make_folds(papers, copy)[0]["val"] == sorted(protocols.LA_VAL[:3])


def test_la_table_columns(tmp_path):
    la = accuracy_datasets.DATASETS["la"]
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({
        "mean": {"1": {"Dice": 0.8}}, "foreground_mean": {"Dice": 0.8},
        "metric_per_case": [{"reference_file": f"/gt/V{i}.nii.gz", "metrics": {"1": {"Dice": d}}}
                            for i, d in enumerate([0.7, 0.8, 0.9])]}))
    row = accuracy_table.read_summary(str(path), la.classes)
    assert row["left_atrium"] == 0.8 and "RV" not in row and row["per_case"] == {
        "V0.nii.gz": 0.7, "V1.nii.gz": 0.8, "V2.nii.gz": 0.9}
    avg = accuracy_table.average_runs([dict(row, wall_s=60.0, HD95=4.0, ASD=1.0),
                                       dict(row, left_atrium=0.6, wall_s=120.0, HD95=6.0, ASD=2.0)], la.classes)
    assert avg["left_atrium"] == pytest.approx(0.7) and avg["wall_s"] == 90.0
    assert (avg["HD95"], avg["ASD"]) == (5.0, 1.5)
    report = {"machine": common.machine_info("cpu", 2), "command": "nnunet_semicl benchmark accuracy --dataset la",
              "options": {"dataset": "la", "settings": ["5pct"], "configuration": "3d_cpu", "epochs": 30,
                          "iterations": 50, "val_iterations": 10, "smoke": False, "warm_epochs": 0},
              "configuration": {"patch_size": [32, 64, 64], "batch_size": 2, "spacing": [1.25] * 3},
              "architecture": [16, 32, 64, 128, 256], "wall_s": 600.0,
              "results": {"nnUNetTrainerLabeledOnly": {"5pct": avg}}}
    md = accuracy_table.format_accuracy_markdown(report)
    header = next(line for line in md.splitlines() if line.startswith("| trainer"))
    assert [c.strip() for c in header.strip("|").split("|")][:6] == ["trainer", "5pct (4 vol.) left_atrium", "mean",
                                                                       "HD95", "ASD", "runs"]
    assert "RV" not in md and "inherited from `3d_fullres`" in md and "5 validation volumes" in md
    assert "| `nnUNetTrainerLabeledOnly` |" in md.replace("  ", " ") or "`nnUNetTrainerLabeledOnly`" in md
    assert "0.700" in md and "5.00" in md and "1.50" in md   # Dice, HD95 and ASD (mm), mean wall time (min)
    assert "`HD95`, `ASD`: mm, medpy" in md
    acdc_md = accuracy_table.format_accuracy_markdown(dict(report, options=dict(report["options"], dataset="acdc")))
    assert "HD95" not in acdc_md and "5pct (3 pat.) RV" in acdc_md


def test_surface_metrics_of_the_validation_volumes(tmp_path):
    """HD95 / ASD (mm) of each prediction in validation/ against its reference in gt_segmentations (which holds
    every training case): a perfect volume scores 0, a shifted one nnunet_semicl.evaluation's figures; the row's
    values are the means over volumes; the result is written once and read back."""
    import numpy as np
    import SimpleITK as sitk

    from nnunet_semicl.evaluation import binary_metrics

    validation, gt = tmp_path / "fold_0" / "validation", tmp_path / "gt_segmentations"
    validation.mkdir(parents=True)
    gt.mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "left_atrium": 1},
                                                        "file_ending": ".nii.gz"}))
    ref = np.zeros((12, 16, 16), np.uint8)
    ref[3:9, 4:12, 4:12] = 1
    shifted = np.roll(ref, 2, axis=2)

    def write(array, path):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.625, 0.625, 0.625))
        sitk.WriteImage(image, str(path))

    for case, pred in (("A", ref), ("B", shifted)):
        write(ref, gt / f"{case}.nii.gz")
        write(pred, validation / f"{case}.nii.gz")
    write(ref, gt / "C.nii.gz")   # a training case: not validated, not evaluated
    (validation / "summary.json").write_text("{}")
    la = accuracy_datasets.DATASETS["la"]
    row = accuracy_table.read_surface_metrics(str(validation), str(gt), str(tmp_path / "dataset.json"), la.classes)
    expected = binary_metrics(shifted == 1, ref == 1, (0.625,) * 3)
    assert expected["hd95_mm"] > 0 and expected["asd_mm"] > 0
    assert row["surface_per_case"] == {"A": {"HD95": 0.0, "ASD": 0.0},
                                       "B": {"HD95": pytest.approx(expected["hd95_mm"]),
                                             "ASD": pytest.approx(expected["asd_mm"])}}
    assert row["HD95"] == pytest.approx(expected["hd95_mm"] / 2) and row["ASD"] == pytest.approx(expected["asd_mm"] / 2)
    (gt / "B.nii.gz").unlink()   # computed once: read back from validation/summary_semicl.json
    assert accuracy_table.read_surface_metrics(str(validation), str(gt), str(tmp_path / "dataset.json"),
                                               la.classes) == row
