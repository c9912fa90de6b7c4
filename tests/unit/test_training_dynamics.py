"""The shared training dynamics on tensors: warm-up rule, ramp-up, and the class-collapse guard."""
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_semicl.losses.pseudo_label_losses import pseudo_labels
from nnunet_semicl.modules.distribution_alignment import DistributionAlignment, class_mean, label_shares
from nnunet_semicl.schedules import classes_below, ramped_weight, recent_class_dice, warmup_complete


def test_ramped_weight_is_zero_before_the_start_then_sigmoid_from_it():
    assert ramped_weight(500, None, 100) == 0.0            # still warming up
    assert ramped_weight(99, 100, 200) == 0.0              # before the term turns on
    assert ramped_weight(100, 100, 200) == pytest.approx(math.exp(-5.0))
    assert ramped_weight(200, 100, 200) == pytest.approx(math.exp(-5.0 * 0.25))
    assert ramped_weight(300, 100, 200) == 1.0
    assert ramped_weight(10_000, 100, 200) == 1.0
    assert ramped_weight(100, 100, 0) == 1.0                # no ramp: full weight at once


def test_warmup_rule():
    ok = [[0.6, 0.7, 0.9], [0.55, 0.8, 0.9]]
    assert warmup_complete(200, 180, ok, 0.5, 2)
    assert not warmup_complete(100, 180, ok, 0.5, 2)                         # too early
    assert classes_below([0.0, 0.1, 0.05, 0.5], 0.1) == [1, 3]               # 1-based
    assert not warmup_complete(200, 180, [[0.6, 0.7, 0.9], [0.45, 0.8, 0.9]], 0.5, 2)  # one class below once
    assert not warmup_complete(200, 180, [[0.6, float("nan"), 0.9]] * 3, 0.5, 2)  # no evidence for class 2 yet
    assert not warmup_complete(200, 180, [], 0.5, 2)                          # no validation yet
    assert not warmup_complete(200, 180, [[]], 0.5, 2)


def test_nan_online_dice_is_no_evidence_not_below():
    """nnU-Net's online Dice is NaN for a class absent from an epoch's validation patches: that epoch says nothing
    about the class (issue 27 item 5); the rule looks further back for it, and the floor does not count it."""
    nan = float("nan")
    history = [[0.55, 0.6, 0.9], [0.7, nan, 0.9], [0.6, 0.65, 0.8], [0.6, nan, 0.85]]
    assert recent_class_dice(history, 2) == [[0.6, 0.6], [0.6, 0.65], [0.8, 0.85]]
    assert warmup_complete(200, 180, history, 0.5, 2)                # was refused: NaN counted as "below"
    assert classes_below([0.3, nan, 0.05], 0.1) == [3]               # NaN is not below the floor
    # at the limit, a class absent from every online validation does not hold the gate for ever
    t = _gate_trainer(dice=[[0.6, nan, 0.9]] * 3, step=50)
    t.update_warmup_gate()
    assert t.unsup_gate_step == 50 and "absent from every online validation" in t.lines[-1]


def test_a_run_whose_gate_never_opened_says_so():
    """The final log line, the checkpoint and the results-folder summary say when no unsupervised term ran."""
    t = _gate_trainer("nnUNetTrainerACTIONpp", dice=[[0.0, 0.6, 0.6]] * 2, step=50)
    t.update_warmup_gate()                                           # class 1 never found: the gate holds
    t.global_step = 100
    assert t.unsup_gate_step is None and not t.unsupervised_terms_ran()
    summary = t.training_summary()
    assert summary["unsupervised_terms_ran"] is False and summary["unsup_gate_step"] is None
    assert "never turned on" in summary["message"] and "nnUNetTrainerLabeledOnly" in summary["message"]
    assert "nnUNetTrainerACTIONpp" in summary["message"]
    t.unsup_gate_step = 60
    assert t.unsupervised_terms_ran() and t.training_summary()["message"].startswith("Unsupervised terms ran from")


BOOST = {"statistic": "argmax", "boost_only": True}   # the argmax / boost-only form of the guard


def _collapsing_teacher(n=4096):
    """Teacher whose class 2 is everywhere second to class 1: argmax never gives class 2."""
    probs = torch.zeros(1, 3, n)
    probs[0, 0, : n // 2] = 0.9
    probs[0, 1, : n // 2] = 0.06
    probs[0, 2, : n // 2] = 0.04
    probs[0, 0, n // 2:] = 0.02
    probs[0, 1, n // 2:] = 0.55
    probs[0, 2, n // 2:] = 0.43
    return probs


def test_vanished_class_regains_its_pseudo_label_share():
    probs = _collapsing_teacher()
    labeled = torch.tensor([0.5, 0.25, 0.25])   # the labeled data has as much class 2 as class 1
    _, labels, _ = pseudo_labels(torch.log(probs))
    assert float(label_shares(labels, 3)[2]) == 0.0   # without the guard, class 2 has vanished
    da = DistributionAlignment(3, labeled, momentum=0.0, **BOOST)
    da.update(probs)
    aligned = da(probs)
    assert torch.allclose(aligned.sum(1), torch.ones(1, probs.shape[2]))
    shares = label_shares(aligned.argmax(1), 3)
    assert float(shares[2]) == pytest.approx(0.5, abs=1e-6)   # class 2 is back where the teacher gave it 0.43
    assert float(shares[0]) == pytest.approx(0.5, abs=1e-6)   # background untouched


def test_alignment_leaves_a_matching_teacher_unchanged_and_bounds_the_ratio():
    probs = torch.softmax(torch.randn(2, 4, 8, 8), 1)
    remix = dict(statistic="probability", boost_only=False)      # ReMixMatch's form
    da = DistributionAlignment(4, class_mean(probs).tolist(), momentum=0.0, **remix)
    da.update(probs)
    assert torch.allclose(da(probs), probs, atol=1e-5)
    da = DistributionAlignment(3, [0.1, 0.1, 0.8], momentum=0.0, max_ratio=2.0, **remix)
    da.update(torch.tensor([0.45, 0.45, 0.1]).view(1, 3, 1))
    assert torch.allclose(da.ratios(), torch.tensor([0.5, 0.5, 2.0]))
    boost = DistributionAlignment(3, [0.1, 0.1, 0.8], momentum=0.0, max_ratio=2.0, **BOOST)   # raise only
    boost.update(torch.tensor([0.45, 0.45, 0.1]).view(1, 3, 1))                     # argmax: class 0 only
    assert torch.allclose(boost.ratios(), torch.tensor([1.0, 2.0, 2.0]))


def test_default_alignment_never_lowers_a_confident_foreground_pixel():
    """A young teacher's soft probabilities over-state the foreground (boundaries) while its argmax matches
    the labeled shares: the default guard changes nothing, ReMixMatch's form pushes the rarest-confidence
    class below a 0.97 threshold (the failure seen on ACDC)."""
    probs = torch.zeros(1, 3, 100)
    probs[0, :, :85] = torch.tensor([0.9, 0.05, 0.05])[:, None]      # background, but fuzzy
    probs[0, :, 85:95] = torch.tensor([0.014, 0.972, 0.014])[:, None]  # confident class 1 (10 % of pixels)
    probs[0, :, 95:] = torch.tensor([0.02, 0.03, 0.95])[:, None]     # class 2 (5 %)
    target = [0.85, 0.10, 0.05]                                      # = the teacher's argmax shares
    default = DistributionAlignment(3, target, momentum=0.0, **BOOST)
    default.update(probs)
    assert torch.allclose(default(probs), probs)
    remix = DistributionAlignment(3, target, momentum=0.0, statistic="probability", boost_only=False)
    remix.update(probs)
    assert float(remix(probs)[0, 1, 90]) < 0.97 < float(probs[0, 1, 90])


def test_alignment_before_any_update_is_identity_and_running_mean_is_an_ema():
    probs = torch.softmax(torch.randn(1, 3, 5, 5), 1)
    da = DistributionAlignment(3, [0.2, 0.3, 0.5], momentum=0.5, **BOOST)
    assert torch.equal(da(probs), probs.float())
    da.update(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1))
    da.update(torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1))
    assert torch.allclose(da.running_mean, torch.tensor([0.5, 0.5, 0.0]))


def test_label_shares_skip_masked_and_ignore_labels():
    labels = torch.tensor([[0, 1, 1, 2, 9]])
    assert torch.allclose(label_shares(labels, 3), torch.tensor([0.25, 0.5, 0.25]))
    mask = torch.tensor([[True, True, False, False, True]])
    assert torch.allclose(label_shares(labels, 3, mask), torch.tensor([0.5, 0.5, 0.0]))
    assert torch.equal(label_shares(labels, 3, torch.zeros_like(mask)), torch.zeros(3))


@pytest.mark.parametrize("kwargs", [dict(num_classes=1), dict(num_classes=3, momentum=1.0),
                                    dict(num_classes=3, max_ratio=0.5), dict(num_classes=3, target=[1, 2]),
                                    dict(num_classes=3, statistic="median")])
def test_alignment_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        DistributionAlignment(**{**BOOST, **kwargs})


class _Logger:
    def __init__(self, dice):
        self.dice = dice

    def get_value(self, key, step):
        assert key == "dice_per_class_or_region" and step is None
        return self.dice


PHASED = {"global_phase_fraction": 0.25, "local_phase_fraction": 0.25, "relational_in_finetune": False}


def _gate_trainer(cls_name="nnUNetTrainerSemiSupervised", dice=(), step=0, epochs=10, iters=10, **settings):
    """Only the gate's arithmetic of a trainer (no nnU-Net state): logger, schedule, log lines; ``settings``:
    setting keys (``split --set``)."""
    import nnunet_semicl.training.action as action
    import nnunet_semicl.training.action_pp as action_pp
    import nnunet_semicl.training.semi_supervised as semi
    cls = getattr(semi, cls_name, None) or getattr(action, cls_name, None) or getattr(action_pp, cls_name)
    t = cls.__new__(cls)
    t.num_epochs, t.num_iterations_per_epoch = epochs, iters
    t.global_step, t.current_epoch = step, step // iters
    t.logger = _Logger([list(d) for d in dice])
    t.lines = []
    t.print_to_log_file = lambda *a, **k: t.lines.append(" ".join(map(str, a)))
    for k, v in settings.items():
        setattr(t, k, v)
    return t


def test_warmup_gate_opens_when_every_class_is_segmented_and_logs_it():
    t = _gate_trainer(dice=[[0.2, 0.1, 0.3], [0.6, 0.7, 0.8], [0.6, 0.55, 0.9]], step=30)
    t.update_warmup_gate()
    assert t.unsup_gate_step == 30 and "warm-up complete at iteration 30" in t.lines[0]
    assert t.unsup_scale() == pytest.approx(math.exp(-5.0))          # ramp starts at the gate
    t.global_step = 30 + 20
    assert t.unsup_scale() == 1.0 and t.uses_unlabeled_now()          # ramp = 0.2 x 100 iterations
    t.update_warmup_gate()                                            # opens once
    assert t.unsup_gate_step == 30 and len(t.lines) == 1


def test_warmup_gate_waits_for_a_missing_class_then_opens_at_its_limit_with_a_warning():
    t = _gate_trainer(dice=[[0.6, float("nan"), 0.9], [0.7, 0.3, 0.9]], step=30)
    t.update_warmup_gate()
    assert t.unsup_gate_step is None and t.unsup_scale() == 0.0 and not t.uses_unlabeled_now()
    t.global_step = 50                                                # warmup_max_fraction 0.5 of 100
    t.update_warmup_gate()
    assert t.unsup_gate_step == 50 and "WARNING" in t.lines[-1] and "class(es) [2]" in t.lines[-1]
    # a class that reached the threshold only in the last epoch is still named
    late = _gate_trainer(dice=[[0.6, 0.1, 0.9], [0.7, 0.8, 0.9]], step=50)
    late.update_warmup_gate()
    assert late.unsup_gate_step == 50 and "class(es) [2]" in late.lines[-1]


def test_warmup_gate_past_its_limit_waits_until_every_class_is_found():
    """A class still at Dice ~0 at the limit would be erased by its own pseudo-labels (the demo's collapse):
    the warm-up goes on, logged once, until every class reaches warmup_limit_floor; a floor of 0 (tests,
    very short runs) opens at the limit as before."""
    t = _gate_trainer(dice=[[0.0, 0.45, 0.0], [0.0, 0.44, 0.05]], step=50)
    t.update_warmup_gate()
    assert t.unsup_gate_step is None and t.unsup_scale() == 0.0
    assert "continues past its limit" in t.lines[-1] and "class(es) [1, 3] not found yet" in t.lines[-1]
    t.global_step = 60
    t.logger = _Logger([[0.0, 0.45, 0.0], [0.2, 0.5, 0.09]])           # class 3 still below 0.1
    t.update_warmup_gate()
    assert t.unsup_gate_step is None and len(t.lines) == 1            # the extension is logged once
    t.global_step = 70
    t.logger = _Logger([[0.2, 0.5, 0.09], [0.3, 0.6, 0.15]])          # every class found, below 0.5
    t.update_warmup_gate()
    assert t.unsup_gate_step == 70 and "ended by its limit" in t.lines[-1] and "class(es) [1, 3]" in t.lines[-1]
    z = _gate_trainer(dice=[[0.0, 0.45, 0.0]] * 2, step=50)
    z.warmup_limit_floor = 0.0
    z.update_warmup_gate()
    assert z.unsup_gate_step == 50


def test_warmup_gate_respects_the_minimum_and_phased_methods_start_at_fine_tuning():
    t = _gate_trainer(dice=[[0.9, 0.9, 0.9]] * 2, step=5)
    t.update_warmup_gate()
    assert t.unsup_gate_step is None                                  # before 10 % of the iterations
    a = _gate_trainer("nnUNetTrainerACTION", dice=[[0.9, 0.9, 0.9]] * 2, step=20, **PHASED)
    a.update_warmup_gate()
    assert a.phase_starts() == (2, 4)
    assert a.unsup_gate_step == 20 and a.unsup_start_step() == 40     # fine-tuning starts at epoch 4
    assert a.unsup_scale() == 0.0 and a.uses_unlabeled_now()          # the relational terms are on now
    a.global_step, a.current_epoch = 45, 4
    assert a.unsup_scale() == pytest.approx(math.exp(-5.0 * 0.75 ** 2))


def test_relational_pretraining_terms_wait_for_the_gate_and_ramp_from_their_phase():
    """The relational terms are unsupervised terms: no teacher and no unlabeled batch before the warm-up gate
    opens, then ramped from the later of the gate and the phase that adds them; the papers' variant keeps
    them at full weight from iteration 0."""
    a = _gate_trainer("nnUNetTrainerACTION", dice=[[0.1, 0.9, 0.9]] * 2, step=12, **PHASED)   # 10 epochs x 10 its
    a.update_warmup_gate()
    assert a.phase() == "global" and a.unsup_gate_step is None
    assert not a.uses_unlabeled_now() and a.relational_weight(1.0, 0) == 0.0
    a.logger = _Logger([[0.6, 0.9, 0.9]] * 2)
    a.update_warmup_gate()
    assert a.unsup_gate_step == 12 and "Relational pre-training terms start now (phase global)" in a.lines[-1]
    assert a.uses_unlabeled_now() and a.relational_weight(2.0, 0) == pytest.approx(2.0 * math.exp(-5.0))
    a.global_step, a.current_epoch = 27, 2                            # local phase (epochs 2-3)
    assert a.relational_weight(1.0, 0) == pytest.approx(math.exp(-5.0 * 0.25 ** 2))   # 15 of 20 ramp its
    assert a.relational_weight(1.0, 2) == pytest.approx(math.exp(-5.0 * 0.65 ** 2))   # local: from its phase
    p = _gate_trainer("nnUNetTrainerACTION_paper")
    p.unsup_gate_step = 0                                              # what start_training_dynamics sets
    assert p.uses_unlabeled_now()
    assert p.relational_weight(1.0, 0) == 1.0


def test_papers_schedule_variant_has_no_gate_and_no_ramp():
    from nnunet_semicl.training.action_pp import nnUNetTrainerACTIONpp, nnUNetTrainerACTIONpp_paper
    v = nnUNetTrainerACTIONpp_paper
    assert issubclass(v, nnUNetTrainerACTIONpp)
    assert (v.unsup_warmup, v.rampup_fraction, v.balance_deep_supervision, v.distribution_alignment) == \
        (False, 0.0, False, False)
    # the paper halves the labeled loss in fine-tuning; the from-scratch default keeps it at 1
    from nnunet_semicl.training.action import nnUNetTrainerACTION, nnUNetTrainerACTION_paper
    assert v.supervised_weight == nnUNetTrainerACTION_paper.supervised_weight == 0.5
    assert nnUNetTrainerACTIONpp.supervised_weight == nnUNetTrainerACTION.supervised_weight == 1.0
    # ... and its three stages (25 / 25 / 50 %); the defaults have no phases: every term from the warm-up gate on
    for papers in (v, nnUNetTrainerACTION_paper):
        assert (papers.global_phase_fraction, papers.local_phase_fraction) == (0.25, 0.25)
    assert (nnUNetTrainerACTIONpp.global_phase_fraction, nnUNetTrainerACTIONpp.local_phase_fraction) == (0.0, 0.0)


def test_unsup_momentum_follows_the_schedule_and_none_keeps_the_optimizer_momentum():
    params = [torch.nn.Parameter(torch.zeros(2))]
    t = _gate_trainer("nnUNetTrainerACTIONpp", dice=[[0.9, 0.9, 0.9]] * 2, step=20, unsup_momentum=0.9)
    t.optimizer = torch.optim.SGD(params, 0.01, momentum=0.99, nesterov=True)
    t.initial_momentum = 0.99
    t.apply_unsup_momentum()
    assert t.optimizer.param_groups[0]["momentum"] == 0.99            # warm-up: nnU-Net's momentum
    t.update_warmup_gate()                                            # gate at 20: the fine-tuning terms start
    t.global_step = 21
    t.apply_unsup_momentum()
    assert t.optimizer.param_groups[0]["momentum"] == 0.9
    t.optimizer.param_groups[0]["momentum"] = 0.5                     # e.g. a resumed optimizer state
    t.apply_unsup_momentum()
    assert t.optimizer.param_groups[0]["momentum"] == 0.9
    d = _gate_trainer("nnUNetTrainerSemiSupervised", step=45)
    d.unsup_gate_step = 0
    d.optimizer = torch.optim.SGD(params, 0.01, momentum=0.99, nesterov=True)
    d.apply_unsup_momentum()                                          # default None: untouched
    assert d.unsup_scale() > 0 and d.optimizer.param_groups[0]["momentum"] == 0.99


# ---- labeled copy-paste and the Dice term on pseudo-labels --------------------------------------
def test_copy_paste_masks_alternate_directions_with_the_box_area():
    from nnunet_semicl.augment import copy_paste_masks
    m = copy_paste_masks(4, (30, 30), side=2 / 3)
    assert m.shape == (4, 30, 30) and m.dtype == torch.bool
    shown = m.float().mean(dim=(1, 2))
    assert torch.allclose(shown[0::2], torch.full((2,), 400 / 900))      # labeled inside the 20 x 20 box
    assert torch.allclose(shown[1::2], torch.full((2,), 500 / 900))      # labeled outside it
    m3 = copy_paste_masks(2, (9, 9, 9), side=2 / 3)
    assert float(m3[0].float().mean()) == pytest.approx(216 / 729)        # 6 x 6 x 6 box in 3D


def test_pasted_pixels_take_the_ground_truth_with_full_confidence():
    from nnunet_semicl.training.semi_supervised import nnUNetTrainerSemiSupervised
    probs = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    confidence, labels = probs.max(1)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    known = torch.full((2, 4, 4), 2)
    known[1, 0, 0] = -1                                   # ignore label in the pasted image
    p, lab, conf = nnUNetTrainerSemiSupervised.with_known_labels(probs, labels, confidence, mask, known)
    assert torch.equal(lab[0, :2], torch.full((2, 4), 2)) and torch.equal(lab[:, 2:], labels[:, 2:])
    assert torch.equal(p[0, :, :2], torch.tensor([0.0, 0.0, 1.0])[:, None, None].expand(3, 2, 4))
    assert float(conf[0, :2].min()) == 1.0 and torch.equal(conf[:, 2:], confidence[:, 2:])
    assert float(conf[1, 0, 0]) == 0.0 and lab[1, 0, 0] == labels[1, 0, 0]   # no target where ignored


def test_masked_soft_dice_values_masking_and_class_balance():
    from nnunet_semicl.losses.pseudo_label_losses import masked_soft_dice
    labels = torch.zeros(1, 10, 10, dtype=torch.long)
    labels[0, :1, :1] = 1                                  # a 1-pixel class ...
    labels[0, 5:, :] = 2                                   # ... and a 50-pixel class
    perfect = F.one_hot(labels, 3).movedim(-1, 1).float() * 40
    everywhere = torch.ones(1, 10, 10, dtype=torch.bool)
    assert float(masked_soft_dice(perfect, labels, everywhere)) == pytest.approx(0.0, abs=1e-4)
    missed_small = perfect.clone()
    missed_small[0, :, 0, 0] = torch.tensor([40.0, 0.0, 0.0])   # one pixel wrong: the rare class is lost
    loss = float(masked_soft_dice(missed_small, labels, everywhere))
    assert loss == pytest.approx(0.5, abs=1e-3)            # half the mean Dice, not 1 % of it
    outside = everywhere.clone()
    outside[0, 0, 0] = False                               # the wrong pixel outside the mask: no loss
    assert float(masked_soft_dice(missed_small, labels, outside)) == pytest.approx(0.0, abs=1e-4)
    logits = torch.randn(1, 3, 10, 10, requires_grad=True)
    empty = masked_soft_dice(logits, labels, torch.zeros_like(everywhere))
    empty.backward()
    assert float(empty.detach()) == 0.0 and logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_papers_variants_turn_off_copy_paste_and_the_pseudo_label_dice():
    from nnunet_semicl.training.action_pp import nnUNetTrainerACTIONpp, nnUNetTrainerACTIONpp_paper
    # opt-in (measured worse on ACDC in one run): off by default, and off in the papers' variants too
    assert not nnUNetTrainerACTIONpp.labeled_copy_paste and nnUNetTrainerACTIONpp.pseudo_label_dice_weight == 0.0
    assert not nnUNetTrainerACTIONpp_paper.labeled_copy_paste
    assert nnUNetTrainerACTIONpp_paper.pseudo_label_dice_weight == 0.0


def test_alignment_and_logged_shares_count_only_the_unlabeled_pixels_of_a_copy_paste_mix():
    """Pasted labeled pixels (foreground-oversampled patches) must not raise the running foreground share,
    or the alignment would push every foreground class's confidence below the threshold."""
    from nnunet_semicl.training.semi_supervised import nnUNetTrainerSemiSupervised
    t = _gate_trainer(step=50)
    t.unsup_gate_step = 0
    t.confidence_threshold = 0.97
    t._pseudo_label_shares = []
    t.state_modules = {"alignment": DistributionAlignment(3, [0.8, 0.1, 0.1], momentum=0.0, **BOOST)}
    logits = torch.zeros(2, 3, 4, 4)
    logits[:, 0, :, :2] = 12.0            # unlabeled pixels: confident background
    logits[:, 1, :, 2:] = 12.0            # pasted pixels: all foreground class 1
    pasted = torch.zeros(2, 4, 4, dtype=torch.bool)
    pasted[:, :, 2:] = True
    nnUNetTrainerSemiSupervised.teacher_pseudo_labels(t, logits, ~pasted)
    running = t.state_modules["alignment"].running_mean
    assert float(running[0]) == pytest.approx(1.0, abs=1e-4) and float(running[1]) < 1e-4
    assert torch.allclose(t._pseudo_label_shares[-1], torch.tensor([1.0, 0.0, 0.0]))
    t.state_modules = {"alignment": DistributionAlignment(3, [0.8, 0.1, 0.1], momentum=0.0, **BOOST)}
    nnUNetTrainerSemiSupervised.teacher_pseudo_labels(t, logits)      # counting them: class 1 at half the pixels
    assert float(t.state_modules["alignment"].running_mean[1]) == pytest.approx(0.5, abs=1e-4)


# ---- the schedule as one object (issue 27 item 9) --------------------------------------------------------
def test_unsupervised_schedule_gate_ramp_momentum_and_state():
    from nnunet_semicl.schedules import UnsupervisedSchedule
    s = UnsupervisedSchedule(total_iterations=100, momentum=0.9)
    assert s.gate_step is None and s.scale(40) == 0.0 and s.momentum_now(False, 0.99) == 0.99
    d = s.update(5, [[0.9, 0.9, 0.9]] * 2)                       # before the minimum share (10 iterations)
    assert not d.opened and s.gate_step is None
    d = s.update(30, [[0.9, 0.9, 0.9]] * 2)
    assert d.opened and not d.by_limit and s.gate_step == 30
    assert s.scale(30) == pytest.approx(math.exp(-5.0)) and s.scale(50) == 1.0     # ramp: 20 iterations
    assert s.scale(45, term_start=40) == pytest.approx(math.exp(-5.0 * 0.75 ** 2))  # a later term ramps from its start
    assert s.momentum_now(True, 0.99) == 0.9
    resumed = UnsupervisedSchedule(total_iterations=100, momentum=0.9)
    resumed.load_state_dict(s.state_dict())                      # what --c restores
    assert resumed.gate_step == 30 and resumed.scale(50) == 1.0
    held = UnsupervisedSchedule(total_iterations=100)
    first = held.update(50, [[0.0, 0.6, 0.6]] * 2)               # at the limit, class 1 not found: held, reported once
    again = held.update(60, [[0.0, 0.6, 0.6]] * 2)
    assert first.extended and not again.extended and first.not_found == [1] and held.gate_step is None
    papers = UnsupervisedSchedule(total_iterations=100, warmup=False, rampup_fraction=0.0)
    assert papers.gate_step == 0 and papers.scale(0) == 1.0     # the papers' recipe: full weight from iteration 0


def test_a_setting_changed_after_construction_rebuilds_the_schedule_and_keeps_its_state():
    t = _gate_trainer(dice=[[0.9, 0.9, 0.9]] * 2, step=20)
    t.update_warmup_gate()
    assert t.unsup_gate_step == 20 and t.schedule.rampup_length == 20
    t.rampup_fraction = 0.0                                      # e.g. the step benchmark's steady state
    assert t.unsup_gate_step == 20 and t.schedule.rampup_length == 0 and t.unsup_scale() == 1.0


def test_the_guard_module_and_the_trainers_agree_on_its_default_form():
    """One default, stated once: the module has none of its own, and its docstring names the trainers'."""
    import nnunet_semicl.modules.distribution_alignment as da
    from nnunet_semicl.training.training_dynamics import TrainingDynamicsMixin
    with pytest.raises(TypeError):
        DistributionAlignment(3)                                   # the caller must choose the form
    assert f'alignment_statistic = "{TrainingDynamicsMixin.alignment_statistic}"' in da.__doc__
    assert TrainingDynamicsMixin.alignment_boost_only is False and "boost_only=False``: ReMixMatch" in da.__doc__
