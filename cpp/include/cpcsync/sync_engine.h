// SyncEngine: delivers a queue's operations through a transport.
//
// Workers take ready operations while the monitor says connected (no monitor:
// always connected), call the transport, and act on the result:
//   delivered   -> ack
//   transient   -> retry after backoff.NextDelay(attempts): the server answered
//                  with a failure (5xx, a transport's TransientError)
//   network     -> no server answered (refused, reset, DNS, timeout before a
//                  response): retry after backoff.NextDelay(attempts +
//                  network_failures), and monitor.ReportFailure(). It does NOT count
//                  toward max_attempts ("outages are not the op's fault"): the op's
//                  network_failures grows instead, however long the outage.
//   retry-after -> retry after the server's delay, bounded: above max_retry_after (or
//                  NaN) it is max_retry_after; below kMinRetryAfter it is kMinRetryAfter;
//                  zero or past, it is the backoff's next delay, at least
//                  kMinRetryAfter (never a tight loop)
//   permanent   -> dead letter
//   conflict    -> the resolver: use_local / merge resend the op against the remote
//                  version (merge with the merged payload) at once the first time,
//                  after the backoff's delay when the server keeps reporting a
//                  conflict; use_remote completes it as superseded. The remote HLC is
//                  observed into the queue's clock.
// An op whose attempts reach max_attempts, or whose first attempt is max_elapsed
// seconds old (every failure counts for that, network ones too), is dead-lettered
// instead of retried, with its error kept.
//
// Outage gate. Consecutive network failures (no answered result in between) make the
// whole engine back off: after the k-th, nothing is taken for backoff.NextDelay(k)
// seconds; then ONE op goes out as a probe while the others wait. An answer from the
// server (any result but a network failure) or a monitor reconnect opens the gate
// again. So an outage costs one attempt per backoff step, not one per op.
//
// Workers sleep on the queue's Waiter and wake at once on enqueue, on a monitor
// transition, and when the next retry comes due on the clock: no polling.
// ProcessOnce()/Drain() run deliveries on the calling thread instead.
//
// Events ("delivered", "retry", "dead_letter", "conflict", "superseded", "network")
// go to listeners registered with On(); they run on the thread that caused them,
// with no engine lock held; a listener that throws is logged and counted.
// Thread-safety: all methods are safe from any thread. Start/Stop may be repeated.
// Own engines through std::shared_ptr (Start needs shared_from_this): running
// workers keep their engine alive until Stop().
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cpcsync/backoff.h"
#include "cpcsync/conflict.h"
#include "cpcsync/network_monitor.h"
#include "cpcsync/sync_queue.h"
#include "cpcsync/transport.h"

namespace cpcsync {

struct EngineOptions {
  int max_attempts = 10;              // >= 1; answered failures only
  std::optional<double> max_elapsed;  // seconds since the first attempt; > 0
  int concurrency = 1;                // worker threads (>= 1)
  int batch_size = 1;                 // ops per transport call (>= 1)
  double max_retry_after = 900.0;     // seconds; a longer Retry-After is clamped (> 0)
};

// The shortest wait a zero, past or garbled Retry-After can cause (seconds).
inline constexpr double kMinRetryAfter = 0.1;

// What one ProcessOnce()/Drain() did (the seed design's ProcessingSummary).
struct ProcessingSummary {
  int64_t successful = 0;
  std::vector<std::pair<int64_t, double>> retried;      // (op id, delay)
  std::vector<std::pair<int64_t, std::string>> failed;  // (op id, reason): dead-lettered
  int64_t conflicts = 0;
  int64_t superseded = 0;
  bool interrupted = false;  // a transport call was interrupted: the round stopped there
  void Add(const ProcessingSummary& other);
};

struct EngineEvent {
  std::string name;
  std::optional<Operation> op;
  std::optional<double> delay;       // retry
  std::optional<std::string> error;  // retry, dead_letter
  std::optional<Remote> remote;      // conflict, superseded
  std::optional<bool> connected;     // network
  // retry: true when no server answered (a network failure, not counted toward
  // max_attempts), false for an answered failure.
  std::optional<bool> network;
};

struct EngineStats {
  int64_t delivered = 0, retried = 0, dead_lettered = 0, conflicts = 0, superseded = 0;
  int64_t in_flight = 0, listener_errors = 0, transport_calls = 0;
  int64_t network_failures = 0;  // retries after a network failure (not counted as attempts)
  int64_t outage_failures = 0;   // consecutive network failures now (0: the gate is open)
  double outage_resume_at = 0;   // when the outage gate lets the next probe out (clock time)
  int64_t busy_workers = 0;      // workers (and process_once calls) between take and results
  bool running = false;
  std::vector<double> latencies;  // recent delivery latencies (created -> acked), seconds
};

class SyncEngine : public std::enable_shared_from_this<SyncEngine> {
 public:
  using Listener = std::function<void(const EngineEvent&)>;

  // `monitor`, `backoff`, `resolver` may be null (always connected; the default
  // ExponentialBackoff; LastWriteWins). `clock` null: the queue's clock.
  SyncEngine(std::shared_ptr<SyncQueue> queue, std::shared_ptr<Transport> transport,
             std::shared_ptr<NetworkMonitor> monitor, std::shared_ptr<BackoffStrategy> backoff,
             std::shared_ptr<ConflictResolver> resolver, const EngineOptions& options,
             std::shared_ptr<Clock> clock = {});
  ~SyncEngine();
  SyncEngine(const SyncEngine&) = delete;
  SyncEngine& operator=(const SyncEngine&) = delete;

  // One round on the calling thread: takes up to concurrency * batch_size ready ops
  // (none while disconnected) and delivers them.
  ProcessingSummary ProcessOnce();
  // Rounds until the queue is empty or `timeout` seconds pass on the clock; waits
  // (without polling) for retries to come due and for the monitor to reconnect.
  ProcessingSummary Drain(std::optional<double> timeout);

  void Start();
  // Stops the workers. Callable from a listener or transport running on a worker
  // (that worker exits once its callback returns; drain=true is refused there, as
  // it would wait for itself). drain=true first waits, connected or not, until the
  // queue is empty (nothing pending or in flight; retries waiting for their delay
  // count as pending) or `timeout` passes. Ops in flight finish (their results are
  // applied); a worker still busy (inside Take, e.g. waiting for SQLite's lock, or
  // inside the transport) past `timeout` is left to finish on its own: it sends
  // nothing more, and an op it holds is made ready again when the queue is next
  // opened. Returns false if drain=true and the queue did not empty, or if a worker
  // did not stop in time. `timeout` is real seconds whatever the clock, for the drain
  // and the join alike: stop() never blocks its caller longer than it said, even on a
  // VirtualClock nobody advances (one budget for both waits).
  bool Stop(bool drain = false, std::optional<double> timeout = std::nullopt);
  // Idle: nothing taken or leased by this engine (also no op whose outcome could
  // not be written yet), and nothing deliverable now (disconnected, or the outage
  // gate closed, counts as nothing deliverable).
  bool WaitIdle(std::optional<double> timeout);
  // When the engine will next take an op by itself: the queue's next ready time, or
  // later while the outage gate is closed; nullopt when nothing is pending.
  std::optional<double> NextAttemptAt();
  bool running() const;
  // Rounds between a take and the end of their delivery now (engine state only).
  int64_t BusyWorkers() const;
  // Backoff sequences kept (a stateful strategy keeps one per op it retries): for tests.
  size_t SequencesForTesting() const;

  void On(const std::string& event, Listener listener);
  EngineStats Stats() const;
  const std::shared_ptr<SyncQueue>& queue() const { return queue_; }
  const std::shared_ptr<Clock>& clock() const { return clock_; }

 private:
  // Marks a take-and-deliver round in progress (see WaitIdle).
  class BusyScope {
   public:
    explicit BusyScope(SyncEngine& e);
    // Takes over a busy mark already made (EnterBusy).
    BusyScope(SyncEngine& e, std::adopt_lock_t) : e_(e) {}
    ~BusyScope();

   private:
    SyncEngine& e_;
  };

  bool Connected() const;
  bool Idle();
  // Marks a worker busy unless a Stop() came since it started (one critical section,
  // so Stop never misses a worker about to take). False: the worker must exit.
  bool EnterBusy(uint64_t generation);
  // Stop(drain=true): until the queue is empty and nothing is busy, or the timeout.
  bool WaitDrained(std::optional<double> timeout);
  void WorkerLoop(uint64_t generation);
  // In a process forked after Start(): the workers are the parent's threads and do
  // not exist here. Forgets them (never joined, never destroyed) and returns true.
  // Needs mu_.
  bool AbandonForeignWorkersLocked();
  // `probe`: these ops are the outage gate's probe.
  ProcessingSummary Deliver(std::vector<Operation> ops, bool probe = false);
  void Apply(const Operation& op, const DeliveryResult& r, ProcessingSummary& summary);
  // `network`: the failure was no server's answer (does not count toward max_attempts).
  void RetryOrBury(const Operation& op, double delay, const std::string& error, bool network,
                   ProcessingSummary& summary);
  double RetryAfterDelay(const Operation& op, double server_delay);
  // Puts an op this engine took but did not send back in the queue, due at once (not
  // an attempt); if even that cannot be written, it is kept for ReleaseLeftovers.
  void PutBack(const Operation& op);
  void Bury(const Operation& op, const std::string& reason, ProcessingSummary& summary);
  std::shared_ptr<BackoffStrategy> BackoffFor(int64_t id);
  void Forget(int64_t id);
  void ForgetGoneSequences();
  void Emit(const EngineEvent& event);
  // Puts back (pending, due now) the ops whose outcome could not be written (a
  // storage failure left them leased to us); true when none is left over.
  bool ReleaseLeftovers();

  // Outage gate (see the header comment). Shared with the monitor observer, which
  // opens it on reconnect.
  struct OutageGate {
    std::mutex mu;
    int64_t failures = 0;       // consecutive network failures (0: open)
    double until = 0;           // no take before this (clock time)
    bool probing = false;       // one op is out probing
    uint64_t probe = 0;         // the current probe's token
    double probe_deadline = 0;  // a probe still out then counts as lost: another may go
    uint64_t epoch = 0;         // bumped by Open: a step computed before it is stale
    // Opens the gate; true when it was closed.
    bool Open();
  };
  // A probe this thread holds, ended when it goes out of scope.
  class ProbeScope {
   public:
    ProbeScope(SyncEngine& e, uint64_t token) : e_(e), token_(token) {}
    ~ProbeScope() { End(); }
    ProbeScope(const ProbeScope&) = delete;
    ProbeScope& operator=(const ProbeScope&) = delete;
    bool held() const { return token_ != 0; }
    // Ends the probe now (without waking anyone: only an answer does that).
    void End();

   private:
    SyncEngine& e_;
    uint64_t token_;
  };
  // How many ops a take may lease now: `wanted` while the gate is open; 0 while it
  // holds them back (then *wake_at says until when, at the latest); 1 for a probe
  // (then *probe is its token, non-zero).
  size_t Allowance(size_t wanted, double now, double* wake_at, uint64_t* probe);
  // After a transport call: an answer opens the gate; a network failure closes it,
  // or (the probe's failure) takes it one step further. No lock held while the
  // backoff (maybe Python) computes the step.
  void NoteOutcome(bool answered, bool network, bool probe);

  // Listeners live apart from the engine, so the monitor observer (which may still
  // run while the engine is destroyed) holds them, not the engine.
  struct EventHub {
    std::mutex mu;
    std::map<std::string, std::vector<Listener>> listeners;
    int64_t errors = 0;
    void Emit(const EngineEvent& event);
  };

  std::shared_ptr<SyncQueue> queue_;
  std::shared_ptr<Transport> transport_;
  std::shared_ptr<NetworkMonitor> monitor_;
  std::shared_ptr<BackoffStrategy> backoff_;
  std::shared_ptr<ConflictResolver> resolver_;
  EngineOptions options_;
  std::shared_ptr<Clock> clock_;
  std::shared_ptr<Waiter> idle_;  // notified when a delivery ends or the network changes
  std::optional<NetworkMonitor::Token> monitor_token_;
  std::shared_ptr<EventHub> events_ = std::make_shared<EventHub>();
  std::shared_ptr<OutageGate> gate_ = std::make_shared<OutageGate>();
  std::shared_ptr<BackoffStrategy> gate_backoff_;  // the outage gate's own sequence

  mutable std::mutex mu_;  // guards everything below; never held while calling out
  std::map<int64_t, std::shared_ptr<BackoffStrategy>> sequences_;  // stateful backoff per op
  uint64_t sequences_added_ = 0;  // every kSequenceSweepEvery-th drops those of ops gone
  EngineStats stats_;
  std::vector<std::thread> workers_;
  pid_t workers_pid_ = 0;    // the process that started workers_
  uint64_t generation_ = 0;  // bumped by Stop: a worker of an older generation exits
  bool stopping_ = false;
  size_t latency_next_ = 0;
  int busy_ = 0;                    // rounds between a take and the end of their delivery
  std::vector<int64_t> leftovers_;  // leased ops whose outcome could not be written
};

}  // namespace cpcsync
