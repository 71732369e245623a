// Everything a queue file holds, read through SQLite, for before/after comparisons
// in the storage fault and crash tests.
#pragma once

#include <string>
#include <vector>

namespace cpcsync::testing {

struct QueueSnapshot {
  int user_version = 0;
  std::vector<std::string> ops;  // every column of every op, by id
  std::vector<std::string> ready, waiting, counters, sequence, indexes;
  bool operator==(const QueueSnapshot&) const = default;
};

// Reads `path` with a connection of its own (the default VFS). With `ignore_hlc`,
// HLC stamps are left out (a retried enqueue gets a later one).
QueueSnapshot Snapshot(const std::string& path, bool ignore_hlc = false);

// What SQLite's PRAGMA integrity_check says: "ok" for a sound file.
std::string IntegrityCheck(const std::string& path);

std::string Describe(const QueueSnapshot& s);

// The rows `sql` returns from the file at `path`, each as "col|col|..." (NULL as "∅").
std::vector<std::string> Query(const std::string& path, const std::string& sql);

}  // namespace cpcsync::testing
