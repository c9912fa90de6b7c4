"""Shared fixtures: nnU-Net folders in a temporary directory and the synthetic phantom dataset.

The phantom dataset is generated, planned and preprocessed once per test session with the stock
``nnUNetv2_plan_and_preprocess``; tests that train use its tiny inherited configurations
(``2d_tiny``, ``3d_fullres_tiny``) and the ``20pct`` setting, whose plans carry a short schedule.
"""
import json
import os

# before torch is imported anywhere: OpenMP threads that spin while waiting make CPU training 10x
# slower whenever another process competes for the 2 cores (docs/small_compute.md)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# ... and for the training subprocesses, glibc settings that stop page-faulting freed tensors back in
from nnunet_semicl.launch import CPU_MALLOC_ENV  # noqa: E402

for _k, _v in CPU_MALLOC_ENV.items():
    os.environ.setdefault(_k, _v)

import subprocess  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from nnunet_semicl.dataset_conversion.synthetic import DATASET, DATASET_ID, generate_dataset  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")

# CPU settings for every nnU-Net call in the tests (see docs/small_compute.md)
CPU_ENV = {"nnUNet_def_n_proc": "1", "nnUNet_compile": "f", "OMP_NUM_THREADS": "2"}
TRAIN_ENV = {"nnUNet_n_proc_DA": "0"}  # planning crashes with 0 in nnU-Net 2.8.1: only set it for training

SETTING = "20pct"
PLANS = f"nnUNetPlans_{SETTING}"
PHASES_PLANS = "nnUNetPlans_phases"  # same labeled cases, 4 epochs x 2 iterations: every method phase runs


def run_cmd(args, env=None, timeout=600, check=True):
    """Run a command (a stock nnU-Net entry point or ours) and return the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def cli_in_process(*args) -> None:
    """``nnunet_semicl ARGS`` through its ``main`` in this process (a set-up step, not the thing under test)."""
    from nnunet_semicl.cli import main

    assert main([str(a) for a in args]) == 0


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory):
    """nnU-Net's three folders in a temporary directory, and the CPU settings, for the whole session.

    Trainings run in the test process also skip ``progress.png`` here: matplotlib draws its 30 x 72 inch figure in
    ~0.6 s, once per epoch, i.e. ~40 s of the suite. The console-script trainings (subprocesses) still draw it, and
    ``test_stock_train_predict_evaluate`` checks that it is written. (Patched after the environment is set, so the
    import cannot read nnU-Net's folders before they exist.)"""
    root = tmp_path_factory.mktemp("nnunet")
    dirs = {k: str(root / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    old = {k: os.environ.get(k) for k in list(dirs) + list(CPU_ENV)}
    os.environ.update(dirs)
    os.environ.update(CPU_ENV)
    from nnunet_semicl.training.loss_logger import SemiCLLocalLogger

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SemiCLLocalLogger, "plot_progress_png", lambda self, output_folder: None)
        yield SimpleNamespace(root=str(root), **{k.split("_")[1]: v for k, v in dirs.items()})
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def open_gate_at_limit(preprocessed_folder: str, plans: str) -> None:
    """A few iterations find no class: the warm-up gate must still open at its limit for the semi-supervised code
    paths to run (by default it waits past the limit until every class is found): floor 0 in the setting."""
    path = os.path.join(preprocessed_folder, plans + ".json")
    with open(path) as f:
        content = json.load(f)
    content["semicl"]["trainer"]["warmup_limit_floor"] = 0.0
    with open(path, "w") as f:
        json.dump(content, f, indent=1)


@pytest.fixture(scope="session")
def phantom(nnunet_dirs):
    """The synthetic 3D phantom dataset, planned (2d, 3d_fullres + tiny variants) with a 20% setting."""
    raw = generate_dataset(nnunet_dirs.raw, DATASET_ID, n_patients=10, n_test_patients=2, verbose=False)
    run_cmd(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "3d_fullres", "-npfp", "2",
             "-np", "2", "2", "--verify_dataset_integrity"])
    # our commands in this process (their console scripts are run as subprocesses elsewhere): saves an import each
    cli_in_process("tiny-config", DATASET_ID, "-c", "2d", "3d_fullres")
    cli_in_process("split", DATASET_ID, "--fraction", "0.2", "--group", r"phantom\d+", "--name", SETTING,
                   "--epochs", "2", "--iterations", "3", "--val-iterations", "1")
    cli_in_process("split", DATASET_ID, "--fraction", "0.2", "--group", r"phantom\d+", "--name", "phases",
                   "--epochs", "4", "--iterations", "2", "--val-iterations", "1")
    pre = os.path.join(nnunet_dirs.preprocessed, DATASET)
    for plans in (PLANS, PHASES_PLANS):
        open_gate_at_limit(pre, plans)
    return SimpleNamespace(id=DATASET_ID, name=DATASET, raw=raw, pre=pre, results=nnunet_dirs.results,
                           plans=PLANS, setting=SETTING, phases_plans=PHASES_PLANS, dirs=nnunet_dirs)


def shared_data(*parts):
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real data not available at {path}")
    return path
