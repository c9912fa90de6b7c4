import json
import os

import numpy as np
import pytest

from nnunet_semicl.errors import InputError
from nnunet_semicl.files import load_json, save_json


def test_save_json_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "x.json"
    assert save_json({"a": [1, 2]}, str(path)) == str(path)  # makes the folder
    save_json({"b": np.float32(0.5), "c": np.arange(2)}, str(path))
    assert json.loads(path.read_text()) == {"b": 0.5, "c": [0, 1]}
    assert os.listdir(tmp_path / "sub") == ["x.json"]


def test_save_json_keeps_the_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "x.json"
    save_json({"old": 1}, str(path))
    before = path.read_bytes()
    with pytest.raises(TypeError, match="not JSON serialisable"):
        save_json({"new": object()}, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.json"]


def test_save_json_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    save_json({"old": 1}, str(path))

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_json({"new": 2}, str(path))
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_load_json_names_a_file_that_is_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{\"a\": ")
    with pytest.raises(InputError, match="broken.json is not valid JSON"):
        load_json(str(path))
    with pytest.raises(FileNotFoundError):
        load_json(str(tmp_path / "absent.json"))
