"""Pure parts of ``nnunet_semicl.benchmarking``: tables, ratios, the summary of step measurements, the
docs-section writer, the sampler benchmark on tiny masks, and the accuracy report (a few seconds)."""
import json
import math

import pytest
import torch

from nnunet_semicl.benchmarking import (accuracy, accuracy_runs, accuracy_table, common, samplers, step,
                                        step_report, step_trainers, step_worker)


# ------------------------------------------------------------------------------------------------
# common
# ------------------------------------------------------------------------------------------------
def test_markdown_table_alignment_and_errors():
    t = common.markdown_table(["name", "value"], [["a", "1.0"], ["long name", "22.50"]])
    lines = t.splitlines()
    assert lines[0] == "| name      | value |"
    assert lines[1] == "|:----------|------:|"
    assert lines[2] == "| a         |   1.0 |"
    assert lines[3] == "| long name | 22.50 |"
    assert common.markdown_table(["a", "b"], [["x", "y"]], align="ll").splitlines()[1] == "|:--|:--|"
    with pytest.raises(ValueError):
        common.markdown_table(["a", "b"], [["only one"]])
    with pytest.raises(ValueError):
        common.markdown_table(["a", "b"], [], align="l")


def test_ratio_and_formatting():
    assert common.ratio(3.0, 2.0) == 1.5
    for a, b in ((1.0, 0.0), (None, 1.0), (1.0, None), (float("nan"), 1.0), (1.0, -2.0)):
        assert math.isnan(common.ratio(a, b))
    assert common.fmt(1.23456) == "1.235"
    assert common.fmt(float("nan")) == "-" and common.fmt(None) == "-"
    assert common.fmt_pct(0.0834) == "+8.3%" and common.fmt_pct(-0.05) == "-5.0%" and common.fmt_pct(None) == "-"
    assert common.median([3, 1, None, 2]) == 2 and math.isnan(common.median([None]))


DOC = """# Performance

Intro text that must survive.

## Step cost

{step_begin}
not yet measured
{step_end}

## Samplers

{samp_begin}
old sampler numbers
{samp_end}

Closing text.
"""


def _doc():
    sb, se = common.section_markers("step")
    pb, pe = common.section_markers("samplers")
    return DOC.format(step_begin=sb, step_end=se, samp_begin=pb, samp_end=pe)


def test_replace_section_changes_only_its_own_section():
    text = _doc()
    new = common.replace_section(text, "step", "| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert common.read_section(new, "step") == "| a | b |\n|---|---|\n| 1 | 2 |"
    assert common.read_section(new, "samplers") == "old sampler numbers"
    assert "Intro text that must survive." in new and new.endswith("Closing text.\n")
    # everything outside the step section is byte-identical
    b, e = common.section_markers("step")
    assert new[: new.index(b)] == text[: text.index(b)]
    assert new[new.index(e):] == text[text.index(e):]
    # idempotent
    assert common.replace_section(new, "step", "| a | b |\n|---|---|\n| 1 | 2 |") == new


def test_replace_section_appends_missing_and_rejects_broken_markers():
    text = "# Title\n\nSome text.\n"
    new = common.replace_section(text, "accuracy", "table")
    assert new.startswith(text)
    assert common.read_section(new, "accuracy") == "table"
    b, _ = common.section_markers("accuracy")
    with pytest.raises(ValueError, match="no end marker"):
        common.replace_section(f"{b}\ncontent without end\n", "accuracy", "x")
    with pytest.raises(ValueError, match="more than once"):
        twice = common.replace_section(common.replace_section("", "step", "a"), "samplers", "b")
        common.replace_section(twice + twice, "step", "c")


def test_update_doc_section_writes_file(tmp_path):
    path = tmp_path / "docs" / "performance.md"
    common.update_doc_section(str(path), "step", "first")
    common.update_doc_section(str(path), "samplers", "second")
    common.update_doc_section(str(path), "step", "third")
    text = path.read_text()
    assert common.read_section(text, "step") == "third" and common.read_section(text, "samplers") == "second"
    assert not [p for p in path.parent.iterdir() if p.name != "performance.md"]  # no temporary file left


def test_machine_info_fields():
    info = common.machine_info("cpu", 2)
    assert info["cores"] >= 1 and info["torch_threads"] == 2 and info["device"] == "cpu"
    text = common.format_machine(info)
    assert "torch" in text and "OMP_WAIT_POLICY" in text


# ------------------------------------------------------------------------------------------------
# step cost
# ------------------------------------------------------------------------------------------------
def _result(label, times, peak, before, rep=0, tl=False, phase=None, breakdown=None):
    trainer = label.split("@")[0]
    return {"label": label, "trainer": trainer, "phase": phase, "teacher_sees_labeled": tl, "times": times,
            "median_s": sorted(times)[len(times) // 2], "data_s": 0.01, "peak_rss_mb": peak, "rss_before_mb": before,
            "rss_increase_mb": peak - before, "state_mb": 0.0, "heads_mb": 0.0, "rep": rep, "breakdown": breakdown}


def _fake_results():
    res = []
    for rep, jitter in enumerate((0.0, 0.02, -0.02)):
        res += [
            _result(step_trainers.STOCK, [1.0 + jitter] * 3, 1000.0, 900.0, rep),
            _result(step_trainers.MEAN_TEACHER, [2.0 + jitter] * 3, 1200.0, 1000.0, rep),
            _result(step_trainers.MT_TEACHER_LABELED, [2.4 + jitter] * 3, 1260.0, 1000.0, rep, tl=True),
            _result("nnUNetTrainerACTION", [2.1 + jitter] * 3, 1300.0, 1050.0, rep, phase="finetune"),
            _result("nnUNetTrainerACTIONpp", [3.0 + jitter] * 3, 1500.0, 1100.0, rep, tl=True, phase="finetune",
                    breakdown={"teacher_forward": 0.5, "student_forward": 0.6, "compute_losses": 1.0,
                               "saacl": 0.7, "backward_and_step": 0.8}),
            _result("nnUNetTrainerACTIONpp@local", [2.2 + jitter] * 3, 1250.0, 1100.0, rep, phase="local"),
        ]
    return res


def test_summarize_ratios_and_breakdown():
    s = step_report.summarize(_fake_results())
    rows = {r["label"]: r for r in s["rows"]}
    stock = rows[step_trainers.STOCK]
    assert stock["step_s"] == pytest.approx(1.0)
    assert stock["step_s_min"] == pytest.approx(0.98) and stock["step_s_max"] == pytest.approx(1.02)
    assert stock["reps"] == 3 and stock["n_steps"] == 9
    assert rows[step_trainers.MEAN_TEACHER]["x_stock"] == pytest.approx(2.0)
    assert rows["nnUNetTrainerACTIONpp"]["x_mean_teacher"] == pytest.approx(1.5)
    assert rows["nnUNetTrainerACTIONpp"]["mem_x_mean_teacher"] == pytest.approx(1.25)
    assert rows["nnUNetTrainerACTIONpp"]["breakdown"]["saacl"] == pytest.approx(0.7)
    b = {x["label"]: x for x in s["breakdown"]}
    assert set(b) == {"nnUNetTrainerACTION", "nnUNetTrainerACTIONpp"}  # pre-training phases are not methods' cost
    # ACTION: teacher on unlabeled only -> reference is the mean teacher itself
    a = b["nnUNetTrainerACTION"]
    assert a["reference"] == step_trainers.MEAN_TEACHER and a["teacher_pass_time"] == 0.0
    assert a["machinery_time"] == pytest.approx(0.05) and a["time_ok"] is True
    assert a["machinery_memory"] == pytest.approx(100 / 1200) and a["memory_ok"] is True
    assert a["machinery_increase"] == pytest.approx((250 - 200) / 200)
    # ACTION++: teacher sees labeled -> extra teacher pass (2.4 vs 2.0) and machinery (3.0 vs 2.4)
    p = b["nnUNetTrainerACTIONpp"]
    assert p["reference"] == step_trainers.MT_TEACHER_LABELED
    assert p["teacher_pass_time"] == pytest.approx(0.2)
    assert p["machinery_time"] == pytest.approx(0.3) and p["time_ok"] is False
    assert p["total_time"] == pytest.approx(p["teacher_pass_time"] + p["machinery_time"])
    assert p["teacher_pass_memory"] == pytest.approx(0.05)
    assert p["machinery_memory"] == pytest.approx(240 / 1200) and p["memory_ok"] is False


def test_summarize_without_reference_gives_no_verdict():
    res = [r for r in _fake_results() if r["label"] != step_trainers.MT_TEACHER_LABELED]
    p = {x["label"]: x for x in step_report.summarize(res)["breakdown"]}["nnUNetTrainerACTIONpp"]
    assert math.isnan(p["machinery_time"]) and p["time_ok"] is None and p["memory_ok"] is None
    assert math.isnan(p["teacher_pass_time"])


def test_step_markdown_contains_tables():
    report = {"machine": common.machine_info("cpu", 2), "command": "nnunet_semicl benchmark step",
              "options": {"smoke": False, "patients": 20, "phantom_shape": [10, 64, 64], "dataset": None,
                          "configuration": "2d", "plans": "nnUNetPlans_bench", "reps": 3, "steps": 10, "warmup": 3,
                          "device": "cpu"},
              "batch": {"labeled_shape": [20, 1, 64, 64], "unlabeled_shape": [20, 1, 64, 64], "patch_size": [64, 64],
                        "network_params_m": 7.77},
              "summary": step_report.summarize(_fake_results())}
    md = step_report.format_step_markdown(report)
    assert "| `nnUNetTrainerACTIONpp`" in md and "+20.0%" in md and "+30.0%" in md and "**no**" in md
    assert "saacl 0.700" in md            # the time breakdown table
    assert "smoke" not in md
    # every table row has the header's number of cells
    for block in md.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.startswith("|")]
        if lines:
            assert len({ln.count("|") for ln in lines}) == 1


def test_interleaved_orders_and_entries():
    entries = ["a", "b", "c", "d"]
    orders = step.interleaved_orders(entries, 4)
    assert orders[0] == entries and orders[1] == entries[::-1]
    assert all(sorted(o) == entries for o in orders)
    assert step_trainers.parse_entry("nnUNetTrainerACTION@local") == ("nnUNetTrainerACTION", "local")
    assert step_trainers.parse_entry("nnUNetTrainer") == ("nnUNetTrainer", None)
    with pytest.raises(SystemExit):
        step_trainers.parse_entry("nnUNetTrainerACTION@warmup")


def test_breakdown_of_derives_backward():
    sections = [{"prepare_step": 1.0, "teacher_forward": 0.3, "student_forward": 0.5, "compute_losses": 0.4,
                 "after_optimizer_step": 0.1}] * 3
    b = step_worker.breakdown_of(sections, [2.5, 2.5, 2.5])
    assert b["backward_and_step"] == pytest.approx(1.0)
    assert b["aug_and_other_prepare"] == pytest.approx(0.2)
    stock = step_worker.breakdown_of([{"student_forward": 0.5, "compute_losses": 0.1}], [1.0])
    assert stock["backward_and_step"] == pytest.approx(0.4)


def test_cli_parses_benchmark_commands():
    from nnunet_semicl.cli import build_parser

    args = build_parser().parse_args(["benchmark", "step", "--smoke"])
    opts = step.resolve_options(args)
    assert opts["configuration"] == "2d_tiny" and opts["reps"] == 1 and opts["steps"] == 2
    assert opts["trainers"] == list(step_trainers.SMOKE_TRAINERS)
    full = step.resolve_options(build_parser().parse_args(["benchmark", "step", "--pretrain"]))
    defaults = list(step_trainers.DEFAULT_TRAINERS)
    assert full["configuration"] == "2d" and full["trainers"][: len(defaults)] == defaults
    assert set(step_trainers.PRETRAIN_ENTRIES) <= set(full["trainers"])
    acc = accuracy.resolve_options(build_parser().parse_args(["benchmark", "accuracy"]))
    assert acc["trainers"] == list(accuracy.DEFAULT_TRAINERS) and acc["settings"] == ["5pct"]
    assert acc["configuration"] == "2d_cpu"
    args = build_parser().parse_args(["benchmark", "samplers", "--smoke"])
    assert args.smoke and args.draws == 1000
    # docs are written only to a file named on the command line
    for name in ("step", "samplers", "accuracy"):
        assert build_parser().parse_args(["benchmark", name]).update_docs is None
        assert build_parser().parse_args(["benchmark", name, "--update-docs", "x.md"]).update_docs == "x.md"


def test_command_line_of_a_report(monkeypatch):
    monkeypatch.setattr("sys.argv", ["nnunet_semicl", "benchmark", "step", "--smoke"])
    assert common.command_line("step") == "nnunet_semicl benchmark step --smoke"
    monkeypatch.setattr("sys.argv", ["python -m nnunet_semicl.benchmarking.step", "--reps", "2"])
    assert common.command_line("step") == "nnunet_semicl benchmark step --reps 2"


def test_update_docs_if_asked_writes_only_the_named_file(tmp_path, capsys):
    common.update_docs_if_asked(None, "step", "table")
    assert not list(tmp_path.iterdir()) and capsys.readouterr().out == ""
    path = tmp_path / "perf.md"
    common.update_docs_if_asked(str(path), "step", "table")
    assert common.read_section(path.read_text(), "step") == "table" and str(path) in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# samplers
# ------------------------------------------------------------------------------------------------
def test_sampler_variance_on_tiny_mask():
    # a smooth statistic over a ring-shaped region of 2 images: stratification must reduce the variance
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    r = ((yy - 11.5) ** 2 + (xx - 11.5) ** 2).sqrt()
    mask = torch.stack([(r > 3) & (r < 11), (r > 5) & (r < 10)])
    h = torch.stack([yy + 0.5 * xx, 2.0 * xx]) / 24.0
    res = samplers.estimator_variance({"smooth": h, "const": torch.ones_like(h)}, mask, n=32, draws=300, seed=1)
    s = res["smooth"]
    assert s["candidates"] == int(mask.sum())
    assert s["truth"] == pytest.approx(float(h[mask].double().mean()))
    assert s["uniform"]["var_ratio"] == pytest.approx(1.0)
    assert s["sg"]["var_ratio"] < 0.6 and s["sag"]["var_ratio"] < 0.6
    for name in samplers.SAMPLERS:
        assert abs(s[name]["bias_z"]) < 4.0
        assert res["const"][name]["mean"] == pytest.approx(1.0)  # the weights sum to 1
    single = samplers.estimator_variance(h, mask, n=16, draws=20)
    assert set(single) >= {"truth", "uniform", "sg", "sag"}


def test_sampler_timing_and_markdown():
    rows = samplers.timing_benchmark(sizes=[400], draws=[8, 64], images=4, bank_sizes=[300], min_time=0.0,
                                     verbose=False)
    assert [(r["kind"], r["n"]) for r in rows] == [("2d", 8), ("2d", 64), ("bank", 64)]
    assert rows[0]["candidates"] == 400 and rows[0]["shape"] == [4, 10, 10]
    assert all(r[s]["median_ms"] > 0 for r in rows for s in samplers.SAMPLERS)
    images, labels, desc = samplers.phantom_slices(2, 32)
    var = samplers.variance_benchmark(images, labels, strides=[1, 4], n=16, draws=10, verbose=False)
    assert {r["stride"] for r in var} == {1, 4} and {r["statistic"] for r in var} == set(samplers.STATISTICS)
    report = {"machine": common.machine_info("cpu", 1), "command": "nnunet_semicl benchmark samplers",
              "options": {"images": 4, "draws": 10, "anchors": 16, "smoke": True}, "images": desc,
              "timing": rows, "variance": var}
    md = samplers.format_samplers_markdown(report)
    assert "bank 300 (1-D)" in md and "smoke run" in md and "Var SG / Var U" in md


# ------------------------------------------------------------------------------------------------
# accuracy
# ------------------------------------------------------------------------------------------------
def _plans():
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 512, 512],
                            "conv_op": "torch.nn.modules.conv.Conv2d", "kernel_sizes": [[3, 3]] * 6,
                            "strides": [[1, 1]] + [[2, 2]] * 5, "n_conv_per_stage": [2] * 6,
                            "n_conv_per_stage_decoder": [2] * 5},
            "_kw_requires_import": ["conv_op"]}
    return {"configurations": {"2d": {"data_identifier": "nnUNetPlans_2d", "batch_size": 56, "patch_size": [256, 224],
                                      "median_image_size_in_voxels": [256.0, 216.0], "spacing": [1.5, 1.5],
                                      "architecture": arch}}}


def _acc_args():
    from nnunet_semicl.cli import build_parser
    return build_parser().parse_args(["benchmark", "accuracy"])


def test_protocol_configuration_and_schedule():
    plans = _plans()
    opts = accuracy.resolve_options(_acc_args())
    assert opts["configuration"] == "2d_cpu" and opts["settings"] == ["5pct"] and opts["warm_epochs"] == 0
    cfg = accuracy.reduced_configuration(plans, opts)
    # the issue-11 protocol: inherited from 2d, same spacing and preprocessed data, 128 x 128, batch 8
    assert cfg["inherits_from"] == "2d" and "data_identifier" not in cfg and "spacing" not in cfg
    assert cfg["patch_size"] == [128, 128] and cfg["batch_size"] == 8
    kw = cfg["architecture"]["arch_kwargs"]
    assert kw["n_stages"] == 5 and kw["features_per_stage"] == [16, 32, 64, 128, 256]
    assert kw["strides"] == [[1, 1]] + [[2, 2]] * 4 and kw["kernel_sizes"] == [[3, 3]] * 5
    assert kw["n_conv_per_stage"] == [2] * 5 and kw["n_conv_per_stage_decoder"] == [2] * 4
    assert accuracy_runs.schedule_overrides(opts) == {"num_epochs": 36, "num_iterations_per_epoch": 50,
                                                 "num_val_iterations_per_epoch": 10, "save_every": 5}
    assert [accuracy_runs.setting_copy("5pct", run=r) for r in (1, 2, 3)] == ["5pct", "5pct_run2", "5pct_run3"]


def test_reduced_resolution_configuration():
    from nnunet_semicl.cli import build_parser
    plans = _plans()
    opts = accuracy.resolve_options(build_parser().parse_args(["benchmark", "accuracy", "--spacing", "3",
                                                               "--max-features", "128"]))
    cfg = accuracy.reduced_configuration(plans, opts)
    assert cfg["inherits_from"] == "2d" and cfg["data_identifier"] == "nnUNetPlans_2d_3mm"
    assert cfg["spacing"] == [3.0, 3.0] and cfg["batch_size"] == 8
    assert cfg["patch_size"] == [128, 112]          # 128 x 108 at 3 mm, rounded up to the stride 16
    kw = cfg["architecture"]["arch_kwargs"]
    assert kw["n_stages"] == 5 and kw["features_per_stage"] == [16, 32, 64, 128, 128]
    assert plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["n_stages"] == 6  # parent untouched


def test_runs_are_averaged():
    rows = [{"RV": 0.5, "MLV": 0.6, "LVC": 0.7, "mean": 0.6, "s_per_it": 1.0, "wall_s": 100.0},
            {"RV": 0.7, "MLV": 0.6, "LVC": 0.9, "mean": 0.8, "s_per_it": None, "wall_s": 300.0}]
    avg = accuracy_table.average_runs(rows)
    assert avg["RV"] == pytest.approx(0.6) and avg["mean"] == pytest.approx(0.7) and avg["s_per_it"] == 1.0
    assert avg["wall_s"] == 200.0 and avg["runs"] == rows


def test_read_summary_and_accuracy_markdown(tmp_path):
    summary = {"mean": {"1": {"Dice": 0.5}, "2": {"Dice": 0.6}, "3": {"Dice": 0.7}},
               "foreground_mean": {"Dice": 0.6}, "metric_per_case": [{}] * 20}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    row = accuracy_table.read_summary(str(path))
    assert row == {"RV": 0.5, "MLV": 0.6, "LVC": 0.7, "mean": 0.6, "n_cases": 20, "per_case": {}}
    report = {"machine": common.machine_info("cpu", 2), "command": "nnunet_semicl benchmark accuracy",
              "options": {"settings": ["5pct", "10pct"], "configuration": "2d_3mm", "epochs": 12, "iterations": 20,
                          "val_iterations": 2, "smoke": False, "warm_epochs": 40, "warm_iterations": 25},
              "configuration": {"patch_size": [128, 112], "batch_size": 8, "spacing": [3.0, 3.0]},
              "architecture": [16, 32, 64, 128, 128], "wall_s": 3600.0,
              "results": {accuracy_runs.WARM_ROW: {"5pct": dict(row, wall_s=500.0)},
                          "nnUNetTrainerLabeledOnly": {"5pct": dict(row, wall_s=120.0, s_per_it=0.45)},
                          "nnUNetTrainerACTIONpp": {"5pct": dict(row, wall_s=300.0, runs=[{"mean": 0.61}, {"mean": 0.59}]),
                                                    "10pct": dict(row, mean=0.8, wall_s=330.0)}}}
    md = accuracy_table.format_accuracy_markdown(report)
    assert "| 5pct (3 pat.) RV |" in md.replace("  ", " ") or "5pct (3 pat.) RV" in md
    assert "`nnUNetTrainerACTIONpp`" in md and "0.800" in md and "5.0 / 5.5" in md and "2.0 / -" in md
    assert "| warm start (`nnUNetTrainerLabeledOnly`)" in md and "40 x 25 iterations" in md
    assert "0.610, 0.590" in md and "0.45 / -" in md   # each run's mean; seconds per iteration
    warm = accuracy_runs.schedule_overrides(dict(accuracy.resolve_options(_acc_args()), lr=0.02), warm=True)
    assert warm["num_epochs"] == accuracy.DEFAULT_WARM_EPOCHS and "initial_lr" not in warm
    assert warm["num_iterations_per_epoch"] == accuracy.DEFAULT_WARM_ITERATIONS


def _acc_opts(*options):
    from nnunet_semicl.cli import build_parser
    return accuracy.resolve_options(build_parser().parse_args(["benchmark", "accuracy", *options]))


def test_seeds_option(monkeypatch):
    from nnunet_semicl.errors import InputError

    monkeypatch.delenv("NNUNET_SEMICL_SEED", raising=False)
    opts = _acc_opts("--seeds", "1", "2")
    assert opts["seeds"] == [1, 2] and opts["inherited_seed"] is None and opts["variants"] == {}
    assert _acc_opts()["seeds"] is None
    with pytest.raises(InputError, match="1 given more than once"):
        _acc_opts("--seeds", "1", "2", "1")
    with pytest.raises(InputError, match="--seeds and --runs"):
        _acc_opts("--seeds", "1", "--runs", "2")
    with pytest.raises(InputError, match="leave out --warm-epochs"):
        _acc_opts("--seeds", "1", "--warm-epochs", "3")
    with pytest.raises(SystemExit) as e:   # argparse: not a seed
        _acc_opts("--seeds", "-1")
    assert e.value.code == 2
    monkeypatch.setenv("NNUNET_SEMICL_SEED", "7")   # the by-hand way: every run seeded by the environment
    assert _acc_opts()["inherited_seed"] == 7 and _acc_opts("--seeds", "3")["inherited_seed"] is None
    monkeypatch.setenv("NNUNET_SEMICL_SEED", "x")
    with pytest.raises(InputError, match="NNUNET_SEMICL_SEED=x"):
        _acc_opts()


def test_variant_option_is_checked_before_anything_trains(tmp_path):
    from nnunet_semicl.errors import InputError

    opts = _acc_opts("--trainers", "nnUNetTrainerACTIONpp",
                     "--variant", "noDistill:nnUNetTrainerACTIONpp:relational_in_finetune=false",
                     "--variant", "strict:nnUNetTrainerPseudoLabel:confidence_threshold=1,unsup_warmup=false")
    assert opts["variants"] == {
        "noDistill": {"trainer": "nnUNetTrainerACTIONpp", "overrides": {"relational_in_finetune": False}},
        "strict": {"trainer": "nnUNetTrainerPseudoLabel", "overrides": {"confidence_threshold": 1.0,
                                                                        "unsup_warmup": False}}}
    # a list value keeps its commas
    assert accuracy_runs.VARIANT_ITEM_SEPARATOR.split("a=[0.8, 1.2],b=1") == ["a=[0.8, 1.2]", "b=1"]
    refused = {
        "noDistill:nnUNetTrainerACTIONpp:relational_in_finetun=false": "unknown trainer setting",
        "x:nnUNetTrainerNope:confidence_threshold=0.9": "nnUNetTrainerNope is not one of this package's trainers",
        "x:nnUNetTrainerPseudoLabel:confidence_threshold=2": "confidence_threshold must be a number between 0 and 1",
        "x:nnUNetTrainerPseudoLabel:num_epochs=5": "belongs to the benchmark's schedule",
        "x:nnUNetTrainerPseudoLabel:confidence_threshold=0.9,confidence_threshold=0.8": "given twice",
        "x:nnUNetTrainerPseudoLabel": "expected NAME:TRAINER:KEY=VALUE",
        "x:nnUNetTrainerPseudoLabel:confidence_threshold": "expected KEY=VALUE",
        "no_distill:nnUNetTrainerACTIONpp:relational_in_finetune=false": "a letter followed by letters and digits",
        "nnUNetTrainerACTIONpp:nnUNetTrainerACTIONpp:relational_in_finetune=false": "exists already",
        "s2:nnUNetTrainerACTIONpp:relational_in_finetune=false": "would name the setting copy of a seed",
        "run2:nnUNetTrainerACTIONpp:relational_in_finetune=false": "would name the setting copy of a seed",
    }
    for text, message in refused.items():
        with pytest.raises(InputError, match=message):
            _acc_opts("--trainers", "nnUNetTrainerACTIONpp", "--variant", text)
    # --trainers without a name: only the variants train; with neither, a clear refusal
    only = _acc_opts("--trainers", "--variant", "noDistill:nnUNetTrainerACTIONpp:relational_in_finetune=false")
    assert only["trainers"] == [] and list(only["variants"]) == ["noDistill"]
    with pytest.raises(InputError, match="trains only the --variant rows"):
        _acc_opts("--trainers")
    with pytest.raises(InputError, match="the row a exists already"):
        _acc_opts("--variant", "a:nnUNetTrainerPseudoLabel:unsup_warmup=false",
                  "--variant", "a:nnUNetTrainerPseudoLabel:unsup_warmup=true")
    # the command exits 2 with the message before it creates its work folder
    from nnunet_semicl.cli import build_parser
    work = tmp_path / "work"
    args = build_parser().parse_args(["benchmark", "accuracy", "-i", str(tmp_path), "--workdir", str(work),
                                      "--variant", "x:nnUNetTrainerPseudoLabel:nope=1"])
    with pytest.raises(SystemExit) as e:
        accuracy.run(args)
    assert e.value.code == 2 and not work.exists()


def test_plan_of_runs(monkeypatch):
    monkeypatch.delenv("NNUNET_SEMICL_SEED", raising=False)
    schedule = accuracy_runs.schedule_overrides(_acc_opts())
    opts = _acc_opts("--trainers", "nnUNetTrainerLabeledOnly", "nnUNetTrainerACTIONpp", "--seeds", "1", "2")
    opts["variants"] = {"noDistill": {"trainer": "nnUNetTrainerACTIONpp",
                                      "overrides": {"relational_in_finetune": False}}}   # as parse_variants gives
    plan = [(r.row, r.trainer, r.plans_setting, r.seed, r.pair_key) for r in accuracy_runs.plan_runs(opts)]
    assert plan == [("nnUNetTrainerLabeledOnly", "nnUNetTrainerLabeledOnly", "5pct_s1", 1, "s1"),
                    ("nnUNetTrainerACTIONpp", "nnUNetTrainerACTIONpp", "5pct_s1", 1, "s1"),
                    ("noDistill", "nnUNetTrainerACTIONpp", "5pct_noDistill_s1", 1, "s1"),
                    ("nnUNetTrainerLabeledOnly", "nnUNetTrainerLabeledOnly", "5pct_s2", 2, "s2"),
                    ("nnUNetTrainerACTIONpp", "nnUNetTrainerACTIONpp", "5pct_s2", 2, "s2"),
                    ("noDistill", "nnUNetTrainerACTIONpp", "5pct_noDistill_s2", 2, "s2")]
    runs = accuracy_runs.plan_runs(opts)
    assert runs[0].trainer_block == schedule and runs[2].trainer_block == dict(schedule, relational_in_finetune=False)
    assert runs[2].purpose == "variant noDistill (nnUNetTrainerACTIONpp), repetition s1"
    opts.update(seeds=None, runs=2)   # a variant without seeds: its own copy, and a run-2 copy of it
    assert [r.plans_setting for r in accuracy_runs.plan_runs(opts)][2::3] == ["5pct_noDistill", "5pct_noDistill_run2"]
    # --runs: unseeded copies as before; an inherited NNUNET_SEMICL_SEED seeds (and is recorded) without renaming
    opts = _acc_opts("--trainers", "nnUNetTrainerLabeledOnly", "--runs", "2", "--settings", "5pct", "10pct")
    assert [(r.plans_setting, r.seed, r.pair_key) for r in accuracy_runs.plan_runs(opts)] == [
        ("5pct", None, "run1"), ("5pct_run2", None, "run2"), ("10pct", None, "run1"), ("10pct_run2", None, "run2")]
    monkeypatch.setenv("NNUNET_SEMICL_SEED", "5")
    inherited = accuracy_runs.plan_runs(_acc_opts("--trainers", "nnUNetTrainerLabeledOnly"))
    assert [(r.plans_setting, r.seed) for r in inherited] == [("5pct", 5)]
    monkeypatch.delenv("NNUNET_SEMICL_SEED")
    warm = accuracy_runs.plan_runs(_acc_opts("--trainers", "nnUNetTrainerLabeledOnly", "--warm-epochs", "2"))
    assert [(r.row, r.plans_setting, r.purpose) for r in warm][0] == (accuracy_runs.WARM_ROW, "5pct_warm",
                                                                      "the supervised warm start")
    assert warm[0].trainer_block["num_epochs"] == 2 and warm[1].plans_setting == "5pct"


def test_a_results_folder_is_reused_only_with_its_seed_and_trainer_block():
    block = {"num_epochs": 36}
    assert accuracy.reuse_problem(block, {"seed": 1, "pretrained": None}, block, None, 1) is None
    assert accuracy.reuse_problem(block, {}, block, None, 1) is None   # a record of an earlier version
    assert "NNUNET_SEMICL_SEED=1, not 2" in accuracy.reuse_problem(block, {"seed": 1}, block, None, 2)
    assert "NNUNET_SEMICL_SEED=None, not 2" in accuracy.reuse_problem(block, {"seed": None}, block, None, 2)
    assert "trainer block" in accuracy.reuse_problem(block, {"seed": 1}, dict(block, unsup_warmup=False), None, 1)


def test_a_run_gets_its_seed_and_records_it(tmp_path, monkeypatch):
    """train_one with nnUNetv2_train replaced: the seed reaches the training's environment, is recorded before
    training starts, and a folder trained with another seed is refused."""
    dirs = {"nnUNet_results": str(tmp_path)}
    opts = {"configuration": "2d_cpu", "device": "cpu"}
    block = {"num_epochs": 1, "num_iterations_per_epoch": 2}
    model = tmp_path / accuracy.DATASETS["acdc"].dataset / "nnUNetTrainerLabeledOnly__nnUNetPlans_5pct_s3__2d_cpu"
    seen = {}

    def fake_training(args, env, *a, **kw):
        seen["seed"], seen["args"] = env.get("NNUNET_SEMICL_SEED"), args
        seen["record"] = json.loads((model / "fold_0" / "semicl_benchmark_run.json").read_text())
        (model / "plans.json").write_text(json.dumps({"semicl": {"trainer": block}}))
        _write_summary(model / "fold_0" / "validation" / "summary.json", [0.5, 0.7])

    monkeypatch.setattr(accuracy, "run_command", fake_training)
    row = accuracy.train_one(dirs, opts, "nnUNetTrainerLabeledOnly", "5pct_s3", str(tmp_path / "log"), False, block,
                             seed=3)
    assert seen["seed"] == "3" and seen["record"]["seed"] == 3 and "nnUNetPlans_5pct_s3" in seen["args"]
    assert row["seed"] == 3 and row["mean"] == pytest.approx(0.6) and len(row["per_case"]) == 2
    assert accuracy.train_one(dirs, opts, "nnUNetTrainerLabeledOnly", "5pct_s3", "", False, block,
                              seed=3)["status"] == "done before"
    with pytest.raises(SystemExit, match="NNUNET_SEMICL_SEED=3, not 4"):
        accuracy.train_one(dirs, opts, "nnUNetTrainerLabeledOnly", "5pct_s3", "", False, block, seed=4)


def _write_summary(path, case_dices):
    """A validation/summary.json as nnU-Net writes it, every class of a case at the given Dice."""
    cases = [{"reference_file": f"/gt/patient{i:03d}_frame01.nii.gz", "prediction_file": f"/p/{i}.nii.gz",
              "metrics": {k: {"Dice": d} for k, _ in accuracy_table.CLASSES}} for i, d in enumerate(case_dices)]
    mean = sum(case_dices) / len(case_dices)
    path.parent.mkdir(parents=True, exist_ok=True)
    per_class = {k: {"Dice": mean} for k, _ in accuracy_table.CLASSES}
    path.write_text(json.dumps({"metric_per_case": cases, "mean": per_class, "foreground_mean": {"Dice": mean}}))
    return str(path)


def test_paired_statistics_on_summary_files(tmp_path):
    dices = {  # (row, seed): the 3 validation cases' Dice
        ("nnUNetTrainerLabeledOnly", 1): [0.6, 0.7, 0.8], ("nnUNetTrainerLabeledOnly", 2): [0.5, 0.6, 0.7],
        ("nnUNetTrainerPseudoLabel", 1): [0.7, 0.8, 0.8], ("nnUNetTrainerPseudoLabel", 2): [0.6, 0.6, 0.8],
        ("noDistill", 1): [0.7, 0.7, 0.9], ("noDistill", 2): [0.6, 0.8, 0.6],
        ("unpaired", 3): [0.9, 0.9, 0.9]}
    per_run = {}
    for (row, seed), d in dices.items():
        run = accuracy_table.read_summary(_write_summary(tmp_path / row / f"s{seed}" / "summary.json", d))
        run.update(seed=seed, pair_key=f"s{seed}", wall_s=60.0)
        per_run.setdefault(row, []).append(run)
    results = {row: {"5pct": accuracy_table.average_runs(runs)} for row, runs in per_run.items()}
    accuracy_table.add_paired_differences(results)
    # noDistill - LabeledOnly, by hand: per-case differences 0.1, 0.0, 0.1 (s1) and 0.1, 0.2, -0.1 (s2)
    diffs = [0.1, 0.0, 0.1, 0.1, 0.2, -0.1]
    m = sum(diffs) / 6
    se = math.sqrt(sum((d - m) ** 2 for d in diffs) / 5 / 6)
    p = results["noDistill"]["5pct"]["paired"]["nnUNetTrainerLabeledOnly"]
    assert p["per_seed"] == pytest.approx({"s1": 0.2 / 3, "s2": 0.2 / 3}) and p["mean"] == pytest.approx(0.2 / 3)
    assert p["se"] == pytest.approx(se) and se == pytest.approx(0.042164, abs=1e-6)
    assert p["n"] == 6 and p["better"] == 4
    # noDistill - PseudoLabel: 0.0, -0.1, 0.1 and 0.0, 0.2, -0.2 -> per seed 0, 0; 2 of 6 better
    q = results["noDistill"]["5pct"]["paired"]["nnUNetTrainerPseudoLabel"]
    assert q["per_seed"] == pytest.approx({"s1": 0.0, "s2": 0.0}, abs=1e-12) and q["better"] == 2
    assert q["se"] == pytest.approx(math.sqrt(0.1 / 5 / 6))
    assert results["unpaired"]["5pct"]["paired"] == {"nnUNetTrainerLabeledOnly": None,
                                                     "nnUNetTrainerPseudoLabel": None}   # other seeds
    assert "nnUNetTrainerLabeledOnly" not in results["nnUNetTrainerLabeledOnly"]["5pct"]["paired"]
    assert results["noDistill"]["5pct"]["mean"] == pytest.approx((0.7667 + 0.6667) / 2, abs=1e-4)
    # a class nnU-Net scores NaN (absent from reference and prediction) is left out of the case's mean
    nan_case = {"metrics": {"1": {"Dice": 0.5}, "2": {"Dice": 0.7}, "3": {"Dice": float("nan")}}}
    assert accuracy_table.case_foreground_dice(nan_case) == pytest.approx(0.6)
    assert accuracy_table.case_foreground_dice({}) is None
    results["noDistill"]["5pct"]["runs"][0]["unsupervised_terms_ran"] = False
    report = {"machine": common.machine_info("cpu", 2), "command": "nnunet_semicl benchmark accuracy --seeds 1 2",
              "options": {"settings": ["5pct"], "configuration": "2d_cpu", "epochs": 36, "iterations": 50,
                          "val_iterations": 10, "smoke": False, "warm_epochs": 0, "seeds": [1, 2],
                          "variants": {"noDistill": {"trainer": "nnUNetTrainerACTIONpp",
                                                     "overrides": {"relational_in_finetune": False}}}},
              "configuration": {"patch_size": [128, 128], "batch_size": 8, "spacing": [1.5, 1.5]},
              "architecture": [16, 32, 64, 128, 256], "wall_s": 600.0, "results": results}
    md = accuracy_table.format_accuracy_markdown(report)
    assert "Δ LabeledOnly" in md and "Δ PseudoLabel" in md and "sqrt(n)" in md and "Seeds: 1, 2" in md
    assert "+0.067 ± 0.042 (4/6 better; s1 +0.067, s2 +0.067)" in md
    assert "`noDistill` (`nnUNetTrainerACTIONpp`, relational_in_finetune=false)" in md
    assert "s1 0.767, s2 0.667" in md and "1 run(s) whose unsupervised terms never ran" in md
    unpaired = next(line for line in md.splitlines() if line.startswith("| `unpaired`"))
    assert [c.strip() for c in unpaired.split("|")[-5:-1]] == ["-", "-", "-", "1.0"]   # no pairing; s/it; train min


def test_run_command_streams_logs_and_exits_with_the_tail(tmp_path, capsys):
    import os
    import sys

    from nnunet_semicl.launch import run_command

    log = tmp_path / "cmd.log"
    code = "import sys; print('keep me'); print('drop me'); sys.exit(0)"
    run_command([sys.executable, "-c", code], dict(os.environ), str(log), echo=False, show=lambda l: "keep" in l,
                indent="  ")
    out = capsys.readouterr().out
    assert out == "  keep me\n" and log.read_text() == "keep me\ndrop me\n"
    with pytest.raises(SystemExit, match=r"Command failed \(3\).*boom"):
        run_command([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], dict(os.environ), echo=False)


def test_save_json_writes_numpy_values_and_folders(tmp_path):
    import numpy as np

    from nnunet_semicl.files import load_json, save_json

    path = tmp_path / "new" / "x.json"
    save_json({"a": np.float32(1.5), "b": np.arange(3), "c": np.int64(2)}, str(path))
    assert load_json(str(path)) == {"a": 1.5, "b": [0, 1, 2], "c": 2}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        save_json({"a": object()}, str(tmp_path / "y.json"))


def test_training_progress_keeps_epochs_and_errors_only():
    from nnunet_semicl.launch import training_progress

    assert training_progress("2026-01-01 Epoch 3\n") and training_progress("Traceback (most recent call last):")
    assert training_progress("Mean Validation Dice:  0.8") and not training_progress("Using torch.compile...")


def test_nnunet_env_applies_the_cpu_training_settings_only_to_cpu_training():
    from nnunet_semicl.launch import CPU_MALLOC_ENV, nnunet_env

    user = {"PATH": "/bin", "MALLOC_TRIM_THRESHOLD_": "0", "nnUNet_n_proc_DA": "6", "nnUNet_def_n_proc": "3",
            "nnUNet_compile": "t"}
    dirs = {"nnUNet_raw": "/w/raw"}
    cpu = nnunet_env("cpu", training=True, dirs=dirs, base=user)
    # the CPU training settings; the user's malloc value and the other variables are kept
    assert cpu["nnUNet_n_proc_DA"] == "0" and cpu["nnUNet_compile"] == "f"
    assert cpu["MALLOC_TRIM_THRESHOLD_"] == "0"
    assert cpu["MALLOC_MMAP_THRESHOLD_"] == CPU_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]
    assert cpu["PATH"] == "/bin" and cpu["nnUNet_def_n_proc"] == "3" and cpu["nnUNet_raw"] == "/w/raw"
    assert cpu["OMP_WAIT_POLICY"] == "PASSIVE" and cpu["PYTHONUNBUFFERED"] == "1"
    # CUDA training and CPU planning: none of them; no inherited nnUNet_n_proc_DA (planning crashes with 0)
    for env in (nnunet_env("cuda", training=True, base=user), nnunet_env("cpu", training=False, base=user)):
        assert "MALLOC_MMAP_THRESHOLD_" not in env
        assert env["nnUNet_compile"] == "t" and "nnUNet_n_proc_DA" not in env
    assert nnunet_env("cpu", training=False, base={})["nnUNet_def_n_proc"] == "2"
    # a command's overrides come last
    assert nnunet_env("cpu", True, base=user, overrides={"nnUNet_compile": "t"})["nnUNet_compile"] == "t"
    assert user["nnUNet_n_proc_DA"] == "6"  # the caller's mapping is not changed


def test_sampler_comparison_with_an_official_copy(tmp_path):
    """The side-by-side table imports the official helpers from a path at run time (a stand-in here)."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "loss_helper.py").write_text(
        "import torch\n"
        "def grid_monte_carlo_sample(high=5233, shape=256, cut_count=4):\n"
        "    return torch.randint(high, (shape,))\n"
        "def grid_as_monte_carlo_sample(high=5233, shape=256, cut_count=4):\n"
        "    return torch.randint(high, (shape,))\n")
    cases = ((8, 400, "anchors"), (64, 300, "bank"))
    rows = samplers.comparison_benchmark(str(tmp_path), cases, images=4, min_time=0.0, min_reps=2, verbose=False)
    keys = {"uniform", "official_sg", "official_sag"} | {k for k, _, _ in samplers.OURS}
    assert all(keys <= set(r) and all(r[k]["median_ms"] > 0 and r[k]["reps"] == 2 for k in keys) for r in rows)
    md = samplers.format_comparison_markdown(rows)
    assert "official / slower of ours" in md and "64 negatives" in md
    ours_only = samplers.comparison_benchmark(None, cases[:1], images=4, min_time=0.0, min_reps=1, verbose=False)
    assert "official_sg" not in ours_only[0]
    assert "| -" in samplers.format_comparison_markdown(ours_only)
    with pytest.raises(SystemExit):
        samplers.load_official(str(tmp_path / "missing"))
