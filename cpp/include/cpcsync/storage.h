// QueueStorage: the state of a queue's operations, and the queries its policy needs.
//
// Two implementations: MemoryStorage (nothing survives the process) and
// SqliteStorage (a WAL-mode SQLite file shared by processes). Both implement the
// semantics of docs/queue-semantics.md exactly; tests drive them side by side
// against a model. SyncQueue (sync_queue.h) validates input and stamps operations
// before they reach a storage.
//
// Thread-safety: implementations are internally synchronised; every method may be
// called from any thread. No method calls back into user code.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cpcsync/operation.h"

namespace cpcsync {

enum class Overflow { kReject, kDropLowest };

struct Limits {
  std::optional<int64_t> max_ops;
  std::optional<int64_t> max_bytes;
  Overflow overflow = Overflow::kReject;
};

// A fully stamped operation ready to store (id assigned by the storage).
struct StampedOp {
  NewOp op;
  std::string idempotency_key;
  uint64_t hlc = 0;
  double now = 0;
};

struct QueueStats {
  int64_t pending = 0;
  int64_t in_flight = 0;
  int64_t dead = 0;
  int64_t bytes = 0;                   // payload bytes of pending + in flight
  std::map<int, int64_t> by_priority;  // pending ops per priority
  std::optional<double> oldest_pending_created_at;
  std::optional<double> next_due;  // earliest next_attempt_at among waiting heads
  // Failures where no server answered (Retry with network=true), counted over the
  // queue's lifetime (schema 4; a counter, so O(1) to read).
  int64_t network_failures = 0;
};

// How a delivery that did not succeed counts, for Retry.
enum class RetryKind {
  kAttempt,  // a server answered with a failure: the attempt the Take counted stands
  kNetwork,  // no server answered: not an attempt (attempts -1), network_failures +1
  kNotSent,  // never sent (put back after a stop or an interrupt): not an attempt
             // (attempts -1), and last_error is left as it was
};

class QueueStorage {
 public:
  virtual ~QueueStorage() = default;

  // Stores `ops` in one transaction (all or none) and returns their ids (for a
  // coalesced op, the id it merged into). Applies coalescing and `limits`.
  virtual std::vector<int64_t> Insert(std::vector<StampedOp>& ops, const Limits& limits) = 0;
  // Expires due TTLs, then leases up to n ready lane heads (see queue-semantics.md).
  virtual std::vector<Operation> Take(size_t n, double now) = 0;
  virtual void Ack(int64_t id, double now) = 0;
  // Makes the in-flight op pending again, due at `next_attempt_at`, counted as `kind`
  // says (docs/queue-semantics.md, "Outages"): a network failure or an op never sent
  // is not an attempt, so the op's attempts (raised by the Take that leased it) go
  // back down by one.
  virtual void Retry(int64_t id, double next_attempt_at, const std::optional<std::string>& error,
                     double now, RetryKind kind) = 0;
  virtual void DeadLetter(int64_t id, const std::string& reason, double now) = 0;
  // Records the remote version an op must be resent against (conflict resolution).
  virtual void SetBaseVersion(int64_t id, std::optional<int64_t> version,
                              const std::optional<std::string>& payload) = 0;
  virtual std::vector<Operation> Peek(size_t n, double now) = 0;
  virtual std::optional<Operation> Get(int64_t id) = 0;
  virtual std::vector<Operation> DeadLetters(size_t limit) = 0;
  // Re-enqueues dead ops under new ids, all or none; `limits` apply as for Insert.
  virtual std::vector<int64_t> RequeueDead(const std::optional<std::vector<int64_t>>& ids,
                                           const Limits& limits, double now) = 0;
  virtual int64_t PurgeDead() = 0;
  // Makes every in-flight op pending again (after its consumer went away).
  virtual int64_t ResetInFlight(double now) = 0;
  virtual int64_t Count() = 0;  // pending + in flight
  // The lowest id still held in any state that can reach a server (pending, in flight,
  // dead); with none held, the id the next insert gets. Every id below it was
  // acknowledged or purged (docs/queue-semantics.md, "Low water"). Ids are never reused.
  virtual int64_t LowWater() = 0;
  virtual QueueStats Stats() = 0;
  // When the first lane head is (or becomes) due: -inf when one is ready now,
  // nullopt when no lane has a pending head.
  virtual std::optional<double> NextReadyAt() = 0;
  // Makes this handle the queue's consumer, at the first take/ack/retry/... call.
  // Private storages (memory) always are. For shared files: throws
  // SyncError(kQueueLocked) if another handle is; otherwise makes every in-flight
  // op pending again (its consumer is gone) and calls `wake` from another thread
  // whenever another process stores an op.
  virtual void AcquireConsumer(double /*now*/, const std::function<void()>& /*wake*/) {}
  // Highest HLC ever stored or observed (0 when empty).
  virtual uint64_t MaxHlc() = 0;
  // Raises the stored high-water mark to `remote` if it is higher (in its own write
  // transaction, committed like the consumer's writes): every op inserted later, by any
  // handle on the same storage, is stamped above it.
  virtual void ObserveHlc(uint64_t remote) = 0;
  virtual void Close() = 0;
};

}  // namespace cpcsync
