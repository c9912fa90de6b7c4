"""Dataset-changing commands under SIGKILL, at the same time, and with input they must refuse (issue 31).

The kill tests interrupt a command at every kill point of :mod:`nnunet_semicl.dataset_change`
(``$NNUNET_SEMICL_KILL_AT=N``: the N-th point SIGKILLs the process) in a forked child, then check that
(a) completing or undoing the interrupted change (what the next command does first) leaves the folders
byte-identical to before or to an uninterrupted run, and (b) rerunning the command ends complete and
says whether it completed or undid the interrupted one.
"""
import copy
import hashlib
import json
import os
import shutil
import signal
import socket
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_semicl import dataset_change
from nnunet_semicl.cli import main as cli_main
from nnunet_semicl.dataset_change import KILL_ENV, LOCK_WAIT_ENV, DatasetBusyError, DatasetChange, DatasetLock
from nnunet_semicl.errors import InputError

pytestmark = pytest.mark.integration
ARCH = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 3, "features_per_stage": [32, 64, 128], "conv_op": "torch.nn.modules.conv.Conv2d",
                        "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]],
                        "n_conv_per_stage": [2] * 3, "n_conv_per_stage_decoder": [2] * 2, "conv_bias": True},
        "_kw_requires_import": ["conv_op"]}
PLANS = {"dataset_name": "", "plans_name": "nnUNetPlans",
         "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d", "patch_size": [64, 64], "batch_size": 2,
                                   "architecture": ARCH}}}


@pytest.fixture
def env(tmp_path, monkeypatch):
    paths = {k: str(tmp_path / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, v in paths.items():
        os.makedirs(v)
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(LOCK_WAIT_ENV, "0")
    return paths


def checksums(*folders):
    """Every file and folder under ``folders`` (hidden ones included): relative path -> sha256 (or 'dir')."""
    out = {}
    for root in folders:
        for d, dirs, files in os.walk(root):
            for x in dirs:
                out[os.path.relpath(os.path.join(d, x), os.path.dirname(root))] = "dir"
            for x in files:
                p = os.path.join(d, x)
                out[os.path.relpath(p, os.path.dirname(root))] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def run_killed(fn, n):
    """Run ``fn`` in a forked child that SIGKILLs itself at its ``n``-th kill point; True if it was killed."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.environ[KILL_ENV] = str(n)
            dataset_change._kill_count = 0
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            fn()
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, f"the command failed at kill point {n} without being killed"
    return False


def restore(snapshot, roots):
    for r in roots:
        shutil.rmtree(r)
        shutil.copytree(os.path.join(snapshot, os.path.basename(r)), r, symlinks=True)


def kill_everywhere(fn, roots, recover, tmp_path, capsys):
    """Interrupt ``fn`` at each of its kill points; returns how many there were."""
    snapshot = str(tmp_path / "snapshot")
    for r in roots:
        shutil.copytree(r, os.path.join(snapshot, os.path.basename(r)), symlinks=True)
    before = checksums(*roots)
    fn()
    after = checksums(*roots)
    assert after != before
    n = 0
    while True:
        n += 1
        restore(snapshot, roots)
        if not run_killed(fn, n):
            assert checksums(*roots) == after
            break
        recover()                                               # what the next command does first
        state = checksums(*roots)
        assert state in (before, after), f"kill point {n}: neither the old nor the new dataset"
        restore(snapshot, roots)
        assert run_killed(fn, n)
        capsys.readouterr()
        fn()                                                    # the rerun: completes the command either way
        said = capsys.readouterr().out
        assert "COMPLETED" in said or "UNDID" in said, said
        assert checksums(*roots) == after, f"kill point {n}: the rerun did not end complete"
    restore(snapshot, roots)
    return n - 1


def recover_of(name, env):
    def recover():
        with DatasetChange(name, env["nnUNet_preprocessed"], [env["nnUNet_raw"]], "recover", verbose=False):
            pass
    return recover


def fake_preprocessed(env, did, name="Kill", n_cases=6):
    """A preprocessed folder as planning leaves it, as far as split / tiny-config / sync-plans read it."""
    ds = f"Dataset{did:03d}_{name}"
    base = os.path.join(env["nnUNet_preprocessed"], ds)
    os.makedirs(os.path.join(base, "gt_segmentations"))
    for i in range(n_cases):
        open(os.path.join(base, "gt_segmentations", f"case{i:02d}.nii.gz"), "wb").close()
    json.dump({"file_ending": ".nii.gz", "labels": {"background": 0, "a": 1}, "channel_names": {"0": "MR"},
               "numTraining": n_cases}, open(os.path.join(base, "dataset.json"), "w"))
    plans = copy.deepcopy(PLANS)
    plans["dataset_name"] = ds
    json.dump(plans, open(os.path.join(base, "nnUNetPlans.json"), "w"))
    return ds, base


# --------------------------------------------------------------------------------------- kill tests
def test_split_tiny_config_and_sync_plans_survive_sigkill_anywhere(env, tmp_path, capsys):
    ds, base = fake_preprocessed(env, 61)
    roots = [env["nnUNet_preprocessed"]]
    recover = recover_of(ds, env)
    # split without splits_final.json: writes it, the setting's split file and plans variant, the default
    split = lambda: cli_main(["split", "61", "--labeled", "2", "--name", "k", "--epochs", "3", "--default"])
    assert kill_everywhere(split, roots, recover, tmp_path / "a", capsys) >= 6
    split()
    tiny = lambda: cli_main(["tiny-config", "61", "-c", "2d"])   # base plans and the setting's variant
    assert kill_everywhere(tiny, roots, recover, tmp_path / "b", capsys) >= 4
    tiny()
    plans = json.load(open(os.path.join(base, "nnUNetPlans.json")))
    plans["configurations"]["2d"]["batch_size"] = 5              # re-planned
    json.dump(plans, open(os.path.join(base, "nnUNetPlans.json"), "w"))
    sync = lambda: cli_main(["sync-plans", "61"])
    assert kill_everywhere(sync, roots, recover, tmp_path / "c", capsys) >= 3


def test_conversions_survive_sigkill_anywhere(env, tmp_path, capsys):
    from nnunet_semicl.dataset_conversion.acdc import convert_acdc
    from nnunet_semicl.dataset_conversion.la import convert_la
    from nnunet_semicl.dataset_conversion import protocols
    from tests.integration.test_conversion import make_la_uamt, make_official_acdc

    roots = [env["nnUNet_raw"], env["nnUNet_preprocessed"]]
    src = tmp_path / "LA"
    pick = lambda prot: list(prot.train[:2] + prot.train[-2:] + prot.val[:1] + prot.test[:1])  # few of each role
    make_la_uamt(str(src), pick(protocols.LA))      # (--allow-missing)
    la = lambda: convert_la(str(src), num_processes=1, allow_missing=True, verbose=False)
    assert kill_everywhere(la, roots, recover_of("Dataset028_LA", env), tmp_path / "a", capsys) >= 6
    la()
    # --overwrite of an existing dataset: the old one stays whole until the new one replaces it
    src2 = tmp_path / "LA2"
    make_la_uamt(str(src2), pick(protocols.LA) + [protocols.LA.train[-3]])
    la_again = lambda: convert_la(str(src2), num_processes=1, allow_missing=True, overwrite=True, verbose=False)
    assert kill_everywhere(la_again, roots, recover_of("Dataset028_LA", env), tmp_path / "b", capsys) >= 6
    acdc_src = tmp_path / "ACDC"
    make_official_acdc(str(acdc_src), pick(protocols.ACDC))
    acdc = lambda: convert_acdc(str(acdc_src), num_processes=1, allow_missing=True, verbose=False)
    assert kill_everywhere(acdc, roots, recover_of("Dataset027_ACDC", env), tmp_path / "c", capsys) >= 6


def _small_dataset(env, did, name, n_patients=2, n_test=1):
    from nnunet_semicl.dataset_conversion.synthetic import generate_dataset

    return generate_dataset(env["nnUNet_raw"], did, name=name, n_patients=n_patients, n_test_patients=n_test, dim=2,
                            shape=(16, 16), verbose=False)


def _fake_fingerprint(dataset_name, unlabeled, num_processes=2, output_root=None):
    """(stands in for nnU-Net's fingerprint extraction, whose spawned workers cost seconds per run)"""
    path = os.path.join(output_root, dataset_name, "dataset_fingerprint.json")
    os.makedirs(os.path.dirname(path))
    json.dump({"unlabeled": unlabeled}, open(path, "w"))
    return {}


def test_add_unlabeled_survives_sigkill_anywhere(env, tmp_path, capsys, monkeypatch):
    from nnunet_semicl.data import unlabeled_images
    from nnunet_semicl.dataset_conversion.synthetic import PhantomSpec, write_phantom_images

    monkeypatch.setattr(unlabeled_images, "labeled_only_fingerprint", _fake_fingerprint)
    _small_dataset(env, 962, "Unl")
    unl = tmp_path / "unl"
    write_phantom_images(str(unl), [30], PhantomSpec(shape=(1, 16, 16)), seed=5)
    roots = [env["nnUNet_raw"], env["nnUNet_preprocessed"]]
    add = lambda: unlabeled_images.add_unlabeled_images(962, str(unl), prefix="k_", num_processes=1)
    # 2 images + 2 label maps + fingerprint + dataset.json: staged, journal, moved, cleaned up
    assert kill_everywhere(add, roots, recover_of("Dataset962_Unl", env), tmp_path / "a", capsys) >= 12
    # issue 31 row 1: the rerun of the very command after a kill during its commit completes it
    restore_roots = checksums(*roots)
    assert run_killed(add, 10)
    capsys.readouterr()
    assert add() == ["k_phantom030_frame01", "k_phantom030_frame02"]
    assert "COMPLETED" in capsys.readouterr().out
    ds = json.load(open(os.path.join(env["nnUNet_raw"], "Dataset962_Unl", "dataset.json")))
    assert ds["semicl_unlabeled_cases"] == ["k_phantom030_frame01", "k_phantom030_frame02"]
    fp = os.path.join(env["nnUNet_preprocessed"], "Dataset962_Unl", "dataset_fingerprint.json")
    assert json.load(open(fp))["unlabeled"] == ds["semicl_unlabeled_cases"]
    assert checksums(*roots) != restore_roots


# --------------------------------------------------------------------------------------- lock
def test_second_command_is_refused_while_the_lock_is_held_and_a_dead_holders_lock_is_taken_over(env, capsys):
    ds, base = fake_preprocessed(env, 63)
    roots = [env["nnUNet_preprocessed"], env["nnUNet_raw"]]
    before = checksums(*roots)
    held = DatasetLock(env["nnUNet_preprocessed"], ds)
    held.acquire("nnunet_semicl split 63 (the first)", wait=0)
    try:
        lock_bytes = open(held.path, "rb").read()
        for argv in (["split", "63", "--labeled", "2"], ["tiny-config", "63"], ["sync-plans", "63"]):
            with pytest.raises(SystemExit) as e:
                cli_main(argv)
            err = capsys.readouterr().err
            assert e.value.code == 2 and held.path in err and f"pid {os.getpid()}" in err, err
        with pytest.raises(DatasetBusyError, match="held by pid"):       # add-unlabeled, the converters likewise
            with DatasetChange(ds, env["nnUNet_preprocessed"], [env["nnUNet_raw"]], "add-unlabeled"):
                pass
        assert open(held.path, "rb").read() == lock_bytes              # the holder's lock untouched
    finally:
        held.release()
    assert checksums(*roots) == before                                 # refused: nothing changed
    # a lock file left by a process killed while holding it: taken over, with a note
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open(held.path, "w") as f:
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "command": "split (killed)"}, f)
    cli_main(["split", "63", "--labeled", "2"])
    out = capsys.readouterr().out
    assert f"stale lock {held.path} of pid {dead.pid}" in out and "no longer runs" in out
    assert os.path.isfile(os.path.join(base, "splits_final.json")) and not os.path.exists(held.path)


def test_two_splits_at_once_wait_for_each_other(env, monkeypatch):
    """Issue 31 row 3: a second split waits while the first holds the lock, then reads its splits_final.json."""
    import time

    ds, base = fake_preprocessed(env, 64, n_cases=10)
    monkeypatch.setenv(LOCK_WAIT_ENV, "60")
    first = DatasetLock(env["nnUNet_preprocessed"], ds)
    first.acquire("the first split", wait=0)
    pid = os.fork()
    if pid == 0:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            cli_main(["split", "64", "--labeled", "2", "--name", "s2", "--seed", "2"])
            os._exit(0)
        except BaseException:
            os._exit(3)
    try:
        time.sleep(1.0)
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)              # the second one waits for the lock ...
        assert sorted(os.listdir(base)) == ["dataset.json", "gt_segmentations", "nnUNetPlans.json"]  # ... idle
    finally:
        first.release()
    assert os.WEXITSTATUS(os.waitpid(pid, 0)[1]) == 0          # ... and runs once the lock is free
    cli_main(["split", "64", "--labeled", "2", "--name", "s1", "--seed", "1"])
    folds = json.load(open(os.path.join(base, "splits_final.json")))
    for s in ("s1", "s2"):
        setting = json.load(open(os.path.join(base, f"splits_semicl_{s}.json")))
        for f, sf in zip(folds, setting["folds"]):  # both settings describe the one splits_final.json
            assert sorted(sf["labeled"] + sf["unlabeled"]) == sorted(f["train"])


# --------------------------------------------------------------------------------------- refused input
def _nifti(path, arr):
    import nibabel as nib
    nib.save(nib.Nifti1Image(arr.astype(np.float32), np.eye(4)), path)


def test_add_unlabeled_refuses_nan_inf_and_duplicates_naming_the_files(env, tmp_path, monkeypatch):
    from nnunet_semicl.data import unlabeled_images

    monkeypatch.setattr(unlabeled_images, "labeled_only_fingerprint", _fake_fingerprint)
    raw = _small_dataset(env, 965, "Refuse")
    roots = [env["nnUNet_raw"], env["nnUNet_preprocessed"], env["nnUNet_results"]]
    before = checksums(*roots)
    good = np.random.RandomState(0).rand(16, 16, 1).astype(np.float32)
    for what, change in (("one_nan", lambda a: a.__setitem__((0, 0, 0), np.nan)),
                         ("one_inf", lambda a: a.__setitem__((3, 2, 0), np.inf)),
                         ("all_nan", lambda a: a.fill(np.nan))):
        d = tmp_path / what
        d.mkdir()
        arr = good.copy()
        change(arr)
        _nifti(str(d / f"{what}_0000.nii.gz"), arr)
        with pytest.raises(InputError, match=rf"{what}_0000\.nii\.gz: .*NaN or Inf"):
            unlabeled_images.add_unlabeled_images(965, str(d), prefix="u_", num_processes=1, verbose=False)
    # issue 31 row 2: the annotated images themselves (validation cases too), and a recompressed copy
    with pytest.raises(InputError, match="same voxels") as e:
        unlabeled_images.add_unlabeled_images(965, os.path.join(raw, "imagesTr"), prefix="self_", num_processes=1,
                                              verbose=False)
    for f in os.listdir(os.path.join(raw, "imagesTr"))[:2]:
        assert os.path.join(raw, "imagesTr", f) in str(e.value)
    d = tmp_path / "recompressed"
    d.mkdir()
    im = sitk.ReadImage(os.path.join(raw, "imagesTs", "phantom002_frame01_0000.nii.gz"))
    sitk.WriteImage(im, str(d / "copy_0000.nii.gz"), useCompression=False)   # other bytes, same scan
    _nifti(str(d / "new_0000.nii.gz"), good)
    with pytest.raises(InputError, match=r"copy_0000\.nii\.gz = .*imagesTs/phantom002_frame01_0000\.nii\.gz"):
        unlabeled_images.add_unlabeled_images(965, str(d), prefix="u_", num_processes=1, verbose=False)
    assert checksums(*roots) == before
    os.remove(d / "copy_0000.nii.gz")
    assert unlabeled_images.add_unlabeled_images(965, str(d), prefix="u_", num_processes=1, verbose=False) == ["u_new"]


def test_synthetic_validates_options_before_writing(env, capsys):
    """Issue 31 row 8: `synthetic --dim 2 --shape 0 0` gave an ITK traceback and left an empty dataset folder."""
    from nnunet_semicl.dataset_conversion.synthetic import main as synthetic_main

    before = checksums(env["nnUNet_raw"])
    for argv, named in ((["--dim", "2", "--shape", "0", "0"], "--shape 0 0"),
                        (["--dim", "3", "--shape", "4", "8", "8"], "--shape 4 8 8"),
                        (["--dim", "2", "--shape", "3", "32", "32"], "--shape 3 32 32"), (["--id", "0"], "--id 0"),
                        (["--id", "1000"], "--id 1000"), (["--patients", "0"], "--patients 0"),
                        (["--name", "a/b"], "--name 'a/b'"), (["--spacing", "1", "0", "1"], "--spacing"),
                        (["--test-patients", "-1"], "--test-patients -1")):
        with pytest.raises(SystemExit) as e:
            synthetic_main(["--id", "974"] + argv if argv[0] != "--id" else argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and named in err, (argv, err)
        assert "Traceback" not in err
        assert checksums(env["nnUNet_raw"]) == before
    synthetic_main(["--id", "974", "--dim", "2", "--shape", "16", "16", "--patients", "1", "--test-patients", "0"])
    assert sorted(os.listdir(env["nnUNet_raw"])) == ["Dataset974_SemiCLPhantom"]


def test_console_script_killed_in_its_commit_is_completed_by_the_rerun(env):
    """The kill-point hook through the real command line: SIGKILL after the first rename of `split`'s commit."""
    from tests.conftest import run_cmd

    ds, base = fake_preprocessed(env, 66)
    cmd = [sys.executable, "-m", "nnunet_semicl.cli", "split", "66", "--labeled", "2", "--name", "k"]
    p = run_cmd(cmd, env={KILL_ENV: "move"}, check=False)
    assert p.returncode == -signal.SIGKILL
    assert os.path.isdir(os.path.join(env["nnUNet_preprocessed"], f".semicl_change_{ds}"))
    p = run_cmd(cmd)
    assert "COMPLETED" in p.stdout and "split" in p.stdout, p.stdout
    for f in ("splits_final.json", "splits_semicl_k.json", "nnUNetPlans_k.json"):
        assert os.path.isfile(os.path.join(base, f))
    assert sorted(os.listdir(env["nnUNet_preprocessed"])) == [ds]   # no staging folder, no lock file left
