"""Plans-file helpers: tiny inherited configurations for CPU runs, and keeping setting variants in sync.

A tiny configuration is an nnU-Net *inherited configuration* added to a plans file::

    "2d_tiny": {"inherits_from": "2d", "patch_size": [...], "batch_size": ..., "architecture": {...}}

It reuses the parent's preprocessed data (same ``data_identifier``), so nothing is preprocessed
again, and it changes nothing for the real configurations. Train it with the stock command, e.g.
``nnUNetv2_train 990 2d_tiny 0 -tr nnUNetTrainerACTIONpp -p nnUNetPlans_10pct -device cpu``.
"""
import copy
import glob
import os
from typing import List, Optional, Sequence

import numpy as np

from nnunet_semicl.data.setting_files import plans_variant, write_plans_variant
from nnunet_semicl.data.splits import PLANS_BLOCK
from nnunet_semicl.errors import InputError
from nnunet_semicl.files import load_json, save_json


def resolved_configuration(plans: dict, name: str) -> dict:
    """A configuration with its ``inherits_from`` chain applied (shallow, like nnU-Net's PlansManager)."""
    cfgs = plans["configurations"]
    if name not in cfgs:
        raise InputError(f"Configuration '{name}' is not in the plans (available: {sorted(cfgs)}).")
    cfg = cfgs[name]
    if "inherits_from" in cfg:
        parent = resolved_configuration(plans, cfg["inherits_from"])
        parent = copy.deepcopy(parent)
        parent.update({k: v for k, v in cfg.items() if k != "inherits_from"})
        return parent
    return copy.deepcopy(cfg)


def make_tiny_configuration(plans: dict, parent: str, patch_size: Optional[Sequence[int]] = None,
                            feature_divisor: int = 4, max_features: int = 64, max_stages: int = 4,
                            batch_size: Optional[int] = None, strides: Optional[Sequence[Sequence[int]]] = None,
                            kernel_size: Optional[int] = None, features_per_stage: Optional[Sequence[int]] = None
                            ) -> dict:
    """An inherited configuration with a small patch, few stages and narrow features.

    Defaults: patch at most 32 voxels per axis in 3D and 64 in 2D (rounded down to the stride
    product), at most 4 stages, feature widths divided by 4 and capped at 64, the parent's strides
    (``strides``: one per stage, one value per axis, instead; the first ``max_stages`` are used) and
    kernels (``kernel_size``: that size on every axis of every stage instead); ``features_per_stage``:
    the widths (one per stage at least) instead of the parent's divided and capped ones.
    """
    given = {"--feature-divisor": feature_divisor, "--max-features": max_features, "--batch-size": batch_size}
    bad = {k: v for k, v in given.items() if v is not None and v < 1}
    if bad:
        raise InputError(f"tiny configuration: {', '.join(f'{k} {v}' for k, v in bad.items())}: must be at least 1.")
    cfg = resolved_configuration(plans, parent)
    arch = copy.deepcopy(cfg["architecture"])
    kw = arch["arch_kwargs"]
    dim = len(cfg["patch_size"])
    n = min(int(kw["n_stages"]), max_stages)
    if strides is not None:
        n = min(n, len(strides))
    strides = [list(s) if isinstance(s, (list, tuple)) else [s] * dim for s in strides or kw["strides"]][:n]
    if any(len(s) != dim for s in strides):
        raise InputError(f"strides {strides}: each stage needs {dim} values (configuration '{parent}' is {dim}D).")
    total = np.prod(np.array(strides), axis=0)
    if patch_size is None:
        cap = 32 if dim == 3 else 64
        patch_size = [max(int(t), (min(int(p), cap) // int(t)) * int(t)) for p, t in zip(cfg["patch_size"], total)]
    patch_size = [int(p) for p in patch_size]
    if len(patch_size) != dim:
        raise InputError(f"patch size {patch_size} has {len(patch_size)} axes, configuration '{parent}' has {dim}.")
    bad = [(p, int(t)) for p, t in zip(patch_size, total) if p % int(t) != 0]
    if bad:
        raise InputError(f"tiny patch {patch_size} is not divisible by the network's total stride {list(map(int, total))}.")
    kw["n_stages"] = n
    if features_per_stage is not None and len(features_per_stage) < n:
        raise InputError(f"features per stage {list(features_per_stage)}: {n} stages need {n} widths.")
    kw["features_per_stage"] = ([int(f) for f in features_per_stage[:n]] if features_per_stage is not None else
                                [max(4, min(max_features, int(f) // feature_divisor)) for f in kw["features_per_stage"][:n]])
    kw["strides"] = strides
    for key in ("kernel_sizes", "n_conv_per_stage", "n_blocks_per_stage"):
        if key in kw:
            kw[key] = kw[key][:n]
    if kernel_size is not None:
        kw["kernel_sizes"] = [[int(kernel_size)] * dim for _ in range(n)]
    if "n_conv_per_stage_decoder" in kw:
        kw["n_conv_per_stage_decoder"] = kw["n_conv_per_stage_decoder"][:n - 1]
    return {"inherits_from": parent, "patch_size": patch_size,
            "batch_size": int(batch_size if batch_size is not None else min(int(cfg["batch_size"]), 4)),
            "architecture": arch}


def add_tiny_configuration(preprocessed_base: str, parent: str, name: Optional[str] = None,
                           plans_identifiers: Optional[Sequence[str]] = None, overwrite: bool = False,
                           **kwargs) -> List[str]:
    """Add ``<parent>_tiny`` (or ``name``) to a plans file and to every semi-supervised variant of it."""
    name = name or f"{parent}_tiny"
    if plans_identifiers is None:
        plans_identifiers = ["nnUNetPlans"]
    targets = []
    for ident in plans_identifiers:
        path = os.path.join(preprocessed_base, ident + ".json")
        if not os.path.isfile(path):
            raise InputError(f"{path} does not exist. Run nnUNetv2_plan_and_preprocess first.")
        targets.append(path)
        targets += [p for p in setting_variants(preprocessed_base, ident)]
    written = []
    for path in targets:
        plans = load_json(path)
        tiny = make_tiny_configuration(plans, parent, **kwargs)
        existing = plans["configurations"].get(name)
        if existing is not None and existing != tiny and not overwrite:
            raise InputError(f"{path} already has a different configuration '{name}'; pass --overwrite or "
                             f"choose another --name.")
        plans["configurations"][name] = tiny
        save_json(plans, path)
        written.append(path)
    return written


def setting_variants(preprocessed_base: str, base_identifier: str) -> List[str]:
    """Plans files in ``preprocessed_base`` that are semi-supervised settings derived from ``base_identifier``."""
    out = []
    for p in sorted(glob.glob(os.path.join(preprocessed_base, f"{base_identifier}_*.json"))):
        try:
            block = load_json(p).get(PLANS_BLOCK)
        except Exception:
            continue
        if block and block.get("base_plans") == base_identifier:
            out.append(p)
    return out


def sync_setting_variants(preprocessed_base: str, base_identifier: str = "nnUNetPlans") -> List[str]:
    """Create or refresh the plans variant of every ``splits_semicl_<setting>.json`` in the folder.

    Missing variants are created (dataset converters write split files before planning); existing
    ones are re-derived from the (re-planned) base plans, keeping their semicl block and any
    configuration that exists only in the variant (e.g. a tiny configuration added later).
    """
    base_path = os.path.join(preprocessed_base, base_identifier + ".json")
    if not os.path.isfile(base_path):
        raise InputError(f"{base_path} does not exist. Run nnUNetv2_plan_and_preprocess first.")
    base = load_json(base_path)
    updated = []
    existing = {load_json(p)[PLANS_BLOCK]["setting"]: p for p in setting_variants(preprocessed_base, base_identifier)}
    for split in sorted(glob.glob(os.path.join(preprocessed_base, "splits_semicl_*.json"))):
        setting = os.path.basename(split)[len("splits_semicl_"):-len(".json")]
        if setting not in existing:
            updated.append(write_plans_variant(preprocessed_base, setting, base_identifier))
    for setting, path in existing.items():
        old = load_json(path)
        block = old[PLANS_BLOCK]
        new = plans_variant(base, base_identifier, block["setting"], block.get("trainer"))
        for cname, c in old["configurations"].items():
            new["configurations"].setdefault(cname, c)
        new[PLANS_BLOCK] = block
        if new != old:
            save_json(new, path)
            updated.append(path)
    return updated
