#!/usr/bin/env bash
# The GPU check of issue 13 (benchmarks/gpu/README.md): install the wheel kit, run every stage, write
# OUT/gpu_check.json, OUT/gpu_check.md and OUT/cuda_tests.xml.
#   bash benchmarks/gpu/run_check.sh OUT              # on the GPU machine (about 8 minutes)
#   NNUNET_SEMICL_KIT=0 bash benchmarks/gpu/run_check.sh OUT --dry-run   # on a CPU (installed packages):
#                                                    # a tiny version of every stage
set -euo pipefail
OUT=${1:?usage: run_check.sh OUT [--dry-run] [more gpu_check options]}
shift
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
SITE=${NNUNET_SEMICL_KIT_SITE:-/tmp/nnunet_semicl_site}
mkdir -p "$OUT"
if [ "${NNUNET_SEMICL_KIT:-1}" != "0" ] && ls "$HERE"/kit/*.whl >/dev/null 2>&1; then
  # no index, no dependency resolution: exactly the kit's wheels, beside the machine's own packages
  "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "$HERE"/kit/*.whl 2>&1 | tail -5
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no wheel kit used (NNUNET_SEMICL_KIT=0 or none in $HERE/kit): the installed packages" >&2
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
# our trainers for nnU-Net's trainer lookup (what the installed package's .pth does)
export nnUNet_extTrainer="$REPO/nnunet_semicl/trainers${nnUNet_extTrainer:+:$nnUNet_extTrainer}"
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
cd "$REPO"
"$PY" -m nnunet_semicl.benchmarking.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
