"""Which runs ``nnunet_semicl benchmark accuracy`` trains: ``--seeds`` and ``--variant`` checked before
anything is trained, the trainer block of each run's setting copy, and the plan (:func:`plan_runs`).

A repetition of a row trains with a copy of its setting (the same labeled cases, its own results folder):
``5pct_run2`` (``--runs``), ``5pct_s<S>`` (``--seeds``, run with ``NNUNET_SEMICL_SEED=S``),
``5pct_<NAME>[_s<S>]`` (``--variant NAME:TRAINER:KEY=VALUE``: the copy's ``semicl.trainer`` block holds the
keys). Rows of the same seed are paired in the table (``accuracy_table``).

No torch or nnU-Net import at module level (``parse_variant`` imports the trainers to check their keys).
"""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_semicl.errors import InputError

RUN_SUFFIX = "_run"
WARM_TRAINER = "nnUNetTrainerLabeledOnly"
WARM_SUFFIX = "_warm"
WARM_ROW = "warm start"
VARIANT_EXAMPLE = "noDistill:nnUNetTrainerACTIONpp:relational_in_finetune=false"
#: a variant's name: part of its setting copy's name (``5pct_<NAME>_s<S>``) and of its results folder
VARIANT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")
#: names that the other setting copies use (``5pct_s1``, ``5pct_run2``, ``5pct_warm``)
RESERVED_VARIANT_NAME = re.compile(r"(s|run)[0-9]+|warm")
#: the commas between a variant's KEY=VALUE items (not those inside a list value such as [0.8,1.2])
VARIANT_ITEM_SEPARATOR = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)")


def check_seeds(seeds: Optional[Sequence[int]], runs: int) -> Optional[List[int]]:
    """``--seeds`` as a list (None without it); a seed given twice, or ``--runs`` beside it, is refused."""
    if not seeds:
        return None
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise InputError(f"--seeds: {', '.join(map(str, repeated))} given more than once; each seed is one run.")
    if runs > 1:
        raise InputError("--seeds and --runs: give one of them. With --seeds every trainer trains once per seed "
                         "(paired runs); --runs N trains it N times unseeded.")
    return list(seeds)


def parse_variants(items: Sequence[str], trainers: Sequence[str]) -> Dict[str, dict]:
    """``--variant`` options -> ``{NAME: {"trainer": ..., "overrides": {KEY: VALUE}}}``, every key checked
    against its trainer class; a NAME given twice or equal to a trainer's row is refused."""
    variants: Dict[str, dict] = {}
    for item in items or ():
        name, trainer, overrides = parse_variant(item)
        if name in variants or name in trainers:
            raise InputError(f"--variant {item}: the row {name} exists already; give each variant its own name.")
        variants[name] = {"trainer": trainer, "overrides": overrides}
    return variants


def parse_variant(text: str) -> Tuple[str, str, dict]:
    """``NAME:TRAINER:KEY=VALUE[,KEY=VALUE...]`` -> (name, trainer, the checked setting keys); an
    :class:`InputError` naming the option otherwise."""
    from nnunet_semicl.data.overrides import SCHEDULE_OPTIONS, parse_set_option, validate_overrides

    where = f"--variant {text}"
    parts = [part.strip() for part in text.split(":", 2)]
    if len(parts) != 3 or not all(parts):
        raise InputError(f"{where}: expected NAME:TRAINER:KEY=VALUE[,KEY=VALUE...], e.g. {VARIANT_EXAMPLE}")
    name, trainer, keys = parts
    if not VARIANT_NAME.fullmatch(name):
        raise InputError(f"{where}: a variant's name is a letter followed by letters and digits (it becomes part "
                         f"of a setting's name), got {name!r}")
    if RESERVED_VARIANT_NAME.fullmatch(name):
        raise InputError(f"{where}: {name} would name the setting copy of a seed, a run or the warm start "
                         f"(5pct_{name}); choose another name.")
    overrides = {}
    for assignment in VARIANT_ITEM_SEPARATOR.split(keys):
        if "=" not in assignment:
            raise InputError(f"{where}: expected KEY=VALUE, got {assignment!r}")
        key, value = parse_set_option(assignment)
        if key in overrides:
            raise InputError(f"{where}: {key} is given twice")
        overrides[key] = value
    schedule = [k for k in overrides if k in SCHEDULE_OPTIONS]
    if schedule:
        raise InputError(f"{where}: {', '.join(schedule)} belongs to the benchmark's schedule, the same for every "
                         f"row (--epochs, --iterations, --val-iterations, --lr); a variant changes the method.")
    applied, _ = validate_overrides(trainer_class(trainer, where), overrides, where)
    return name, trainer, {k: list(v) if isinstance(v, tuple) else v for k, v in applied.items()}


def trainer_class(name: str, where: str) -> type:
    """The class of one of this package's trainers (imports torch and nnU-Net)."""
    from nnunet_semicl.cli import exported_trainers

    classes = {c.__name__: c for c in exported_trainers()}
    if name not in classes:
        raise InputError(f"{where}: {name} is not one of this package's trainers ({', '.join(sorted(classes))})")
    return classes[name]


def schedule_overrides(opts: dict, warm: bool = False) -> dict:
    """The settings' ``semicl.trainer`` block: the short schedule, and a checkpoint every few epochs (resumable).
    ``warm``: the schedule of the supervised warm start."""
    epochs = int(opts["warm_epochs"] if warm else opts["epochs"])
    out = {"num_epochs": epochs, "num_iterations_per_epoch": int(opts["warm_iterations" if warm else "iterations"]),
           "num_val_iterations_per_epoch": int(opts["val_iterations"]), "save_every": max(1, min(5, epochs // 3))}
    if opts.get("lr") and not warm:  # the warm start keeps nnU-Net's learning rate
        out["initial_lr"] = float(opts["lr"])
    return out


@dataclass
class PlannedRun:
    """One training of the benchmark."""
    row: str                 # the table row: the trainer's name, a variant's name or WARM_ROW
    trainer: str             # the nnU-Net trainer class (without the warm start's suffix)
    setting: str             # the labeled setting (5pct)
    plans_setting: str       # the setting copy it trains with (nnUNetPlans_<plans_setting>): its own results folder
    seed: Optional[int]      # NNUNET_SEMICL_SEED of the run; None: unseeded
    pair_key: str            # what pairs it with the other rows' runs: "s<seed>" with --seeds, else "run<k>"
    trainer_block: dict = field(default_factory=dict)   # the setting copy's semicl.trainer block

    @property
    def purpose(self) -> str:
        """Why its setting copy exists (recorded in the copy's split file)."""
        if self.row == WARM_ROW:
            return "the supervised warm start"
        variant = f"variant {self.row} ({self.trainer}), " if self.row != self.trainer else ""
        return f"{variant}repetition {self.pair_key}"


def setting_copy(setting: str, variant: Optional[str] = None, seed: Optional[int] = None, run: int = 1) -> str:
    """The name of the setting copy a run trains with: ``5pct``, ``5pct_run2`` (``--runs``), ``5pct_s1``
    (``--seeds``), ``5pct_noDistill``, ``5pct_noDistill_s1`` (``--variant``)."""
    name = "_".join([setting] + ([variant] if variant else []) + ([f"s{seed}"] if seed is not None else []))
    return name if run == 1 else f"{name}{RUN_SUFFIX}{run}"


def repetitions(opts: dict) -> List[Tuple[Optional[int], str, dict]]:
    """(seed of the run, its pair key, the :func:`setting_copy` arguments naming its copy) per repetition of a
    row: one per ``--seeds`` seed, else one per ``--runs`` run (seeded by an inherited NNUNET_SEMICL_SEED, if
    any, which does not rename the copies)."""
    if opts.get("seeds"):
        return [(s, f"s{s}", {"seed": s}) for s in opts["seeds"]]
    return [(opts.get("inherited_seed"), f"run{r}", {"run": r}) for r in range(1, opts["runs"] + 1)]


def plan_runs(opts: dict) -> List[PlannedRun]:
    """Every training, in order: per setting (the shared warm start first with ``--warm-epochs``), per seed or
    run, every trainer then every variant; each in its own setting copy."""
    rows = [(t, t, {}) for t in opts["trainers"]]
    rows += [(name, v["trainer"], v["overrides"]) for name, v in (opts.get("variants") or {}).items()]
    schedule = schedule_overrides(opts)
    runs = []
    for setting in opts["settings"]:
        if opts["warm_epochs"] > 0:
            # the warm start's own setting: the same labeled cases, its own (longer) schedule
            runs.append(PlannedRun(WARM_ROW, WARM_TRAINER, setting, setting + WARM_SUFFIX, opts.get("inherited_seed"),
                                   "run1", schedule_overrides(opts, warm=True)))
        for seed, pair_key, copy_name in repetitions(opts):
            for row, trainer, variant_keys in rows:
                variant = row if row != trainer else None
                runs.append(PlannedRun(row, trainer, setting, setting_copy(setting, variant, **copy_name), seed,
                                       pair_key, {**schedule, **variant_keys}))
    return runs
