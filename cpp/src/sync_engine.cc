#include "cpcsync/sync_engine.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <new>

#include "abandon.h"
#include "cpcsync/errors.h"
#include "cpcsync/log.h"

namespace cpcsync {
namespace {

constexpr double kForever = std::numeric_limits<double>::infinity();
constexpr size_t kLatencySamples = 4096;
// Seconds before an op is tried again when a user callback of the engine itself (the
// resolver, the backoff) failed on it.
constexpr double kBrokenCallbackRetryDelay = 1.0;
// The text a resolved conflict's retry records; a conflict on an op whose last error
// starts with it means the server keeps reporting one.
constexpr std::string_view kConflictResolved = "conflict resolved (";
// The outage gate's shortest step (seconds): a zero backoff must not probe a dead
// server in a tight loop.
constexpr double kMinOutageStep = 0.1;
// Seconds a probe holds the gate; one still out after that (a transport call hung
// with no timeout) no longer keeps the other workers from probing.
constexpr double kProbeGrace = 30.0;
// Every this many new backoff sequences, those of ops that left the queue without an
// outcome from the engine (TTL, overflow, purge) are dropped: memory stays bounded.
constexpr uint64_t kSequenceSweepEvery = 1024;

// The engine whose Deliver() runs on this thread, and how many of its ops it has in
// flight: Stop() called from a listener does not wait for its own caller's ops.
thread_local const void* t_delivering_engine = nullptr;
thread_local int64_t t_delivering_ops = 0;

class DeliveringScope {
 public:
  DeliveringScope(const void* engine, int64_t ops)
      : engine_(t_delivering_engine), ops_(t_delivering_ops) {
    t_delivering_engine = engine;
    t_delivering_ops = ops;
  }
  ~DeliveringScope() {
    t_delivering_engine = engine_;
    t_delivering_ops = ops_;
  }
  DeliveringScope(const DeliveringScope&) = delete;
  DeliveringScope& operator=(const DeliveringScope&) = delete;

 private:
  const void* engine_;
  int64_t ops_;
};

double DeadlineAfter(const Clock& clock, std::optional<double> timeout) {
  if (!timeout) return kForever;
  if (std::isnan(*timeout) || *timeout < 0) ThrowInvalid("timeout must be >= 0");
  return clock.Monotonic() + *timeout;
}

}  // namespace

void ProcessingSummary::Add(const ProcessingSummary& o) {
  successful += o.successful;
  retried.insert(retried.end(), o.retried.begin(), o.retried.end());
  failed.insert(failed.end(), o.failed.begin(), o.failed.end());
  conflicts += o.conflicts;
  superseded += o.superseded;
  interrupted = interrupted || o.interrupted;
}

SyncEngine::SyncEngine(std::shared_ptr<SyncQueue> queue, std::shared_ptr<Transport> transport,
                       std::shared_ptr<NetworkMonitor> monitor,
                       std::shared_ptr<BackoffStrategy> backoff,
                       std::shared_ptr<ConflictResolver> resolver, const EngineOptions& options,
                       std::shared_ptr<Clock> clock)
    : queue_(std::move(queue)),
      transport_(std::move(transport)),
      monitor_(std::move(monitor)),
      backoff_(std::move(backoff)),
      resolver_(std::move(resolver)),
      options_(options) {
  if (!queue_) ThrowInvalid("SyncEngine needs a queue");
  if (!transport_) ThrowInvalid("SyncEngine needs a transport");
  if (options_.max_attempts < 1) ThrowInvalid("max_attempts must be >= 1");
  if (options_.max_elapsed && !(*options_.max_elapsed > 0)) ThrowInvalid("max_elapsed must be > 0");
  if (options_.concurrency < 1) ThrowInvalid("concurrency must be >= 1");
  if (options_.batch_size < 1) ThrowInvalid("batch_size must be >= 1");
  if (!(options_.max_retry_after > 0) || !std::isfinite(options_.max_retry_after)) {
    ThrowInvalid("max_retry_after must be finite and > 0");
  }
  if (clock && clock != queue_->clock() && (clock->IsVirtual() || queue_->clock()->IsVirtual())) {
    // Deadlines on one clock and waits on the other would never meet.
    ThrowInvalid(
        "the engine's clock must be the queue's clock (a VirtualClock cannot be mixed with "
        "another clock); pass the same clock to both, or leave clock=None");
  }
  clock_ = clock ? std::move(clock) : std::shared_ptr<Clock>(queue_->clock());
  if (!backoff_) backoff_ = std::make_shared<ExponentialBackoff>(0.1, 2.0, 60.0, Jitter::kFull);
  if (!resolver_) resolver_ = std::make_shared<LastWriteWins>();
  gate_backoff_ = backoff_->Stateful() ? backoff_->Clone() : backoff_;
  idle_ = Waiter::Create(clock_);
  if (monitor_) {
    // A transition wakes sleeping workers (reconnect) and idle waiters (disconnect);
    // a reconnect also opens the outage gate: the monitor says the server is back.
    std::weak_ptr<Waiter> work = queue_->waiter();
    std::weak_ptr<Waiter> idle = idle_;
    monitor_token_ = monitor_->Subscribe([work, idle, hub = events_, gate = gate_](bool connected) {
      if (connected) gate->Open();
      if (auto w = work.lock()) w->Notify();
      if (auto w = idle.lock()) w->Notify();
      EngineEvent e;
      e.name = "network";
      e.connected = connected;
      hub->Emit(e);
    });
  }
}

SyncEngine::~SyncEngine() {
  try {
    Stop(false, 5.0);
  } catch (const std::exception& e) {
    Log().error("stopping sync engine: {}", e.what());
  }
  if (monitor_ && monitor_token_) monitor_->Unsubscribe(*monitor_token_);
  std::vector<std::thread> left;
  {
    std::lock_guard lock(mu_);
    left.swap(workers_);
  }
  for (auto& t : left) {
    if (t.joinable()) t.detach();  // stuck in a transport past the stop timeout
  }
}

bool SyncEngine::Connected() const { return !monitor_ || monitor_->IsConnected(); }

bool SyncEngine::running() const {
  std::lock_guard lock(mu_);
  return !workers_.empty() && !stopping_ && workers_pid_ == ::getpid();
}

int64_t SyncEngine::BusyWorkers() const {
  std::lock_guard lock(mu_);
  return busy_;
}

bool SyncEngine::AbandonForeignWorkersLocked() {
  if (workers_.empty() || workers_pid_ == ::getpid()) return false;
  // Joining, detaching or destroying a joinable std::thread of the parent would
  // fail or abort; waking the parent's waiters could block. Leak them instead.
  Abandon(std::move(workers_));
  workers_.clear();
  Abandon(idle_);  // never destroyed (its waiters are not here)
  stopping_ = false;
  return true;
}

void SyncEngine::On(const std::string& event, Listener listener) {
  static const char* kEvents[] = {"delivered", "retry",      "dead_letter",
                                  "conflict",  "superseded", "network"};
  if (std::find_if(std::begin(kEvents), std::end(kEvents),
                   [&](const char* e) { return event == e; }) == std::end(kEvents)) {
    ThrowInvalid("unknown event '" + event +
                 "' (delivered, retry, dead_letter, conflict, superseded, network)");
  }
  if (!listener) ThrowInvalid("listener must be callable");
  std::lock_guard lock(events_->mu);
  events_->listeners[event].push_back(std::move(listener));
}

void SyncEngine::Emit(const EngineEvent& event) { events_->Emit(event); }

void SyncEngine::EventHub::Emit(const EngineEvent& event) {
  std::vector<Listener> targets;
  {
    std::lock_guard lock(mu);
    auto it = listeners.find(event.name);
    if (it == listeners.end()) return;
    targets = it->second;
  }
  for (auto& fn : targets) {  // no lock held while calling out
    try {
      fn(event);
    } catch (const std::exception& e) {
      Log().error("'{}' listener failed: {}", event.name, e.what());
      std::lock_guard lock(mu);
      errors += 1;
    }
  }
}

EngineStats SyncEngine::Stats() const {
  EngineStats s;
  {
    std::lock_guard lock(mu_);
    s = stats_;
    s.running = !workers_.empty() && !stopping_;
    s.busy_workers = busy_;
  }
  {
    std::lock_guard lock(events_->mu);
    s.listener_errors = events_->errors;
  }
  std::lock_guard gate_lock(gate_->mu);
  s.outage_failures = gate_->failures;
  s.outage_resume_at = gate_->failures > 0 ? gate_->until : 0.0;
  return s;
}

bool SyncEngine::OutageGate::Open() {
  std::lock_guard lock(mu);
  const bool was_closed = failures > 0;
  failures = 0;
  until = 0;
  probing = false;
  epoch += 1;
  return was_closed;
}

size_t SyncEngine::Allowance(size_t wanted, double now, double* wake_at, uint64_t* probe) {
  *probe = 0;
  std::lock_guard lock(gate_->mu);
  if (gate_->failures == 0) return wanted;
  if (now < gate_->until) {
    *wake_at = gate_->until;
    return 0;
  }
  if (gate_->probing && now < gate_->probe_deadline) {
    *wake_at = gate_->probe_deadline;  // or earlier: an answer opens the gate and wakes us
    return 0;
  }
  gate_->probing = true;
  gate_->probe += 1;
  gate_->probe_deadline = now + kProbeGrace;
  *probe = gate_->probe;
  return 1;
}

void SyncEngine::ProbeScope::End() {
  if (token_ == 0) return;
  std::lock_guard lock(e_.gate_->mu);
  if (e_.gate_->probing && e_.gate_->probe == token_) e_.gate_->probing = false;
  token_ = 0;
}

void SyncEngine::NoteOutcome(bool answered, bool network, bool probe) {
  if (answered) {
    if (gate_->Open()) queue_->waiter()->Notify();  // wakes the workers the gate held
    return;
  }
  if (!network) return;
  int step;
  uint64_t epoch;
  {
    std::lock_guard lock(gate_->mu);
    // Ops taken before the gate closed (other workers, the rest of a round) fail
    // too: only the first failure and the probe's move the gate a step.
    if (gate_->failures > 0 && !probe) return;
    gate_->failures += 1;
    gate_->until = kForever;  // until the step is known (computed without the lock)
    step = static_cast<int>(std::min<int64_t>(gate_->failures, 1 << 20));
    epoch = gate_->epoch;
  }
  double delay = kBrokenCallbackRetryDelay;
  try {
    delay = gate_backoff_->NextDelay(step);
  } catch (const std::exception& e) {
    Log().error("sync engine: the backoff failed for the outage gate: {}", e.what());
  }
  // A zero backoff must not make a tight loop against a dead server, nor a huge one
  // park every op: the step is bounded both ways.
  if (!std::isfinite(delay)) delay = kBrokenCallbackRetryDelay;
  delay = std::clamp(delay, kMinOutageStep, options_.max_retry_after);
  std::lock_guard lock(gate_->mu);
  if (gate_->epoch != epoch) return;  // opened meanwhile (an answer, a reconnect)
  gate_->until = clock_->Monotonic() + delay;
}

std::optional<double> SyncEngine::NextAttemptAt() {
  auto next = queue_->NextReadyAt();
  if (!next) return next;
  const double now = clock_->Monotonic();
  std::lock_guard lock(gate_->mu);
  if (gate_->failures > 0) {
    next = std::max(*next, gate_->until);
    if (gate_->probing && now < gate_->probe_deadline)
      next = std::max(*next, gate_->probe_deadline);
  }
  return next;
}

std::shared_ptr<BackoffStrategy> SyncEngine::BackoffFor(int64_t id) {
  if (!backoff_->Stateful()) return backoff_;
  std::shared_ptr<BackoffStrategy> out;
  bool sweep = false;
  {
    std::lock_guard lock(mu_);
    auto& seq = sequences_[id];
    if (!seq) {
      seq = backoff_->Clone();
      sweep = ++sequences_added_ % kSequenceSweepEvery == 0;
    }
    out = seq;
  }
  if (sweep) ForgetGoneSequences();
  return out;
}

void SyncEngine::ForgetGoneSequences() {
  // Ops also leave without an outcome from this engine (TTL expiry, overflow, purge,
  // another process's requeue): drop the sequences of those no longer live. The queue
  // is asked with no engine lock held.
  std::vector<int64_t> ids;
  {
    std::lock_guard lock(mu_);
    ids.reserve(sequences_.size());
    for (const auto& [id, seq] : sequences_) ids.push_back(id);
  }
  std::vector<int64_t> gone;
  for (int64_t id : ids) {
    try {
      const auto op = queue_->Get(id);
      if (!op || op->state == OpState::kDead) gone.push_back(id);
    } catch (const std::exception&) {
      return;  // the queue cannot answer now: try at the next sweep
    }
  }
  std::lock_guard lock(mu_);
  for (int64_t id : gone) sequences_.erase(id);
}

size_t SyncEngine::SequencesForTesting() const {
  std::lock_guard lock(mu_);
  return sequences_.size();
}

void SyncEngine::Forget(int64_t id) {
  std::lock_guard lock(mu_);
  sequences_.erase(id);
}

void SyncEngine::Bury(const Operation& op, const std::string& reason, ProcessingSummary& summary) {
  queue_->DeadLetter(op.id, reason);
  Forget(op.id);
  summary.failed.emplace_back(op.id, reason);
  {
    std::lock_guard lock(mu_);
    stats_.dead_lettered += 1;
  }
  EngineEvent e;
  e.name = "dead_letter";
  e.op = op;
  e.error = reason;
  Emit(e);
}

void SyncEngine::RetryOrBury(const Operation& op, double delay, const std::string& error,
                             bool network, ProcessingSummary& summary) {
  const double now = clock_->Monotonic();
  // A network failure is no answer from a server: it never uses up attempts.
  const bool out_of_attempts = !network && op.attempts >= options_.max_attempts;
  const bool out_of_time = options_.max_elapsed && op.first_attempt_at &&
                           now - *op.first_attempt_at >= *options_.max_elapsed;
  if (out_of_attempts || out_of_time) {
    const std::string reason =
        (out_of_attempts ? "gave up after " + std::to_string(op.attempts) + " attempts"
                         : "gave up after max_elapsed") +
        ": " + error;
    Bury(op, reason, summary);
    return;
  }
  queue_->Retry(op.id, delay, error, network);
  summary.retried.emplace_back(op.id, delay);
  {
    std::lock_guard lock(mu_);
    stats_.retried += 1;
    if (network) stats_.network_failures += 1;
  }
  EngineEvent e;
  e.name = "retry";
  e.op = op;
  e.delay = delay;
  e.error = error;
  e.network = network;
  Emit(e);
}

double SyncEngine::RetryAfterDelay(const Operation& op, double server_delay) {
  if (std::isnan(server_delay) || server_delay > options_.max_retry_after) {
    return options_.max_retry_after;  // a huge or garbled value never parks the op
  }
  if (server_delay >= kMinRetryAfter) return server_delay;
  if (server_delay > 0) return kMinRetryAfter;
  // Zero or in the past (a skewed clock makes every HTTP-date past): back off as for
  // any answered failure, never resend in a tight loop.
  const double backoff = BackoffFor(op.id)->NextDelay(std::max(1, op.attempts));
  return std::min(options_.max_retry_after, std::max(kMinRetryAfter, backoff));
}

void SyncEngine::PutBack(const Operation& op) {
  try {
    queue_->Release(op.id);  // never sent: not an attempt, its last error kept
  } catch (const std::exception&) {
    std::lock_guard lock(mu_);
    leftovers_.push_back(op.id);
  }
}

void SyncEngine::Apply(const Operation& op, const DeliveryResult& r, ProcessingSummary& summary) {
  using Kind = DeliveryResult::Kind;
  if (r.interrupted) {
    // Not the op's fault: back in the queue, due now, no backoff, never buried.
    queue_->Retry(op.id, 0.0, r.error);
    summary.interrupted = true;
    return;
  }
  switch (r.kind) {
    case Kind::kDelivered: {
      queue_->Ack(op.id);
      Forget(op.id);
      summary.successful += 1;
      {
        std::lock_guard lock(mu_);
        stats_.delivered += 1;
        const double latency = std::max(0.0, clock_->Monotonic() - op.created_at);
        if (stats_.latencies.size() < kLatencySamples) {
          stats_.latencies.push_back(latency);
        } else {
          stats_.latencies[latency_next_] = latency;
        }
        latency_next_ = (latency_next_ + 1) % kLatencySamples;
      }
      if (monitor_) monitor_->ReportSuccess();
      EngineEvent e;
      e.name = "delivered";
      e.op = op;
      Emit(e);
      return;
    }
    case Kind::kNetwork: {
      if (monitor_) monitor_->ReportFailure();
      // Every failure so far (counted or not) sets the step, capped by the strategy.
      const int64_t failures = int64_t{op.attempts} + op.network_failures;
      const int n = static_cast<int>(std::clamp<int64_t>(failures, 1, 1 << 20));
      // However the strategy grows (a user's may have no cap), an outage never parks
      // an op longer than max_retry_after between tries.
      const double delay = std::min(BackoffFor(op.id)->NextDelay(n), options_.max_retry_after);
      RetryOrBury(op, delay, r.error, /*network=*/true, summary);
      return;
    }
    case Kind::kTransient:
      RetryOrBury(op, BackoffFor(op.id)->NextDelay(std::max(1, op.attempts)), r.error,
                  /*network=*/false, summary);
      return;
    case Kind::kRetryAfter:
      RetryOrBury(op, RetryAfterDelay(op, r.retry_after), r.error, /*network=*/false, summary);
      return;
    case Kind::kPermanent:
      Bury(op, r.error, summary);
      return;
    case Kind::kConflict: {
      summary.conflicts += 1;
      if (r.remote.hlc &&
          HybridLogicalClock::PhysicalMs(*r.remote.hlc) <= HybridLogicalClock::kMaxPhysicalMs)
        queue_->ObserveHlc(*r.remote.hlc);  // persisted: every handle and restart stamps above it
      {
        std::lock_guard lock(mu_);
        stats_.conflicts += 1;
      }
      EngineEvent conflict;
      conflict.name = "conflict";
      conflict.op = op;
      conflict.remote = r.remote;
      Emit(conflict);
      const Resolution decision = resolver_->Resolve(op, r.remote);
      if (decision.kind == Resolution::kUseRemote) {
        queue_->Ack(op.id);  // completed: the server's value stands
        Forget(op.id);
        summary.superseded += 1;
        {
          std::lock_guard lock(mu_);
          stats_.superseded += 1;
        }
        EngineEvent e;
        e.name = "superseded";
        e.op = op;
        e.remote = r.remote;
        Emit(e);
        return;
      }
      std::optional<std::string> payload;
      if (decision.kind == Resolution::kMerge) payload = decision.payload;
      queue_->SetBaseVersion(op.id, r.remote.version, payload);
      const std::string version = r.remote.version ? std::to_string(*r.remote.version) : "?";
      // The first conflict is resolved and resent at once: not a failure to back off
      // from. A server that answers the resend with a conflict again is an answered
      // failure like any other: backed off, and counted toward max_attempts.
      const bool again = op.last_error && op.last_error->starts_with(kConflictResolved);
      if (op.attempts >= options_.max_attempts) {
        Bury(op,
             "gave up after " + std::to_string(op.attempts) + " attempts: the server " +
                 (again ? "kept reporting a conflict" : "reported a conflict") + " (version " +
                 version + ")",
             summary);
        return;
      }
      const double delay = again ? BackoffFor(op.id)->NextDelay(std::max(1, op.attempts)) : 0.0;
      RetryOrBury(op, delay,
                  std::string(kConflictResolved) +
                      (decision.kind == Resolution::kMerge ? "merge" : "use_local") +
                      "); resending against version " + version,
                  /*network=*/false, summary);
      return;
    }
  }
}

ProcessingSummary SyncEngine::Deliver(std::vector<Operation> ops, bool probe) {
  ProcessingSummary summary;
  if (ops.empty()) return summary;
  {
    std::lock_guard lock(mu_);
    stats_.in_flight += static_cast<int64_t>(ops.size());
  }
  DeliveringScope delivering(this, static_cast<int64_t>(ops.size()));
  std::vector<DeliveryResult> results;
  try {
    {
      std::lock_guard lock(mu_);
      stats_.transport_calls += 1;
    }
    results = ops.size() > 1 && transport_->SupportsBatch() ? transport_->SendBatch(ops)
                                                            : SendEach(*transport_, ops);
  } catch (const std::exception& e) {
    results.resize(ops.size(), DeliveryResult::Failed(DeliveryResult::Kind::kTransient, e.what()));
  }
  if (results.size() != ops.size()) {
    results.resize(ops.size(), DeliveryResult::Failed(DeliveryResult::Kind::kTransient,
                                                      "transport returned no result for the op"));
  }
  // The outage gate: did any server answer this call, or did it fail for want of one?
  bool answered = false, network = false;
  for (const auto& r : results) {
    if (r.interrupted) continue;
    if (r.kind == DeliveryResult::Kind::kNetwork) {
      network = true;
    } else {
      answered = true;
    }
  }
  NoteOutcome(answered, network, probe);
  for (size_t i = 0; i < ops.size(); ++i) {
    try {
      Apply(ops[i], results[i], summary);
    } catch (const std::exception& e) {
      Log().error("sync engine: op {}: {}", ops[i].id, e.what());
      // A user callback broke (the resolver raised or returned the wrong type, the
      // backoff returned a bad delay): a failed attempt of that op, retried after a
      // fixed delay (the backoff may be what broke) and dead-lettered after
      // max_attempts like any failure, never resent in a tight loop.
      const auto* sync_error = dynamic_cast<const SyncError*>(&e);
      if (sync_error == nullptr || sync_error->code() == ErrorCode::kInvalidArgument) {
        try {
          // A network failure stays one (the backoff breaking must not let an
          // outage use up attempts).
          RetryOrBury(ops[i], kBrokenCallbackRetryDelay, std::string("engine: ") + e.what(),
                      results[i].kind == DeliveryResult::Kind::kNetwork, summary);
          continue;
        } catch (const std::exception&) {
          // the queue refused that too: put it back as below
        }
      }
      // The queue refused (closed, storage failure): put the op back; if even that
      // cannot be written, it stays leased and is put back once storage accepts
      // writes again (ReleaseLeftovers); never lose the worker.
      try {
        queue_->Retry(ops[i].id, 0.0, std::string("engine: ") + e.what());
      } catch (const std::exception&) {
        std::lock_guard lock(mu_);
        leftovers_.push_back(ops[i].id);
      }
    }
  }
  {
    std::lock_guard lock(mu_);
    stats_.in_flight -= static_cast<int64_t>(ops.size());
  }
  idle_->Notify();
  return summary;
}

bool SyncEngine::ReleaseLeftovers() {
  std::vector<int64_t> ids;
  {
    std::lock_guard lock(mu_);
    if (leftovers_.empty()) return true;
    ids.swap(leftovers_);
  }
  std::vector<int64_t> keep;
  for (int64_t id : ids) {
    try {
      queue_->Retry(id, 0.0, "engine: its outcome could not be recorded; sending it again");
    } catch (const SyncError& e) {
      // Storage still failing: try again later. Anything else (closed, no longer in
      // flight): nothing left to release.
      const ErrorCode c = e.code();
      if (c == ErrorCode::kStorage || c == ErrorCode::kSqlite || c == ErrorCode::kOs) {
        keep.push_back(id);
      }
    } catch (const std::exception&) {
      keep.push_back(id);
    }
  }
  bool none_left;
  {
    std::lock_guard lock(mu_);
    leftovers_.insert(leftovers_.end(), keep.begin(), keep.end());
    none_left = leftovers_.empty();
  }
  if (none_left) idle_->Notify();  // the engine may be idle now (see Idle)
  return none_left;
}

SyncEngine::BusyScope::BusyScope(SyncEngine& e) : e_(e) {
  std::lock_guard lock(e_.mu_);
  e_.busy_ += 1;
}

SyncEngine::BusyScope::~BusyScope() {
  {
    std::lock_guard lock(e_.mu_);
    e_.busy_ -= 1;
  }
  e_.idle_->Notify();
}

ProcessingSummary SyncEngine::ProcessOnce() {
  if (queue_->HeldByAnotherEngine(this)) {
    throw SyncError(ErrorCode::kOperationState,
                    "another SyncEngine is running on this queue handle: stop it before "
                    "delivering with this one");
  }
  if (!Connected()) return {};
  BusyScope busy(*this);
  ReleaseLeftovers();
  double wake_at = kForever;
  uint64_t token = 0;
  const size_t n = Allowance(static_cast<size_t>(options_.concurrency) * options_.batch_size,
                             clock_->Monotonic(), &wake_at, &token);
  if (n == 0) return {};  // the outage gate holds deliveries back (NextAttemptAt says until when)
  ProbeScope probe(*this, token);
  std::vector<Operation> ops = queue_->Take(n);
  ProcessingSummary summary;
  for (size_t i = 0; i < ops.size(); i += options_.batch_size) {
    const size_t end = std::min(ops.size(), i + options_.batch_size);
    if (summary.interrupted) {
      // The caller was interrupted: the rest of the round goes back unsent.
      for (size_t j = i; j < ops.size(); ++j) PutBack(ops[j]);
      break;
    }
    summary.Add(Deliver(std::vector<Operation>(ops.begin() + i, ops.begin() + end), probe.held()));
  }
  return summary;
}

ProcessingSummary SyncEngine::Drain(std::optional<double> timeout) {
  const double deadline = DeadlineAfter(*clock_, timeout);
  ProcessingSummary total;
  auto waiter = queue_->waiter();
  for (;;) {
    const uint64_t seen = waiter->Generation();
    total.Add(ProcessOnce());
    if (total.interrupted) return total;
    if (queue_->Count() == 0 || clock_->Monotonic() >= deadline) return total;
    if (!Connected()) {
      waiter->WaitUntil(seen, deadline);  // a monitor transition notifies this waiter
      continue;
    }
    auto next = NextAttemptAt();
    if (!ReleaseLeftovers()) next = std::min(next.value_or(kForever), clock_->Monotonic() + 1.0);
    if (next && *next <= clock_->Monotonic()) continue;
    waiter->WaitUntil(seen, std::min(deadline, next.value_or(kForever)));
  }
}

bool SyncEngine::EnterBusy(uint64_t generation) {
  std::lock_guard lock(mu_);
  // A Stop() since this worker started (it may have returned already, if this worker
  // was stuck in a transport past its timeout, or called it itself).
  if (stopping_ || generation != generation_) return false;
  busy_ += 1;
  return true;
}

void SyncEngine::WorkerLoop(uint64_t generation) {
  auto waiter = queue_->waiter();
  for (;;) {
    const uint64_t seen = waiter->Generation();
    if (waiter->closed()) return;
    if (!Connected()) {
      {
        std::lock_guard lock(mu_);
        if (stopping_ || generation != generation_) return;
      }
      waiter->WaitUntil(seen, kForever);
      continue;
    }
    // Busy from before the take until the results are applied, so WaitIdle never
    // sees the gap between a lease and its delivery as idle, and Stop never misses a
    // worker on its way into a take that may wait long on SQLite's lock.
    if (!EnterBusy(generation)) return;
    std::optional<BusyScope> busy(std::in_place, *this, std::adopt_lock);
    const bool stuck = !ReleaseLeftovers();  // storage still refusing writes
    // Wait at least until then before looking again (1 s while storage refuses writes).
    auto wait_until = [&](std::optional<double> next) {
      busy.reset();  // notifies idle waiters
      if (stuck) next = std::min(next.value_or(kForever), clock_->Monotonic() + 1.0);
      if (next && *next <= clock_->Monotonic()) return;
      waiter->WaitUntil(seen, next.value_or(kForever));
    };
    double wake_at = kForever;
    uint64_t token = 0;
    const size_t allowed =
        Allowance(static_cast<size_t>(options_.batch_size), clock_->Monotonic(), &wake_at, &token);
    if (allowed == 0) {
      // The outage gate: wait for its next step, or for an answer that opens it (it
      // notifies the queue's waiter).
      wait_until(wake_at);
      continue;
    }
    ProbeScope probe(*this, token);
    std::vector<Operation> ops;
    try {
      ops = queue_->Take(allowed);
    } catch (const SyncError& e) {
      if (e.code() == ErrorCode::kClosed) return;
      Log().error("sync engine: take failed: {}", e.what());
      probe.End();
      wait_until(clock_->Monotonic() + 1.0);
      continue;
    }
    {
      // Take may have waited long (SQLite's lock): a Stop() since then means these
      // ops are not to be sent. They go back, due at once, not counted as attempts.
      std::unique_lock lock(mu_);
      if (stopping_ || generation != generation_) {
        lock.unlock();
        for (const auto& op : ops) PutBack(op);
        return;
      }
    }
    if (ops.empty()) {
      // Nothing due (a probe's turn came before any op's own retry): the next take
      // may probe; sleep until an op comes due, without waking anyone.
      probe.End();
      std::optional<double> next;
      try {
        next = queue_->NextReadyAt();
      } catch (const SyncError& e) {
        if (e.code() == ErrorCode::kClosed) return;
        Log().error("sync engine: reading the next due time failed: {}", e.what());
        next = clock_->Monotonic() + 1.0;
      }
      wait_until(next);
      continue;
    }
    Deliver(std::move(ops), probe.held());
  }
}

void SyncEngine::Start() {
  std::lock_guard lock(mu_);
  AbandonForeignWorkersLocked();
  if (!workers_.empty()) {
    throw SyncError(ErrorCode::kOperationState,
                    "the engine is already running: start() twice would not start more "
                    "workers (use concurrency=); stop() it first");
  }
  queue_->ClaimEngine(this);
  try {
    queue_->AcquireConsumer();
  } catch (...) {
    queue_->ReleaseEngine(this);
    throw;
  }
  stopping_ = false;
  // Workers keep the engine alive: one left inside a hung transport call after
  // Stop() timed out may touch it when the call returns.
  auto self = shared_from_this();
  const uint64_t generation = generation_;
  workers_pid_ = ::getpid();
  for (int i = 0; i < options_.concurrency; ++i) {
    workers_.emplace_back([self, generation] { self->WorkerLoop(generation); });
  }
}

bool SyncEngine::Idle() {
  {
    std::lock_guard lock(mu_);
    // An op whose ack or retry could not be written is still leased: not idle.
    if (busy_ > 0 || stats_.in_flight > 0 || !leftovers_.empty()) return false;
  }
  if (!Connected()) return true;
  const auto next = NextAttemptAt();
  return !(next && *next <= clock_->Monotonic());
}

bool SyncEngine::WaitIdle(std::optional<double> timeout) {
  const double deadline = DeadlineAfter(*clock_, timeout);
  for (;;) {
    const uint64_t seen = idle_->Generation();
    if (Idle()) return true;
    if (clock_->Monotonic() >= deadline) return false;
    idle_->WaitUntil(seen, deadline);
  }
}

bool SyncEngine::Stop(bool drain, std::optional<double> timeout) {
  if (timeout && (std::isnan(*timeout) || *timeout < 0)) ThrowInvalid("timeout must be >= 0");
  const std::thread::id self_id = std::this_thread::get_id();
  bool from_worker = false;
  {
    std::lock_guard lock(mu_);
    if (AbandonForeignWorkersLocked()) return true;  // forked: nothing of ours to stop
    for (const auto& t : workers_) from_worker = from_worker || t.get_id() == self_id;
  }
  if (from_worker && drain) {
    ThrowInvalid(
        "stop(drain=True) was called on one of the engine's own worker threads (from a "
        "listener or the transport): it would wait for itself; use stop() there");
  }
  // The join below is bounded in real time: stop(timeout) bounds how long the caller
  // blocks, even on a VirtualClock that nobody advances.
  const auto start = std::chrono::steady_clock::now();
  const bool drained = !drain || WaitDrained(timeout);
  std::vector<std::thread> workers;
  {
    std::lock_guard lock(mu_);
    if (workers_.empty()) return drained;
    stopping_ = true;
    generation_ += 1;
    workers.swap(workers_);
  }
  queue_->ReleaseEngine(this);
  queue_->waiter()->Notify();
  // The calling thread's own round (a listener calling stop()) finishes after this
  // returns; every other round counts, from before its take (which may wait long on
  // SQLite's lock) to the end of its delivery.
  const int own = t_delivering_engine == this ? 1 : 0;
  auto busy = [&] {
    std::lock_guard lock(mu_);
    return busy_ - own > 0;
  };
  // Joining cannot time out; a worker inside a hung transport call is waited for
  // only until the deadline, then detached (it exits after its call returns).
  bool all = true;
  for (auto& t : workers) {
    if (t.get_id() == self_id) {
      t.detach();  // this very thread: it exits when its callback returns
      continue;
    }
    if (!timeout) {
      t.join();
      continue;
    }
    while (busy()) {
      const uint64_t seen = idle_->Generation();
      const double left =
          *timeout -
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (left <= 0 || !busy()) break;
      idle_->WaitForReal(seen, left);
    }
    if (busy()) {
      t.detach();
      all = false;
    } else {
      t.join();
    }
  }
  {
    std::lock_guard lock(mu_);
    stopping_ = false;
  }
  return all && drained;
}

bool SyncEngine::WaitDrained(std::optional<double> timeout) {
  // In real seconds, like the join in Stop: a VirtualClock nobody advances cannot
  // hold stop() past its timeout.
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    // idle_ moves at the end of every delivery round (and on monitor transitions).
    const uint64_t seen = idle_->Generation();
    int64_t left_in_queue;
    try {
      left_in_queue = queue_->Count();
    } catch (const std::exception& e) {  // closed, storage failure: not drained; stop anyway
      Log().error("sync engine: stop(drain=True): {}", e.what());
      return false;
    }
    {
      std::lock_guard lock(mu_);
      if (left_in_queue == 0 && busy_ == 0 && leftovers_.empty()) return true;
      if (workers_.empty() || stopping_) return left_in_queue == 0;  // nobody to drain it
    }
    double left = 3600.0;
    if (timeout) {
      left = *timeout -
             std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (left <= 0) return false;
    }
    idle_->WaitForReal(seen, std::min(left, 3600.0));
  }
}

}  // namespace cpcsync
