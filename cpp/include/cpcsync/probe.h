// Probe: one reachability check, run by a NetworkMonitor.
//
// Check(timeout) returns true when the target answered within `timeout` seconds and
// false when it did not; it may also throw, which the monitor counts as a failure.
// A well-behaved probe returns within about `timeout`, but the monitor does not rely
// on it: it runs every check on a thread of its own and counts a check still running
// at its deadline (on the monitor's clock) as a failure, abandoning it.
//
// Thread-safety: Check() is called from threads the monitor starts, never from the
// thread that called the monitor. One monitor never runs two checks of its probe at
// once (not even across Stop()/Start(): it waits for an abandoned check to end before
// starting another). Sharing one probe between monitors needs a thread-safe Check().
#pragma once

namespace cpcsync {

class Probe {
 public:
  virtual ~Probe() = default;
  // True when the target is reachable; false (or an exception) otherwise.
  virtual bool Check(double timeout) = 0;
  // The timeout this probe wants its checks to get, in seconds; 0 lets the monitor
  // choose (its probe interval).
  virtual double timeout() const { return 0.0; }
};

}  // namespace cpcsync
