// Waiter: a wake-up signal with a deadline on a Clock.
//
// A component that sleeps until "something happened or time T came" owns a Waiter.
// Producers call Notify(); the sleeper calls WaitUntil(seen, deadline), which returns
// once the generation moved past `seen`, the deadline passed on the waiter's clock,
// or the waiter was closed. On a VirtualClock the clock itself wakes the waiter when
// Advance() moves time, so nothing polls.
//
// Usage:  uint64_t g = w->Generation();  if (!work_available()) w->WaitUntil(g, deadline);
//
// Thread-safety: all methods are safe from any thread. A Waiter holds no lock while
// calling out; it never calls into Python.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>

#include "cpcsync/clock.h"

namespace cpcsync {

class Waiter : public std::enable_shared_from_this<Waiter> {
 public:
  static constexpr double kForever = std::numeric_limits<double>::infinity();

  // Creates a waiter bound to `clock` (attached to it when the clock is virtual).
  static std::shared_ptr<Waiter> Create(std::shared_ptr<Clock> clock);

  uint64_t Generation() const;
  // Wakes every current sleeper and bumps the generation.
  void Notify();
  // Wakes sleepers so they re-check the time (called by VirtualClock::Advance).
  void Tick();
  // Blocks until Generation() != seen, or clock->Monotonic() >= deadline (deadlines
  // are on the monotonic timeline), or Close().
  // Returns true when woken by Notify/Close, false when the deadline passed.
  bool WaitUntil(uint64_t seen, double deadline);
  // Like WaitUntil, but bounded by `seconds` of real (steady) time whatever the
  // clock: for callers that must not block longer than they said, even on a
  // VirtualClock nobody advances (SyncEngine::Stop's timeout).
  bool WaitForReal(uint64_t seen, double seconds);
  // Permanently wakes all sleepers; later waits return at once.
  void Close();
  bool closed() const;
  const std::shared_ptr<Clock>& clock() const { return clock_; }

  explicit Waiter(std::shared_ptr<Clock> clock) : clock_(std::move(clock)) {}

 private:
  std::shared_ptr<Clock> clock_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t generation_ = 0;
  bool closed_ = false;
};

}  // namespace cpcsync
