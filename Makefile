# The two commands README opens with:
#   make demo   set up what the demo needs (no test tools), then run the main job
#   make test   set up everything, then run every test (ctest + pytest)
.PHONY: setup setup-demo demo test test-cpp test-py bench lint format clean sanitize

setup:
	bash scripts/bootstrap.sh

setup-demo:
	bash scripts/bootstrap.sh demo

demo: setup-demo
	.venv/bin/python -m cpcsync.demo $(ARGS)

test: setup
	ctest --test-dir build/py --output-on-failure -j2
	.venv/bin/python -m pytest

# ASan+UBSan and TSan runs of the C++ tests, pytest on an ASan module, clang-tidy, cppcheck.
sanitize: setup
	bash scripts/sanitize.sh

bench: setup
	CPCSYNC_EXTRA_PIP="persist-queue litequeue tenacity" bash scripts/bootstrap.sh
	.venv/bin/python benchmarks/run.py $(BENCH_ARGS)

lint: setup
	.venv/bin/ruff check python tests_py benchmarks examples
	.venv/bin/ruff format --check python tests_py benchmarks examples

format:
	.venv/bin/ruff format python tests_py benchmarks examples
	clang-format -i cpp/include/cpcsync/*.h cpp/src/*.cc cpp/src/*.h cpp/src/sqlite/* cpp/src/proxy/* cpp/bindings/*.cc cpp/bindings/*.h tests_cpp/*.cc tests_cpp/*.h benchmarks/cpp/*.cc

clean:
	rm -rf build .venv
