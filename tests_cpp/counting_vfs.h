// A test-only SQLite VFS shim that wraps the default VFS and counts xSync calls
// per file kind, so tests can check what each durability level really syncs.
#pragma once

#include <sqlite3.h>

#include <atomic>

namespace cpcsync::testing {

struct SyncCounts {
  std::atomic<int> wal{0};
  std::atomic<int> db{0};
  void Reset() {
    wal = 0;
    db = 0;
  }
};

// Registers the shim as the default VFS (once) and returns its counters.
SyncCounts& InstallCountingVfs();

}  // namespace cpcsync::testing
