#!/usr/bin/env bash
# clang-tidy's naming rules (.clang-tidy) over every non-test source file,
# using the compile commands of a configured build directory.
#   scripts/check-naming.sh [BUILD_DIR]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
mapfile -t files < <(git ls-files '*.cc' | grep -v '^tests/')
clang-tidy -p "$build_dir" --quiet --checks='-*,readability-identifier-naming' \
  --warnings-as-errors='*' "${files[@]}" 2> /dev/null
echo "check-naming: ${#files[@]} files follow the naming rules"
