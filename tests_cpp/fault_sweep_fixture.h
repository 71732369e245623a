// Shared setup of the storage fault sweeps and crash tests: the fault VFS, a
// seeded queue file with ops in every state, and fresh copies of it.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "cpcsync/clock.h"
#include "cpcsync/sync_queue.h"
#include "fault_vfs.h"
#include "queue_snapshot.h"

namespace cpcsync::testing {

// The process's fault VFS (the default VFS from the first call on).
FaultVfs& SweepVfs();

// A fresh path in this process's temp directory (no file, -wal or -shm there).
std::string SweepPath(const std::string& name);

// Every `stride`-th fault position is swept: CPCSYNC_FAULT_SWEEP_STRIDE, default 1 (all).
int64_t SweepStride();

// True when CPCSYNC_FAULT_SWEEP=full asks for the long sweeps.
bool LongSweep();

NewOp NewPut(std::optional<std::string> key, int prio, const std::string& idempotency_key,
             std::string payload = "payload");

// Opens the queue at `path` on a virtual clock at a fixed time (deterministic stamps).
std::shared_ptr<SyncQueue> OpenSweepQueue(const std::string& path, Durability durability);

// A copy of the seeded queue, opened as consumer, with three ops in flight: 7 ops in
// 4 lanes and 2 without a key, one delayed, one dead. `leased` is lane "a"'s head
// (in flight), whose ack makes the next op of its lane ready.
struct SweepQueue {
  SweepQueue(const std::string& name, Durability durability);
  ~SweepQueue();
  // After a fault cleared: the handle still enqueues, takes and acks, closes cleanly,
  // and the file passes integrity_check and reopens with the same ops.
  void CheckStillWorks();

  std::string path;
  std::shared_ptr<SyncQueue> q;
  int64_t leased = 0;
};

// Writes the seeded queue to `path`, downgraded to schema version 1.
void PrepareVersion1(const std::string& path);

}  // namespace cpcsync::testing
