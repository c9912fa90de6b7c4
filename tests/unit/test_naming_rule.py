"""The naming rule (docs/trainers.md; methods.md decision 8): a paper-named trainer runs every component its paper
claims, with a non-zero weight; variants are settings; the exported names are few; earlier names still load."""
import importlib
import os
import sys
from types import SimpleNamespace

import pytest
import torch

import nnunet_semicl
from nnunet_semicl.training.action import nnUNetTrainerACTION, nnUNetTrainerACTION_paper
from nnunet_semicl.training.action_pp import nnUNetTrainerACTIONpp, nnUNetTrainerACTIONpp_paper
from nnunet_semicl.training.mona import (nnUNetTrainerARCO, nnUNetTrainerARCO_paper, nnUNetTrainerARCO_SAG,
                                         nnUNetTrainerMONA, nnUNetTrainerMONA_paper)
from nnunet_semicl.training.semi_supervised import PapersScheduleMixin
from nnunet_semicl.training.step_context import StepContext
from tests.unit.trainer_classes import configured

# what each paper claims as its contribution, as loss terms (the pseudo-label core "unsup" is every paper's)
RELATIONAL = {"global", "local"}            # ACTION's relational contrastive distillation (stages i and ii)
PAPER_TERMS = {
    nnUNetTrainerACTION: RELATIONAL | {"anco", "unsup"},
    nnUNetTrainerACTIONpp: RELATIONAL | {"anco", "saacl", "unsup"},
    nnUNetTrainerMONA: RELATIONAL | {"contrast", "eqv", "nn", "unsup"},   # stage 1 + tailness, consistency, diversity
    nnUNetTrainerARCO: RELATIONAL | {"contrast", "eqv", "nn", "unsup"},
    nnUNetTrainerARCO_SAG: RELATIONAL | {"contrast", "eqv", "nn", "unsup"},
}
PAPERS = {nnUNetTrainerACTION: nnUNetTrainerACTION_paper, nnUNetTrainerACTIONpp: nnUNetTrainerACTIONpp_paper,
          nnUNetTrainerMONA: nnUNetTrainerMONA_paper, nnUNetTrainerARCO: nnUNetTrainerARCO_paper}
EXPORTED = {"nnUNetTrainerLabeledOnly", "nnUNetTrainerPseudoLabel", "nnUNetTrainerMeanTeacher",
            "nnUNetTrainerACTION", "nnUNetTrainerACTIONpp", "nnUNetTrainerMONA", "nnUNetTrainerARCO",
            "nnUNetTrainerARCO_SAG", "nnUNetTrainerACTION_paper", "nnUNetTrainerACTIONpp_paper",
            "nnUNetTrainerMONA_paper", "nnUNetTrainerARCO_paper"}


_configured = configured   # the class's term table as a training would run it


@pytest.mark.parametrize("cls", list(PAPER_TERMS), ids=lambda c: c.__name__)
def test_paper_named_defaults_run_every_component_of_their_paper(cls):
    for trainer in (cls, PAPERS.get(cls, cls)):
        active = _configured(trainer).active_terms()
        missing = {t for t in PAPER_TERMS[cls] if active.get(t, 0.0) <= 0.0}
        assert not missing, f"{trainer.__name__} lacks (or weighs 0) its paper's term(s) {sorted(missing)}"


def test_the_check_fails_when_a_component_is_dropped_or_weighed_zero():
    assert "global" not in _configured(nnUNetTrainerACTION, relational_in_finetune=False).active_terms()
    assert _configured(nnUNetTrainerACTIONpp, saacl_weight=0.0).active_terms()["saacl"] == 0.0
    # a phase of length 0 runs nothing: no relational term without a phase or the fine-tuning form
    assert "local" not in _configured(nnUNetTrainerMONA, local_phase_fraction=0.0).active_terms()


def test_components_that_are_not_loss_terms():
    assert nnUNetTrainerACTIONpp.ats_tau_min < nnUNetTrainerACTIONpp.ats_tau_max          # ATS
    assert nnUNetTrainerARCO.sampler_strata == "spatial" and not nnUNetTrainerARCO.sampler_antithetic
    assert nnUNetTrainerARCO_SAG.sampler_antithetic
    assert type(_configured(nnUNetTrainerMONA).build_sampler()).__name__ == "UniformSampler"


def test_paper_recipes_are_the_literal_schedule():
    for default, paper in PAPERS.items():
        assert issubclass(paper, default) and issubclass(paper, PapersScheduleMixin)
        assert (paper.unsup_warmup, paper.rampup_fraction, paper.distribution_alignment) == (False, 0.0, False)
    for paper in (nnUNetTrainerACTION_paper, nnUNetTrainerACTIONpp_paper):   # three stages, 0.5 sup, no overlap
        t = _configured(paper, epochs=8)
        assert [t.phase(e) for e in range(8)] == ["global"] * 2 + ["local"] * 2 + ["finetune"] * 4
        assert paper.supervised_weight == 0.5 and not paper.relational_in_finetune


def test_at_most_fourteen_names_are_exported():
    module = importlib.import_module("nnunet_semicl.trainers.nnunet_semicl_trainers")
    names = {n for n in dir(module) if n.startswith("nnUNetTrainer")}
    assert names == EXPORTED and len(names) <= 14


def test_earlier_names_load_only_when_asked(monkeypatch):
    env = {"nnUNet_extTrainer": ""}
    nnunet_semicl.register_ext_trainer_path(env)
    assert env["nnUNet_extTrainer"] == nnunet_semicl.ext_trainer_path()
    env = {"nnUNet_extTrainer": "", nnunet_semicl.LEGACY_ENV: "1"}
    nnunet_semicl.register_ext_trainer_path(env)
    assert env["nnUNet_extTrainer"].split(os.pathsep) == [nnunet_semicl.ext_trainer_path(),
                                                          nnunet_semicl.ext_trainer_path(legacy=True)]
    monkeypatch.syspath_prepend(nnunet_semicl.ext_trainer_path(legacy=True))
    legacy = importlib.import_module("nnunet_semicl_legacy_trainers")
    # every name exported before this rule still resolves, to today's class with the settings it stood for
    for name in ("nnUNetTrainerACTION_noRampUp", "nnUNetTrainerACTIONpp_noPretrain", "nnUNetTrainerACTION_phased",
                 "nnUNetTrainerACTIONPretrain", "nnUNetTrainerACTIONpp_officialATS", "nnUNetTrainerACTIONpp_pixelMask",
                 "nnUNetTrainerARCO_indexStrata", "nnUNetTrainerMONA_teacherEquivariance",
                 "nnUNetTrainerPseudoLabel_noRampUp", "nnUNetTrainerSemiSupervised"):
        assert isinstance(getattr(legacy, name), type), name
    assert not legacy.nnUNetTrainerACTIONpp_noPretrain.relational_in_finetune
    assert issubclass(legacy.nnUNetTrainerACTION_noRampUp, nnUNetTrainerACTION_paper)
    sys.modules.pop("nnunet_semicl_legacy_trainers", None)


# ---- item 2: ACTION distils by default ------------------------------------------------------------
def test_action_default_distils_alongside_fine_tuning_from_the_gate():
    t = _configured(nnUNetTrainerACTIONpp)
    assert t.phase_starts() == (0, 0) and t.relational_in_finetune
    assert t.uses_global_term() and t.uses_local_term() and t.has_finetune()


# ---- item 7: ATS counts from when its terms start -------------------------------------------------
def _ats_trainer(cls=nnUNetTrainerACTIONpp, gate=None, step=0, epochs=10, iters=10):
    t = _configured(cls, epochs=epochs)
    t.num_iterations_per_epoch, t.global_step, t.current_epoch = iters, step, step // iters
    t.unsup_gate_step = gate
    return t


def test_ats_cycles_over_the_fine_tuning_terms_run():
    t = _ats_trainer(gate=20, step=20)                      # terms start at 20 of 100 iterations
    assert t.ats_temperature() == pytest.approx(1.0)        # the cosine starts at tau_max when the terms start
    t.global_step = 60                                      # half of the 80 iterations left
    assert t.ats_temperature() == pytest.approx(0.1)
    t.global_step = 100
    assert t.ats_temperature() == pytest.approx(1.0)
    official = _ats_trainer(gate=20, step=20)
    official.ats_per_epoch, official.ats_period_fraction = True, 0.1   # the released code's form (a setting)
    assert official.ats_position() == (0.0, pytest.approx(0.8))


def test_relational_temperatures_keep_the_teacher_sharper_than_the_student():
    t = _ats_trainer(gate=20, step=60)                       # fine-tuning (default: the distillation runs here)
    tau_s, tau_t = t.relational_temperatures()
    assert tau_s == pytest.approx(0.1) and tau_t == pytest.approx(0.01)
    p = _ats_trainer(nnUNetTrainerACTIONpp_paper, gate=0)
    assert p.earliest_unsup_step() == 40                    # stages of 2, 2 and 6 epochs (nnU-Net's rounding)
    for step in range(0, 100, 5):                           # pre-training++ and fine-tuning
        p.global_step, p.current_epoch = step, step // 10
        tau_s, tau_t = p.relational_temperatures()
        assert tau_t == pytest.approx(tau_s * 0.1)          # never as flat as the student
    p.global_step, p.current_epoch = 20, 2                  # half-way through pre-training: tau_max
    assert p.relational_temperatures() == (pytest.approx(1.0), pytest.approx(0.1))


# ---- item 4: MONA/ARCO as released ------------------------------------------------------------------
def test_mona_head_is_linear_and_the_equivariance_mask_is_as_released():
    assert nnUNetTrainerMONA.representation_activation is False
    t = _configured(nnUNetTrainerMONA)
    t.label_manager = SimpleNamespace(ignore_label=None)
    y = torch.zeros(1, 1, 4, 4)
    y[0, 0, :2] = 2                                         # labeled: ground-truth foreground in the top half
    pseudo = torch.zeros(2, 4, 4, dtype=torch.long)
    pseudo[:, :, :2] = 1                                     # unlabeled: pseudo-label foreground on the left ...
    confidence = torch.full((2, 4, 4), 0.9)
    confidence[1] = 0.6                                      # ... confident (>= 0.7) in image 0 only
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[0, 0, 0] = False                                   # no content after the strong view's warp
    ctx = StepContext(x_labeled=torch.zeros(1, 1, 4, 4), y_labeled=y, x_weak=torch.zeros(2, 1, 4, 4),
                      strong_targets={"pseudo_label": pseudo, "confidence": confidence}, valid=valid)
    mask = t.equivariance_mask(ctx)
    assert mask.shape == (3, 4, 4)
    assert torch.equal(mask[0], y[0, 0] != 0)
    expected = (pseudo[0] != 0) & valid[0]
    assert torch.equal(mask[1], expected) and not bool(mask[2].any())


def test_phase_schedule():
    from nnunet_semicl.training.action import nnUNetTrainerACTION, nnUNetTrainerACTION_paper
    from nnunet_semicl.training.action_pp import nnUNetTrainerACTIONpp, nnUNetTrainerACTIONpp_paper
    from nnunet_semicl.training.mona import nnUNetTrainerMONA

    def phases(cls, n, **settings):
        t = cls.__new__(cls)   # only the phase arithmetic, no nnU-Net state
        t.num_epochs = n
        for k, v in settings.items():
            setattr(t, k, v)
        return [t.phase(e) for e in range(n)]

    for phased in (nnUNetTrainerACTION_paper, nnUNetTrainerACTIONpp_paper):
        assert phases(phased, 8) == ["global"] * 2 + ["local"] * 2 + ["finetune"] * 4
        assert phases(phased, 1000).count("finetune") == 500
    for no_phases in (nnUNetTrainerACTION, nnUNetTrainerACTIONpp):
        assert phases(no_phases, 4) == ["finetune"] * 4
    # the two-stage recipe's first training (-pretrained_weights feeds the second): setting keys
    assert phases(nnUNetTrainerACTION, 4, global_phase_fraction=0.5, local_phase_fraction=0.5) == \
        ["global"] * 2 + ["local"] * 2
    assert phases(nnUNetTrainerMONA, 6) == ["local"] * 2 + ["finetune"] * 4


def test_relational_weights_follow_the_regime_they_run_in():
    """Beside the fine-tuning terms the distillation weighs less than in the paper's pre-training stages, where it
    runs with the labeled loss alone (issue 27 item 2: at 1.0 its global gradient was 28x the pseudo-label term's)."""
    from nnunet_semicl.trainers_legacy.nnunet_semicl_legacy_trainers import nnUNetTrainerACTIONPretrain
    from nnunet_semicl.training.action import nnUNetTrainerACTION_paper
    from nnunet_semicl.training.action_pp import nnUNetTrainerACTIONpp_paper

    for cls in (nnUNetTrainerACTION, nnUNetTrainerACTIONpp):
        assert _configured(cls).active_terms()["global"] == 0.02 and _configured(cls).active_terms()["local"] == 0.25
    for cls in (nnUNetTrainerACTION_paper, nnUNetTrainerACTIONpp_paper, nnUNetTrainerACTIONPretrain,
                nnUNetTrainerMONA):
        active = _configured(cls).active_terms()
        assert active["global"] == 1.0 and active["local"] == 1.0, cls.__name__
