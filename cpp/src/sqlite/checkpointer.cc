#include "sqlite/checkpointer.h"

#include <unistd.h>

#include <string>
#include <utility>

#include "abandon.h"
#include "cpcsync/log.h"

namespace cpcsync::sqlite {

Checkpointer::Checkpointer(const std::string& path, int busy_timeout_ms, bool sync)
    : owner_(::getpid()) {
  db_.Open(path, SQLITE_OPEN_READWRITE);
  sqlite3_busy_timeout(db_.get(), busy_timeout_ms);
  db_.Exec("PRAGMA cache_size=-256");
  if (sync) {
    db_.Exec("PRAGMA synchronous=NORMAL");
  } else {
    db_.Exec("PRAGMA synchronous=OFF");
  }
  sqlite3_wal_autocheckpoint(db_.get(), 0);  // this connection never commits anyway
  thread_ = std::thread([this] { Run(); });
}

Checkpointer::~Checkpointer() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (::getpid() == owner_) {
    thread_.join();
  } else {
    // A forked child: the thread stayed in the parent. Let go of the handle without
    // touching it (joining would wait forever, and a joinable std::thread terminates).
    Abandon(std::move(thread_));
  }
  db_.Close();
}

void Checkpointer::Attach(sqlite3* db) { sqlite3_wal_hook(db, &Checkpointer::Hook, this); }

void Checkpointer::Detach(sqlite3* db) { sqlite3_wal_autocheckpoint(db, kFrames); }

int Checkpointer::checkpoints() const {
  std::lock_guard lock(mu_);
  return checkpoints_;
}

int Checkpointer::Hook(void* self, sqlite3* db, const char* name, int frames) {
  auto* c = static_cast<Checkpointer*>(self);
  if (frames < c->frames_) c->next_wake_ = kFrames;  // the WAL restarted
  c->frames_ = frames;
  if (frames >= c->next_wake_) {
    c->next_wake_ = frames + kFrames;
    c->Wake();
  }
  return SQLITE_OK;
}

void Checkpointer::AfterCommit(sqlite3* db) {
  if (frames_ < kInlineFrames) return;
  // Done or not (BUSY: the thread holds the checkpoint lock), the next commit's hook
  // says where the WAL is: restarted (fewer frames) or still long (try again).
  sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
}

void Checkpointer::Wake() {
  {
    std::lock_guard lock(mu_);
    if (wanted_) return;
    wanted_ = true;
  }
  cv_.notify_one();
}

void Checkpointer::Run() {
  std::unique_lock lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return wanted_ || stop_; });
    if (stop_) return;
    wanted_ = false;
    lock.unlock();
    int rc = SQLITE_OK;
    std::string error;
    {
      std::lock_guard work(work_mu_);
      rc = sqlite3_wal_checkpoint_v2(db_.get(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr,
                                     nullptr);
      if (rc != SQLITE_OK && rc != SQLITE_BUSY) error = sqlite3_errmsg(db_.get());
    }
    if (!error.empty()) {
      Log().warn("background checkpoint failed: {} (SQLite code {})", error, rc);
    }
    lock.lock();
    ++checkpoints_;
  }
}

}  // namespace cpcsync::sqlite
