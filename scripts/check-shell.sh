#!/usr/bin/env bash
# Runs shellcheck over every shell script the project tracks (and .ci/run and the
# mpirun launcher).
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.sh' .ci/run deploy/mpirun/herd-mpirun 2>/dev/null || find . -name '*.sh')
shellcheck "${files[@]}"
echo "check-shell: ${#files[@]} scripts clean"
