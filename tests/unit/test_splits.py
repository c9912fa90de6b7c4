import json
import os

import pytest

from nnunet_semicl.data.setting_files import write_setting
from nnunet_semicl.data.splits import (PLANS_BLOCK, UNLABELED_KEY, choose_labeled, default_folds, make_setting,
                                       resolve_case_sets, validate_fold_sets)
from nnunet_semicl.errors import SplitError

CASES = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 11) for f in (1, 2)]
GROUP = r"patient\d+"


def folds():
    return default_folds(CASES)


def test_default_folds_equal_nnunet_split():
    from nnunet_semicl.data.splits import default_folds as ours
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    assert ours(CASES) == generate_crossval_split(sorted(CASES), seed=12345, n_splits=5)


def test_grouped_default_folds_keep_patients_together():
    f = default_folds(CASES, group_regex=GROUP)
    assert sorted(c for x in f for c in x["val"]) == sorted(CASES)
    for x in f:
        val_p = {c.split("_")[0] for c in x["val"]}
        assert not any(c.split("_")[0] in val_p for c in x["train"])


def test_unlabeled_only_cases_always_train():
    f = default_folds(CASES + ["u1", "u2"], unlabeled_only=["u1", "u2"])
    assert all({"u1", "u2"} <= set(x["train"]) and not {"u1", "u2"} & set(x["val"]) for x in f)


@pytest.mark.parametrize("kw", [dict(n_labeled=2), dict(fraction=0.25), dict(labeled_ids=["patient003", "patient006", "patient009"])])
def test_patients_stay_together_and_sets_partition(kw):
    s = make_setting(folds(), "t", group_regex=GROUP, seed=1, all_cases=CASES, **kw)
    for k, f in enumerate(folds()):
        sets = s["folds"][k]
        assert set(sets["labeled"]) | set(sets["unlabeled"]) == set(f["train"])
        patients = {c.split("_")[0] for c in sets["labeled"]}
        for p in patients:  # both frames of every labeled patient are labeled (if in this fold's train)
            assert {c for c in f["train"] if c.startswith(p)} <= set(sets["labeled"])
    assert "all" in s


def test_same_seed_same_split_other_seed_differs():
    a = make_setting(folds(), "a", n_labeled=2, group_regex=GROUP, seed=3)
    b = make_setting(folds(), "b", n_labeled=2, group_regex=GROUP, seed=3)
    c = make_setting(folds(), "c", n_labeled=2, group_regex=GROUP, seed=4)
    assert a["folds"] == b["folds"] and a["folds"] != c["folds"]


def test_fraction_counts_groups():
    s = choose_labeled(CASES, fraction=0.3, group_regex=GROUP)
    assert len(s["labeled"]) == 6  # 3 patients x 2 frames


@pytest.mark.parametrize("kw,msg", [
    (dict(labeled_ids=["patient999"]), "not among the fold's annotated training"),
    (dict(fraction=0.0), "in (0, 1)"),
    (dict(fraction=1.0), "in (0, 1)"),
    (dict(fraction=1.5), "in (0, 1)"),
    (dict(n_labeled=0), "at least 1"),
    (dict(n_labeled=99), "only"),
    (dict(n_labeled=1, fraction=0.1), "exactly one"),
])
def test_bad_requests(kw, msg):
    with pytest.raises(SplitError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        choose_labeled(CASES, group_regex=GROUP, **kw)


def test_validation_case_cannot_be_labeled():
    f = folds()[0]
    with pytest.raises(SplitError, match="not among"):
        choose_labeled(f["train"], labeled_ids=[f["val"][0]])
    # across folds, a listed patient that validates in one fold is left out of that fold only
    s = make_setting(folds(), "p", labeled_ids=["patient003", "patient005"], group_regex=GROUP)
    wanted = {"patient003", "patient005"}
    n_excluded = 0
    for k, fo in enumerate(folds()):
        train_patients = {c.split("_")[0] for c in fo["train"]}  # nnU-Net's default folds split by case
        lab_patients = {c.split("_")[0] for c in s["folds"][k]["labeled"]}
        assert lab_patients == wanted & train_patients
        assert set(s["folds"][k].get("excluded_validation", [])) == wanted - train_patients
        n_excluded += len(wanted - train_patients)
    assert n_excluded > 0  # the situation actually occurred


def test_all_labeled_means_zero_unlabeled():
    with pytest.raises(SplitError, match="zero unlabeled"):
        make_setting([{"train": CASES[:4], "val": CASES[4:]}], "x", labeled_ids=CASES[:4])


def test_group_regex_must_match_every_case():
    with pytest.raises(SplitError, match="does not match the group pattern"):
        choose_labeled(CASES + ["other_case"], n_labeled=1, group_regex=GROUP)


@pytest.mark.parametrize("sets,msg", [
    ({"labeled": ["a"], "unlabeled": ["a", "b"]}, "both labeled and unlabeled"),
    ({"labeled": ["a", "zz"], "unlabeled": ["b"]}, "labeled cases that are not training cases"),
    ({"labeled": ["a"], "unlabeled": ["b", "zz"]}, "unlabeled cases that are not training cases"),
    ({"labeled": [], "unlabeled": ["a", "b"]}, "zero labeled"),
    ({"labeled": ["a", "b"], "unlabeled": []}, "zero unlabeled"),
    ({"labeled": ["a"], "unlabeled": []}, "neither labeled nor unlabeled"),
    ({"labeled": ["a", "a"], "unlabeled": ["b"]}, "duplicate"),
    ({"labeled": ["a"]}, "missing list"),
])
def test_validate_fold_sets_errors(sets, msg):
    with pytest.raises(SplitError, match=msg):
        validate_fold_sets(sets, ["a", "b"], "0")


def test_truly_unlabeled_cannot_be_labeled():
    with pytest.raises(SplitError, match="no annotation"):
        choose_labeled(CASES + ["u1"], labeled_ids=["u1"], unlabeled_only=["u1"])
    with pytest.raises(SplitError, match="without annotation listed as labeled"):
        validate_fold_sets({"labeled": ["a", "u1"], "unlabeled": ["b"]}, ["a", "b", "u1"], "0", ["u1"])


def _plans(tmp_path):
    plans = {"dataset_name": "Dataset001_X", "plans_name": "nnUNetPlans", "configurations": {"2d": {}}}
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(plans))
    return plans


def test_write_setting_and_resolve(tmp_path):
    _plans(tmp_path)
    s = make_setting(folds(), "lab2", n_labeled=2, group_regex=GROUP, all_cases=CASES)
    split_path, plans_path = write_setting(str(tmp_path), s, trainer_overrides={"num_epochs": 3})
    variant = json.loads(open(plans_path).read())
    assert variant["plans_name"] == "nnUNetPlans_lab2"
    assert variant[PLANS_BLOCK] == {"setting": "lab2", "split_file": "splits_semicl_lab2.json",
                                    "base_plans": "nnUNetPlans", "trainer": {"num_epochs": 3}}
    assert not os.path.exists(tmp_path / "nnUNetPlans_2d")  # nothing in a data folder
    sets = resolve_case_sets(variant, {}, str(tmp_path), 1, folds()[1]["train"])
    assert list(sets.labeled) == s["folds"][1]["labeled"]
    all_sets = resolve_case_sets(variant, {}, str(tmp_path), "all", CASES)
    assert list(all_sets.labeled) == s["all"]["labeled"]
    # rewriting the same content is fine, different content needs overwrite
    write_setting(str(tmp_path), s, trainer_overrides={"num_epochs": 3})
    other = make_setting(folds(), "lab2", n_labeled=3, group_regex=GROUP)
    with pytest.raises(SplitError, match="already exists"):
        write_setting(str(tmp_path), other)
    write_setting(str(tmp_path), other, overwrite=True)
    with pytest.raises(SplitError, match="defines 5 folds"):
        resolve_case_sets(variant, {}, str(tmp_path), 7, CASES)


def test_resolve_errors_and_truly_unlabeled_fallback(tmp_path):
    plans = _plans(tmp_path)
    with pytest.raises(SplitError, match="nnunet_semicl split"):
        resolve_case_sets(plans, {}, str(tmp_path), 0, CASES)
    sets = resolve_case_sets(plans, {UNLABELED_KEY: ["u1", "u2"]}, str(tmp_path), 0, CASES + ["u1", "u2"])
    assert sets.unlabeled == ("u1", "u2") and len(sets.labeled) == len(CASES)
    missing = dict(plans, semicl={"setting": "gone", "split_file": "splits_semicl_gone.json"})
    with pytest.raises(SplitError, match="does not exist"):
        resolve_case_sets(missing, {}, str(tmp_path), 0, CASES)


def test_write_setting_needs_base_plans(tmp_path):
    s = make_setting(folds(), "x", n_labeled=1)
    with pytest.raises(SplitError, match="nnUNetv2_plan_and_preprocess first"):
        write_setting(str(tmp_path), s)


def test_resumed_runs_accept_only_added_images_without_annotation():
    from nnunet_semicl.data.splits import CaseSets, check_resumed_case_sets

    old = CaseSets(("a", "b"), ("c", "d"), "split")
    assert check_resumed_case_sets(old, CaseSets(("a", "b"), ("c", "d", "u1"), "split"), ["u1"]) == ("u1",)
    assert check_resumed_case_sets(old, CaseSets(("b", "a"), ("d", "c"), "split"), []) == ()
    for new, msg in [(CaseSets(("a",), ("b", "c", "d"), "s"), "labeled cases"),        # labeled set changed
                     (CaseSets(("a", "b"), ("c", "d", "e"), "s"), "annotated cases became unlabeled"),
                     (CaseSets(("a", "b"), ("c",), "s"), "unlabeled cases removed")]:
        with pytest.raises(SplitError, match=msg):
            check_resumed_case_sets(old, new, ["u1"])


def test_default_setting_is_used_only_without_a_plans_setting_and_without_unlabeled_images(tmp_path):
    from nnunet_semicl.data.setting_files import default_setting_content, write_default_setting
    from nnunet_semicl.data.splits import setting_block, split_file_name
    from nnunet_semicl.files import save_json

    base = str(tmp_path)
    f = folds()
    s = make_setting(f, "5pct", n_labeled=1, group_regex=GROUP)
    save_json(s, os.path.join(base, split_file_name("5pct")))
    write_default_setting(base, default_setting_content("5pct"))
    plans = {"plans_name": "nnUNetPlans"}
    assert setting_block(plans, {}, base)["setting"] == "5pct"
    sets = resolve_case_sets(plans, {}, base, 0, f[0]["train"])
    assert list(sets.labeled) == s["folds"][0]["labeled"] and "default" in sets.source
    assert setting_block(plans, {UNLABELED_KEY: ["u1"]}, base) is None          # add-unlabeled images win
    assert setting_block({**plans, PLANS_BLOCK: {"setting": "x"}}, {}, base) == {"setting": "x"}  # -p wins
    with pytest.raises(SplitError, match="already exists with different content"):
        write_default_setting(base, default_setting_content("10pct"))


def test_differs_from_file_ignores_only_created_by(tmp_path):
    from nnunet_semicl.data.setting_files import differs_from_file
    from nnunet_semicl.files import save_json

    path = str(tmp_path / "s.json")
    content = {"setting": "5pct", "created_by": "a", "folds": [{"labeled": ["x"], "unlabeled": ["y"]}]}
    assert not differs_from_file(path, content)  # no file: nothing in the way
    save_json(content, path)
    assert not differs_from_file(path, dict(content, created_by="another command line"))
    assert differs_from_file(path, dict(content, folds=[{"labeled": ["y"], "unlabeled": ["x"]}]))
    save_json([{"train": ["a"], "val": ["b"]}], path)  # splits_final.json is a list
    assert not differs_from_file(path, [{"train": ["a"], "val": ["b"]}])
    assert differs_from_file(path, [{"train": ["b"], "val": ["a"]}])


def test_trainer_overrides_accept_the_warmup_floor_and_refuse_bad_values():
    from nnunet_semicl.data.overrides import check_setting_overrides as check_trainer_overrides
    from nnunet_semicl.training.training_dynamics import TrainingDynamicsMixin
    trainers = [TrainingDynamicsMixin]
    check_trainer_overrides({"warmup_limit_floor": 0.0, "num_epochs": 2}, "plans 'x'", trainers)
    check_trainer_overrides({"warmup_limit_floor": 1}, "plans 'x'", trainers)
    for bad in (1.5, -0.1):
        with pytest.raises(SplitError, match=r"warmup_limit_floor.*a Dice between 0 and 1"):
            check_trainer_overrides({"warmup_limit_floor": bad}, "plans 'x'", trainers)
    for bad in (True, "0.1"):
        with pytest.raises(SplitError, match=r"warmup_limit_floor must be a number"):
            check_trainer_overrides({"warmup_limit_floor": bad}, "plans 'x'", trainers)
    check_trainer_overrides({"warmup_dice_threshold": 0.3}, "plans 'x'", trainers)   # any hyperparameter (--set)
    with pytest.raises(SplitError, match="unknown trainer setting 'warmup_dice_treshold'.*warmup_dice_threshold"):
        check_trainer_overrides({"warmup_dice_treshold": 0.3}, "plans 'x'", trainers)
