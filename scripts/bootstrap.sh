#!/usr/bin/env bash
# Sets up cpcsync on a fresh Debian 12 machine: the system libraries (apt, when root;
# otherwise prints the command), a virtualenv in .venv, and the package itself,
# built by CMake in build/py.
#
#   bash scripts/bootstrap.sh        everything (make setup / make test / make sanitize):
#                                    the build, the test and lint tools, the C++ tests
#   bash scripts/bootstrap.sh demo   only what the demo needs (make demo): no test tools,
#                                    no GoogleTest/Google Benchmark, no clang-tidy/cppcheck,
#                                    the C++ tests not built
#
# Idempotent: a second run installs nothing new and only rebuilds what changed. A full
# run after a demo run adds the rest and builds the C++ tests in the same build/py. A
# demo run after a full run keeps the C++ tests on (their tools are there already).
# Each phase prints one line saying what it does; pip's and CMake's output is shown.
# CPCSYNC_EXTRA_PIP="pkg ..." adds Python packages (make bench).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-full}
case "$MODE" in
  full | demo) ;;
  *)
    echo "usage: bash scripts/bootstrap.sh [full|demo]" >&2
    exit 2
    ;;
esac

START=$SECONDS
phase() { echo "== bootstrap ($MODE) [$1/4, at $((SECONDS - START)) s]: $2"; }

# What the library, the module and the demo need to build and run (python3-dev: the
# headers of Debian's own python3, for a build with it; a pyenv Python ships its own).
APT_BUILD=(g++ cmake ninja-build libsqlite3-dev libspdlog-dev libfmt-dev libasio-dev
           nlohmann-json3-dev python3-dev python3-venv)
# What make test and make sanitize add: GoogleTest, Google Benchmark, the sqlite3 and
# openssl commands and libfaketime (used by tests), clang-format/-tidy and cppcheck, and
# PostgreSQL (initdb, pg_ctl and postgres in /usr/lib/postgresql/<version>/bin, libpq)
# for the server side's tests. Those start throwaway clusters of their own
# (cpcsync.testing.postgres); the "main" cluster Debian's package creates and starts as
# a service is not used.
APT_TEST=(libgtest-dev libgmock-dev libbenchmark-dev sqlite3 clang-format clang-tidy cppcheck
          openssl libfaketime postgresql)
APT_PACKAGES=("${APT_BUILD[@]}")
[ "$MODE" = full ] && APT_PACKAGES+=("${APT_TEST[@]}")

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  phase 1 "system packages: all ${#APT_PACKAGES[@]} present"
elif [ "$(id -u)" = 0 ]; then
  phase 1 "system packages: installing ${missing[*]} (apt-get)"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
else
  echo "bootstrap: missing system packages; run:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

PY=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then
  phase 2 "virtualenv .venv: present"
else
  phase 2 "virtualenv .venv: creating it with $PY"
  "$PY" -m venv .venv
fi

# The build backend and pybind11 (the package is built without build isolation, so
# that build/py is reused from one run to the next).
phase 3 "Python build tools into .venv: pip, scikit-build-core, pybind11 (pip)"
.venv/bin/python -m pip install --upgrade pip
.venv/bin/python -m pip install "scikit-build-core>=0.10" "pybind11>=2.12"

# One CMake build (build/py) makes the module and, unless this is a demo-only setup, the
# C++ tests; ctest runs there. pip also installs the runtime dependencies (urllib3, rich)
# and the extras: demo (matplotlib), and for a full setup test (pytest, hypothesis, ruff,
# mypy), metrics (prometheus_client), server (uvicorn) and postgres (psycopg,
# psycopg_pool).
tests=ON
extras=demo,test,metrics,server,postgres
if [ "$MODE" = demo ]; then
  extras=demo
  grep -qs '^CPCSYNC_BUILD_TESTS:BOOL=ON' build/py/CMakeCache.txt || tests=OFF
fi
if [ -f build/py/build.ninja ]; then
  what="rebuilding what changed"
else
  what="first build: several minutes"
fi
phase 4 "building the C++ core and installing cpcsync[$extras] into .venv (CMake in build/py, C++ tests $tests; $what)"
# shellcheck disable=SC2086  # CPCSYNC_EXTRA_PIP is a list of names
.venv/bin/python -m pip install -v --no-build-isolation \
  -C build-dir=build/py -C cmake.define.CPCSYNC_BUILD_TESTS=$tests \
  -C cmake.build-type=RelWithDebInfo ".[$extras]" ${CPCSYNC_EXTRA_PIP:-}
echo "== bootstrap ($MODE): done in $((SECONDS - START)) s"
