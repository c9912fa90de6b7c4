#!/usr/bin/env python3
"""Fill ``benchmarks/gpu/kit/`` (git-ignored) with the wheels the GPU check needs on the lent machine.

The GPU machine has Python 3.12, torch and most of the scientific stack, but not nnU-Net and its
medical-imaging dependencies, and it cannot download anything. This command (run here, where PyPI is
reachable) fetches or builds the smallest set of wheels that imports and runs the check there:

* binary wheels for the target Python (default 3.12, manylinux x86_64), downloaded with
  ``pip download --only-binary=:all: --no-deps``: blosc2 and its imports ndindex and numexpr, and
  connected-components-3d (cc3d, imported by acvl-utils);
* pure-Python wheels: nnunetv2, batchgenerators, batchgeneratorsv2, dynamic-network-architectures,
  nibabel (imported by nnU-Net's reader registry) downloaded, and acvl-utils built with
  ``pip wheel --no-deps`` (it publishes no wheel);
* an **import stub for SimpleITK** (its wheel alone is about 53 MB): nnU-Net imports it at module
  level for reading images, which the check never does (its data are synthetic tensors written
  straight into nnU-Net's preprocessed format); any call into the stub raises ImportError.

Left out on purpose: imagecodecs (26 MB; tifffile imports it optionally), medpy (our evaluation
imports it lazily; the check never evaluates), SimpleITK itself. The kit must stay below 60 MiB
(the project tree and the kit travel together in 64 MiB); the command fails otherwise. Versions are
those this project is tested with (nnU-Net 2.8.1 and the versions pip resolved for it here).

    python benchmarks/gpu/prepare_kit.py                    # -> benchmarks/gpu/kit/*.whl + kit.json
    python benchmarks/gpu/prepare_kit.py --python 3.11      # a kit for this machine's Python (the CI dry run)
"""
import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_KIT = os.path.join(HERE, "kit")
LIMIT_MIB = 60.0

#: (requirement, kind): "binary" = downloaded for the target interpreter and platform, "pure" =
#: downloaded (any Python), "build" = built here with pip wheel (no wheel on PyPI)
PACKAGES = (
    ("nnunetv2==2.8.1", "pure"),
    ("batchgenerators==0.25.5", "pure"),
    ("batchgeneratorsv2==0.3.6", "pure"),
    ("dynamic-network-architectures==0.4.4", "pure"),
    ("nibabel==5.4.2", "pure"),
    ("acvl-utils==0.2.6", "build"),
    ("blosc2==4.14.1", "binary"),
    ("ndindex==1.10.1", "binary"),
    ("numexpr==2.14.2", "binary"),
    ("connected-components-3d==4.1.1", "binary"),
)
#: top-level modules the kit provides (the dry run blocks them everywhere else: see check.py)
MODULES = ("nnunetv2", "batchgenerators", "batchgeneratorsv2", "dynamic_network_architectures", "nibabel",
           "acvl_utils", "blosc2", "ndindex", "numexpr", "cc3d", "SimpleITK")

STUB = '''"""Import stub for SimpleITK in the nnunet_semicl GPU kit (benchmarks/gpu/prepare_kit.py).

nnU-Net imports SimpleITK at module level to read and write images; the GPU check never does (its
data are synthetic arrays in nnU-Net's preprocessed format), so the 53 MB wheel does not travel.
Every attribute is a placeholder whose use raises ImportError.
"""
__version__ = "0+nnunet_semicl_stub"
NNUNET_SEMICL_STUB = True


class _Missing:
    def __init__(self, name):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise ImportError(f"SimpleITK.{self._name}: SimpleITK is a stub in the nnunet_semicl GPU kit")

    def __getattr__(self, item):
        return _Missing(f"{self._name}.{item}")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(name)
'''


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def write_stub_wheel(folder: str) -> str:
    """A py3-none-any wheel ``simpleitk-0+nnunet_semicl_stub`` holding only the stub module."""
    name, version = "simpleitk", "0+nnunet_semicl_stub"
    dist = f"{name}-{version}.dist-info"
    files = {
        "SimpleITK/__init__.py": STUB.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                            "Summary: import stub (nnunet_semicl GPU kit)\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: nnunet_semicl\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [_record_line(p, d) for p, d in files.items()] + [f"{dist}/RECORD,,"]
    path = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for p, d in files.items():
            z.writestr(p, d)
        z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return path


def _pip(args, log):
    cmd = [sys.executable, "-m", "pip", *args]
    print("  $ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"pip failed ({proc.returncode}):\n{proc.stdout[-3000:]}")


def prepare(kit: str, python: str = "3.12", platform: str = "manylinux2014_x86_64", limit_mib: float = LIMIT_MIB,
            packages=PACKAGES) -> dict:
    if os.path.isdir(kit):
        shutil.rmtree(kit)
    os.makedirs(kit)
    tag = python.replace(".", "")
    with tempfile.TemporaryDirectory() as tmp, open(os.path.join(kit, "pip.log"), "w") as log:
        for req, kind in packages:
            if kind == "build":
                _pip(["wheel", "--no-deps", "--no-binary", ":all:", "-w", kit, req], log)
            elif kind == "pure":
                _pip(["download", "--no-deps", "--only-binary=:all:", "--python-version", python,
                      "--platform", platform, "--implementation", "cp", "--abi", f"cp{tag}", "--abi", "none",
                      "-d", kit, req], log)
            else:
                # manylinux2014 or newer manylinux_2_x wheels: pip accepts the older tags for a newer platform
                _pip(["download", "--no-deps", "--only-binary=:all:", "--python-version", python,
                      "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                      "--platform", platform, "--implementation", "cp", "--abi", f"cp{tag}", "--abi", "abi3",
                      "-d", kit, req], log)
        write_stub_wheel(kit)
    wheels = sorted(f for f in os.listdir(kit) if f.endswith(".whl"))
    sizes = {f: os.path.getsize(os.path.join(kit, f)) for f in wheels}
    total = sum(sizes.values()) / 2 ** 20
    info = {"python": python, "platform": platform, "wheels": {f: round(s / 2 ** 20, 2) for f, s in sizes.items()},
            "total_mib": round(total, 2), "limit_mib": limit_mib, "modules": list(MODULES)}
    with open(os.path.join(kit, "kit.json"), "w") as f:
        json.dump(info, f, indent=1)
    for f, s in sizes.items():
        print(f"  {s / 2 ** 20:7.2f} MiB  {f}")
    print(f"Kit: {len(wheels)} wheels, {total:.1f} MiB in {kit}")
    if total > limit_mib:
        raise SystemExit(f"the kit is {total:.1f} MiB, over the {limit_mib} MiB limit")
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kit", default=DEFAULT_KIT, help="wheel folder (default benchmarks/gpu/kit, git-ignored)")
    p.add_argument("--python", default="3.12", help="target Python version (default 3.12, the GPU machine's)")
    p.add_argument("--platform", default="manylinux2014_x86_64")
    p.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    a = p.parse_args(argv)
    prepare(a.kit, a.python, a.platform, a.limit_mib)


if __name__ == "__main__":
    main()
