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
                       std::shared_ptr<ConflictResolver> resolver, EngineOptions options,
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
  clock_ = clock ? std::move(clock) : std::shared_ptr<Clock>(queue_->clock());
  if (!backoff_) backoff_ = std::make_shared<ExponentialBackoff>(0.1, 2.0, 60.0, Jitter::kFull);
  if (!resolver_) resolver_ = std::make_shared<LastWriteWins>();
  idle_ = Waiter::Create(clock_);
  if (monitor_) {
    // A transition wakes sleeping workers (reconnect) and idle waiters (disconnect).
    std::weak_ptr<Waiter> work = queue_->waiter();
    std::weak_ptr<Waiter> idle = idle_;
    monitor_token_ = monitor_->Subscribe([work, idle, hub = events_](bool connected) {
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
  }
  std::lock_guard lock(events_->mu);
  s.listener_errors = events_->errors;
  return s;
}

std::shared_ptr<BackoffStrategy> SyncEngine::BackoffFor(int64_t id) {
  if (!backoff_->Stateful()) return backoff_;
  std::lock_guard lock(mu_);
  auto& seq = sequences_[id];
  if (!seq) seq = backoff_->Clone();
  return seq;
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
                             ProcessingSummary& summary) {
  const double now = clock_->Monotonic();
  const bool out_of_attempts = op.attempts >= options_.max_attempts;
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
  queue_->Retry(op.id, delay, error);
  summary.retried.emplace_back(op.id, delay);
  {
    std::lock_guard lock(mu_);
    stats_.retried += 1;
  }
  EngineEvent e;
  e.name = "retry";
  e.op = op;
  e.delay = delay;
  e.error = error;
  Emit(e);
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
    case Kind::kNetwork:
      if (monitor_) monitor_->ReportFailure();
      [[fallthrough]];
    case Kind::kTransient:
      RetryOrBury(op, BackoffFor(op.id)->NextDelay(std::max(1, op.attempts)), r.error, summary);
      return;
    case Kind::kRetryAfter:
      RetryOrBury(op, r.retry_after, r.error, summary);
      return;
    case Kind::kPermanent:
      Bury(op, r.error, summary);
      return;
    case Kind::kConflict: {
      summary.conflicts += 1;
      if (r.remote.hlc) queue_->hlc().Observe(*r.remote.hlc);
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
      // Resent at once: the conflict is resolved, not a failure to back off from.
      RetryOrBury(op, 0.0,
                  "conflict resolved (" +
                      std::string(decision.kind == Resolution::kMerge ? "merge" : "use_local") +
                      "); resending against version " +
                      (r.remote.version ? std::to_string(*r.remote.version) : "?"),
                  summary);
      return;
    }
  }
}

ProcessingSummary SyncEngine::Deliver(std::vector<Operation> ops) {
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
    if (ops.size() > 1 && transport_->SupportsBatch()) {
      results = transport_->SendBatch(ops);
    } else {
      for (const auto& op : ops) {
        if (!results.empty() && results.back().interrupted) {
          DeliveryResult not_sent = DeliveryResult::Failed(DeliveryResult::Kind::kTransient,
                                                           "not sent: the call was interrupted");
          not_sent.interrupted = true;
          results.push_back(std::move(not_sent));
          continue;
        }
        results.push_back(transport_->Send(op));
      }
    }
  } catch (const std::exception& e) {
    results.resize(ops.size(), DeliveryResult::Failed(DeliveryResult::Kind::kTransient, e.what()));
  }
  if (results.size() != ops.size()) {
    results.resize(ops.size(), DeliveryResult::Failed(DeliveryResult::Kind::kTransient,
                                                      "transport returned no result for the op"));
  }
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
          RetryOrBury(ops[i], kBrokenCallbackRetryDelay, std::string("engine: ") + e.what(),
                      summary);
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
  std::lock_guard lock(mu_);
  leftovers_.insert(leftovers_.end(), keep.begin(), keep.end());
  return leftovers_.empty();
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
  if (!Connected()) return {};
  BusyScope busy(*this);
  ReleaseLeftovers();
  const size_t n = static_cast<size_t>(options_.concurrency) * options_.batch_size;
  std::vector<Operation> ops = queue_->Take(n);
  ProcessingSummary summary;
  for (size_t i = 0; i < ops.size(); i += options_.batch_size) {
    const size_t end = std::min(ops.size(), i + options_.batch_size);
    if (summary.interrupted) {
      // The caller was interrupted: the rest of the round goes back unsent.
      for (size_t j = i; j < ops.size(); ++j) {
        try {
          queue_->Retry(ops[j].id, 0.0, "not sent: the call was interrupted");
        } catch (const std::exception&) {
          std::lock_guard lock(mu_);
          leftovers_.push_back(ops[j].id);
        }
      }
      break;
    }
    summary.Add(Deliver(std::vector<Operation>(ops.begin() + i, ops.begin() + end)));
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
    auto next = queue_->NextReadyAt();
    if (!ReleaseLeftovers()) next = std::min(next.value_or(kForever), clock_->Monotonic() + 1.0);
    if (next && *next <= clock_->Monotonic()) continue;
    waiter->WaitUntil(seen, std::min(deadline, next.value_or(kForever)));
  }
}

void SyncEngine::WorkerLoop(uint64_t generation) {
  auto waiter = queue_->waiter();
  for (;;) {
    const uint64_t seen = waiter->Generation();
    {
      std::lock_guard lock(mu_);
      // A Stop() since this worker started (it may have returned already, if this
      // worker was stuck in a transport past its timeout, or called it itself).
      if (stopping_ || generation != generation_) return;
    }
    if (waiter->closed()) return;
    if (!Connected()) {
      waiter->WaitUntil(seen, kForever);
      continue;
    }
    // Busy from before the take until the results are applied, so WaitIdle never
    // sees the gap between a lease and its delivery as idle.
    std::optional<BusyScope> busy(std::in_place, *this);
    const bool stuck = !ReleaseLeftovers();  // storage still refusing writes
    std::vector<Operation> ops;
    try {
      ops = queue_->Take(static_cast<size_t>(options_.batch_size));
    } catch (const SyncError& e) {
      if (e.code() == ErrorCode::kClosed) return;
      Log().error("sync engine: take failed: {}", e.what());
      busy.reset();
      waiter->WaitUntil(seen, clock_->Monotonic() + 1.0);
      continue;
    }
    if (ops.empty()) {
      std::optional<double> next;
      try {
        next = queue_->NextReadyAt();
      } catch (const SyncError&) {
        return;
      }
      busy.reset();  // notifies idle waiters
      if (stuck) next = std::min(next.value_or(kForever), clock_->Monotonic() + 1.0);
      if (next && *next <= clock_->Monotonic()) continue;
      waiter->WaitUntil(seen, next.value_or(kForever));
      continue;
    }
    Deliver(std::move(ops));
  }
}

void SyncEngine::Start() {
  std::lock_guard lock(mu_);
  AbandonForeignWorkersLocked();
  if (!workers_.empty()) return;
  stopping_ = false;
  queue_->AcquireConsumer();
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
    if (busy_ > 0 || stats_.in_flight > 0) return false;
  }
  if (!Connected()) return true;
  const auto next = queue_->NextReadyAt();
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
  if (drain) WaitIdle(timeout);
  std::vector<std::thread> workers;
  {
    std::lock_guard lock(mu_);
    if (workers_.empty()) return true;
    stopping_ = true;
    generation_ += 1;
    workers.swap(workers_);
  }
  queue_->waiter()->Notify();
  // Ops in flight on the calling thread (a listener calling stop()) are its own: they
  // finish after this returns.
  const int64_t own = t_delivering_engine == this ? t_delivering_ops : 0;
  auto busy = [&] {
    std::lock_guard lock(mu_);
    return stats_.in_flight - own > 0;
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
  return all;
}

}  // namespace cpcsync
