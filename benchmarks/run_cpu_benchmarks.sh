#!/usr/bin/env bash
# The three CPU benchmarks of docs/performance.md, one after the other (about 7-9 h on 2 cores: 28 min + 1.5 min + the accuracy protocol, 6-8 h estimated).
# Run on a quiet machine. Each command replaces its own section of docs/performance.md (--update-docs).
#
#   benchmarks/run_cpu_benchmarks.sh [ACDC_ssl4mis folder] [work folder]
#
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
ACDC="${1:-$REPO/../shared/data/ACDC_ssl4mis}"
WORK="${2:-$REPO/../benchmark_runs}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
mkdir -p "$WORK"
cd "$WORK"
nnunet_semicl benchmark step --workdir "$WORK/step" --update-docs "$REPO/docs/performance.md" 2>&1 | tee "$WORK/step.log"
nnunet_semicl benchmark samplers --acdc "$ACDC" --out "$WORK/samplers" --update-docs "$REPO/docs/performance.md" 2>&1 | tee "$WORK/samplers.log"
nnunet_semicl benchmark accuracy -i "$ACDC" --workdir "$WORK/accuracy" --update-docs "$REPO/docs/performance.md" 2>&1 | tee "$WORK/accuracy.log"
