#!/usr/bin/env bash
# make sanitize (after make setup): the C++ tests under ASan+UBSan and under TSan,
# pytest against an ASan+UBSan build of the module, clang-tidy and cppcheck on cpp/.
# Any finding fails the run. docs/reliability-storage.md says what runs and why.
#   SANITIZE_STEPS="asan tsan py tidy cppcheck"   the steps to run (default: all)
#   SANITIZE_PYTEST="..."                          pytest arguments for the py step
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${SANITIZE_STEPS:-asan tsan py tidy cppcheck}
JOBS=2  # the machine has two cores
PY=$PWD/.venv/bin/python
START=$SECONDS

step() { echo "== sanitize: $* (at $((SECONDS - START)) s)"; }
wants() { [[ " $STEPS " == *" $1 "* ]]; }

# build/asan makes both the C++ tests and the module: one sanitized core for the two.
configure() {  # dir sanitizers python
  cmake -S . -B "build/$1" -G Ninja -DCPCSYNC_SANITIZE="$2" -DCPCSYNC_BUILD_TESTS=ON \
    -DCPCSYNC_BUILD_PYTHON="$3" -DPython_EXECUTABLE="$PY" \
    -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >/dev/null
  cmake --build "build/$1" -j "$JOBS"
}

if wants asan || wants py; then
  step "ASan+UBSan build"
  configure asan address,undefined ON
fi

if wants asan; then
  step "C++ tests under ASan+UBSan"
  ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:abort_on_error=0 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir build/asan --output-on-failure -j "$JOBS"
fi

if wants tsan; then
  step "TSan build"
  configure tsan thread OFF
  step "C++ tests under TSan"
  # setarch -R: GCC 12's TSan cannot map its shadow memory under the high ASLR
  # entropy of newer kernels ("unexpected memory mapping"); without randomisation it can.
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    setarch "$(uname -m)" -R ctest --test-dir build/tsan --output-on-failure -j "$JOBS"
fi

if wants py; then
  step "pytest against the ASan+UBSan module"
  site=build/asan/site
  rm -rf "$site" && mkdir -p "$site"
  cp -r python/cpcsync "$site/"
  cp build/asan/cpp/bindings/_core*.so "$site/cpcsync/"
  # CPython is not built with ASan: preload the runtimes, and leave its own allocations
  # (interned strings, caches kept until exit) out of leak checking.
  preload="$(g++ -print-file-name=libasan.so):$(g++ -print-file-name=libubsan.so)"
  export LD_PRELOAD=$preload PYTHONPATH=$PWD/$site
  export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
  "$PY" -c "import cpcsync._core as c, sys; sys.exit(0 if '$site' in c.__file__ else 'not the ASan module: ' + c.__file__)"
  # shellcheck disable=SC2086  # word splitting of the pytest arguments is wanted
  # Left out: an RSS bound (ASan's quarantine keeps freed memory), a probe-timing test
  # that ASan's slowdown turns into a missed probe, and fork() from a process whose
  # threads allocate: this libasan does not take its allocator's locks around fork(), so
  # the child can inherit one held and hang in ASan's own malloc (docs/reliability-storage.md).
  # Also the libfaketime tests: their children preload libfaketime after ASan, and the
  # two runtimes' clock interceptors together hang the child at start; those tests
  # exercise Python-level waits in real processes and run in make test.
  "$PY" -m pytest -q -p no:cacheprovider ${SANITIZE_PYTEST:--m "not slow" \
    --ignore tests_py/test_faketime.py \
    --deselect tests_py/test_seed_matrix.py::TestLargeQueue::test_large_queue_processing_memory_remains_stable \
    --deselect tests_py/test_network_monitor.py::test_dropping_a_probing_monitor_stops_its_thread \
    --deselect "tests_py/test_bad_inputs.py::test_bad_input[fork_after_engine_start]"}
  unset LD_PRELOAD PYTHONPATH ASAN_OPTIONS UBSAN_OPTIONS
fi

if wants tidy; then
  step "clang-tidy on cpp/"
  run-clang-tidy -quiet -p build/py -j "$JOBS" "$PWD/cpp/" >build/clang-tidy.log 2>&1 || {
    grep -E "(warning|error):" build/clang-tidy.log | sort -u
    exit 1
  }
fi

if wants cppcheck; then
  step "cppcheck on cpp/"
  cppcheck --project=build/py/compile_commands.json --file-filter='cpp/*' \
    --enable=warning,performance,portability --inline-suppr --error-exitcode=1 -q -j "$JOBS" \
    --suppress=missingIncludeSystem
fi

step "done"
