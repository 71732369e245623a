#include "queue_snapshot.h"

#include <sqlite3.h>

#include <memory>
#include <stdexcept>

namespace cpcsync::testing {
namespace {

using Conn = std::unique_ptr<sqlite3, decltype(&sqlite3_close_v2)>;

Conn OpenConn(const std::string& path) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr);
  Conn conn(db, &sqlite3_close_v2);
  if (rc != SQLITE_OK) throw std::runtime_error("snapshot: cannot open " + path);
  sqlite3_busy_timeout(db, 5000);
  return conn;
}

// Each row as "col|col|...", NULL as "∅".
std::vector<std::string> Rows(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &raw, nullptr) != SQLITE_OK) {
    throw std::runtime_error("snapshot: " + sql + ": " + sqlite3_errmsg(db));
  }
  std::unique_ptr<sqlite3_stmt, decltype(&sqlite3_finalize)> st(raw, &sqlite3_finalize);
  std::vector<std::string> out;
  int rc;
  while ((rc = sqlite3_step(raw)) == SQLITE_ROW) {
    std::string row;
    for (int i = 0; i < sqlite3_column_count(raw); ++i) {
      if (i) row += '|';
      const auto* text = sqlite3_column_text(raw, i);
      row += text ? reinterpret_cast<const char*>(text) : "∅";
    }
    out.push_back(std::move(row));
  }
  if (rc != SQLITE_DONE) throw std::runtime_error("snapshot: " + sql + ": " + sqlite3_errmsg(db));
  return out;
}

}  // namespace

QueueSnapshot Snapshot(const std::string& path, bool ignore_hlc) {
  Conn conn = OpenConn(path);
  sqlite3* db = conn.get();
  Rows(db, "BEGIN");
  QueueSnapshot s;
  s.user_version = std::stoi(Rows(db, "PRAGMA user_version").at(0));
  const std::string hlc = ignore_hlc ? "" : "hlc, ";
  s.ops = Rows(db, "SELECT id, kind, key, hex(payload), size, priority, idempotency_key, " + hlc +
                       "created_at, attempts, next_attempt_at, last_error, state, expires_at, "
                       "first_attempt_at, base_version, dead_at FROM ops ORDER BY id");
  s.ready = Rows(db, "SELECT op_id, prio FROM ready ORDER BY op_id");
  s.waiting = Rows(db, "SELECT op_id, prio, due FROM waiting ORDER BY op_id");
  s.counters = Rows(db, std::string("SELECT live_ops, live_bytes, dead_ops") +
                            (ignore_hlc ? "" : ", max_hlc") + " FROM counters");
  s.sequence = Rows(db, "SELECT name, seq FROM sqlite_sequence ORDER BY name");
  s.indexes = Rows(db, "SELECT name FROM sqlite_schema WHERE type='index' ORDER BY name");
  Rows(db, "COMMIT");
  return s;
}

std::string IntegrityCheck(const std::string& path) {
  Conn conn = OpenConn(path);
  std::string out;
  for (const auto& row : Rows(conn.get(), "PRAGMA integrity_check")) out += row;
  return out;
}

std::vector<std::string> Query(const std::string& path, const std::string& sql) {
  Conn conn = OpenConn(path);
  return Rows(conn.get(), sql);
}

std::string Describe(const QueueSnapshot& s) {
  std::string out = "user_version " + std::to_string(s.user_version) + "\n";
  auto add = [&](const char* what, const std::vector<std::string>& rows) {
    out += std::string(what) + ":\n";
    for (const auto& r : rows) out += "  " + r + "\n";
  };
  add("ops", s.ops);
  add("ready", s.ready);
  add("waiting", s.waiting);
  add("counters", s.counters);
  add("sequence", s.sequence);
  add("indexes", s.indexes);
  return out;
}

}  // namespace cpcsync::testing
