"""The site-packages .pth line: registers the trainer folder, and stays silent when the package is gone."""
import os
import subprocess
import sys
from pathlib import Path

PTH = Path(__file__).resolve().parents[2] / "nnunet_semicl_autoregister.pth"
REPO = PTH.parent


def _run_site_with_pth(tmp_path, pythonpath, extra_env=None):
    sitedir = tmp_path / "site"
    sitedir.mkdir()
    (sitedir / PTH.name).write_text(PTH.read_text())
    code = ("import site, sys, os; site.addsitedir(sys.argv[1]); "
            "print('EXT=' + os.environ.get('nnUNet_extTrainer', ''))")
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", "PYTHONPATH")}
    env["PYTHONPATH"] = pythonpath
    env.update(extra_env or {})
    # -S: no site-packages, so only our copy of the .pth is processed
    return subprocess.run([sys.executable, "-S", "-c", code, str(sitedir)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_pth_registers_trainer_folder(tmp_path):
    r = _run_site_with_pth(tmp_path, str(REPO))
    assert r.returncode == 0, r.stderr
    ext = r.stdout.strip().split("EXT=", 1)[1]
    assert ext.split(os.pathsep)[-1] == str(REPO / "nnunet_semicl" / "trainers")
    assert "Error" not in r.stderr


def test_pth_opt_out(tmp_path):
    r = _run_site_with_pth(tmp_path, str(REPO), {"NNUNET_SEMICL_AUTOREGISTER": "0"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "EXT="


def test_pth_silent_when_package_missing(tmp_path):
    # a stale install (package folder removed, .pth left behind) must not print a traceback at every start
    r = _run_site_with_pth(tmp_path, str(tmp_path / "nowhere"))
    assert r.returncode == 0
    assert r.stdout.strip() == "EXT="
    assert r.stderr == ""
