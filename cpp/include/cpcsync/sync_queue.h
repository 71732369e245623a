// SyncQueue: the durable, prioritised outbox a service enqueues into and an
// engine (or any consumer) takes from.
//
// Policy over a QueueStorage: validates and stamps operations (idempotency key,
// HLC, clock time), wakes consumers, and enforces the consumer role. Semantics:
// docs/queue-semantics.md. Thread-safety: every method may be called from any
// thread. Close() wakes Wait()ers; later calls throw SyncError(kClosed).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "cpcsync/clock.h"
#include "cpcsync/hlc.h"
#include "cpcsync/operation.h"
#include "cpcsync/sqlite_storage.h"
#include "cpcsync/storage.h"
#include "cpcsync/waiter.h"

namespace cpcsync {

class SyncQueue {
 public:
  SyncQueue(std::unique_ptr<QueueStorage> storage, Limits limits, std::shared_ptr<Clock> clock,
            std::string path = {});
  ~SyncQueue();
  SyncQueue(const SyncQueue&) = delete;
  SyncQueue& operator=(const SyncQueue&) = delete;

  static std::shared_ptr<SyncQueue> Open(const std::string& path, const SqliteOptions& options,
                                         Limits limits, std::shared_ptr<Clock> clock);
  static std::shared_ptr<SyncQueue> InMemory(Limits limits, std::shared_ptr<Clock> clock);

  int64_t Enqueue(NewOp op);
  // All or nothing, one transaction.
  std::vector<int64_t> EnqueueMany(std::vector<NewOp> ops);

  // Consumer calls (the first one makes this handle the consumer).
  std::vector<Operation> Take(size_t n);
  void Ack(int64_t id);
  // `network`: no server answered (connection refused/reset, DNS, timeout before a
  // response): the failure is counted in op.network_failures, not op.attempts.
  void Retry(int64_t id, double delay, const std::optional<std::string>& error,
             bool network = false);
  // Puts an op this consumer took but never sent back, due now: not an attempt, and
  // its last_error unchanged (an engine stopped or interrupted before sending it).
  void Release(int64_t id);
  void DeadLetter(int64_t id, const std::string& reason);
  std::vector<int64_t> RequeueDead(const std::optional<std::vector<int64_t>>& ids);
  int64_t PurgeDead();
  void SetBaseVersion(int64_t id, std::optional<int64_t> version,
                      const std::optional<std::string>& payload);
  void AcquireConsumer();
  // One running engine per handle: Claim by `engine` (any stable address) succeeds
  // when no other engine holds the handle; throws SyncError(kOperationState) naming
  // the conflict otherwise. Release by the holder only.
  void ClaimEngine(const void* engine);
  void ReleaseEngine(const void* engine);
  // True when an engine other than `engine` holds the handle.
  bool HeldByAnotherEngine(const void* engine) const;

  // Inspection.
  std::vector<Operation> Peek(size_t n);
  std::optional<Operation> Get(int64_t id);
  std::vector<Operation> DeadLetters(size_t limit = SIZE_MAX);
  int64_t Count();
  // The lowest op id the queue may still send: the lowest id held pending, in flight
  // or dead (a dead letter can be requeued), or the next id when it holds none. Every
  // id below it was acknowledged or purged; a server may prune this queue's
  // idempotency records below it (docs/queue-semantics.md, "Low water").
  int64_t LowWater();
  QueueStats Stats();
  std::optional<double> NextReadyAt();

  // Blocks until an op is (probably) deliverable, up to `timeout` seconds on the
  // queue's clock (nullopt: forever). True when something is ready. Wakes on local
  // and (for the consumer) other processes' enqueues, and when a delay runs out.
  bool Wait(std::optional<double> timeout);

  void Close();
  bool closed() const { return closed_.load(); }
  const std::shared_ptr<Clock>& clock() const { return clock_; }
  const std::shared_ptr<Waiter>& waiter() const { return waiter_; }
  HybridLogicalClock& hlc() { return hlc_; }
  // Merges a remote HLC timestamp (a conflicting server write's, say) and persists it
  // as the queue's high-water mark, so every handle on the file, in any process, and
  // this one after a reopen, stamps later operations above it. Throws
  // SyncError(kInvalidArgument) for a stamp out of range (HybridLogicalClock), or
  // kStorage if it could not be written. Not a consumer call.
  void ObserveHlc(uint64_t remote);
  const Limits& limits() const { return limits_; }
  const std::string& path() const { return path_; }

 private:
  StampedOp Stamp(NewOp op, double now);
  void EnsureConsumer();
  std::shared_lock<std::shared_mutex> Guard() const;

  std::unique_ptr<QueueStorage> storage_;
  Limits limits_;
  std::shared_ptr<Clock> clock_;
  std::string path_;
  std::shared_ptr<Waiter> waiter_;
  HybridLogicalClock hlc_;
  mutable std::shared_mutex close_mu_;  // shared by calls, exclusive by Close
  std::atomic<bool> closed_{false};
  std::atomic<bool> consumer_{false};
  std::atomic<const void*> engine_{nullptr};  // the running engine, if any
  // The process that opened the queue. A handle inherited through fork() is not
  // usable in the child (its SQLite connection and locks are the parent's): every
  // call raises QueueClosedError there, and closing it leaves the parent's state alone.
  const pid_t pid_;
};

}  // namespace cpcsync
