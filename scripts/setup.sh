#!/usr/bin/env bash
# Installs every system dependency of Herd from Debian packages and builds it.
#
#   scripts/setup.sh                # install what is missing, configure, build
#   scripts/setup.sh --deps-only    # only the packages
#   BUILD_DIR=out scripts/setup.sh  # build somewhere else (default: build)
#
# Idempotent: packages already installed are not touched, and apt-get waits
# for another apt-get's dpkg lock (up to 10 minutes) instead of failing.
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}
JOBS=${JOBS:-$(nproc)}

PACKAGES=(
  build-essential cmake pkg-config git
  libabsl-dev libyaml-cpp-dev nlohmann-json3-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenmpi-dev openmpi-bin libucx-dev ucx-utils
  iproute2
  prometheus-cpp-dev prometheus
  zlib1g-dev
  libpcre2-dev libicu-dev
  clang-format clang-tidy shellcheck
  python3 python3-venv
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends \
    -o DPkg::Lock::Timeout=600 "${missing[@]}"
else
  echo "setup: all ${#PACKAGES[@]} packages already installed"
fi

# Python clients the integration tests drive herd with, and the offline
# Kubernetes schema validator of the deploy checks (both pinned), in .venv.
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -r tests/integration/requirements.txt -r tests/deploy/requirements.txt

if [ "${1:-}" = "--deps-only" ]; then exit 0; fi

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE"
cmake --build "$BUILD_DIR" -j "$JOBS"
echo "setup: built $BUILD_DIR/tools/herd"
