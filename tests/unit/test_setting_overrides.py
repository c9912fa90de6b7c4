"""A setting's trainer block (``split --set KEY=VALUE``): parsing, validation by name and type against a trainer
class, and how a trainer applies, logs and records it (data/overrides.py). No training."""
import json
import os
import types

import pytest

from nnunet_semicl.data.overrides import (OVERRIDES_FILE, check_setting_overrides, hyperparameters,
                                          parse_set_option, parse_set_options, related_trainers,
                                          validate_overrides)
from nnunet_semicl.errors import SplitError


class Base:
    confidence_threshold = 0.97
    ema_momentum = 0.99
    distribution_alignment = True
    warmup_dice_epochs = 2
    alignment_statistic = "probability"
    unlabeled_batch_size = None
    representation_dim = None
    unsup_momentum = None
    equivariance_scale = (0.83, 1.25)
    loss_terms = ("sup", "unsup")
    _private = 1
    Capitalised = 2

    def method(self):
        return 0

    @property
    def prop(self):
        return 0


class Child(Base):
    representation_dim = 128          # None in the base: None stays accepted
    anco_weight = 0.01


class Other(Base):
    nn_k = 5


def test_parse_set_takes_json_literals_and_plain_strings():
    assert parse_set_option("confidence_threshold=0.9") == ("confidence_threshold", 0.9)
    assert parse_set_option("num_epochs=5") == ("num_epochs", 5)
    assert parse_set_option("distribution_alignment=false") == ("distribution_alignment", False)
    assert parse_set_option("unsup_momentum=null") == ("unsup_momentum", None)
    assert parse_set_option("alignment_statistic=argmax") == ("alignment_statistic", "argmax")
    assert parse_set_option('alignment_statistic="argmax"') == ("alignment_statistic", "argmax")
    assert parse_set_option("equivariance_scale=[0.8, 1.2]") == ("equivariance_scale", [0.8, 1.2])
    assert parse_set_option("negative_rule=as_released") == ("negative_rule", "as_released")
    for bad in ("no_equals", "=5", 'x={"a": 1}'):
        with pytest.raises(SplitError, match="--set"):
            parse_set_option(bad)
    # merged with --epochs ...; a key given twice with another value is refused
    assert parse_set_options(["ema_momentum=0.9", "ema_momentum=0.9"], {"num_epochs": 3}) == {
        "num_epochs": 3, "ema_momentum": 0.9}
    with pytest.raises(SplitError, match=r"num_epochs is already set to 3 \(by --epochs\)"):
        parse_set_options(["num_epochs=4"], {"num_epochs": 3})


def test_hyperparameters_are_public_lower_case_values_of_the_class_and_its_bases():
    hp = hyperparameters(Child)
    assert hp["representation_dim"] == [128, None] and hp["anco_weight"] == [0.01]
    assert "confidence_threshold" in hp and "nn_k" not in hp
    for not_one in ("_private", "Capitalised", "method", "prop", "loss_terms"):
        assert not_one not in hp


def test_values_of_the_defaults_type_are_accepted_and_converted():
    applied, skipped = validate_overrides(Child, {
        "confidence_threshold": 1, "ema_momentum": 0.9, "distribution_alignment": False, "warmup_dice_epochs": 3,
        "alignment_statistic": "argmax", "unlabeled_batch_size": 4, "representation_dim": None, "unsup_momentum": 0.9,
        "equivariance_scale": [0.8, 1], "num_epochs": 2, "initial_lr": 0.001, "anco_weight": 0}, "plans 'x'")
    assert skipped == {}
    assert applied["confidence_threshold"] == 1.0 and isinstance(applied["confidence_threshold"], float)
    assert applied["equivariance_scale"] == (0.8, 1.0) and isinstance(applied["equivariance_scale"][1], float)
    assert applied["representation_dim"] is None and applied["unlabeled_batch_size"] == 4
    assert applied["distribution_alignment"] is False and applied["num_epochs"] == 2


@pytest.mark.parametrize("key, value, message", [
    ("confidence_threshold", "abc", "confidence_threshold must be a number"),
    ("ema_momentum", True, "ema_momentum must be a number"),
    ("num_epochs", 2.5, r"--epochs \(num_epochs\) must be a whole number"),
    ("num_epochs", 0, r"must be a whole number >= 1"),
    ("warmup_dice_epochs", 2.0, "must be a whole number"),
    ("distribution_alignment", 0, "must be true or false"),
    ("alignment_statistic", "mean", "must be one of 'probability', 'argmax'"),
    ("unlabeled_batch_size", 0.5, "must be a whole number or null"),
    ("unlabeled_batch_size", 0, "must be a whole number >= 1"),
    ("equivariance_scale", [0.8], r"must be a list of 2"),
    ("initial_lr", float("nan"), "must be finite"),
    ("initial_lr", 0, "must be a positive number"),
    ("confidence_threshold", 1.5, "between 0 and 1"),
    ("anco_weight", -1, "must be a number >= 0"),
])
def test_wrong_types_and_ranges_are_refused_naming_the_key(key, value, message):
    with pytest.raises(SplitError, match=message):
        validate_overrides(Child, {key: value}, "plans 'x'")


def test_unknown_key_names_the_trainer_close_matches_and_the_docs():
    with pytest.raises(SplitError) as e:
        validate_overrides(Child, {"confidence_treshold": 0.9}, "plans 'x'")
    msg = str(e.value)
    assert "'confidence_treshold'" in msg and "Child" in msg and "confidence_threshold" in msg
    assert "docs/trainers.md" in msg
    with pytest.raises(SplitError, match="cannot be set by a setting"):
        validate_overrides(Child, {"loss_terms": ["sup"]}, "plans 'x'")


def test_a_key_of_a_related_trainer_is_skipped_not_refused():
    # a setting is shared by the trainers compared on it (e.g. LabeledOnly has no confidence_threshold)
    applied, skipped = validate_overrides(Child, {"nn_k": 3, "anco_weight": 0.1}, "w", related=[Child, Other])
    assert applied == {"anco_weight": 0.1} and "nn_k" in skipped and "Other" in skipped["nn_k"]
    assert set(related_trainers(Base)) >= {Base, Child, Other}
    with pytest.raises(SplitError, match="unknown trainer setting 'nn_kk'"):
        validate_overrides(Child, {"nn_kk": 3}, "w", related=[Child, Other])


def test_split_time_check_accepts_a_key_of_any_trainer():
    check_setting_overrides({"nn_k": 3, "anco_weight": 0.5, "num_epochs": 2}, "nnunet_semicl split", [Child, Other])
    with pytest.raises(SplitError, match="must be a whole number"):
        check_setting_overrides({"nn_k": 0.5}, "nnunet_semicl split", [Child, Other])
    with pytest.raises(SplitError, match="unknown trainer setting 'nnk'.*Did you mean nn_k"):
        check_setting_overrides({"nnk": 3}, "nnunet_semicl split", [Child, Other])
    # without trainer classes only the schedule is known
    check_setting_overrides({"num_epochs": 2, "save_every": 1}, "nnunet_semicl split")
    with pytest.raises(SplitError, match="unknown trainer setting"):
        check_setting_overrides({"nn_k": 3}, "nnunet_semicl split")


def test_real_trainers_validate_their_documented_ablations():
    from nnunet_semicl.training.action_pp import nnUNetTrainerACTIONpp
    from nnunet_semicl.training.labeled_only import nnUNetTrainerLabeledOnly
    from nnunet_semicl.training.mona import nnUNetTrainerMONA

    applied, _ = validate_overrides(nnUNetTrainerACTIONpp, {
        "distribution_alignment": False, "pseudo_label_pixel_mask": True, "representation_dim": None,
        "unsup_momentum": 0.9, "confidence_threshold": 0.9, "ats_per_epoch": True}, "w")
    assert applied["pseudo_label_pixel_mask"] is True
    for bad in ({"confidence_threshold": "abc"}, {"ema_momentum": True}, {"num_epochs": 2.5},
                {"bank_dtype": "float16"}, {"uses_features": False}):
        with pytest.raises(SplitError):
            validate_overrides(nnUNetTrainerACTIONpp, bad, "w")
    assert validate_overrides(nnUNetTrainerMONA, {"equivariance_scale": [0.9, 1.1]}, "w")[0] == {
        "equivariance_scale": (0.9, 1.1)}
    family = related_trainers(nnUNetTrainerLabeledOnly)
    applied, skipped = validate_overrides(nnUNetTrainerLabeledOnly, {"num_epochs": 2, "warmup_limit_floor": 0},
                                          "w", family)
    assert applied == {"num_epochs": 2} and "warmup_limit_floor" in skipped


def test_feature_perturbation_keys_reach_every_semi_supervised_trainer_with_their_ranges():
    from nnunet_semicl.training.mean_teacher import nnUNetTrainerMeanTeacher
    from nnunet_semicl.training.mona import nnUNetTrainerARCO
    from nnunet_semicl.training.pseudo_label import nnUNetTrainerPseudoLabel

    for cls in (nnUNetTrainerPseudoLabel, nnUNetTrainerMeanTeacher, nnUNetTrainerARCO):
        applied, _ = validate_overrides(cls, {"feature_perturbation_weight": 1, "feature_perturbation_dropout": 0},
                                        "w")
        assert applied == {"feature_perturbation_weight": 1.0, "feature_perturbation_dropout": 0.0}
    for bad, message in (({"feature_perturbation_dropout": 1}, r"must be a number in \[0, 1\)"),
                         ({"feature_perturbation_dropout": -0.1}, r"must be a number in \[0, 1\)"),
                         ({"feature_perturbation_weight": -0.5}, "must be a number >= 0"),
                         ({"feature_perturbation_weight": True}, "must be a number")):
        with pytest.raises(SplitError, match=message):
            validate_overrides(nnUNetTrainerPseudoLabel, bad, "w")


def _bare_trainer(cls, tmp_path, trainer_block, local_rank=0):
    """An instance of ``cls`` with just what ``_apply_setting_overrides`` reads (nnU-Net's __init__ not run)."""
    t = object.__new__(cls)
    plans = {"plans_name": "nnUNetPlans_5pct", "semicl": {"setting": "5pct", "trainer": trainer_block}}
    t.plans_manager = types.SimpleNamespace(plans=plans, plans_name=plans["plans_name"])
    t.dataset_json, t.preprocessed_dataset_folder_base = {}, str(tmp_path)
    t.local_rank, t.output_folder = local_rank, str(tmp_path / "fold_0")
    t.num_epochs, t.save_every, t.initial_lr = 1000, 50, 1e-2
    t.logged = []
    t.print_to_log_file = lambda *a, **k: t.logged.append(" ".join(str(x) for x in a))
    return t


def test_the_trainer_applies_logs_and_records_the_overrides(tmp_path):
    from nnunet_semicl.training.action_pp import nnUNetTrainerACTIONpp

    t = _bare_trainer(nnUNetTrainerACTIONpp, tmp_path, {"num_epochs": 20, "confidence_threshold": 0.9,
                                                        "distribution_alignment": False})
    t._apply_setting_overrides()
    assert t.num_epochs == 20 and t.confidence_threshold == 0.9 and t.distribution_alignment is False
    assert nnUNetTrainerACTIONpp.confidence_threshold == 0.97          # the class is untouched
    assert any("confidence_threshold: 0.97 -> 0.9" in line and "num_epochs: 1000 -> 20" in line for line in t.logged)
    record = json.load(open(os.path.join(t.output_folder, OVERRIDES_FILE)))
    assert record["trainer"] == "nnUNetTrainerACTIONpp" and record["setting"] == "5pct"
    assert record["overrides"]["distribution_alignment"] == {"default": True, "value": False}
    # only rank 0 writes; a wrong type stops the trainer before anything is set
    t = _bare_trainer(nnUNetTrainerACTIONpp, tmp_path / "r1", {"num_epochs": 3}, local_rank=1)
    t._apply_setting_overrides()
    assert not os.path.exists(os.path.join(t.output_folder, OVERRIDES_FILE))
    t = _bare_trainer(nnUNetTrainerACTIONpp, tmp_path, {"num_epochs": 3, "ema_momentum": True})
    with pytest.raises(SplitError, match="ema_momentum"):
        t._apply_setting_overrides()
    assert t.num_epochs == 1000


def test_split_command_writes_set_options_into_the_trainer_block(tmp_path, monkeypatch, capsys):
    from nnunet_semicl import cli

    base = tmp_path / "Dataset001_X"
    (base / "gt_segmentations").mkdir(parents=True)
    for i in range(10):
        (base / "gt_segmentations" / f"case_{i:03d}.nii.gz").write_bytes(b"")
    (base / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    (base / "nnUNetPlans.json").write_text(json.dumps({"plans_name": "nnUNetPlans", "configurations": {}}))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setattr("nnunet_semicl.data.dataset_lookup.resolve_dataset_name", lambda *a, **k: "Dataset001_X")
    cli.main(["split", "1", "--labeled", "2", "--name", "abl", "--epochs", "3", "--set", "distribution_alignment=false",
              "--set", "confidence_threshold=0.9", "--set", "alignment_statistic=argmax", "--default"])
    block = json.loads((base / "nnUNetPlans_abl.json").read_text())["semicl"]["trainer"]
    assert block == {"num_epochs": 3, "distribution_alignment": False, "confidence_threshold": 0.9,
                     "alignment_statistic": "argmax"}
    assert json.loads((base / "semicl_default_setting.json").read_text())["trainer"] == block
    before = sorted(os.listdir(base))
    for bad, message in ((["--set", "confidence_treshold=0.9"], "Did you mean confidence_threshold"),
                         (["--set", "confidence_threshold=abc"], "confidence_threshold must be a number"),
                         (["--set", "num_epochs=2.5"], "must be a whole number")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["split", "1", "--labeled", "2", "--name", "bad"] + bad)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert sorted(os.listdir(base)) == before    # nothing written
