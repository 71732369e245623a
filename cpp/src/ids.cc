#include "ids.h"

#include <pthread.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <random>

#include "no_destructor.h"

namespace cpcsync {
namespace {

// splitmix64 over a counter seeded from std::random_device: fast, and unique
// per process because the seed is.
struct State {
  std::mutex mu;
  uint64_t s = 0;
  bool seeded = false;
};

State& GlobalState() {
  static NoDestructor<State> st;  // threads may enqueue during exit()
  return *st;
}

std::atomic<bool> g_reseed{false};

// The generator's mutex is held across fork() so the child never inherits it locked.
void BeforeFork() { GlobalState().mu.lock(); }
void AfterForkParent() { GlobalState().mu.unlock(); }
void AfterForkChild() {
  g_reseed.store(true);
  GlobalState().mu.unlock();
}

uint64_t Next(State& st) {
  uint64_t z = (st.s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

void Seed(State& st) {
  std::random_device rd;
  st.s = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  st.seeded = true;
}

}  // namespace

std::string NewUuid4() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(BeforeFork, AfterForkParent, AfterForkChild); });
  State& st = GlobalState();
  uint64_t hi, lo;
  {
    std::lock_guard lock(st.mu);
    if (!st.seeded || g_reseed.exchange(false)) Seed(st);
    hi = Next(st);
    lo = Next(st);
  }
  hi = (hi & 0xFFFFFFFFFFFF0FFFULL) | 0x0000000000004000ULL;  // version 4
  lo = (lo & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;  // variant 10
  static constexpr char kHex[] = "0123456789abcdef";
  std::array<char, 36> out{};
  int pos = 0;
  auto put = [&](uint64_t v, int nibbles) {
    for (int i = nibbles - 1; i >= 0; --i) out[pos++] = kHex[(v >> (i * 4)) & 0xF];
  };
  put(hi >> 32, 8);
  out[pos++] = '-';
  put((hi >> 16) & 0xFFFF, 4);
  out[pos++] = '-';
  put(hi & 0xFFFF, 4);
  out[pos++] = '-';
  put(lo >> 48, 4);
  out[pos++] = '-';
  put(lo & 0xFFFFFFFFFFFFULL, 12);
  return std::string(out.data(), out.size());
}

}  // namespace cpcsync
