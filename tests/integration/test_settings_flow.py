"""Which cases a training uses without -p (the dataset's default setting), and images added later (issue 12)."""
import json
import os

import pytest

from nnunet_semicl.data.splits import DEFAULT_SETTING_FILE
from nnunet_semicl.errors import SplitError
from tests.conftest import TRAIN_ENV, cli_in_process, open_gate_at_limit, run_cmd
from tests.integration.nnunet_helpers import env, make_trainer, output_folder, stock_train

pytestmark = pytest.mark.integration


def test_the_promised_command_trains_with_the_default_setting(phantom):
    """``nnUNetv2_train ID CONFIG 0 -tr nnUNetTrainerACTIONpp``, typed exactly so: the default setting is used."""
    default_file = os.path.join(phantom.pre, DEFAULT_SETTING_FILE)
    trainer, cfg = "nnUNetTrainerACTIONpp", "2d_tiny"
    try:
        # the same setting as the fixture's, now also the dataset's default (--overwrite: the fixture added the
        # tests' warm-up floor to the plans file, put back below for the other tests)
        cli_in_process("split", phantom.id, "--fraction", "0.2", "--group", r"phantom\d+", "--name", phantom.setting,
                       "--epochs", "2", "--iterations", "3", "--val-iterations", "1", "--default", "--overwrite")
        open_gate_at_limit(phantom.pre, phantom.plans)
        assert json.load(open(default_file))["setting"] == phantom.setting
        stock_train(phantom.id, cfg, 0, "-tr", trainer)
        folder = output_folder(phantom, trainer, cfg, plans="nnUNetPlans")
        assert os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))
        record = json.load(open(os.path.join(folder, "semicl_case_sets.json")))
        split = json.load(open(os.path.join(phantom.pre, f"splits_semicl_{phantom.setting}.json")))["folds"][0]
        assert record["setting"] == phantom.setting and record["default_setting"] is True
        assert record["labeled"] == split["labeled"] and record["unlabeled"] == split["unlabeled"]
        log = open(sorted(f for f in (os.path.join(folder, x) for x in os.listdir(folder))
                          if os.path.basename(f).startswith("training_log"))[-1]).read()
        assert f"default setting '{phantom.setting}'" in log and "-p nnUNetPlans_<setting>" in log
        assert "num_epochs: 1000 -> 2" in log   # the default setting's schedule came along
    finally:
        if os.path.exists(default_file):
            os.remove(default_file)


def test_converters_record_the_papers_headline_setting_as_default(tmp_path, monkeypatch):
    from nnunet_semicl.dataset_conversion.la import convert_la
    from tests.integration.test_conversion import make_la_uamt

    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, str(tmp_path / k))
    make_la_uamt(str(tmp_path / "src"))
    summary = convert_la(str(tmp_path / "src"), num_processes=1, verbose=False)
    assert summary["default_setting"] == "5pct"
    pre = os.path.join(str(tmp_path / "nnUNet_preprocessed"), "Dataset028_LA")
    assert json.load(open(os.path.join(pre, DEFAULT_SETTING_FILE)))["setting"] == "5pct"
    assert os.path.isfile(os.path.join(pre, "splits_semicl_5pct.json"))


def test_images_added_after_a_setting_join_its_unlabeled_cases(nnunet_dirs, tmp_path):
    from nnunet_semicl.data.unlabeled_images import add_unlabeled_images
    from nnunet_semicl.dataset_conversion.synthetic import PhantomSpec, generate_dataset, write_phantom_images

    did, name = 994, "Dataset994_SemiCLLate"
    generate_dataset(nnunet_dirs.raw, did, name="SemiCLLate", n_patients=6, n_test_patients=0, dim=2, verbose=False)
    run_cmd(["nnUNetv2_plan_and_preprocess", "-d", str(did), "-c", "2d", "-npfp", "1", "-np", "1"])
    cli_in_process("tiny-config", did, "-c", "2d")
    cli_in_process("split", did, "--labeled", "2", "--group", r"phantom\d+", "--name", "lab2", "--epochs", "1",
                   "--iterations", "2", "--val-iterations", "1")
    pre = os.path.join(nnunet_dirs.preprocessed, name)
    setting = json.load(open(os.path.join(pre, "splits_semicl_lab2.json")))["folds"][0]

    unl = tmp_path / "unl"
    write_phantom_images(str(unl), [40, 41], PhantomSpec(shape=(1, 64, 64)), seed=3)
    new = add_unlabeled_images(did, str(unl), prefix="late_", num_processes=1, verbose=False)

    with env(**TRAIN_ENV):
        # not preprocessed yet: training stops with the real cause and the fix
        t = make_trainer(did, "2d_tiny", 0, "nnUNetTrainerPseudoLabel", "nnUNetPlans_lab2")
        with pytest.raises(SplitError, match="added after preprocessing.*nnUNetv2_plan_and_preprocess") as e:
            t.on_train_start()
        assert "WITHOUT --clean" in str(e.value)

    run_cmd(["nnUNetv2_plan_and_preprocess", "-d", str(did), "-c", "2d", "-npfp", "1", "-np", "1"])
    with env(**TRAIN_ENV):
        t = make_trainer(did, "2d_tiny", 0, "nnUNetTrainerPseudoLabel", "nnUNetPlans_lab2")
        t.disable_checkpointing = True
        t.run_training()
    assert list(t.case_sets.labeled) == setting["labeled"]                 # the setting's labeled cases ...
    assert set(t.case_sets.unlabeled) == set(setting["unlabeled"]) | set(new)  # ... and the new images
    assert "images without annotation added after it" in t.case_sets.source
    folds = json.load(open(os.path.join(pre, "splits_final.json")))
    assert not set(new) & set(folds[0]["train"] + folds[0]["val"])  # splits_final.json was not rewritten
