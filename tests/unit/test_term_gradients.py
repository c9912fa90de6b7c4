"""``benchmark gradients``' measurement on tensors: each term's gradient norm per parameter group."""
import math

import pytest
import torch

from nnunet_semicl.benchmarking.gradients import format_gradient_table, mean_over_batches, term_gradient_norms


def test_norm_of_each_term_per_group_with_known_values():
    a = torch.nn.Parameter(torch.ones(4))
    b = torch.nn.Parameter(torch.full((9,), 2.0))
    frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    terms = {"linear_a": 3.0 * a.sum(),                        # d/da = 3 everywhere: 3 * sqrt(4)
             "square_b": (b ** 2).sum() + 0.0 * frozen.sum(),   # d/db = 2b = 4: 4 * sqrt(9)
             "both": a.sum() * b.sum(),                         # d/da = sum(b) = 18, d/db = sum(a) = 4
             "constant": torch.tensor(1.5)}                     # no graph: 0 everywhere
    norms = term_gradient_norms(terms, {"A": [a], "B": [b, frozen]})
    assert norms["linear_a"] == pytest.approx({"A": 6.0, "B": 0.0})
    assert norms["square_b"] == pytest.approx({"A": 0.0, "B": 12.0})
    assert norms["both"] == pytest.approx({"A": 18.0 * 2, "B": 4.0 * 3})
    assert norms["constant"] == {"A": 0.0, "B": 0.0}
    assert a.grad is None and b.grad is None   # measured without touching .grad (no optimizer state changes)


def test_the_graph_is_kept_for_later_terms_of_one_forward():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    h = (w * 3).tanh()                         # shared by both terms
    norms = term_gradient_norms({"first": h.sum(), "second": (h ** 2).sum()}, {"w": [w]})
    d = 3 * (1 - torch.tanh(torch.tensor([3.0, -6.0])) ** 2)
    assert norms["first"]["w"] == pytest.approx(float(d.norm()), rel=1e-5)   # float32 tanh
    h_ref = torch.tanh(torch.tensor([3.0, -6.0]))
    assert norms["second"]["w"] == pytest.approx(float((2 * h_ref * d).norm()), rel=1e-5)


def test_mean_over_batches_and_table_ratio_to_the_pseudo_label_term():
    rows = [{"unsup": {"encoder": 1.0, "decoder": 0.0, "heads": 0.0}, "global": {"encoder": 6.0, "decoder": 0.0,
                                                                               "heads": 1.0}},
            {"unsup": {"encoder": 3.0, "decoder": 0.0, "heads": 0.0}}]   # a batch without the global term
    mean = mean_over_batches(rows)
    assert mean["unsup"]["encoder"] == 2.0 and mean["global"]["encoder"] == 6.0
    for t in mean.values():
        t["loss"] = 0.5
    table = format_gradient_table({0.5: {"step": 10, "scale": 1.0, "terms": mean}})
    line = [l for l in table.splitlines() if "| global |" in l][0]
    assert line.rstrip().endswith("| 3.00 |") and "| 6.0000 |" in line   # network norm 6 against unsup's 2
    assert math.isclose(float([l for l in table.splitlines() if "| unsup |" in l][0].split("|")[-2]), 1.0)


def test_command_line_refuses_points_outside_the_run_and_bad_counts():
    from nnunet_semicl.cli import build_parser

    parser = build_parser()
    base = ["benchmark", "gradients", "-d", "27", "-c", "2d", "-tr", "nnUNetTrainerACTIONpp"]
    args = parser.parse_args(base + ["--at", "0", "1", "0.5"])
    assert args.at == [0.0, 1.0, 0.5] and args.batches == 4
    for bad in (["--at", "1.5"], ["--at", "-0.1"], ["--at", "nan"], ["--batches", "0"], ["--seed", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(base + bad)


def test_refusals_name_the_missing_checkpoint_and_a_gate_that_never_opened(tmp_path, monkeypatch):
    from nnunet_semicl.benchmarking import gradients
    from nnunet_semicl.cli import build_parser
    from nnunet_semicl.errors import InputError

    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / var / "Dataset027_ACDC").mkdir(parents=True)
        monkeypatch.setenv(var, str(tmp_path / var))
    args = build_parser().parse_args(["benchmark", "gradients", "-d", "27", "-c", "2d", "-tr", "nnUNetTrainerACTIONpp"])
    with pytest.raises(InputError, match=r"nnUNetTrainerACTIONpp__nnUNetPlans__2d/fold_0/checkpoint_final.pth "
                                         r"does not exist: train first"):
        gradients._build(args)

    class NeverOpened:   # a run whose warm-up gate never opened
        def unsup_start_step(self):
            return None

    with pytest.raises(InputError, match="gate never opened"):
        gradients.measure(NeverOpened(), [0.5], 1)
