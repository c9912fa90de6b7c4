"""A checkpoint save on a full disk (issue 31, row 11): the temporary file is removed, the previous checkpoint
kept, one message names the folder and the space needed; a save writes the checkpoint once (no 2x scratch copy).
The trainer is built without nnU-Net's initialisation: only what ``save_checkpoint`` reads is set."""
import errno
import os

import pytest
import torch

from nnunet_semicl.training import labeled_only
from nnunet_semicl.training.labeled_only import CheckpointSaveError, nnUNetTrainerLabeledOnly, read_checkpoint


class _Logger:
    def get_checkpoint(self):
        return {"epoch_start_timestamps": [0.0], "epoch_end_timestamps": [1.0]}


def bare_trainer(log):
    t = nnUNetTrainerLabeledOnly.__new__(nnUNetTrainerLabeledOnly)
    net = torch.nn.Conv2d(1, 2, 3)
    t.__dict__.update(local_rank=0, disable_checkpointing=False, is_ddp=False, network=net,
                      optimizer=torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9), grad_scaler=None,
                      logger=_Logger(), _best_ema=None, current_epoch=4, my_init_kwargs={"fold": 0},
                      inference_allowed_mirroring_axes=(0, 1), case_sets=None)
    t.print_to_log_file = lambda *a, **k: log.append(" ".join(map(str, a)))
    return t


def test_a_save_writes_one_file_with_the_semicl_block(tmp_path, monkeypatch):
    t = bare_trainer([])
    path = str(tmp_path / "checkpoint_latest.pth")
    seen = []
    real = torch.save

    def spy(obj, f, *a, **k):
        if hasattr(f, "fileno"):
            seen.append(sorted(os.listdir(tmp_path)))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", spy)
    t.save_checkpoint(path)
    assert seen == [["checkpoint_latest.pth.tmp"]]   # no scratch copy of nnU-Net's beside it
    assert os.listdir(tmp_path) == ["checkpoint_latest.pth"]
    ckpt = read_checkpoint(path)
    assert ckpt["trainer_name"] == "nnUNetTrainerLabeledOnly" and ckpt["current_epoch"] == 5
    assert ckpt["semicl"] == {"case_sets": None}
    assert torch.equal(ckpt["network_weights"]["weight"], t.network.weight)


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_what_is_needed(tmp_path, monkeypatch):
    log = []
    t = bare_trainer(log)
    path = str(tmp_path / "checkpoint_latest.pth")
    t.save_checkpoint(path)
    before = open(path, "rb").read()
    real = torch.save

    def disk_full(obj, f, *a, **k):      # half of the checkpoint reaches the disk, then ENOSPC
        if not hasattr(f, "fileno"):
            return real(obj, f, *a, **k)
        import io
        buf = io.BytesIO()
        real(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with torch.no_grad():
        t.network.weight.add_(1)
    t.current_epoch = 9
    with pytest.raises(CheckpointSaveError) as e:
        t.save_checkpoint(path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "No space left on device" in msg and "MB for it" in msg and "--c" in msg
    assert "is unchanged" in msg and e.value.__cause__ is None and e.value.__suppress_context__
    assert os.listdir(tmp_path) == ["checkpoint_latest.pth"]       # no temporary file left
    assert open(path, "rb").read() == before                          # the previous checkpoint, intact
    assert read_checkpoint(path)["current_epoch"] == 5
    assert log and log[-1] == msg                                     # also in the training log
    monkeypatch.setattr(torch, "save", real)
    assert labeled_only.torch.save is real                            # nnU-Net's torch.save restored


def test_the_needed_size_is_the_serialized_size(tmp_path, monkeypatch):
    obj = {"network_weights": {"w": torch.zeros(2 ** 19)}}   # 2 MB of float32
    monkeypatch.setattr(labeled_only.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EDQUOT, "Quota")))
    with pytest.raises(CheckpointSaveError, match=r"needs about 2 MB .*No checkpoint_final.pth was written"):
        labeled_only.save_atomically(obj, str(tmp_path / "checkpoint_final.pth"))
    assert os.listdir(tmp_path) == []
