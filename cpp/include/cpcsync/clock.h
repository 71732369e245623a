// Clock: the only source of time in cpcsync, and the only way to wait for it.
//
// Every component that timestamps or waits takes a std::shared_ptr<Clock>, so tests
// can swap in a VirtualClock and drive hours of retries in milliseconds, the way
// LevelDB's Env lets tests swap the operating system.
//
// Times are seconds as double. SystemClock::Now() is the Unix wall clock.
// VirtualClock::Now() starts where it is told and moves only on Advance().
//
// Auto-advance (VirtualClock::SetAutoAdvance): for a single-threaded driver that owns
// time, such as cpcsync.testing.Simulation. A wait that has a finite deadline and is
// not woken first moves the clock to that deadline instead of blocking: sleeping is
// jumping. With other threads also waiting on the clock, which of them jumps first
// is up to the scheduler, so use it only where one thread drives everything.
//
// Waiting is done through a Waiter (waiter.h), which a clock wakes when virtual
// time passes a deadline. Thread-safety: all methods are safe from any thread.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

namespace cpcsync {

class Waiter;

class Clock {
 public:
  virtual ~Clock() = default;
  // Seconds since the clock's epoch (Unix epoch for SystemClock).
  virtual double Now() const = 0;
  // True when time moves only by Advance(): waits must then be woken by the clock.
  virtual bool IsVirtual() const { return false; }
  // Registers a waiter to be woken whenever virtual time moves. No-op for real clocks.
  virtual void Attach(const std::shared_ptr<Waiter>& waiter) {}
  // True when a wait with a finite deadline should move time to that deadline at
  // once instead of blocking (a VirtualClock in auto-advance mode; see below).
  virtual bool AutoAdvance() const { return false; }
};

class SystemClock final : public Clock {
 public:
  double Now() const override;
  // A process-wide instance, the default everywhere a clock is optional.
  static std::shared_ptr<Clock> Default();
};

class VirtualClock final : public Clock {
 public:
  // Throws SyncError(kInvalidArgument) for a non-finite start.
  explicit VirtualClock(double start = 0.0);
  double Now() const override;
  bool IsVirtual() const override { return true; }
  void Attach(const std::shared_ptr<Waiter>& waiter) override;
  // Moves time forward by `seconds` (>= 0, finite) and wakes every attached waiter.
  // Throws SyncError(kInvalidArgument) for a negative or non-finite step.
  void Advance(double seconds);
  // Moves time to `t` if it is later than now.
  void AdvanceTo(double t);
  bool AutoAdvance() const override { return auto_advance_.load(); }
  void SetAutoAdvance(bool on) { auto_advance_.store(on); }

 private:
  std::atomic<bool> auto_advance_{false};
  mutable std::mutex mu_;
  double now_;
  std::vector<std::weak_ptr<Waiter>> waiters_;
};

}  // namespace cpcsync
