"""Every numeric option is checked before anything is read or written (issue 31, rows 7, 9, 12): a refused
command exits 2 with a message naming the option, and leaves the dataset, splits and work folders
byte-identical. Runs ``nnunet_semicl``'s ``main`` in this process on a hand-made preprocessed folder."""
import hashlib
import json
import os

import pytest

from nnunet_semicl.cli import main

NAME = "Dataset901_Fake"


def digest(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        out.update({os.path.join(dirpath, d): "<dir>" for d in dirnames})
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.join(dirpath, f)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results with a dataset of 6 empty 'cases' (enough for split's
    checks; nothing here is ever planned or trained). The current folder is the root too, so that a command that
    wrote its default work folder (benchmark, demo) would change the digest."""
    dirs = {k: tmp_path / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, d in dirs.items():
        (d / NAME).mkdir(parents=True)
        monkeypatch.setenv(k, str(d))
    pre = dirs["nnUNet_preprocessed"] / NAME
    ds = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}, "numTraining": 6,
          "file_ending": ".nii.gz"}
    for folder in (pre, dirs["nnUNet_raw"] / NAME):
        (folder / "dataset.json").write_text(json.dumps(ds))
    (pre / "gt_segmentations").mkdir()
    for i in range(6):
        (pre / "gt_segmentations" / f"case_{i:03d}.nii.gz").write_bytes(b"")
    (pre / "nnUNetPlans.json").write_text(json.dumps({"dataset_name": NAME, "plans_name": "nnUNetPlans",
                                                      "configurations": {}}))
    monkeypatch.chdir(tmp_path)
    return pre


def refused(capsys, root, *argv):
    before = digest(root)
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err
    assert digest(root) == before
    return err


BAD_OPTIONS = [
    # split (rows 9, 12)
    (["split", NAME, "--fraction", "nan"], "--fraction"),
    (["split", NAME, "--fraction", "0"], "--fraction"),
    (["split", NAME, "--fraction", "1.5"], "--fraction"),
    (["split", NAME, "--labeled", "0"], "--labeled"),
    (["split", NAME, "--labeled", "-2"], "--labeled"),
    (["split", NAME, "--labeled", "2", "--seed", "-5"], "--seed"),
    (["split", NAME, "--labeled", "2", "--seed", str(2 ** 32)], "--seed"),
    (["split", NAME, "--labeled", "2", "--epochs", "-1"], "--epochs"),
    (["split", NAME, "--labeled", "2", "--iterations", "0"], "--iterations"),
    (["split", NAME, "--labeled", "2", "--val-iterations", "-3"], "--val-iterations"),
    (["split", NAME, "--labeled", "2", "--save-every", "0"], "--save-every"),
    # tiny-config (row 9)
    (["tiny-config", NAME, "-c", "2d", "--patch-size", "-32", "-32"], "--patch-size"),
    (["tiny-config", NAME, "-c", "2d", "--patch-size", "0", "0"], "--patch-size"),
    (["tiny-config", NAME, "--batch-size", "0"], "--batch-size"),
    (["tiny-config", NAME, "--feature-divisor", "-2"], "--feature-divisor"),
    (["tiny-config", NAME, "--max-features", "0"], "--max-features"),
    # add-unlabeled, evaluate, converters, demo
    (["add-unlabeled", NAME, "-i", "x", "-np", "0"], "-np"),
    (["evaluate", "-p", "x", "--labels", "-1"], "--labels"),
    (["evaluate", "-p", "x", "-np", "0"], "-np"),
    (["convert-acdc", "-i", "x", "--id", "-27"], "--id"),
    (["convert-acdc", "-i", "x", "--cv", "1"], "--cv"),
    (["convert-acdc", "-i", "x", "-np", "0"], "-np"),
    (["convert-la", "-i", "x", "--spacing", "nan", "1", "1"], "--spacing"),
    (["convert-la", "-i", "x", "--spacing", "0", "1", "1"], "--spacing"),
    (["demo", "--fraction", "1"], "--fraction"),
    (["demo", "--seed", "-5"], "--seed"),
    (["demo", "--epochs", "0"], "--epochs"),
    (["demo", "--patients", "-1"], "--patients"),
    # benchmark (row 9: a conversion started with a negative schedule)
    (["benchmark", "accuracy", "--epochs", "-1"], "--epochs"),
    (["benchmark", "accuracy", "--warm-epochs", "-1"], "--warm-epochs"),
    (["benchmark", "accuracy", "--lr", "nan"], "--lr"),
    (["benchmark", "accuracy", "--lr", "inf"], "--lr"),
    (["benchmark", "accuracy", "--runs", "0"], "--runs"),
    (["benchmark", "accuracy", "--spacing", "-1"], "--spacing"),
    (["benchmark", "accuracy", "--patch-size", "0", "64"], "--patch-size"),
    (["benchmark", "accuracy", "--batch-size", "0"], "--batch-size"),
    (["benchmark", "accuracy", "--stages", "0"], "--stages"),
    (["benchmark", "step", "--steps", "0"], "--steps"),
    (["benchmark", "step", "--warmup", "-1"], "--warmup"),
    (["benchmark", "step", "--phantom-shape", "10", "0", "64"], "--phantom-shape"),
    (["benchmark", "step", "--timeout", "0"], "--timeout"),
    (["benchmark", "step", "--threads", "0"], "--threads"),
    (["benchmark", "samplers", "--sizes", "nan"], "--sizes"),
    (["benchmark", "samplers", "--min-time", "0"], "--min-time"),
    (["benchmark", "samplers", "--draws", "0"], "--draws"),
    (["benchmark", "samplers", "--strides", "0"], "--strides"),
]


@pytest.mark.parametrize("argv,option", BAD_OPTIONS, ids=[" ".join(a[:1] + a[-3:]) for a, _ in BAD_OPTIONS])
def test_a_bad_numeric_option_is_refused_before_anything_is_written(fake, capsys, argv, option):
    err = refused(capsys, fake.parents[1], *argv)
    assert f"argument {option}" in err or f"/{option}" in err, err


def test_gpu_check_budget_is_checked():
    from nnunet_semicl.benchmarking.gpu_check import main as gpu_main

    with pytest.raises(SystemExit) as e:
        gpu_main(["--out", "x", "--budget", "nan"])
    assert e.value.code == 2


def test_split_refuses_an_empty_splits_final_before_writing(fake, capsys):
    """Row 7: ``[]`` made an IndexError after the setting's files were written."""
    (fake / "splits_final.json").write_text("[]")
    err = refused(capsys, fake.parents[1], "split", NAME, "--labeled", "2", "--name", "c2")
    assert "splits_final.json" in err and "no folds" in err and "Delete it" in err


@pytest.mark.parametrize("key", ["file_ending", "labels"])
def test_a_dataset_json_without_a_needed_key_is_named(fake, capsys, key):
    """Row 12: a KeyError traceback from split and add-unlabeled."""
    for folder in (fake, fake.parents[1] / "nnUNet_raw" / NAME):
        ds = json.loads((folder / "dataset.json").read_text())
        del ds[key]
        (folder / "dataset.json").write_text(json.dumps(ds))
    inp = fake.parents[1] / "in"
    inp.mkdir()
    err = refused(capsys, fake.parents[1], "add-unlabeled", NAME, "-i", inp)
    assert "dataset.json lacks" in err and repr(key) in err
    if key == "file_ending":
        err = refused(capsys, fake.parents[1], "split", NAME, "--labeled", "2")
        assert "dataset.json lacks" in err and "'file_ending'" in err


def test_add_unlabeled_refuses_a_read_only_preprocessed_folder(fake, capsys, monkeypatch):
    """Row 12: the rollback worked but printed 3 chained tracebacks; now nothing starts."""
    inp = fake.parents[1] / "in"
    inp.mkdir()
    real = os.access    # a read-only folder (chmod does not stop root, who may run the tests)
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.path.abspath(p) == str(fake) else real(p, mode))
    err = refused(capsys, fake.parents[1], "add-unlabeled", NAME, "-i", inp)
    assert str(fake) in err and "not writable" in err


def test_check_writable_refuses_a_read_only_folder(tmp_path, monkeypatch):
    from nnunet_semicl.errors import InputError
    from nnunet_semicl.files import check_writable

    check_writable(str(tmp_path / "new" / "deeper"), "test")    # to be created under a writable parent: fine
    monkeypatch.setattr(os, "access", lambda path, mode: path != str(tmp_path))
    with pytest.raises(InputError, match="not writable"):
        check_writable(str(tmp_path / "new"), "test")


def test_no_numeric_option_takes_a_bare_int_or_float():
    """Every numeric option takes its type from argtypes.py (docs/contributing.md); `synthetic`'s own parser is
    checked by its own tests."""
    import ast
    import pathlib

    package = pathlib.Path(__file__).resolve().parents[2] / "nnunet_semicl"
    bare = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "synthetic.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                for k in node.keywords:
                    if k.arg == "type" and isinstance(k.value, ast.Name) and k.value.id in ("int", "float"):
                        bare.append(f"{path.name}:{node.lineno} {ast.unparse(node.args[0])}")
    assert not bare, bare
