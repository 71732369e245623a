// SqliteStorage: a QueueStorage in a WAL-mode SQLite file that many processes share.
//
// Any number of handles, in any processes, may insert; one at a time is the
// consumer (see AcquireConsumer). Durability of Insert follows `durability`;
// consumer-side writes (take, ack, retry, dead letter) commit at
// synchronous=NORMAL, since losing one only redelivers an op. Concurrent Inserts
// on one handle share a commit (group commit). Files are created with mode 0600.
// Thread-safety: internally synchronised.
#pragma once

#include <memory>
#include <string>

#include "cpcsync/storage.h"

namespace cpcsync {

enum class Durability { kFull, kNormal, kOff };

struct SqliteOptions {
  Durability durability = Durability::kFull;
  bool read_only = false;
  int busy_timeout_ms = 30000;
};

// Opens (creating if missing) the queue file at `path`. Throws SyncError:
// kNotAQueue for a foreign file, kCorrupt for a damaged one, kStorage otherwise;
// a file that is refused is not modified.
std::unique_ptr<QueueStorage> OpenSqliteStorage(const std::string& path,
                                                const SqliteOptions& options);

// For migration tests: creates a queue file at an older schema `version`.
void CreateSqliteQueueAtVersion(const std::string& path, int version);

}  // namespace cpcsync
