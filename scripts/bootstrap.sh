#!/usr/bin/env bash
# Sets up everything cpcsync needs on a fresh Debian 12 machine: the system
# libraries (apt, when root; otherwise prints the command), a virtualenv in .venv
# with the build and test tools, and the package itself (with the C++ tests).
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(g++ cmake ninja-build libsqlite3-dev libspdlog-dev libfmt-dev libgtest-dev
              libgmock-dev libasio-dev nlohmann-json3-dev libbenchmark-dev sqlite3 python3-venv
              clang-format clang-tidy cppcheck openssl libfaketime)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing system packages; run:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" \
  "pytest>=8" "hypothesis>=6.100" "ruff>=0.6" "mypy>=1.10" \
  "matplotlib>=3.5" "prometheus_client>=0.17" "rich>=13" ${CPCSYNC_EXTRA_PIP:-}

# One CMake build (build/py) makes the module and the C++ tests; ctest runs there.
# It also installs the runtime dependencies from pyproject (urllib3, for HttpTransport).
.venv/bin/python -m pip install -q --no-build-isolation \
  -C build-dir=build/py -C cmake.define.CPCSYNC_BUILD_TESTS=ON -C cmake.build-type=RelWithDebInfo .
