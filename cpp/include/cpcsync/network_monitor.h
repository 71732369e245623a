// NetworkMonitor: whether the network is usable now, and who wants to know when it changes.
//
// The state is a bool (connected or not). It changes in three ways:
//  - SetConnected(bool), for manual control (and for monitors without a probe, the
//    only way);
//  - active probing: Start() makes a background thread run the probe every
//    `interval` seconds on the monitor's clock. Hysteresis: `up_after` consecutive
//    successes bring an offline monitor online, `down_after` consecutive failures
//    take an online one offline. A probe that returns false, throws, or is still
//    running `probe_timeout` seconds after it began is a failure. Stop() stops
//    probing and returns at once, even while a probe is blocked: the blocked check is
//    abandoned (its thread ends when the check returns, and its result is ignored);
//  - passive signals: ReportFailure()/ReportSuccess() (a delivery failed or worked)
//    make a probing monitor probe at once instead of waiting for its interval. They
//    never change the state by themselves; a monitor that is not probing only counts
//    them.
//
// Flap damping: with min_transition_interval = d > 0, two transitions are at least d
// seconds apart on the clock. A change requested (by SetConnected or by the
// hysteresis) less than d after the last transition is *deferred*, not dropped: when
// the window ends, the monitor's thread applies it if the latest request still
// differs from the state; a request back to the current state within the window
// cancels it. So a link flapping for T seconds yields at most floor(T / d) + 1
// notifications, and the final state always wins. A SetConnected() that is deferred
// returns at once; observers hear of it from the monitor's thread.
//
// Observers are called once per transition with the new state, in subscription
// order, never while a monitor lock is held. Transitions are numbered and delivered
// in that order even when several threads change the state at once: one thread at a
// time delivers, and SetConnected() returns only after its own transition has been
// delivered (by itself or by the thread that was delivering), except when called
// from inside an observer (of this or any other monitor), in which case it may
// return first: the transition is delivered after the current round, by the thread
// delivering. So observers of two monitors may call each other's SetConnected() from
// two threads at once without deadlock: no lock, and no wait for a delivery, is held
// while observers run.
// An observer that throws is logged and counted (observer_errors) and the others
// still run. An observer unsubscribed while a round is in progress may still be
// called in that round.
//
// All waiting (WaitUntil, probe deadlines and intervals, damping windows) goes
// through a Waiter on the monitor's clock, so a VirtualClock drives it.
//
// Thread-safety: all methods are safe from any thread, including from observers.
// Destroying the monitor stops probing and joins its thread (it must not run
// concurrently with other calls on the same monitor).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "cpcsync/clock.h"
#include "cpcsync/probe.h"

namespace cpcsync {

// The shortest probe interval accepted: 1 ms.
inline constexpr double kMinProbeInterval = 0.001;

struct NetworkMonitorOptions {
  bool connected = false;                // initial state
  double interval = 5.0;                 // seconds between probes (>= kMinProbeInterval)
  int up_after = 1;                      // consecutive successes to go online (>= 1)
  int down_after = 1;                    // consecutive failures to go offline (>= 1)
  double min_transition_interval = 0.0;  // flap damping window in seconds (>= 0)
  // Seconds a check may run before it counts as failed; nullopt: the probe's own
  // timeout() if positive, else `interval`.
  std::optional<double> probe_timeout;
};

struct NetworkMonitorStats {
  bool connected = false;
  bool probing = false;
  std::optional<bool> pending;               // a transition deferred by flap damping
  uint64_t transitions = 0;                  // state changes applied
  uint64_t damped = 0;                       // requests deferred by flap damping
  uint64_t observer_calls = 0;               // observer invocations (including failed ones)
  uint64_t observer_errors = 0;              // observers that threw
  uint64_t probes = 0;                       // probe checks that ended (or timed out)
  uint64_t probe_failures = 0;               // of which failed: false, threw, or timed out
  uint64_t probe_timeouts = 0;               // of which timed out (hung past probe_timeout)
  uint64_t passive_failures = 0;             // ReportFailure() calls
  uint64_t passive_successes = 0;            // ReportSuccess() calls
  int consecutive_successes = 0;             // current run of successful probes
  int consecutive_failures = 0;              // current run of failed probes
  std::optional<double> last_transition_at;  // clock time of the last transition
};

class NetworkMonitor {
 public:
  using Observer = std::function<void(bool connected)>;
  using Token = uint64_t;

  // `probe` may be null (manual monitor); `clock` null means SystemClock::Default().
  // Throws SyncError(kInvalidArgument) for out-of-range options.
  explicit NetworkMonitor(const NetworkMonitorOptions& options = {},
                          std::shared_ptr<Probe> probe = {}, std::shared_ptr<Clock> clock = {});
  ~NetworkMonitor();
  NetworkMonitor(const NetworkMonitor&) = delete;
  NetworkMonitor& operator=(const NetworkMonitor&) = delete;

  bool IsConnected() const;
  // Requests the state; see the class comment for damping and delivery.
  void SetConnected(bool connected);

  // Adds an observer (called with the new state on each transition); returns a token
  // for Unsubscribe. Throws SyncError(kInvalidArgument) for an empty function.
  Token Subscribe(Observer observer);
  // Removes an observer; false if the token is unknown (already removed).
  bool Unsubscribe(Token token);

  // Blocks until IsConnected() == state or `timeout` seconds pass on the clock
  // (nullopt: no limit). Returns whether the state was reached. Throws
  // SyncError(kInvalidArgument) for a negative or NaN timeout.
  bool WaitUntil(bool state, std::optional<double> timeout = std::nullopt);

  // Starts probing (first check at once, then every interval). No-op without a probe
  // or when already probing.
  void Start();
  // Stops probing; returns at once. A check in progress is abandoned.
  void Stop();
  bool probing() const;

  // Passive signals from delivery: a probing monitor probes at once (coalesced with a
  // check in progress or already requested). Never change the state by themselves.
  void ReportFailure();
  void ReportSuccess();

  // Blocks until at least `count` probe checks have ended, their results have been
  // applied and every transition so far has been delivered to the observers, or
  // `timeout` seconds pass on the clock. For tests, and for start-up code that wants a
  // first verdict. Returns whether that point was reached.
  bool WaitForProbes(uint64_t count, std::optional<double> timeout = std::nullopt);

  NetworkMonitorStats Stats() const;
  uint64_t observer_errors() const;
  const std::shared_ptr<Clock>& clock() const;
  const std::shared_ptr<Probe>& probe() const;
  const NetworkMonitorOptions& options() const;

 private:
  class Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace cpcsync
