import copy
import json

import numpy as np
import pytest

from nnunet_semicl.data.plans_tools import (add_tiny_configuration, make_tiny_configuration,
                                            sync_setting_variants)
from nnunet_semicl.data.setting_files import write_split_file, write_setting
from nnunet_semicl.data.splits import make_setting
from nnunet_semicl.errors import InputError

ARCH3D = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
          "arch_kwargs": {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
                          "conv_op": "torch.nn.modules.conv.Conv3d",
                          "kernel_sizes": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                          "strides": [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                          "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5, "conv_bias": True},
          "_kw_requires_import": ["conv_op"]}
PLANS = {"dataset_name": "Dataset001_X", "plans_name": "nnUNetPlans",
         "configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "patch_size": [20, 256, 224],
                                           "batch_size": 2, "architecture": ARCH3D}}}


def test_tiny_configuration_is_consistent():
    tiny = make_tiny_configuration(PLANS, "3d_fullres")
    kw = tiny["architecture"]["arch_kwargs"]
    assert tiny["inherits_from"] == "3d_fullres" and "data_identifier" not in tiny  # reuses the parent's data
    assert kw["n_stages"] == 4 and len(kw["strides"]) == 4 and len(kw["n_conv_per_stage_decoder"]) == 3
    assert kw["features_per_stage"] == [8, 16, 32, 64]
    total = np.prod(np.array(kw["strides"]), axis=0)
    assert all(p % t == 0 for p, t in zip(tiny["patch_size"], total))
    assert max(tiny["patch_size"]) <= 32
    assert PLANS["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["n_stages"] == 6  # not modified
    with pytest.raises(InputError, match="divisible"):
        make_tiny_configuration(PLANS, "3d_fullres", patch_size=[10, 30, 30])


def test_tiny_configuration_width_options():
    # the demo's network: half the parent's widths, capped at 128 (nnunet_semicl/demo.py TINY_WIDTH)
    def widths(**kw):
        return make_tiny_configuration(PLANS, "3d_fullres", **kw)["architecture"]["arch_kwargs"]["features_per_stage"]
    assert widths(feature_divisor=2, max_features=128) == [16, 32, 64, 128]
    assert widths(feature_divisor=1, max_features=100) == [32, 64, 100, 100]
    for bad, named in (({"feature_divisor": 0}, "--feature-divisor 0"), ({"max_features": 0}, "--max-features 0"),
                       ({"batch_size": 0}, "--batch-size 0")):
        with pytest.raises(InputError, match=f"{named}: must be at least 1"):
            make_tiny_configuration(PLANS, "3d_fullres", **bad)


def test_tiny_configuration_own_strides_kernels_and_widths():
    """The LA CPU protocol's network on an anisotropic parent: its own strides (fewer stages than given: the first
    ones), 3 x 3 x 3 kernels everywhere and explicit widths; wrong shapes are refused."""
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    tiny = make_tiny_configuration(PLANS, "3d_fullres", patch_size=[32, 64, 64], max_stages=5, strides=strides,
                                   kernel_size=3, features_per_stage=[16, 32, 64, 128, 256, 512])
    kw = tiny["architecture"]["arch_kwargs"]
    assert kw["n_stages"] == 5 and kw["strides"] == strides and kw["kernel_sizes"] == [[3, 3, 3]] * 5
    assert kw["features_per_stage"] == [16, 32, 64, 128, 256] and len(kw["n_conv_per_stage_decoder"]) == 4
    assert make_tiny_configuration(PLANS, "3d_fullres", patch_size=[8, 16, 16], max_stages=5,
                                   strides=strides[:3])["architecture"]["arch_kwargs"]["n_stages"] == 3
    assert ARCH3D["arch_kwargs"]["kernel_sizes"][0] == [1, 3, 3]   # the parent's plans are not modified
    with pytest.raises(InputError, match="each stage needs 3 values"):
        make_tiny_configuration(PLANS, "3d_fullres", patch_size=[32, 64, 64], strides=[[1, 1], [2, 2]])
    with pytest.raises(InputError, match="4 stages need 4 widths"):
        make_tiny_configuration(PLANS, "3d_fullres", features_per_stage=[16, 32])
    with pytest.raises(InputError, match="not divisible"):
        make_tiny_configuration(PLANS, "3d_fullres", patch_size=[36, 64, 64], max_stages=5, strides=strides)


def test_tiny_config_command_passes_the_width_options(tmp_path, monkeypatch, capsys):
    from nnunet_semicl import cli
    base = tmp_path / "Dataset001_X"
    base.mkdir()
    (base / "nnUNetPlans.json").write_text(json.dumps(PLANS))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setattr("nnunet_semicl.data.dataset_lookup.resolve_dataset_name", lambda *a, **k: "Dataset001_X")
    cli.main(["tiny-config", "1", "-c", "3d_fullres", "--feature-divisor", "2", "--max-features", "128"])
    tiny = json.loads((base / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres_tiny"]
    assert tiny["architecture"]["arch_kwargs"]["features_per_stage"] == [16, 32, 64, 128]
    with pytest.raises(SystemExit) as exit_:  # a 0 is refused, not ignored
        cli.main(["tiny-config", "1", "-c", "3d_fullres", "--overwrite", "--batch-size", "0"])
    assert exit_.value.code == 2
    assert "argument --batch-size: must be a whole number >= 1, got 0" in capsys.readouterr().err


def test_tiny_configuration_builds_with_nnunet(tmp_path):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["3d_fullres_tiny"] = make_tiny_configuration(plans, "3d_fullres")
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres_tiny")
    assert cm.data_identifier == "nnUNetPlans_3d_fullres"
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 1, 3, deep_supervision=False)
    import torch
    assert net(torch.zeros(1, 1, *cm.patch_size)).shape[2:] == torch.Size(cm.patch_size)


def test_add_tiny_and_sync_variants(tmp_path):
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(PLANS))
    folds = [{"train": ["a", "b", "c"], "val": ["d"]}]
    write_setting(str(tmp_path), make_setting(folds, "s1", n_labeled=1))
    written = add_tiny_configuration(str(tmp_path), "3d_fullres")
    assert len(written) == 2  # base plans and the s1 variant
    # a converter writes a split file before planning: sync-plans creates the missing variant
    write_split_file(str(tmp_path), make_setting(folds, "s2", n_labeled=2))
    base = json.loads((tmp_path / "nnUNetPlans.json").read_text())
    base["configurations"]["3d_fullres"]["batch_size"] = 5  # re-planned
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(base))
    updated = sync_setting_variants(str(tmp_path))
    assert sorted(map(lambda p: p.split("/")[-1], updated)) == ["nnUNetPlans_s1.json", "nnUNetPlans_s2.json"]
    for s in ("s1", "s2"):
        v = json.loads((tmp_path / f"nnUNetPlans_{s}.json").read_text())
        assert v["configurations"]["3d_fullres"]["batch_size"] == 5 and v["semicl"]["setting"] == s
        assert "3d_fullres_tiny" in v["configurations"]
    assert sync_setting_variants(str(tmp_path)) == []  # idempotent
