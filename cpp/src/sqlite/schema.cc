#include "sqlite/schema.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "cpcsync/errors.h"

namespace cpcsync::sqlite {
namespace {

// Migration N takes a file from version N-1 to N. Never edit a released step:
// add a new one.
constexpr std::array<const char*, kSchemaVersion> kMigrations = {
    // 1: operations, lane scheduling, counters.
    R"sql(
    CREATE TABLE ops(
      id INTEGER PRIMARY KEY AUTOINCREMENT,
      kind TEXT NOT NULL,
      key TEXT,
      payload BLOB NOT NULL,
      size INTEGER NOT NULL,
      priority INTEGER NOT NULL,
      idempotency_key TEXT NOT NULL,
      hlc INTEGER NOT NULL,
      created_at REAL NOT NULL,
      attempts INTEGER NOT NULL DEFAULT 0,
      next_attempt_at REAL NOT NULL,
      last_error TEXT,
      state INTEGER NOT NULL DEFAULT 0,
      expires_at REAL,
      first_attempt_at REAL,
      base_version INTEGER,
      dead_at REAL);
    CREATE INDEX ops_lane ON ops(key, id) WHERE key IS NOT NULL AND state < 2;
    CREATE INDEX ops_lane_prio ON ops(key, priority) WHERE key IS NOT NULL AND state = 0;
    CREATE INDEX ops_expiry ON ops(expires_at) WHERE expires_at IS NOT NULL AND state = 0;
    CREATE INDEX ops_in_flight ON ops(id) WHERE state = 1;
    CREATE INDEX ops_dead ON ops(id) WHERE state = 2;
    CREATE TABLE ready(op_id INTEGER PRIMARY KEY, prio INTEGER NOT NULL);
    CREATE INDEX ready_order ON ready(prio DESC, op_id);
    CREATE TABLE waiting(op_id INTEGER PRIMARY KEY, prio INTEGER NOT NULL, due REAL NOT NULL);
    CREATE INDEX waiting_due ON waiting(due);
    CREATE INDEX waiting_order ON waiting(prio DESC, op_id);
    CREATE TABLE counters(
      id INTEGER PRIMARY KEY CHECK (id = 1),
      live_ops INTEGER NOT NULL, live_bytes INTEGER NOT NULL,
      dead_ops INTEGER NOT NULL, max_hlc INTEGER NOT NULL);
    INSERT INTO counters VALUES (1, 0, 0, 0, 0);
    )sql",
    // 2: pending ops by (priority, newest first): overflow victims and depth by priority.
    R"sql(
    CREATE INDEX ops_by_priority ON ops(priority, id DESC) WHERE state = 0;
    )sql",
    // 3: answers that must not grow with the backlog (issue 7). Pending depth by
    // priority lives in the counters row ("prio:count,..." ascending, no zeros) instead
    // of a count over ops_by_priority; the operations carrying an error (retried or
    // dead) get a covering index for the CLI's error summary.
    R"sql(
    ALTER TABLE counters ADD COLUMN pending_by_prio TEXT NOT NULL DEFAULT '';
    UPDATE counters SET pending_by_prio = coalesce((
      SELECT group_concat(priority || ':' || n, ',') FROM (
        SELECT priority, count(*) AS n FROM ops WHERE state = 0
        GROUP BY priority ORDER BY priority)), '');
    CREATE INDEX ops_errors ON ops(last_error, state, dead_at, next_attempt_at)
      WHERE last_error IS NOT NULL;
    )sql",
    // 4: outages, clock steps and the HLC (issue 13). Per op: failures where no server
    // answered (not attempts), and when next_attempt_at was last set (NULL: at
    // created_at), so a due time can be clamped to the op's own delay when the wall
    // clock went back across a restart. In the counters row: network failures over
    // the queue's lifetime, and the latest wall time a write stored (wall_high; from
    // the newest op for a migrated file, one seek) to tell cheaply whether the clock
    // went back since. All O(1): no existing row is rewritten.
    R"sql(
    ALTER TABLE ops ADD COLUMN network_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE ops ADD COLUMN scheduled_at REAL;
    ALTER TABLE counters ADD COLUMN network_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE counters ADD COLUMN wall_high REAL NOT NULL DEFAULT 0;
    UPDATE counters SET wall_high = coalesce(
      (SELECT created_at FROM ops ORDER BY id DESC LIMIT 1), 0);
    )sql",
};

[[noreturn]] void NotAQueue(const std::string& path, const std::string& why) {
  throw SyncError(ErrorCode::kNotAQueue, "'" + path + "' is not a cpcsync queue: " + why);
}

[[noreturn]] void OsError(const std::string& path, const std::string& what) {
  ThrowErrno("cannot " + what + " queue file '" + path + "'");
}

uint32_t BigEndian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

}  // namespace

FileKind Examine(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return FileKind::kMissing;
    OsError(path, "examine");
  }
  if (S_ISDIR(st.st_mode)) {
    errno = EISDIR;
    OsError(path, "open");
  }
  if (!S_ISREG(st.st_mode)) NotAQueue(path, "not a regular file");
  if (st.st_size == 0) return FileKind::kEmpty;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) OsError(path, "read");
  std::array<unsigned char, 100> header{};
  const ssize_t n = ::read(fd, header.data(), header.size());
  ::close(fd);
  static constexpr char kMagic[] = "SQLite format 3";  // 16 bytes with the NUL
  if (n < 100 || std::memcmp(header.data(), kMagic, 16) != 0) {
    NotAQueue(path, "not an SQLite database");
  }
  if (BigEndian32(header.data() + 68) != static_cast<uint32_t>(kApplicationId)) {
    NotAQueue(path, "an SQLite database of another application");
  }
  return FileKind::kQueue;
}

void CreateFile0600(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST) return;  // another process won the race
    OsError(path, "create");
  }
  ::fchmod(fd, 0600);  // whatever the umask
  ::close(fd);
}

int UserVersion(Db& db) {
  Stmt s(db.get(), "PRAGMA user_version");
  s.Step();
  return static_cast<int>(s.Int(0));
}

void CreateSchema(Db& db, int version) {
  // Small rows, one commit per enqueue: 2 KiB pages write half the WAL bytes of
  // 4 KiB ones per commit (measured: +30% enqueues/s at "normal").
  db.Exec("PRAGMA page_size=2048");
  db.Exec("BEGIN IMMEDIATE");
  try {
    if (UserVersion(db) == 0) {  // another process may have created it meanwhile
      for (int v = 1; v <= version; ++v) db.Exec(kMigrations[v - 1]);
      db.Exec(("PRAGMA application_id = " + std::to_string(kApplicationId)).c_str());
      db.Exec(("PRAGMA user_version = " + std::to_string(version)).c_str());
    }
    db.Exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db.get(), "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

void Migrate(Db& db) {
  const int found = UserVersion(db);
  if (found == kSchemaVersion) return;
  if (found > kSchemaVersion) {
    throw SyncError(ErrorCode::kNotAQueue,
                    "queue file has schema version " + std::to_string(found) +
                        ", newer than this cpcsync supports (" + std::to_string(kSchemaVersion) +
                        "); upgrade cpcsync");
  }
  if (found < 1) throw SyncError(ErrorCode::kNotAQueue, "queue file has no schema version");
  db.Exec("BEGIN IMMEDIATE");
  try {
    // Read again under the write lock: another process may have changed it since.
    const int from = UserVersion(db);
    if (from < 1 || from > kSchemaVersion) {
      throw SyncError(ErrorCode::kNotAQueue,
                      "queue file's schema version changed to " + std::to_string(from));
    }
    for (int v = from + 1; v <= kSchemaVersion; ++v) db.Exec(kMigrations[v - 1]);
    db.Exec(("PRAGMA user_version = " + std::to_string(kSchemaVersion)).c_str());
    db.Exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db.get(), "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

}  // namespace cpcsync::sqlite
