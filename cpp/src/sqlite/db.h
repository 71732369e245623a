// Thin RAII over the SQLite C API: a connection, prepared statements, and errors
// mapped to SyncError with the SQLite message kept as the nested cause.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace cpcsync::sqlite {

// Throws SyncError(kStorage, or kCorrupt for SQLITE_CORRUPT/NOTADB) with `context`,
// nesting SyncError(kSqlite, "<errmsg> (SQLite code N)").
[[noreturn]] void Throw(sqlite3* db, int rc, const std::string& context);

class Stmt {
 public:
  Stmt() = default;
  Stmt(sqlite3* db, std::string_view sql);
  ~Stmt();
  Stmt(Stmt&& o) noexcept : db_(o.db_), stmt_(o.stmt_) { o.stmt_ = nullptr; }
  Stmt& operator=(Stmt&& o) noexcept;
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  // Binders take 1-based indexes, as SQLite does.
  Stmt& Bind(int i, int64_t v);
  Stmt& Bind(int i, int v) { return Bind(i, static_cast<int64_t>(v)); }
  Stmt& Bind(int i, double v);
  Stmt& BindText(int i, std::string_view v);
  Stmt& BindBlob(int i, std::string_view v);
  Stmt& BindNull(int i);
  Stmt& Bind(int i, const std::optional<std::string>& v) {
    return v ? BindText(i, *v) : BindNull(i);
  }
  Stmt& Bind(int i, const std::optional<double>& v) { return v ? Bind(i, *v) : BindNull(i); }
  Stmt& Bind(int i, const std::optional<int64_t>& v) { return v ? Bind(i, *v) : BindNull(i); }

  // Steps once: true when a row is available.
  bool Step();
  // Steps to completion (for statements that return no rows).
  void Run();
  // Resets for re-use and clears bindings.
  void Reset();

  bool IsNull(int col) const;
  int64_t Int(int col) const;
  double Real(int col) const;
  std::string Text(int col) const;
  std::string Blob(int col) const;
  std::optional<std::string> OptText(int col) const;
  std::optional<double> OptReal(int col) const;
  std::optional<int64_t> OptInt(int col) const;

 private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
};

// Resets a statement when the scope ends, whatever happens inside.
class Use {
 public:
  explicit Use(Stmt& s) : s_(s) {}
  ~Use() { s_.Reset(); }
  Stmt* operator->() { return &s_; }
  Stmt& operator*() { return s_; }

 private:
  Stmt& s_;
};

class Db {
 public:
  Db() = default;
  ~Db();
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;

  // Opens `path` with `flags` (SQLITE_OPEN_*); throws SyncError on failure.
  void Open(const std::string& path, int flags);
  void Close();
  void Exec(const char* sql);
  sqlite3* get() const { return db_; }
  int64_t Changes() const { return sqlite3_changes64(db_); }
  int64_t LastInsertId() const { return sqlite3_last_insert_rowid(db_); }

 private:
  sqlite3* db_ = nullptr;
};

}  // namespace cpcsync::sqlite
