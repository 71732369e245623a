// Micro-benchmarks of the small hot paths: backoff delays per jitter, HLC stamps.
#include <benchmark/benchmark.h>

#include <memory>

#include "cpcsync/backoff.h"
#include "cpcsync/clock.h"
#include "cpcsync/hlc.h"

namespace cpcsync {
namespace {

// One delay per iteration, attempts cycling 1..10 (as the Python backoff benchmark).
void BM_BackoffNextDelay(benchmark::State& state) {
  const auto jitter = static_cast<Jitter>(state.range(0));
  ExponentialBackoff backoff(0.1, 2.0, 60.0, jitter, 42);
  int attempt = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(backoff.NextDelay(attempt % 10 + 1));
    ++attempt;
  }
  state.SetLabel(JitterName(jitter));
}
BENCHMARK(BM_BackoffNextDelay)
    ->Arg(static_cast<int>(Jitter::kNone))
    ->Arg(static_cast<int>(Jitter::kFull))
    ->Arg(static_cast<int>(Jitter::kEqual))
    ->Arg(static_cast<int>(Jitter::kDecorrelated));

// The engine's per-op copy of a stateful strategy (decorrelated jitter).
void BM_BackoffClone(benchmark::State& state) {
  ExponentialBackoff backoff(0.1, 2.0, 60.0, Jitter::kDecorrelated, 42);
  for (auto _ : state) benchmark::DoNotOptimize(backoff.Clone());
}
BENCHMARK(BM_BackoffClone);

void BM_HlcNow(benchmark::State& state) {
  HybridLogicalClock hlc(SystemClock::Default());
  for (auto _ : state) benchmark::DoNotOptimize(hlc.Now());
}
BENCHMARK(BM_HlcNow);

// A remote stamp slightly ahead of ours each time: the logical counter path.
void BM_HlcObserve(benchmark::State& state) {
  HybridLogicalClock hlc(SystemClock::Default());
  uint64_t remote = hlc.Now();
  for (auto _ : state) {
    remote += 1;
    hlc.Observe(remote);
  }
  benchmark::DoNotOptimize(hlc.Last());
}
BENCHMARK(BM_HlcObserve);

}  // namespace
}  // namespace cpcsync
