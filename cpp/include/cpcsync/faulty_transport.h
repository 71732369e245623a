// FaultyTransport: a Transport that injects scripted failures, for tests.
//
// It wraps another transport (or, with none, acts as a sink where every call that
// is not failed succeeds) and decides each call's fate in this order:
//   1. partitioned (Partition(true), or a scheduled window containing now): a
//      network failure "partitioned", at once, with no latency;
//   2. latency: the call waits latency + uniform[0, jitter] seconds on the clock;
//   3. the next of FailNext()'s queued faults, if any;
//   4. a FailFor() window containing the call's start time;
//   5. the pattern, cycled: one entry per call (success or a fault);
//   6. failure_rate: a fault with that probability, from the seeded generator;
//   7. otherwise the inner transport's result (or delivered, without one).
// A fault with a delay (timeouts) waits that long on the clock before failing.
// Every call is recorded in History(): start time on the clock, op id, key,
// priority, outcome and error. Waits go through a Waiter on the clock, so on a
// VirtualClock they end when the test advances time (or at once in auto-advance
// mode); Close() ends them early.
//
// With a seed, the same calls on the same clock give the same faults and latencies
// every run. Thread-safety: all methods are safe from any thread; no lock is held
// while waiting or calling the inner transport.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cpcsync/clock.h"
#include "cpcsync/transport.h"
#include "cpcsync/waiter.h"

namespace cpcsync {

// One injected failure.
struct Fault {
  enum class Kind {
    kTransient,   // DeliveryResult kTransient (for example a 5xx)
    kNetwork,     // kNetwork: the network is unreachable
    kTimeout,     // kNetwork after `delay` seconds: "timed out"
    kReset,       // kNetwork: "connection reset by peer"
    kPermanent,   // kPermanent (for example a 4xx)
    kConflict,    // kConflict with `remote`
    kRetryAfter,  // kRetryAfter with `retry_after`
  };
  Kind kind = Kind::kTransient;
  std::string message;       // empty: a default text per kind
  double retry_after = 0.0;  // kRetryAfter: seconds (>= 0)
  double delay = 0.0;        // seconds to wait on the clock before failing (>= 0)
  Remote remote;             // kConflict

  // "transient", "network", "timeout", "reset", "permanent", "conflict",
  // "retry_after"; SyncError(kInvalidArgument) for anything else.
  static Kind ParseKind(const std::string& name);
  static std::string KindName(Kind kind);
  DeliveryResult ToResult() const;
};

// One call of the transport, as History() records it.
struct Attempt {
  double time = 0.0;  // clock time when the call started
  int64_t op_id = 0;
  std::optional<std::string> key;
  int priority = 0;
  std::string
      outcome;        // "delivered", "transient", "network", "retry_after", "permanent", "conflict"
  std::string error;  // empty when delivered
  double latency = 0.0;  // seconds the call waited on the clock (latency + fault delay)
};

struct FaultyTransportOptions {
  // Cycled per call: nullopt = succeed (or pass to the inner transport).
  std::vector<std::optional<Fault>> pattern;
  double failure_rate = 0.0;     // 0..1
  Fault rate_fault;              // what failure_rate injects (default transient)
  std::optional<uint64_t> seed;  // none: from std::random_device
  double latency = 0.0;          // seconds (>= 0)
  double jitter = 0.0;           // seconds (>= 0), uniform on top of latency
  double timeout = 10.0;         // seconds a kTimeout fault without its own delay waits
};

class FaultyTransport final : public Transport {
 public:
  // Throws SyncError(kInvalidArgument) for a bad option. `inner` may be null (sink);
  // `clock` null: SystemClock.
  FaultyTransport(std::shared_ptr<Transport> inner, FaultyTransportOptions options,
                  std::shared_ptr<Clock> clock);

  DeliveryResult Send(const Operation& op) override;
  bool SupportsBatch() const override;
  // One decision per op, in order, as if each were sent alone (latency once).
  std::vector<DeliveryResult> SendBatch(const std::vector<Operation>& ops) override;

  // The next n calls fail with `fault` (queued after faults already queued).
  void FailNext(int n, const Fault& fault);
  // Calls starting within the next `seconds` on the clock fail with `fault`.
  void FailFor(double seconds, Fault fault);
  // Manual partition: while on, every call fails at once ("partitioned").
  void SetPartitioned(bool on);
  // A scheduled partition over [start, end) on the clock.
  void AddPartition(double start, double end);
  // Flapping: down for `period`, up for `period`, `count` times, from `start`
  // (default now). Adds `count` partition windows.
  void Flap(double period, int count, std::optional<double> start);
  void SetLatency(double latency, double jitter);
  void SetFailureRate(double rate, Fault fault);
  // Drops queued faults, windows, pattern and failure rate; latency to 0.
  void Heal();
  // True when a call now would be partitioned.
  bool Partitioned() const;
  std::vector<Attempt> History() const;
  // Calls started so far (a call counts once its start time is read).
  uint64_t Calls() const;
  // Blocks (real time) until Calls() >= n; false after `timeout` seconds.
  bool WaitForCalls(uint64_t n, std::optional<double> timeout);
  void ClearHistory();
  // Ends every wait in progress and later ones at once (for shutdown).
  void Close();
  const std::shared_ptr<Clock>& clock() const { return clock_; }

 private:
  struct Window {
    double start, end;
    Fault fault;
  };
  // The fault for a call starting at `t` (steps 3-6), consuming queued faults and
  // advancing the pattern. Caller holds mu_.
  std::optional<Fault> Decide(double t);
  bool PartitionedAt(double t) const;  // caller holds mu_
  // Waits on the clock until `deadline` (or Close()).
  void WaitUntil(double deadline);
  DeliveryResult Finish(const Operation& op, double start, double waited,
                        const std::optional<Fault>& fault);
  void Record(const Operation& op, double start, double waited, const DeliveryResult& r);

  std::shared_ptr<Transport> inner_;
  std::shared_ptr<Clock> clock_;
  std::shared_ptr<Waiter> waiter_;
  mutable std::mutex mu_;  // guards everything below
  FaultyTransportOptions options_;
  std::mt19937_64 rng_;
  size_t pattern_next_ = 0;
  std::deque<Fault> queued_;
  std::vector<Window> fail_windows_;
  std::vector<std::pair<double, double>> partitions_;
  bool partitioned_ = false;
  std::vector<Attempt> history_;
  uint64_t calls_ = 0;
  std::condition_variable calls_cv_;
};

// The outcome name History() uses for a result kind.
std::string OutcomeName(DeliveryResult::Kind kind);

}  // namespace cpcsync
