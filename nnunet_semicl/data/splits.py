"""Which training cases are labeled and which are unlabeled, per fold.

Raw and preprocessed nnU-Net data stay untouched and fully labeled. A *setting* (e.g. "5pct") is

* ``nnUNet_preprocessed/<Dataset>/splits_semicl_<setting>.json`` beside ``splits_final.json``::

      {"version": 1, "setting": "5pct", "created_by": "...",
       "folds": [{"labeled": [...], "unlabeled": [...]}, ...],     # aligned with splits_final.json
       "all": {"labeled": [...], "unlabeled": [...]}}              # for fold "all" (optional)

* a plans variant ``<plans>_<setting>.json``: a copy of the plans with ``plans_name`` changed and a
  ``"semicl"`` block naming the split file. Selecting it with the stock ``-p`` gives each setting
  its own results folder while reusing the preprocessed data (``data_identifier`` is unchanged).

Nothing is ever written into the preprocessed *data* folder (``<plans>_<config>/``): one extra file
there breaks nnU-Net's dataset-class detection.

Truly unlabeled images (added with ``nnunet_semicl add-unlabeled``) are listed in ``dataset.json``
under :data:`UNLABELED_KEY`; their label maps are all nnU-Net ignore label. They are never labeled,
never validation cases, and always join the unlabeled stream.

The files are written by :mod:`nnunet_semicl.data.setting_files`; this module makes, reads and
checks their content. It has no torch or nnU-Net import: it is plain bookkeeping with precise errors.
"""
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_semicl.errors import SplitError, short_list
from nnunet_semicl.files import load_json

SPLIT_FILE_TEMPLATE = "splits_semicl_{setting}.json"
PLANS_BLOCK = "semicl"
UNLABELED_KEY = "semicl_unlabeled_cases"
#: the dataset's default setting, used by our trainers when no setting is selected with -p
DEFAULT_SETTING_FILE = "semicl_default_setting.json"
SETTING_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

@dataclass(frozen=True)
class CaseSets:
    labeled: Tuple[str, ...]
    unlabeled: Tuple[str, ...]
    source: str  # where the sets came from (for the training log)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def compile_group_regex(group_regex: str) -> "re.Pattern":
    """``--group``'s pattern, compiled; an invalid pattern is a :class:`SplitError` that says how to write one."""
    try:
        return re.compile(group_regex)
    except re.error as e:
        raise SplitError(f"--group '{group_regex}' is not a valid regular expression ({e}). Give a pattern whose "
                         f"match is the patient id, e.g. --group 'patient\\d+' (quote it for the shell).") from None


def group_of(case_id: str, group_regex: Optional[str]) -> str:
    """The patient/group a case belongs to. Without a regex every case is its own group.

    With a regex, the first capture group of its first match is the group id (the whole match if
    the regex has no group): ``--group 'patient\\d+'`` keeps ACDC's ED/ES frames together.
    """
    if not group_regex:
        return case_id
    m = compile_group_regex(group_regex).search(case_id)
    if m is None:
        raise SplitError(f"Case '{case_id}' does not match the group pattern '{group_regex}'. Every case must "
                         f"match so that cases of one patient stay together; fix the pattern (e.g. "
                         f"--group 'patient\\d+').")
    group = m.group(1) if m.groups() else m.group(0)
    if not group:
        what = "its first capture group takes no part in the match" if m.groups() else "it matches an empty string"
        raise SplitError(f"--group '{group_regex}' gives no patient id for case '{case_id}': {what}. The match (or "
                         f"the first capture group) must be the patient id, e.g. --group 'patient\\d+' or "
                         f"--group '(phantom\\d+)_'; use (?:...) for optional parts.")
    return group


def group_cases(case_ids: Sequence[str], group_regex: Optional[str]) -> Dict[str, List[str]]:
    groups: Dict[str, List[str]] = {}
    for c in sorted(case_ids):
        groups.setdefault(group_of(c, group_regex), []).append(c)
    return groups


def split_file_name(setting: str) -> str:
    return SPLIT_FILE_TEMPLATE.format(setting=setting)


def check_setting_name(setting: str) -> None:
    if not SETTING_NAME_RE.match(setting or ""):
        raise SplitError(f"Invalid setting name '{setting}': use letters, digits, '_', '-', '.' (e.g. 5pct, "
                         f"lab3).")


def truly_unlabeled_cases(dataset_json: dict) -> List[str]:
    return sorted(dataset_json.get(UNLABELED_KEY, []))


# ------------------------------------------------------------------------------------------------
# folds
# ------------------------------------------------------------------------------------------------
def default_folds(identifiers: Sequence[str], unlabeled_only: Sequence[str] = (), n_splits: int = 5,
                  seed: int = 12345, group_regex: Optional[str] = None) -> List[dict]:
    """nnU-Net's default 5-fold split over the *annotated* cases; truly unlabeled ones train in every fold.

    Without truly unlabeled cases and without ``group_regex`` this is exactly the split nnU-Net
    itself would create (KFold(shuffle=True, random_state=12345) over the sorted identifiers). With
    ``group_regex`` the folds are drawn over patients, so a patient's cases (ACDC's ED and ES
    frames) are never split between training and validation, as in nnU-Net's own ACDC conversion.
    """
    from sklearn.model_selection import KFold  # nnU-Net's own dependency; imported lazily

    unl = set(unlabeled_only)
    annotated = sorted(i for i in identifiers if i not in unl)
    groups = group_cases(annotated, group_regex)
    names = sorted(groups)
    if len(names) < n_splits:
        what = f"patients (groups of --group '{group_regex}')" if group_regex else "cases"
        raise SplitError(f"Only {len(names)} annotated {what}: cannot make a {n_splits}-fold split."
                         + (" Check that the pattern's match is the patient id." if group_regex else ""))
    kf = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = []
    for tr, va in kf.split(names):
        folds.append({"train": sorted(c for i in tr for c in groups[names[i]]) + sorted(unl),
                      "val": sorted(c for i in va for c in groups[names[i]])})
    if group_regex is None:  # keep nnU-Net's exact ordering
        folds = [{"train": [annotated[i] for i in tr] + sorted(unl), "val": [annotated[i] for i in va]}
                 for tr, va in kf.split(annotated)]
    return folds


def check_folds_against_unlabeled(folds: List[dict], unlabeled_only: Sequence[str], path: str) -> None:
    bad = {}
    for k, f in enumerate(folds):
        v = set(f["val"]) & set(unlabeled_only)
        if v:
            bad[k] = v
    if bad:
        k, v = next(iter(bad.items()))
        raise SplitError(f"{path}: fold {k} validates on images that have no annotation ({short_list(sorted(v), 10)}). Validation "
                         f"cases must be annotated. Delete {path} and run `nnunet_semicl split ...` again (it "
                         f"recreates the 5-fold split over the annotated cases), or edit the file.")


def check_folds_keep_groups(folds: List[dict], group_regex: Optional[str], path: str) -> None:
    """Refuse folds that put cases of one group (patient) in both training and validation.

    A ``splits_final.json`` made over *cases* (nnU-Net's default, or an earlier ``split`` without
    ``--group``) usually separates a patient's frames: one would train (maybe labeled) while the
    other validates, so validation would not measure unseen patients.
    """
    if not group_regex:
        return
    for k, f in enumerate(folds):
        val_groups = {group_of(c, group_regex) for c in f["val"]}
        shared = sorted({group_of(c, group_regex) for c in f["train"]} & val_groups)
        if shared:
            raise SplitError(f"{path}: fold {k} puts cases of {len(shared)} group(s) of --group '{group_regex}' in "
                             f"both training and validation ({short_list(sorted(shared), 10)}): those patients would leak into "
                             f"validation. It was made over cases, not patients. Delete it (runs that used it keep "
                             f"their results but cannot be continued with --c) and run the split command again: it "
                             f"recreates nnU-Net's 5-fold split over patients. Or drop --group.")


def with_unlabeled_images(folds: List[dict], unlabeled_only: Sequence[str]) -> List[dict]:
    """``folds`` with every image without annotation as a training case of every fold.

    Images added with ``add-unlabeled`` after ``splits_final.json`` was written are not in it; they
    are training (unlabeled) cases of every fold by definition, never validation cases.
    """
    unl = set(unlabeled_only)
    return [{**f, "train": list(f["train"]) + sorted(unl - set(f["train"]) - set(f["val"]))} for f in folds]


# ------------------------------------------------------------------------------------------------
# making a setting
# ------------------------------------------------------------------------------------------------
def choose_labeled(train_cases: Sequence[str], *, n_labeled: Optional[int] = None,
                   fraction: Optional[float] = None, labeled_ids: Optional[Sequence[str]] = None,
                   group_regex: Optional[str] = None, seed: int = 0,
                   unlabeled_only: Sequence[str] = (), fold_name: str = "0",
                   known_cases: Optional[Sequence[str]] = None) -> dict:
    """Pick the labeled cases of one fold's training set; every other training case is unlabeled.

    Exactly one of ``n_labeled`` (number of groups, i.e. patients when ``group_regex`` is given),
    ``fraction`` (of the annotated groups, rounded, at least 1) or ``labeled_ids`` (case ids or
    group ids) must be given. Truly unlabeled cases can never be labeled.
    """
    if sum(x is not None for x in (n_labeled, fraction, labeled_ids)) != 1:
        raise SplitError("Give exactly one of --labeled N, --fraction F or --labeled-cases ID [ID ...].")
    unl = set(unlabeled_only)
    annotated = [c for c in train_cases if c not in unl]
    groups = group_cases(annotated, group_regex)
    names = sorted(groups)
    if labeled_ids is not None:
        wanted = list(dict.fromkeys(labeled_ids))
        chosen_cases = []
        unknown, excluded = [], []
        known_groups = set() if known_cases is None else {group_of(c, group_regex) for c in known_cases}
        for w in wanted:
            if w in groups:
                chosen_cases += groups[w]
            elif w in annotated:
                # a single case id: take its whole group so that a patient is never split
                chosen_cases += groups[group_of(w, group_regex)]
            elif known_cases is not None and w not in unl and (w in known_cases or w in known_groups):
                excluded.append(w)
            else:
                unknown.append(w)
        if unknown:
            extra = [u for u in unknown if u in unl]
            hint = (f" ({short_list(sorted(extra), 10)} have no annotation)" if extra else
                    " (unknown ids, or validation cases of this fold)")
            raise SplitError(f"Fold {fold_name}: labeled ids not among the fold's annotated training cases or "
                             f"groups: {short_list(sorted(unknown), 10)}{hint}. Check the ids against splits_final.json.")
        labeled = sorted(set(chosen_cases))
        if excluded and not labeled:
            raise SplitError(f"Fold {fold_name}: every labeled id ({short_list(sorted(excluded), 10)}) is a validation case of this "
                             f"fold, so the fold would have zero labeled cases.")
    else:
        excluded = []
        if fraction is not None:
            if not 0.0 < fraction < 1.0:
                raise SplitError(f"--fraction must be in (0, 1), got {fraction}.")
            n_labeled = max(1, int(round(fraction * len(names))))
        if n_labeled is None or n_labeled < 1:
            raise SplitError(f"--labeled must be at least 1, got {n_labeled}.")
        if n_labeled > len(names):
            raise SplitError(f"Fold {fold_name}: asked for {n_labeled} labeled groups but the fold has only "
                             f"{len(names)} annotated training groups.")
        rng = np.random.RandomState(seed)
        picked = [names[i] for i in rng.permutation(len(names))[:n_labeled]]
        labeled = sorted(c for g in picked for c in groups[g])
    unlabeled = sorted(set(train_cases) - set(labeled))
    out = {"labeled": labeled, "unlabeled": unlabeled}
    if excluded:
        out["excluded_validation"] = sorted(excluded)
    return out


def make_setting(folds: List[dict], setting: str, *, n_labeled: Optional[int] = None,
                 fraction: Optional[float] = None, labeled_ids: Optional[Sequence[str]] = None,
                 group_regex: Optional[str] = None, seed: int = 0, unlabeled_only: Sequence[str] = (),
                 all_cases: Optional[Sequence[str]] = None, created_by: str = "") -> dict:
    """The content of ``splits_semicl_<setting>.json`` for every fold of ``folds`` (and fold 'all')."""
    check_setting_name(setting)
    known = sorted({c for f in folds for c in list(f["train"]) + list(f["val"])} | set(all_cases or []))
    kw = dict(n_labeled=n_labeled, fraction=fraction, labeled_ids=labeled_ids, group_regex=group_regex,
              seed=seed, unlabeled_only=unlabeled_only, known_cases=known)
    out = {"version": 1, "setting": setting, "created_by": created_by,
           "group_regex": group_regex, "seed": seed,
           "folds": [choose_labeled(f["train"], fold_name=str(k), **kw) for k, f in enumerate(folds)]}
    if all_cases is not None:
        out["all"] = choose_labeled(sorted(all_cases), fold_name="all", **kw)
    for k, f in enumerate(folds):
        validate_fold_sets(out["folds"][k], f["train"], str(k), unlabeled_only)
    if "all" in out:
        validate_fold_sets(out["all"], sorted(all_cases), "all", unlabeled_only)
    return out


def validate_fold_sets(sets: dict, train_cases: Sequence[str], fold_name: str,
                       unlabeled_only: Sequence[str] = (), source: str = "the split") -> None:
    """Raise :class:`SplitError` unless ``sets`` partitions ``train_cases`` into non-empty labeled/unlabeled."""
    for key in ("labeled", "unlabeled"):
        if key not in sets or not isinstance(sets[key], list):
            raise SplitError(f"{source}, fold {fold_name}: missing list '{key}'.")
    lab, unl, tr = set(sets["labeled"]), set(sets["unlabeled"]), set(train_cases)
    if len(lab) != len(sets["labeled"]) or len(unl) != len(sets["unlabeled"]):
        raise SplitError(f"{source}, fold {fold_name}: duplicate case ids in the labeled or unlabeled list.")
    if lab & unl:
        raise SplitError(f"{source}, fold {fold_name}: cases both labeled and unlabeled: {short_list(sorted(lab & unl), 10)}.")
    if lab - tr:
        raise SplitError(f"{source}, fold {fold_name}: labeled cases that are not training cases of this fold "
                         f"(unknown ids or validation cases): {short_list(sorted(lab - tr), 10)}.")
    if unl - tr:
        raise SplitError(f"{source}, fold {fold_name}: unlabeled cases that are not training cases of this fold "
                         f"(unknown ids or validation cases): {short_list(sorted(unl - tr), 10)}.")
    if tr - lab - unl:
        raise SplitError(f"{source}, fold {fold_name}: training cases neither labeled nor unlabeled: "
                         f"{short_list(sorted(tr - lab - unl), 10)}. Every training case must be in one list; regenerate the "
                         f"split with `nnunet_semicl split` after changing splits_final.json.")
    no_gt = lab & set(unlabeled_only)
    if no_gt:
        raise SplitError(f"{source}, fold {fold_name}: cases without annotation listed as labeled: {short_list(sorted(no_gt), 10)}.")
    if not lab:
        raise SplitError(f"{source}, fold {fold_name}: zero labeled cases. Use --labeled N with N >= 1.")
    if not unl:
        raise SplitError(f"{source}, fold {fold_name}: zero unlabeled cases, so there is nothing for "
                         f"semi-supervised training. Label fewer cases, or add unlabeled images with "
                         f"`nnunet_semicl add-unlabeled`.")

#: nnU-Net's own checkpoint interval (epochs); shorter schedules save more often (:func:`default_save_every`)
NNUNET_SAVE_EVERY = 50


def default_save_every(num_epochs: int) -> int:
    """Checkpoint interval for a schedule of ``num_epochs``: about ten checkpoints, at most nnU-Net's 50.

    nnU-Net writes ``checkpoint_latest.pth`` every 50 epochs; a 5-epoch schedule would never write one,
    so a killed run could not be continued with ``--c``.
    """
    return max(1, min(NNUNET_SAVE_EVERY, int(num_epochs) // 10))


def read_default_setting(preprocessed_base: str) -> Optional[dict]:
    """The dataset's default setting as a plans-style block (plus ``"default_file"``), or None."""
    path = os.path.join(preprocessed_base, DEFAULT_SETTING_FILE)
    if not os.path.isfile(path):
        return None
    content = load_json(path)
    if not isinstance(content, dict) or not isinstance(content.get("setting"), str):
        raise SplitError(f"{path} must be {{\"setting\": NAME, ...}}; fix it, or delete it to train without a default "
                         f"setting.")
    check_setting_name(content["setting"])
    block = {"setting": content["setting"], "split_file": split_file_name(content["setting"]), "default_file": path}
    if content.get("trainer"):
        block["trainer"] = dict(content["trainer"])
    return block


def setting_block(plans: dict, dataset_json: dict, preprocessed_base: str) -> Optional[dict]:
    """The setting a training uses: the plans' ``semicl`` block (``-p <plans>_<setting>``); else, on a dataset
    without images added by ``add-unlabeled``, the dataset's default setting; else None."""
    block = plans.get(PLANS_BLOCK)
    if block is not None:
        return block
    if truly_unlabeled_cases(dataset_json):
        return None
    return read_default_setting(preprocessed_base)


def read_folds(preprocessed_base: str) -> Optional[List[dict]]:
    path = os.path.join(preprocessed_base, "splits_final.json")
    if not os.path.isfile(path):
        return None
    folds = load_json(path)
    if not isinstance(folds, list) or not all(isinstance(f, dict) and "train" in f and "val" in f for f in folds):
        raise SplitError(f"{path} is not a list of {{'train': [...], 'val': [...]}} folds.")
    if not folds:
        raise SplitError(f"{path} holds no folds ([]). Delete it (`nnunet_semicl split` and nnU-Net's training then "
                         f"create the 5-fold split), or write the folds as [{{'train': [...], 'val': [...]}}, ...].")
    return folds


# ------------------------------------------------------------------------------------------------
# what the trainer asks
# ------------------------------------------------------------------------------------------------
def resolve_case_sets(plans: dict, dataset_json: dict, preprocessed_base: str, fold, train_cases: Sequence[str],
                      dataset_name: str = "") -> CaseSets:
    """The labeled and unlabeled training cases of ``fold`` for a training run.

    1. Plans with a ``"semicl"`` block (selected with ``-p <plans>_<setting>``): its split file.
    2. Otherwise, a dataset with truly unlabeled images: those are unlabeled, the rest labeled.
    3. Otherwise, the dataset's default setting (``semicl_default_setting.json``, written by the
       converters and by ``split --default``): its split file.
    4. Otherwise: a :class:`SplitError` that says how to create a setting.

    Images without annotation that are training cases but not in the setting's lists (added with
    ``add-unlabeled`` after the setting was made) join its unlabeled cases.
    """
    unlabeled_only = truly_unlabeled_cases(dataset_json)
    block = setting_block(plans, dataset_json, preprocessed_base)
    ds = dataset_name or plans.get("dataset_name", "<dataset>")
    if block is not None:
        split_path = os.path.join(preprocessed_base, block.get("split_file", ""))
        selected = (f"the dataset's default setting ({block['default_file']})" if "default_file" in block
                    else f"the plans '{plans.get('plans_name')}'")
        if not os.path.isfile(split_path):
            raise SplitError(f"{selected} name the labeled split {split_path}, which does not exist. Recreate it "
                             f"with `nnunet_semicl split {ds} ... --name {block.get('setting')}`.")
        content = load_json(split_path)
        if str(fold) == "all":
            if "all" not in content:
                raise SplitError(f"{split_path} has no entry for fold 'all'; recreate it with `nnunet_semicl split`.")
            sets = content["all"]
        else:
            folds = content.get("folds", [])
            if int(fold) >= len(folds):
                raise SplitError(f"{split_path} defines {len(folds)} folds, but fold {fold} was requested. Use a "
                                 f"fold in 0..{len(folds) - 1} or regenerate the split after changing "
                                 f"splits_final.json.")
            sets = folds[int(fold)]
        late = sorted((set(train_cases) & set(unlabeled_only)) - set(sets.get("labeled", []))
                      - set(sets.get("unlabeled", [])))
        if late:
            sets = {**sets, "unlabeled": list(sets.get("unlabeled", [])) + late}
        validate_fold_sets(sets, train_cases, str(fold), unlabeled_only, source=split_path)
        source = f"{split_path} (setting '{block.get('setting')}'"
        source += ", the dataset's default: no -p given)" if "default_file" in block else ")"
        if late:
            source += f" + {len(late)} images without annotation added after it"
        return CaseSets(tuple(sorted(sets["labeled"])), tuple(sorted(sets["unlabeled"])), source)
    if unlabeled_only:
        unl = sorted(set(train_cases) & set(unlabeled_only))
        sets = {"labeled": sorted(set(train_cases) - set(unl)), "unlabeled": unl}
        validate_fold_sets(sets, train_cases, str(fold), unlabeled_only, source="dataset.json unlabeled images")
        return CaseSets(tuple(sets["labeled"]), tuple(sets["unlabeled"]),
                        f"dataset.json '{UNLABELED_KEY}' ({len(unl)} images without annotation)")
    raise SplitError(
        f"No unlabeled cases for {ds}: the plans '{plans.get('plans_name')}' select no labeled subset, the dataset "
        f"has no default setting ({DEFAULT_SETTING_FILE}) and no images without annotation. Either create a "
        f"setting, e.g. `nnunet_semicl split {ds} --fraction 0.1 --name 10pct` and train with "
        f"`-p {plans.get('plans_name')}_10pct` (add --default to make it the setting used without -p), or add "
        f"unlabeled images with `nnunet_semicl add-unlabeled {ds} -i FOLDER`.")


def check_resumed_case_sets(old: CaseSets, new: CaseSets, unlabeled_only: Sequence[str]) -> Tuple[str, ...]:
    """Whether a run continued with ``--c`` may use ``new`` after its checkpoint recorded ``old``.

    Safe: the same labeled cases, and unlabeled cases that only grew by images without annotation
    (added with ``add-unlabeled``): no annotation can reach the run and no case changes role.
    Anything else (a labeled case added or removed, an annotated case moved between the lists, an
    unlabeled case gone) would make the run's recorded sets wrong: a :class:`SplitError`. Returns
    the added images.
    """
    added = tuple(sorted(set(new.unlabeled) - set(old.unlabeled)))
    problems = []
    if set(new.labeled) != set(old.labeled):
        problems.append(f"labeled cases +{short_list(sorted(set(new.labeled) - set(old.labeled)), 10) or '-'} "
                        f"-{short_list(sorted(set(old.labeled) - set(new.labeled)), 10) or '-'}")
    gone = set(old.unlabeled) - set(new.unlabeled)
    if gone:
        problems.append(f"unlabeled cases removed: {short_list(sorted(gone), 10)}")
    annotated = set(added) - set(unlabeled_only)
    if annotated:
        problems.append(f"annotated cases became unlabeled: {short_list(sorted(annotated), 10)}")
    if problems:
        raise SplitError(f"The labeled/unlabeled split of this run changed since its checkpoint was written "
                         f"({new.source}): {'; '.join(problems)}. Restore the original split file, or start a new "
                         f"run (another setting name) instead of continuing with --c.")
    return added
