// Checkpointer: WAL checkpoints on a thread of its own, so commits never pay for one.
//
// SQLite's default is an automatic checkpoint inside the commit that takes the WAL
// past 1,000 frames: that commit then copies every page the WAL holds into the
// database file and syncs it. On a large queue file those pages are scattered, so the
// unlucky commit's cost grows with the file (issue 7: enqueue at "normal" cost 1.6x
// more per op at 10,000,000 pending ops than at 10,000, all of it in those commits).
//
// Attach() replaces the automatic checkpoint of a read-write connection with a
// wal_hook that wakes this thread (its own connection to the same file) each time the
// WAL has grown by kFrames; the thread runs a PASSIVE checkpoint, which never blocks
// readers or writers. The WAL restarts from its beginning only when a writer finds it
// fully checkpointed, which rarely happens while commits keep coming; so once it holds
// kInlineFrames, AfterCommit() checkpoints on the committing thread (what is left
// after the thread's work: a fraction of an automatic checkpoint). So the WAL stays
// near kInlineFrames unless another connection keeps a read transaction open (a long
// export, say), which stops any checkpoint from restarting it. The hook itself never
// checkpoints: an error there would be reported by the COMMIT that had already
// succeeded. Checkpoints always run at synchronous=NORMAL (the WAL synced before, the
// database after): one that did not sync could let a later writer restart the WAL
// over frames the database file does not hold yet.
#pragma once

#include <sqlite3.h>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "sqlite/db.h"

namespace cpcsync::sqlite {

class Checkpointer {
 public:
  static constexpr int kFrames = 1000;  // SQLite's default auto-checkpoint threshold
  static constexpr int kInlineFrames = 8 * kFrames;

  // Opens its connection to `path` (which must exist, in WAL mode) and starts the
  // thread.
  Checkpointer(const std::string& path, int busy_timeout_ms);
  // Stops and joins the thread and closes the connection. In a forked child (where
  // the thread does not run) it touches neither: both are abandoned.
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Installs the wal_hook on `db`, a connection to the same file. Call Detach(db)
  // before destroying this object if `db` outlives it. Calls for `db` (its commits,
  // AfterCommit) must not run concurrently: the storage serialises them.
  void Attach(sqlite3* db);
  static void Detach(sqlite3* db);
  // After a write transaction of `db` committed: checkpoints inline if the WAL has
  // reached the inline threshold (errors, e.g. SQLITE_BUSY while the thread
  // checkpoints, are ignored: the next commit tries again).
  void AfterCommit(sqlite3* db);
  // Lowers (or restores) the inline threshold, kInlineFrames at most, to bound the WAL
  // on a small or full disk; the thread is then woken every `frames / 2` frames (up to
  // kFrames). Call from the thread that commits on `db`.
  void SetInlineFrames(int frames);

  // For tests: waits (in real time) until one of the thread's checkpoints reports at
  // least `frames` WAL frames copied into the database (SQLite's pnCkpt: the frames of
  // the current WAL checkpointed so far); false on timeout.
  bool WaitForCopiedFrames(int64_t frames, std::chrono::milliseconds timeout) const;

  // Held by the thread while it is inside SQLite. fork() must take it first (the
  // storage registers it with its fork guard), so a child never inherits SQLite's
  // per-file lock bookkeeping in the middle of a checkpoint.
  std::mutex& work_mutex() { return work_mu_; }

 private:
  static int Hook(void* self, sqlite3* db, const char* name, int frames);
  void Wake();
  void Run();

  std::unique_ptr<Db> db_ = std::make_unique<Db>();  // the thread's connection
  const pid_t owner_;
  int frames_ = 0;           // the WAL's size at the last commit (committing thread)
  int next_wake_ = kFrames;  // wake the thread when frames_ reaches this (likewise)
  int inline_frames_ = kInlineFrames;  // checkpoint inline from here on (likewise)
  int wake_frames_ = kFrames;          // wake the thread every this many frames (likewise)
  std::mutex work_mu_;
  mutable std::mutex mu_;
  std::condition_variable cv_;                 // wakes the thread
  mutable std::condition_variable copied_cv_;  // signalled after each checkpoint
  bool wanted_ = false;                        // guarded by mu_
  bool stop_ = false;                          // guarded by mu_
  int64_t copied_frames_ = 0;                  // the largest pnCkpt seen; guarded by mu_
  std::thread thread_;
};

}  // namespace cpcsync::sqlite
