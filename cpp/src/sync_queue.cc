#include "cpcsync/sync_queue.h"

#include <unistd.h>

#include <cmath>
#include <limits>
#include <new>

#include "abandon.h"
#include "cpcsync/errors.h"
#include "cpcsync/memory_storage.h"
#include "ids.h"

namespace cpcsync {
namespace {

void ValidateLimits(const Limits& limits) {
  if (limits.max_ops && *limits.max_ops < 1) ThrowInvalid("max_ops must be >= 1 or None");
  if (limits.max_bytes && *limits.max_bytes < 1) ThrowInvalid("max_bytes must be >= 1 or None");
}

}  // namespace

SyncQueue::SyncQueue(std::unique_ptr<QueueStorage> storage, Limits limits,
                     std::shared_ptr<Clock> clock, std::string path)
    : storage_(std::move(storage)),
      limits_(limits),
      clock_(clock ? std::move(clock) : SystemClock::Default()),
      path_(std::move(path)),
      waiter_(Waiter::Create(clock_)),
      hlc_(clock_, storage_->MaxHlc()),
      pid_(::getpid()) {}

SyncQueue::~SyncQueue() { Close(); }

std::shared_ptr<SyncQueue> SyncQueue::Open(const std::string& path, const SqliteOptions& options,
                                           Limits limits, std::shared_ptr<Clock> clock) {
  ValidateLimits(limits);
  if (path.empty()) ThrowInvalid("path must not be empty");
  return std::make_shared<SyncQueue>(OpenSqliteStorage(path, options), limits, std::move(clock),
                                     path);
}

std::shared_ptr<SyncQueue> SyncQueue::InMemory(Limits limits, std::shared_ptr<Clock> clock) {
  ValidateLimits(limits);
  return std::make_shared<SyncQueue>(NewMemoryStorage(), limits, std::move(clock));
}

std::shared_lock<std::shared_mutex> SyncQueue::Guard() const {
  if (::getpid() != pid_) {
    throw SyncError(ErrorCode::kClosed,
                    "this queue handle was opened by process " + std::to_string(pid_) +
                        " and inherited through fork(); open the queue again in this process");
  }
  std::shared_lock lock(close_mu_);
  if (closed_.load()) throw SyncError(ErrorCode::kClosed, "queue is closed");
  return lock;
}

StampedOp SyncQueue::Stamp(NewOp op, double now) {
  ValidateNewOp(op);
  StampedOp s;
  s.idempotency_key = op.idempotency_key ? *op.idempotency_key : NewUuid4();
  s.hlc = hlc_.Now();
  s.now = now;
  s.op = std::move(op);
  return s;
}

int64_t SyncQueue::Enqueue(NewOp op) {
  auto guard = Guard();
  // Reused per thread: a single enqueue allocates no batch.
  thread_local std::vector<StampedOp> batch;
  batch.clear();
  batch.push_back(Stamp(std::move(op), clock_->Monotonic()));
  const int64_t id = storage_->Insert(batch, limits_).front();
  hlc_.Observe(batch.front().hlc);  // the storage may have raised it to follow commit order
  batch.clear();
  waiter_->Notify();
  return id;
}

std::vector<int64_t> SyncQueue::EnqueueMany(std::vector<NewOp> ops) {
  auto guard = Guard();
  const double now = clock_->Monotonic();
  std::vector<StampedOp> batch;
  batch.reserve(ops.size());
  for (auto& op : ops) batch.push_back(Stamp(std::move(op), now));
  if (batch.empty()) return {};
  auto ids = storage_->Insert(batch, limits_);
  hlc_.Observe(batch.back().hlc);
  waiter_->Notify();
  return ids;
}

void SyncQueue::EnsureConsumer() {
  if (consumer_.load()) return;
  std::weak_ptr<Waiter> weak = waiter_;
  storage_->AcquireConsumer(clock_->Monotonic(), [weak] {
    if (auto w = weak.lock()) w->Notify();
  });
  consumer_.store(true);
}

void SyncQueue::AcquireConsumer() {
  auto guard = Guard();
  EnsureConsumer();
}

std::vector<Operation> SyncQueue::Take(size_t n) {
  auto guard = Guard();
  EnsureConsumer();
  if (n == 0) return {};
  const double now = clock_->Monotonic();
  std::vector<Operation> ops = storage_->Take(n, now);
  for (Operation& op : ops) op.taken_at = now;
  return ops;
}

void SyncQueue::Ack(int64_t id) {
  auto guard = Guard();
  EnsureConsumer();
  storage_->Ack(id, clock_->Monotonic());
  waiter_->Notify();
}

void SyncQueue::Retry(int64_t id, double delay, const std::optional<std::string>& error,
                      bool network) {
  if (!std::isfinite(delay) || delay < 0) ThrowInvalid("delay must be a finite number >= 0");
  auto guard = Guard();
  EnsureConsumer();
  const double now = clock_->Monotonic();
  storage_->Retry(id, now + delay, error, now, network ? RetryKind::kNetwork : RetryKind::kAttempt);
  waiter_->Notify();
}

void SyncQueue::ClaimEngine(const void* engine) {
  const void* expected = nullptr;
  if (!engine_.compare_exchange_strong(expected, engine) && expected != engine) {
    throw SyncError(ErrorCode::kOperationState,
                    "another SyncEngine is already running on this queue handle: two engines "
                    "would deliver the same ops; stop it first (or open the queue again)");
  }
}

void SyncQueue::ReleaseEngine(const void* engine) {
  const void* expected = engine;
  engine_.compare_exchange_strong(expected, nullptr);
}

bool SyncQueue::HeldByAnotherEngine(const void* engine) const {
  const void* holder = engine_.load();
  return holder != nullptr && holder != engine;
}

void SyncQueue::Release(int64_t id) {
  auto guard = Guard();
  EnsureConsumer();
  const double now = clock_->Monotonic();
  storage_->Retry(id, now, std::nullopt, now, RetryKind::kNotSent);
  waiter_->Notify();
}

void SyncQueue::DeadLetter(int64_t id, const std::string& reason) {
  auto guard = Guard();
  EnsureConsumer();
  storage_->DeadLetter(id, reason, clock_->Monotonic());
  waiter_->Notify();
}

void SyncQueue::ObserveHlc(uint64_t remote) {
  HybridLogicalClock::Validate(remote);
  auto guard = Guard();
  storage_->ObserveHlc(remote);
  hlc_.Observe(remote);
}

std::vector<int64_t> SyncQueue::RequeueDead(const std::optional<std::vector<int64_t>>& ids) {
  auto guard = Guard();
  EnsureConsumer();
  auto out = storage_->RequeueDead(ids, limits_, clock_->Monotonic());
  waiter_->Notify();
  return out;
}

int64_t SyncQueue::PurgeDead() {
  auto guard = Guard();
  EnsureConsumer();
  return storage_->PurgeDead();
}

void SyncQueue::SetBaseVersion(int64_t id, std::optional<int64_t> version,
                               const std::optional<std::string>& payload) {
  auto guard = Guard();
  EnsureConsumer();
  storage_->SetBaseVersion(id, version, payload);
}

std::vector<Operation> SyncQueue::Peek(size_t n) {
  auto guard = Guard();
  if (n == 0) return {};
  return storage_->Peek(n, clock_->Monotonic());
}

std::optional<Operation> SyncQueue::Get(int64_t id) {
  auto guard = Guard();
  return storage_->Get(id);
}

std::vector<Operation> SyncQueue::DeadLetters(size_t limit) {
  auto guard = Guard();
  return storage_->DeadLetters(limit);
}

int64_t SyncQueue::Count() {
  auto guard = Guard();
  return storage_->Count();
}

int64_t SyncQueue::LowWater() {
  auto guard = Guard();
  return storage_->LowWater();
}

QueueStats SyncQueue::Stats() {
  auto guard = Guard();
  return storage_->Stats();
}

std::optional<double> SyncQueue::NextReadyAt() {
  auto guard = Guard();
  return storage_->NextReadyAt();
}

bool SyncQueue::Wait(std::optional<double> timeout) {
  if (timeout && (std::isnan(*timeout) || *timeout < 0)) ThrowInvalid("timeout must be >= 0");
  constexpr double kInf = std::numeric_limits<double>::infinity();
  {
    auto guard = Guard();
    EnsureConsumer();
  }
  const double deadline = timeout ? clock_->Monotonic() + *timeout : kInf;
  for (;;) {
    const uint64_t seen = waiter_->Generation();
    std::optional<double> next;
    {
      auto guard = Guard();
      next = storage_->NextReadyAt();
    }
    const double now = clock_->Monotonic();
    if (next && *next <= now) return true;
    if (now >= deadline) return false;
    waiter_->WaitUntil(seen, std::min(deadline, next.value_or(kInf)));
  }
}

void SyncQueue::Close() {
  if (::getpid() != pid_) {
    // A forked child's copy: closing the SQLite connection or waking the waiter here
    // could disturb the parent (or wait for its threads). Abandon both.
    if (!closed_.exchange(true)) {
      Abandon(std::move(storage_));
      Abandon(waiter_);
    }
    return;
  }
  if (closed_.exchange(true)) {
    std::unique_lock wait_for_first(close_mu_);  // returns once the first Close finished
    return;
  }
  waiter_->Close();
  std::unique_lock lock(close_mu_);
  storage_->Close();
}

}  // namespace cpcsync
