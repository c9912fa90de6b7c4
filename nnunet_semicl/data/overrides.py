"""A setting's trainer block: which hyperparameters it may set, and how a value is checked.

A setting (``docs/splits.md``) may carry ``"trainer": {KEY: VALUE, ...}`` (written by ``nnunet_semicl split
--epochs/--iterations/--val-iterations/--save-every/--set KEY=VALUE``). Our trainers apply it when they are
built (``nnUNetTrainerLabeledOnly._apply_setting_overrides``), log it and record it in the results folder
(:data:`OVERRIDES_FILE`).

A KEY is

* one of nnU-Net's schedule attributes (:data:`SCHEDULE_OPTIONS`; instance attributes set by
  ``nnUNetTrainer.__init__``), or
* a *hyperparameter*: a public, lower-case class attribute of the trainer (its class or a base) whose
  default is a bool, a number, a string, a tuple or None. Methods, properties and private names are not
  hyperparameters; a few class attributes are structural and refused (:data:`NOT_SETTABLE`).

A VALUE must have the default's type: a bool for a bool (a number is not), a whole number for an int
(a bool is not, 2.5 is not), a number for a float (kept as float, finite), a string for a string (one of
:data:`CHOICES` where the trainers accept a fixed set), a list of the tuple's length and element types
for a tuple. An attribute whose default is None (anywhere along the class's bases) also takes None;
otherwise its type is :data:`NONE_DEFAULT_TYPES` (or a number or string when not listed). Ranges:
:func:`_range_rule`.

``nnunet_semicl split`` knows no trainer: :func:`check_setting_overrides` accepts a key that is a
hyperparameter of at least one given trainer class, with a value valid for one of them; the exact check
against the trainer actually run is :func:`validate_overrides` at training start.

No torch or nnU-Net import: the trainer classes are passed in.
"""
import difflib
import json
import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from nnunet_semicl.errors import SplitError

#: nnU-Net's schedule attributes (set in ``nnUNetTrainer.__init__``), with the ``split`` option that sets each
SCHEDULE_OPTIONS = {"num_epochs": "--epochs", "num_iterations_per_epoch": "--iterations",
                    "num_val_iterations_per_epoch": "--val-iterations", "save_every": "--save-every",
                    "initial_lr": "--set"}
#: the type of each schedule key, as a default would give it (an int for the counts, a float for the rate)
_SCHEDULE_DEFAULTS = {"num_epochs": [1], "num_iterations_per_epoch": [1], "num_val_iterations_per_epoch": [1],
                      "save_every": [1], "initial_lr": [1.0]}
#: class attributes that look like hyperparameters but are not settings
NOT_SETTABLE = {
    "loss_terms": "it names the terms a method's compute_losses returns (part of the method, not a setting)",
    "uses_features": "it says whether the method's losses read decoder features (part of the method)",
    "allow_compile": "torch.compile is not verified with our hooks and EMA copy (benchmark-only)",
    "bank_dtype": "it takes a torch dtype, which a JSON setting cannot hold (None: float16 on CUDA, float32 on CPU)",
}
#: the value type of hyperparameters whose default is None (None itself is always accepted for them)
NONE_DEFAULT_TYPES = {"unlabeled_batch_size": int, "representation_dim": int, "global_dim": int,
                      "local_pooled": int, "sampler_grid": int, "unsup_momentum": float}
#: string hyperparameters with a fixed set of values
CHOICES = {"alignment_statistic": ("probability", "argmax"), "negative_rule": ("intended", "as_released"),
           "equivariance_target": ("student", "teacher"), "nn_query": ("teacher", "student"),
           "sampler_strata": ("spatial", "index")}
#: the results-folder record of the overrides a run applied
OVERRIDES_FILE = "semicl_overrides.json"
DOCS = "docs/trainers.md"
_MISSING = object()


# ------------------------------------------------------------------------------------------------
# --set KEY=VALUE
# ------------------------------------------------------------------------------------------------
def parse_set_option(text: str) -> Tuple[str, object]:
    """``KEY=VALUE`` -> ``(KEY, value)``: VALUE as a JSON literal (``5``, ``0.9``, ``true``, ``null``,
    ``"x"``, ``[0.8, 1.2]``), else the plain string (``argmax``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SplitError(f"--set '{text}': expected KEY=VALUE, e.g. --set distribution_alignment=false or "
                         f"--set confidence_threshold=0.9.")
    raw = raw.strip()
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if isinstance(value, dict):
        raise SplitError(f"--set '{text}': a JSON object is not a hyperparameter value (numbers, true/false, "
                         f"null, strings and lists are).")
    return key, value


def parse_set_options(items: Sequence[str], fixed: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """The trainer block of ``--set`` options, merged with ``fixed`` (``--epochs`` ...); a key given twice
    with different values is refused."""
    out = dict(fixed or {})
    for item in items or ():
        key, value = parse_set_option(item)
        if key in out and out[key] != value:
            by = SCHEDULE_OPTIONS.get(key, "--set") if key in (fixed or {}) else "--set"
            raise SplitError(f"--set {item}: {key} is already set to {out[key]!r} (by {by}). Give each key once.")
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------------
# what a trainer class offers
# ------------------------------------------------------------------------------------------------
def _is_value(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (tuple, list)) and all(isinstance(e, (bool, int, float, str)) for e in v))


def hyperparameters(trainer_class: type) -> Dict[str, List[object]]:
    """Every hyperparameter of ``trainer_class``: name -> its defaults along the class's bases, the effective
    one first (e.g. ``representation_dim``: ``[128, None]`` for ACTION++, whose base uses None)."""
    out: Dict[str, List[object]] = {}
    for klass in trainer_class.__mro__:
        if klass is object:
            continue
        for name, v in vars(klass).items():
            if name.startswith("_") or name != name.lower() or name in NOT_SETTABLE:
                continue
            if isinstance(v, (property, staticmethod, classmethod)) or callable(v) or not _is_value(v):
                continue
            out.setdefault(name, []).append(v)
    return out


def related_trainers(base: type) -> List[type]:
    """``base`` and every subclass of it loaded in this process (the trainers a setting may be meant for)."""
    found, todo = [], [base]
    while todo:
        c = todo.pop()
        if c not in found:
            found.append(c)
            todo.extend(c.__subclasses__())
    return found


# ------------------------------------------------------------------------------------------------
# one value
# ------------------------------------------------------------------------------------------------
def _kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, int):
        return "a whole number"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    return "a list"


def _converted_value(key: str, value, default) -> Tuple[bool, object, str]:
    """(ok, converted value, what was expected) for ``value`` against one default."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if default is None:
        t = NONE_DEFAULT_TYPES.get(key)
        if value is None:
            return True, None, "null"
        if t is int:
            return isinstance(value, int) and not isinstance(value, bool), value, "a whole number or null"
        if t is float:
            return number, float(value) if number else value, "a number or null"
        return number or isinstance(value, str), value, "a number, a string or null"
    if isinstance(default, bool):
        return isinstance(value, bool), value, "true or false"
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool), value, "a whole number"
    if isinstance(default, float):
        return number, float(value) if number else value, "a number"
    if isinstance(default, str):
        choices = CHOICES.get(key)
        if choices:
            return value in choices, value, "one of " + ", ".join(f"'{c}'" for c in choices)
        return isinstance(value, str), value, "a string"
    expected = f"a list of {len(default)} ({', '.join(_kind(e) for e in default)})"
    if not isinstance(value, (list, tuple)) or len(value) != len(default):
        return False, value, expected
    items = [_converted_value(key + "[]", v, d) for v, d in zip(value, default)]
    return all(ok for ok, _, _ in items), tuple(v for _, v, _ in items), expected


def _range_rule(key: str):
    """(predicate, description) of the values a key may take beyond its type, or None."""
    if (key in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every")
            or NONE_DEFAULT_TYPES.get(key) is int):   # counts and sizes (unlabeled_batch_size, representation_dim ...)
        return (lambda v: v >= 1), "a whole number >= 1"
    if key == "initial_lr" or "tau" in key.split("_"):
        return (lambda v: v > 0), "a positive number"
    if key == "warmup_limit_floor":   # e.g. 0 for runs too short to find every class (tests)
        return (lambda v: 0 <= v <= 1), "a Dice between 0 and 1"
    if key.endswith(("_momentum", "_threshold")) or key in ("warmup_min_fraction", "warmup_max_fraction",
                                                            "rampup_fraction", "copy_paste_side"):
        return (lambda v: 0 <= v <= 1), "a number between 0 and 1"
    if key.endswith("_dropout"):   # a dropout probability (1 would drop everything)
        return (lambda v: 0 <= v < 1), "a number in [0, 1)"
    if key.endswith(("_weight", "_fraction")):
        return (lambda v: v >= 0), "a number >= 0"
    return None


def _check_value(key: str, value, defaults: Sequence[object]) -> Tuple[Optional[object], Optional[str]]:
    """(converted value, None), or (None, the problem) for ``value`` against a key's ``defaults``."""
    expected = []
    for d in defaults:
        ok, converted, what = _converted_value(key, value, d)
        if ok:
            break
        expected.append(what)
    else:
        return None, f"must be {' or '.join(dict.fromkeys(expected))}"
    numbers = converted if isinstance(converted, tuple) else (converted,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
        return None, "must be finite"
    rule = _range_rule(key)
    if rule and converted is not None and not isinstance(converted, (tuple, str)) and not rule[0](converted):
        return None, f"must be {rule[1]}"
    return converted, None


def _unknown(key: str, known: Iterable[str], where: str, trainer: str) -> SplitError:
    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    return SplitError(f"{where}: unknown trainer setting '{key}': not a hyperparameter of {trainer}.{hint} The "
                      f"settable keys are the schedule ({', '.join(SCHEDULE_OPTIONS)}) and the trainers' "
                      f"hyperparameters (class attributes) listed in {DOCS}.")


def _refuse(key: str, value, problem: str, where: str, trainer: str, defaults) -> SplitError:
    option = SCHEDULE_OPTIONS.get(key, "--set")
    name = key if option == "--set" else f"{option} ({key})"
    shown = "" if key in _SCHEDULE_DEFAULTS else f" (default {defaults[0]!r} in {trainer})"
    how = f"--set {key}=VALUE" if option == "--set" else f"{option} N"
    return SplitError(f"{where}: {name} {problem}{shown}, got {value!r}. Pass a valid value ({how}), or leave it "
                      f"out for the default.")


# ------------------------------------------------------------------------------------------------
# a whole block
# ------------------------------------------------------------------------------------------------
def validate_overrides(trainer_class: type, overrides: dict, where: str,
                       related: Sequence[type] = ()) -> Tuple[Dict[str, object], Dict[str, str]]:
    """Check a setting's trainer block against the trainer class actually run.

    Returns ``(applied, skipped)``: ``applied`` maps each key to its value converted to the default's type
    (a float for a float, a tuple for a tuple); ``skipped`` maps a key that is no hyperparameter of
    ``trainer_class`` but one of a ``related`` trainer (a setting is shared by the trainers compared on it,
    e.g. ``confidence_threshold`` reaches ``nnUNetTrainerLabeledOnly`` too) to the reason it is not applied.
    Any other key, a structural attribute or a value of the wrong type or range is a :class:`SplitError`
    naming the key, the trainer and (for an unknown key) close matches.
    """
    if not isinstance(overrides, dict):
        raise SplitError(f"{where}: the trainer block must be a JSON object {{KEY: VALUE}}, got {overrides!r}.")
    name = trainer_class.__name__
    own = hyperparameters(trainer_class)
    others: Dict[str, List[str]] = {}
    for c in related:
        if c is not trainer_class:
            for k in hyperparameters(c):
                if k not in own:
                    others.setdefault(k, []).append(c.__name__)
    applied, skipped = {}, {}
    for key, value in overrides.items():
        if key in NOT_SETTABLE:
            raise SplitError(f"{where}: '{key}' cannot be set by a setting: {NOT_SETTABLE[key]}. Write a subclass "
                             f"instead ({DOCS}).")
        defaults = _SCHEDULE_DEFAULTS.get(key) or own.get(key)
        if defaults is None:
            if key in others:
                owners = sorted(others[key])
                skipped[key] = (f"not a hyperparameter of {name}; it belongs to {', '.join(owners[:3])}"
                                + (" ..." if len(owners) > 3 else ""))
                continue
            raise _unknown(key, list(own) + list(SCHEDULE_OPTIONS) + list(others), where, name)
        converted, problem = _check_value(key, value, defaults)
        if problem:
            raise _refuse(key, value, problem, where, name, defaults)
        applied[key] = converted
    return applied, skipped


def check_setting_overrides(overrides: dict, where: str, trainer_classes: Sequence[type] = ()) -> None:
    """The check ``nnunet_semicl split`` can make before a trainer is chosen: each key is a schedule key or a
    hyperparameter of at least one of ``trainer_classes``, with a value valid for at least one of them.
    Without classes only schedule keys are accepted (``--epochs`` ... need no trainer)."""
    if not isinstance(overrides, dict):
        raise SplitError(f"{where}: the trainer block must be a JSON object {{KEY: VALUE}}, got {overrides!r}.")
    tables = [(c.__name__, hyperparameters(c)) for c in trainer_classes]
    for key, value in overrides.items():
        if key in NOT_SETTABLE or key in _SCHEDULE_DEFAULTS:   # the same refusal / check with or without a trainer
            validate_overrides(object, {key: value}, where)
            continue
        owners = [(n, t[key]) for n, t in tables if key in t]
        if not owners:
            raise _unknown(key, {k for _, t in tables for k in t} | set(SCHEDULE_OPTIONS), where,
                           "any of our trainers")
        problems = []
        for n, defaults in owners:
            converted, problem = _check_value(key, value, defaults)
            if problem is None:
                break
            problems.append((n, problem, defaults))
        else:
            n, problem, defaults = problems[0]
            raise _refuse(key, value, problem, where, n, defaults)
