"""Plans of another dataset, a --c checkpoint of another trainer, pretrained weights of another network are
refused with a message that says what to do (issue 31, rows 6 and 12)."""
import json

import pytest
import torch

from nnunet_semicl.errors import InputError
from nnunet_semicl.training.compatibility import (IncompatibleRunError, check_plans_dataset,
                                                  check_pretrained_weights, check_resumed_trainer,
                                                  pretrained_weights_path, requested_dataset)


def test_the_command_line_of_nnunetv2_train_is_read():
    argv = ["/venv/bin/nnUNetv2_train", "Dataset901_A", "3d_fullres", "0", "-tr", "nnUNetTrainerLabeledOnly",
            "-p", "nnUNetPlans_la5", "-pretrained_weights", "/x/ckpt.pth"]
    assert requested_dataset(argv) == "Dataset901_A"
    assert pretrained_weights_path(argv) == "/x/ckpt.pth"
    assert pretrained_weights_path(argv[:-2] + ["-pretrained_weights=/y.pth"]) == "/y.pth"
    assert pretrained_weights_path(argv[:-2] + ["-pretrained", "/z.pth"]) == "/z.pth"
    assert pretrained_weights_path(argv[:-2]) is None
    other = ["/usr/bin/pytest", "Dataset901_A", "-pretrained_weights", "/x"]
    assert requested_dataset(other) is None and pretrained_weights_path(other) is None


def test_plans_of_another_dataset_are_refused(tmp_path):
    ds = {"labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz", "numTraining": 4}
    (tmp_path / "dataset.json").write_text(json.dumps(ds))
    check_plans_dataset("nnUNetPlans_la5", "Dataset901_A", str(tmp_path), ds, "Dataset901_A")   # its own: fine
    check_plans_dataset("nnUNetPlans_la5", "Dataset901_A", str(tmp_path), ds, None)
    with pytest.raises(IncompatibleRunError) as e:        # the case: -p names a copy from 901 in 902
        check_plans_dataset("nnUNetPlans_la5", "Dataset901_A", str(tmp_path), ds, "Dataset902_B")
    msg = str(e.value)
    assert "belong to Dataset901_A" in msg and "not to Dataset902_B" in msg and "nnUNetv2_move_plans" in msg
    assert isinstance(e.value, InputError)
    other = dict(ds, labels={"background": 0, "b": 1, "c": 2})   # no command line: the dataset.json differs
    with pytest.raises(IncompatibleRunError, match="differs from the dataset.json"):
        check_plans_dataset("nnUNetPlans_la5", "Dataset901_A", str(tmp_path), other, None)


def test_continuing_another_trainers_checkpoint_is_refused():
    check_resumed_trainer("c.pth", {"trainer_name": "nnUNetTrainerACTION"}, "nnUNetTrainerACTION")
    check_resumed_trainer("c.pth", {}, "nnUNetTrainerACTION")   # no name recorded: nothing to compare
    with pytest.raises(IncompatibleRunError) as e:
        check_resumed_trainer("/r/c.pth", {"trainer_name": "nnUNetTrainerMeanTeacher"}, "nnUNetTrainerACTION")
    msg = str(e.value)
    assert "/r/c.pth was written by nnUNetTrainerMeanTeacher" in msg and "-tr nnUNetTrainerMeanTeacher" in msg
    assert "-pretrained_weights" in msg


def _net(width, classes):
    return torch.nn.ModuleDict({"encoder": torch.nn.Conv2d(1, width, 3),
                                "decoder": torch.nn.ModuleDict({"seg_layers": torch.nn.Conv2d(width, classes, 1)})})


def test_pretrained_weights_must_fit_the_network():
    mine = _net(8, 3).state_dict()
    ckpt = {"trainer_name": "nnUNetTrainer", "network_weights": _net(8, 5).state_dict()}   # other output layer
    assert check_pretrained_weights("p.pth", ckpt, mine, "nnUNetTrainerACTION") == "nnUNetTrainer"
    wide = {"trainer_name": "nnUNetTrainerMONA", "init_args": {"configuration": "3d_fullres"},
            "network_weights": _net(16, 3).state_dict()}
    with pytest.raises(IncompatibleRunError) as e:
        check_pretrained_weights("p.pth", wide, mine, "nnUNetTrainerACTION")
    msg = str(e.value)
    assert "written by nnUNetTrainerMONA" in msg and "'3d_fullres'" in msg and "encoder.weight (16, 1, 3, 3)" in msg
    with pytest.raises(IncompatibleRunError, match="encoder.bias missing"):
        check_pretrained_weights("p.pth", {"network_weights": {"encoder.weight": mine["encoder.weight"]}}, mine, "T")


def test_the_trainer_refuses_to_continue_another_trainers_checkpoint(tmp_path):
    from tests.unit.test_checkpoint_save import bare_trainer

    t = bare_trainer([])
    t.__dict__.update(was_initialized=True, device=torch.device("cpu"))
    path = str(tmp_path / "checkpoint_latest.pth")
    torch.save({"network_weights": t.network.state_dict(), "trainer_name": "nnUNetTrainerMeanTeacher"}, path)
    with pytest.raises(IncompatibleRunError, match="-tr nnUNetTrainerMeanTeacher"):
        t.load_checkpoint(path)


def test_the_trainer_checks_pretrained_weights_safely(tmp_path):
    from nnunet_semicl.training.labeled_only import CheckpointError
    from tests.unit.test_checkpoint_save import bare_trainer

    log = []
    t = bare_trainer(log)
    t._unwrapped_network = lambda: t.network
    good = str(tmp_path / "good.pth")
    torch.save({"network_weights": t.network.state_dict(), "trainer_name": "nnUNetTrainer"}, good)
    t.check_pretrained_weights(good)
    assert "written by nnUNetTrainer" in log[-1]
    bad = str(tmp_path / "bad.pth")
    torch.save({"network_weights": torch.nn.Conv2d(1, 4, 3).state_dict(), "trainer_name": "nnUNetTrainer"}, bad)
    with pytest.raises(IncompatibleRunError, match="weight .4, 1, 3, 3. instead of .2, 1, 3, 3."):
        t.check_pretrained_weights(bad)
    evil = str(tmp_path / "evil.pth")
    torch.save({"network_weights": {}, "x": _Code()}, evil)
    with pytest.raises(CheckpointError, match="evil.pth"):
        t.check_pretrained_weights(evil)


class _Code:
    def __reduce__(self):
        return (print, ("code ran",))
