"""The entries the step benchmark measures (``NAME``, ``NAME@PHASE``, ``NAME+compile``) and how its worker
builds a trainer: as ``nnUNetv2_train`` does, in the middle of the phase measured, with its queues and memory
banks filled to capacity (the steady state of a long run).

The trainer constructors import torch and nnU-Net (inside the functions: the driver only needs the names).
"""
from typing import Optional

STOCK = "nnUNetTrainer"
MEAN_TEACHER = "nnUNetTrainerMeanTeacher"
MT_TEACHER_LABELED = "nnUNetTrainerMeanTeacher_teacherSeesLabeled"
DEFAULT_TRAINERS = (STOCK, "nnUNetTrainerLabeledOnly", "nnUNetTrainerPseudoLabel", MEAN_TEACHER, MT_TEACHER_LABELED,
                    "nnUNetTrainerACTION", "nnUNetTrainerACTIONpp", "nnUNetTrainerMONA", "nnUNetTrainerARCO",
                    "nnUNetTrainerARCO_SAG")
METHODS = ("nnUNetTrainerACTION", "nnUNetTrainerACTIONpp", "nnUNetTrainerMONA", "nnUNetTrainerARCO",
           "nnUNetTrainerARCO_SAG")
#: pre-training phases (``--pretrain``); ARCO's pre-training is MONA's; ACTION's defaults fine-tune only
PRETRAIN_ENTRIES = ("nnUNetTrainerACTION_paper@global", "nnUNetTrainerACTION_paper@local",
                    "nnUNetTrainerACTIONpp_paper@global", "nnUNetTrainerACTIONpp_paper@local", "nnUNetTrainerMONA@local")
SMOKE_TRAINERS = (STOCK, MEAN_TEACHER)
#: entry suffix: the trainer with ``nnUNet_compile=t`` and ``allow_compile = True`` (our trainers default to eager)
COMPILED = "+compile"


def parse_entry(entry: str):
    """'NAME@phase' -> (NAME, phase or None)."""
    name, _, phase = entry.partition("@")
    if phase and phase not in ("global", "local", "finetune"):
        raise SystemExit(f"unknown phase '{phase}' in '{entry}' (global, local or finetune)")
    return name, (phase or None)


def _variant_class(name: str):
    """Benchmark-only trainer variants (not registered with nnU-Net)."""
    if name == MT_TEACHER_LABELED:
        from nnunet_semicl.training.mean_teacher import nnUNetTrainerMeanTeacher

        class nnUNetTrainerMeanTeacher_teacherSeesLabeled(nnUNetTrainerMeanTeacher):
            """Mean teacher whose teacher forward also takes the labeled batch (as ACTION++/MONA/ARCO)."""

            def teacher_sees_labeled(self) -> bool:
                return True

        return nnUNetTrainerMeanTeacher_teacherSeesLabeled
    return None


def build_trainer(spec: dict, name: str):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json as bg_load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    device = torch.device(spec["device"])
    if name.endswith(COMPILED):   # benchmark-only: the trainer with torch.compile allowed (the check of issue 13)
        trainer = build_trainer(spec, name[: -len(COMPILED)])
        trainer.allow_compile = True
        return trainer
    cls = _variant_class(name)
    if cls is None:
        return get_trainer_from_args(str(spec["dataset_name"]), spec["configuration"], 0, name, spec["plans"],
                                     device=device)
    base = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(spec["dataset_name"]))
    plans = bg_load_json(join(base, spec["plans"] + ".json"))
    plans["continue_training"] = False  # as get_trainer_from_args sets it
    return cls(plans=plans, configuration=spec["configuration"], fold=0,
               dataset_json=bg_load_json(join(base, "dataset.json")), device=device)


def choose_epoch(trainer, phase: Optional[str]) -> int:
    """An epoch in the middle of ``phase`` (fine-tuning by default) of a (multi-phase) trainer."""
    n = int(trainer.num_epochs)
    if not hasattr(trainer, "phase_starts"):
        if phase not in (None, "finetune"):
            raise SystemExit(f"{type(trainer).__name__} has no '{phase}' phase")
        return n // 2
    e_local, e_fine = trainer.phase_starts()
    spans = {"global": (0, e_local), "local": (e_local, e_fine), "finetune": (e_fine, n)}
    lo, hi = spans[phase or "finetune"]
    if hi <= lo:
        raise SystemExit(f"{type(trainer).__name__} has no '{phase}' phase (phase starts {e_local}, {e_fine} of {n})")
    return (lo + hi) // 2


def fill_state_buffers(trainer) -> int:
    """Fill every ring buffer of the trainer's state (queues, memory banks, NN pool) to capacity with random unit
    vectors (and random class labels): the steady state of a long run. Returns the bytes of state buffers.

    Only RingBuffer's public interface: ``reset()`` (empty, next write at position 0), then ``push`` in chunks."""
    import torch
    import torch.nn.functional as F
    from nnunet_semicl.modules.queues import RingBuffer

    state = getattr(trainer, "state_modules", None)
    if state is None:
        return 0
    k = trainer.label_manager.num_segmentation_heads
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for m in state.modules():
            if not isinstance(m, RingBuffer):
                continue
            m.reset()
            for start in range(0, m.size, 4096):  # chunks: no temporary copy of a whole bank
                n = min(m.size, start + 4096) - start
                x = F.normalize(torch.randn((n, *m.item_shape), generator=g), dim=-1).to(m.items.device)
                labels = torch.randint(0, k, (n,), generator=g).to(m.labels.device) if m.with_labels else None
                m.push(x, labels)
    return sum(b.numel() * b.element_size() for b in state.buffers())
