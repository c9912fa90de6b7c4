"""The prepared GPU check (benchmarks/gpu/, issue 13): its dry run on the CPU, the kit's stub wheel."""
import json
import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks", "gpu"))
import prepare_kit  # noqa: E402


def test_stub_wheel_installs_and_refuses_calls(tmp_path):
    whl = prepare_kit.write_stub_wheel(str(tmp_path))
    with zipfile.ZipFile(whl) as z:
        assert "SimpleITK/__init__.py" in z.namelist()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target",
                    str(site), whl], check=True)
    code = ("import SimpleITK as s; assert s.NNUNET_SEMICL_STUB; x = s.sitkLinear\n"
            "try:\n    s.ReadImage('a.nii.gz')\nexcept ImportError as e:\n    print('refused', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(site)), check=True,
                         capture_output=True, text=True).stdout
    assert out.startswith("refused")


def test_shipped_plans_are_the_real_configurations():
    acdc = json.load(open(os.path.join(REPO, "benchmarks", "gpu", "plans", "acdc_2d.json")))
    la = json.load(open(os.path.join(REPO, "benchmarks", "gpu", "plans", "la_3d_fullres.json")))
    assert acdc["plans"]["configurations"]["2d"]["patch_size"] == [256, 224]
    assert acdc["plans"]["configurations"]["2d"]["batch_size"] == 56
    assert la["plans"]["configurations"]["3d_fullres"]["patch_size"] == [96, 128, 192]
    assert la["dataset_json"]["labels"] == {"background": 0, "left_atrium": 1}


@pytest.mark.integration
def test_gpu_check_dry_run(tmp_path):
    """The whole check on the CPU (tiny configuration, 1 step): every stage reports, within 8 files."""
    out = tmp_path / "out"
    env = dict(os.environ, NNUNET_SEMICL_KIT="0", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu", "run_check.sh"), str(out), "--dry-run",
                           "--workdir", str(tmp_path / "work")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.load(open(out / "gpu_check.json"))
    st = rep["stages"]
    assert rep["options"]["dry_run"] and st["env"]["status"] == "ok"
    assert st["cuda_tests"]["status"] == "ok" and st["cuda_tests"]["counts"]["failed"] == 0
    assert sum(st["cuda_tests"]["counts"].values()) >= 10          # the cuda tests were collected
    assert st["step"]["status"] == "ok"
    rows = st["step"]["parts"]["acdc_2d"]["summary"]["rows"]
    assert {r["label"] for r in rows} == {"nnUNetTrainer", "nnUNetTrainerACTIONpp"} and all(r["step_s"] > 0 for r in rows)
    assert st["compile"]["status"] == "skipped"
    runs = st["accuracy"]["runs"]
    assert [r["trainer"] for r in runs] == ["nnUNetTrainerLabeledOnly", "nnUNetTrainerACTIONpp"]
    assert all(r["finite"] and r["iterations"] == 3 for r in runs)
    assert len(os.listdir(out)) <= 8
    assert "dry run on CPU" in (out / "gpu_check.md").read_text()
