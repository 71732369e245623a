// Clock: the only source of time in cpcsync, and the only way to wait for it.
//
// Every component that timestamps or waits takes a std::shared_ptr<Clock>, so tests
// can swap in a VirtualClock and drive hours of retries in milliseconds, the way
// LevelDB's Env lets tests swap the operating system.
//
// Times are seconds as double, on two timelines:
//  - Monotonic(): the timeline of every wait, timeout, interval, backoff delay,
//    deadline and every time a queue stores (created_at, next_attempt_at,
//    expires_at...). It never jumps: a wall-clock step (NTP correcting a device
//    that booted without a real-time clock) neither hurries nor delays anything.
//    For SystemClock it is the boot-time clock anchored to wall time once per boot
//    (see SystemClock), so its values are still "roughly Unix seconds" and can be
//    stored and displayed.
//  - Now(): the wall clock. Used only where wall time is the meaning: hybrid
//    logical clock stamps (hlc.h), and HTTP dates.
// VirtualClock starts where it is told; Advance() moves both timelines,
// StepWall() only the wall one (to simulate an NTP step in tests).
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
  // Wall-clock seconds since the Unix epoch (or the virtual clock's start). May jump
  // either way. Only for stamps (the HLC); never wait on it or store it as a time.
  virtual double Now() const = 0;
  // Seconds on a timeline that never goes back or jumps, roughly Unix seconds: the
  // time base of every wait and every time a queue stores.
  virtual double Monotonic() const = 0;
  // True when time moves only by Advance(): waits must then be woken by the clock.
  virtual bool IsVirtual() const { return false; }
  // Registers a waiter to be woken whenever virtual time moves. No-op for real clocks.
  virtual void Attach(const std::shared_ptr<Waiter>& waiter) {}
  // True when a wait with a finite deadline should move time to that deadline at
  // once instead of blocking (a VirtualClock in auto-advance mode; see below).
  virtual bool AutoAdvance() const { return false; }
};

// SystemClock::Monotonic() = anchor + CLOCK_BOOTTIME (the steady clock where there is
// none; both never jump, and boot time also counts suspended time), where the anchor
// (wall minus boot time) is taken once: at the first use in the process, from a small
// file shared by every process of the same user in the same boot (/dev/shm, keyed by
// the kernel's boot id) when it can be read or created, so that processes sharing a
// queue file store times on one timeline even when the wall clock stepped between
// their starts; otherwise (no /dev/shm, a file owned by someone else, a garbled one)
// from the wall clock at that moment, for this process alone.
class SystemClock final : public Clock {
 public:
  double Now() const override;
  double Monotonic() const override;
  // The process's anchor: Monotonic() minus boot-time seconds (diagnostics, tests).
  static double MonotonicAnchor();
  // A process-wide instance, the default everywhere a clock is optional.
  static std::shared_ptr<Clock> Default();
};

class VirtualClock final : public Clock {
 public:
  // Throws SyncError(kInvalidArgument) for a non-finite start.
  explicit VirtualClock(double start = 0.0);
  // The wall reading: the monotonic one plus every StepWall() so far.
  double Now() const override;
  double Monotonic() const override;
  bool IsVirtual() const override { return true; }
  void Attach(const std::shared_ptr<Waiter>& waiter) override;
  // Moves time forward by `seconds` (>= 0, finite) and wakes every attached waiter.
  // Throws SyncError(kInvalidArgument) for a negative or non-finite step.
  void Advance(double seconds);
  // Moves time to `t` (on the monotonic timeline) if it is later than now.
  void AdvanceTo(double t);
  // Steps only the wall clock (Now()) by `seconds`, either sign, finite, as NTP
  // does to a device without a real-time clock; Monotonic() does not move, so no
  // deadline is reached by it. Wakes attached waiters (so code that wrongly waits on
  // the wall clock shows up in tests). Throws SyncError(kInvalidArgument) for a
  // non-finite step.
  void StepWall(double seconds);
  bool AutoAdvance() const override { return auto_advance_.load(); }
  void SetAutoAdvance(bool on) { auto_advance_.store(on); }

 private:
  std::vector<std::shared_ptr<Waiter>> LiveWaitersLocked();

  std::atomic<bool> auto_advance_{false};
  mutable std::mutex mu_;
  double now_;                // the monotonic reading
  double wall_offset_ = 0.0;  // Now() - Monotonic(): the sum of StepWall() steps
  std::vector<std::weak_ptr<Waiter>> waiters_;
};

}  // namespace cpcsync
