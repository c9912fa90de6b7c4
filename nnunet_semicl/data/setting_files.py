"""Writing a setting's files: the split file, the plans variant and the dataset's default setting.

What the files hold and how trainers read them is :mod:`nnunet_semicl.data.splits`. Every writer
refuses to replace a file with different content unless told to overwrite, and the ``check_*``
functions make the same checks without writing, so that a command can refuse before it writes
anything.
"""
import copy
import os
from typing import Optional, Tuple

from nnunet_semicl.data.splits import DEFAULT_SETTING_FILE, PLANS_BLOCK, check_setting_name, split_file_name
from nnunet_semicl.errors import SplitError
from nnunet_semicl.files import load_json, save_json


def plans_variant(base_plans: dict, base_identifier: str, setting: str,
                  trainer_overrides: Optional[dict] = None) -> dict:
    plans = copy.deepcopy(base_plans)
    plans["plans_name"] = f"{base_identifier}_{setting}"
    plans[PLANS_BLOCK] = {"setting": setting, "split_file": split_file_name(setting),
                          "base_plans": base_identifier}
    if trainer_overrides:
        plans[PLANS_BLOCK]["trainer"] = dict(trainer_overrides)
    return plans


def differs_from_file(path: str, content) -> bool:
    """Whether ``path`` exists with other content than ``content`` (``created_by`` aside: the same
    setting made by another command line is the same setting)."""
    if not os.path.isfile(path):
        return False
    strip = lambda d: {k: v for k, v in d.items() if k != "created_by"} if isinstance(d, dict) else d
    return strip(load_json(path)) != strip(content)


def _check_replace(path: str, content: dict, overwrite: bool) -> None:
    if not overwrite and differs_from_file(path, content):
        raise SplitError(f"{path} already exists with different content. Choose another --name, or pass "
                         f"--overwrite to replace it (results of earlier runs stay in their own results "
                         f"folders).")


def write_split_file(preprocessed_base: str, setting_content: dict, overwrite: bool = False) -> str:
    """Write ``splits_semicl_<setting>.json`` (dataset converters call this before planning)."""
    path = os.path.join(preprocessed_base, split_file_name(setting_content["setting"]))
    _check_replace(path, setting_content, overwrite)
    save_json(setting_content, path)
    return path


def load_base_plans(preprocessed_base: str, plans_identifier: str) -> dict:
    """The base plans a setting derives from; refused when missing or when they are a setting themselves."""
    base_plans_path = os.path.join(preprocessed_base, plans_identifier + ".json")
    if not os.path.isfile(base_plans_path):
        raise SplitError(f"{base_plans_path} does not exist. Run nnUNetv2_plan_and_preprocess first (or pass the "
                         f"plans identifier you planned with, e.g. --plans nnUNetResEncUNetMPlans).")
    base = load_json(base_plans_path)
    if PLANS_BLOCK in base:
        raise SplitError(f"{base_plans_path} is itself a semi-supervised setting; pass its base plans "
                         f"('{base[PLANS_BLOCK].get('base_plans')}') instead.")
    return base


def write_plans_variant(preprocessed_base: str, setting: str, plans_identifier: str = "nnUNetPlans",
                        overwrite: bool = False, trainer_overrides: Optional[dict] = None) -> str:
    """Write ``<plans>_<setting>.json``: the base plans plus a semicl block naming the split file.

    ``trainer_overrides`` (e.g. ``{"num_epochs": 10}``) go into the block and are applied by our
    trainers (short schedules for CPU runs, the demo and the tests).
    """
    base_plans = load_base_plans(preprocessed_base, plans_identifier)
    path = os.path.join(preprocessed_base, f"{plans_identifier}_{setting}.json")
    content = plans_variant(base_plans, plans_identifier, setting, trainer_overrides)
    _check_replace(path, content, overwrite)
    save_json(content, path)
    return path


def check_setting_writable(preprocessed_base: str, setting_content: dict, plans_identifier: str = "nnUNetPlans",
                           overwrite: bool = False, trainer_overrides: Optional[dict] = None) -> None:
    """Every check :func:`write_setting` makes, without writing: the base plans exist and are not a
    setting, and neither file of the setting exists with different content (unless ``overwrite``)."""
    setting = setting_content["setting"]
    base = load_base_plans(preprocessed_base, plans_identifier)
    _check_replace(os.path.join(preprocessed_base, split_file_name(setting)), setting_content, overwrite)
    _check_replace(os.path.join(preprocessed_base, f"{plans_identifier}_{setting}.json"),
                   plans_variant(base, plans_identifier, setting, trainer_overrides), overwrite)


def write_setting(preprocessed_base: str, setting_content: dict, plans_identifier: str = "nnUNetPlans",
                  overwrite: bool = False, trainer_overrides: Optional[dict] = None) -> Tuple[str, str]:
    """Write the split file and its plans variant; refuse to replace different existing files."""
    check_setting_writable(preprocessed_base, setting_content, plans_identifier, overwrite, trainer_overrides)
    plans_path = write_plans_variant(preprocessed_base, setting_content["setting"], plans_identifier, overwrite,
                                     trainer_overrides)
    split_path = write_split_file(preprocessed_base, setting_content, overwrite)
    return split_path, plans_path


def default_setting_content(setting: str, trainer_overrides: Optional[dict] = None, created_by: str = "") -> dict:
    """``semicl_default_setting.json``: the setting our trainers use without ``-p`` (same keys as a plans block)."""
    check_setting_name(setting)
    out = {"setting": setting, "split_file": split_file_name(setting), "created_by": created_by}
    if trainer_overrides:
        out["trainer"] = dict(trainer_overrides)
    return out


def check_default_setting_writable(preprocessed_base: str, content: dict, overwrite: bool = False) -> None:
    _check_replace(os.path.join(preprocessed_base, DEFAULT_SETTING_FILE), content, overwrite)


def write_default_setting(preprocessed_base: str, content: dict, overwrite: bool = False) -> str:
    path = os.path.join(preprocessed_base, DEFAULT_SETTING_FILE)
    check_default_setting_writable(preprocessed_base, content, overwrite)
    save_json(content, path)
    return path
