#include "sqlite/db.h"

#include <exception>

#include "cpcsync/errors.h"

namespace cpcsync::sqlite {

void Throw(sqlite3* db, int rc, const std::string& context) {
  const int primary = rc & 0xFF;
  std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  const ErrorCode code =
      (primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB) ? ErrorCode::kCorrupt
                                                               : ErrorCode::kStorage;
  try {
    throw SyncError(ErrorCode::kSqlite, msg + " (SQLite code " + std::to_string(rc) + ")", 0, rc);
  } catch (...) {
    std::throw_with_nested(SyncError(code, context + ": " + msg, 0, rc));
  }
}

Stmt::Stmt(sqlite3* db, std::string_view sql) : db_(db) {
  const int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                                    SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr);
  if (rc != SQLITE_OK) Throw(db, rc, "prepare '" + std::string(sql.substr(0, 60)) + "'");
}

Stmt::~Stmt() { sqlite3_finalize(stmt_); }

Stmt& Stmt::operator=(Stmt&& o) noexcept {
  if (this != &o) {
    sqlite3_finalize(stmt_);
    db_ = o.db_;
    stmt_ = o.stmt_;
    o.stmt_ = nullptr;
  }
  return *this;
}

#define CPCSYNC_BIND(call)                                           \
  do {                                                               \
    const int rc = (call);                                           \
    if (rc != SQLITE_OK) Throw(db_, rc, "bind parameter");           \
  } while (0)

Stmt& Stmt::Bind(int i, int64_t v) {
  CPCSYNC_BIND(sqlite3_bind_int64(stmt_, i, v));
  return *this;
}
Stmt& Stmt::Bind(int i, double v) {
  CPCSYNC_BIND(sqlite3_bind_double(stmt_, i, v));
  return *this;
}
Stmt& Stmt::BindText(int i, std::string_view v) {
  CPCSYNC_BIND(sqlite3_bind_text64(stmt_, i, v.data(), v.size(), SQLITE_STATIC, SQLITE_UTF8));
  return *this;
}
Stmt& Stmt::BindBlob(int i, std::string_view v) {
  CPCSYNC_BIND(sqlite3_bind_blob64(stmt_, i, v.data(), v.size(), SQLITE_STATIC));
  return *this;
}
Stmt& Stmt::BindNull(int i) {
  CPCSYNC_BIND(sqlite3_bind_null(stmt_, i));
  return *this;
}
#undef CPCSYNC_BIND

bool Stmt::Step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  Throw(db_, rc, "execute '" + std::string(sqlite3_sql(stmt_)).substr(0, 60) + "'");
}

void Stmt::Run() {
  while (Step()) {
  }
}

void Stmt::Reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

bool Stmt::IsNull(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
int64_t Stmt::Int(int col) const { return sqlite3_column_int64(stmt_, col); }
double Stmt::Real(int col) const { return sqlite3_column_double(stmt_, col); }
std::string Stmt::Text(int col) const {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
  return p ? std::string(p, sqlite3_column_bytes(stmt_, col)) : std::string();
}
std::string Stmt::Blob(int col) const {
  const auto* p = static_cast<const char*>(sqlite3_column_blob(stmt_, col));
  return p ? std::string(p, sqlite3_column_bytes(stmt_, col)) : std::string();
}
std::optional<std::string> Stmt::OptText(int col) const {
  if (IsNull(col)) return std::nullopt;
  return Text(col);
}
std::optional<double> Stmt::OptReal(int col) const {
  if (IsNull(col)) return std::nullopt;
  return Real(col);
}
std::optional<int64_t> Stmt::OptInt(int col) const {
  if (IsNull(col)) return std::nullopt;
  return Int(col);
}

Db::~Db() { Close(); }

void Db::Open(const std::string& path, int flags) {
  Close();
  const int rc = sqlite3_open_v2(path.c_str(), &db_, flags | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close_v2(db_);
    db_ = nullptr;
    try {
      throw SyncError(ErrorCode::kSqlite, msg + " (SQLite code " + std::to_string(rc) + ")", 0, rc);
    } catch (...) {
      std::throw_with_nested(
          SyncError(ErrorCode::kStorage, "cannot open queue file '" + path + "': " + msg, 0, rc));
    }
  }
  sqlite3_extended_result_codes(db_, 1);
}

void Db::Close() {
  if (db_) {
    sqlite3_close_v2(db_);
    db_ = nullptr;
  }
}

void Db::Exec(const char* sql) {
  char* err = nullptr;
  const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
  sqlite3_free(err);
  if (rc != SQLITE_OK) Throw(db_, rc, std::string("execute '") + std::string(sql).substr(0, 60) + "'");
}

}  // namespace cpcsync::sqlite
