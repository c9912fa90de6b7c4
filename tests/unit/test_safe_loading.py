"""No user-named file is ever unpickled (issue 31, row 5): every ``torch.load`` in the package passes
``weights_only=True``; no ``pickle``/``np.load(allow_pickle=True)``/``joblib``; checked on the source."""
import ast
import os
import pathlib

import pytest
import torch

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "nnunet_semicl"


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _unsafe_calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            for n in names:
                if n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "shelve", "marshal"):
                    yield node.lineno, f"import {n}"
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        if name.endswith("torch.load"):
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                yield node.lineno, f"{name}(...) without weights_only=True"
        if name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy"):
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                yield node.lineno, f"{name}(..., allow_pickle=...)"
        if name.split(".")[0] in ("pickle", "dill", "joblib") or name in ("torch.serialization.add_safe_globals",):
            yield node.lineno, name


def test_the_package_never_unpickles():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [f"{path.relative_to(PACKAGE.parent)}:{line}: {what}" for line, what in _unsafe_calls(tree)]
    assert not found, "unsafe loading:\n" + "\n".join(found)


def test_the_source_check_can_fail():
    bad = ast.parse("import torch, pickle\nimport numpy as np\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
                    "np.load(p, allow_pickle=True)\npickle.loads(b)\ntorch.load(p, weights_only=True)\n")
    lines = sorted(line for line, _ in _unsafe_calls(bad))
    assert lines == [1, 3, 4, 5, 6]


class _Payload:
    def __reduce__(self):
        return (open, (os.environ["SEMICL_TEST_MARKER"], "w"))


def test_benchmark_accuracy_reads_a_finished_run_without_running_code(tmp_path, monkeypatch):
    from nnunet_semicl.benchmarking.accuracy import seconds_per_iteration
    from nnunet_semicl.errors import InputError

    marker = tmp_path / "code_ran"
    monkeypatch.setenv("SEMICL_TEST_MARKER", str(marker))
    evil = str(tmp_path / "checkpoint_final.pth")
    torch.save({"network_weights": {}, "logging": {"epoch_start_timestamps": [0.0], "payload": _Payload()},
                }, evil)
    with pytest.raises(InputError, match="checkpoint_final.pth"):
        seconds_per_iteration(evil, 10)
    assert not marker.exists()
    good = str(tmp_path / "good.pth")
    torch.save({"network_weights": {}, "logging": {"epoch_start_timestamps": [0.0, 10.0],
                                                   "epoch_end_timestamps": [4.0, 16.0]}}, good)
    assert seconds_per_iteration(good, 10) == pytest.approx(0.5)
