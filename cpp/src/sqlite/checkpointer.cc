#include "sqlite/checkpointer.h"

#include <unistd.h>

#include <algorithm>
#include <string>
#include <utility>

#include "abandon.h"
#include "cpcsync/log.h"

namespace cpcsync::sqlite {

Checkpointer::Checkpointer(const std::string& path, int busy_timeout_ms) : owner_(::getpid()) {
  db_->Open(path, SQLITE_OPEN_READWRITE);
  sqlite3_busy_timeout(db_->get(), busy_timeout_ms);
  db_->Exec("PRAGMA cache_size=-256; PRAGMA synchronous=NORMAL");
  sqlite3_wal_autocheckpoint(db_->get(), 0);  // this connection never commits anyway
  thread_ = std::thread([this] { Run(); });
}

Checkpointer::~Checkpointer() {
  if (::getpid() != owner_) {
    // A forked child: the thread stayed in the parent, and mu_ or the connection may
    // be mid-use there. Touch nothing (see abandon.h).
    Abandon(std::move(thread_));
    Abandon(std::move(db_));
    return;
  }
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  db_->Close();
}

void Checkpointer::Attach(sqlite3* db) { sqlite3_wal_hook(db, &Checkpointer::Hook, this); }

void Checkpointer::Detach(sqlite3* db) { sqlite3_wal_autocheckpoint(db, kFrames); }

bool Checkpointer::WaitForCopiedFrames(int64_t frames, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mu_);
  return copied_cv_.wait_for(lock, timeout, [&] { return copied_frames_ >= frames; });
}

int Checkpointer::Hook(void* self, sqlite3* db, const char* name, int frames) {
  auto* c = static_cast<Checkpointer*>(self);
  if (frames < c->frames_) c->next_wake_ = c->wake_frames_;  // the WAL restarted
  c->frames_ = frames;
  if (frames >= c->next_wake_) {
    c->next_wake_ = frames + c->wake_frames_;
    c->Wake();
  }
  return SQLITE_OK;
}

void Checkpointer::SetInlineFrames(int frames) {
  inline_frames_ = std::clamp(frames, 1, kInlineFrames);
  wake_frames_ = std::clamp(inline_frames_ / 2, 1, kFrames);
  next_wake_ = std::min(next_wake_, frames_ + wake_frames_);
}

void Checkpointer::AfterCommit(sqlite3* db) {
  if (frames_ < inline_frames_) return;
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
    int copied = 0;
    std::string error;
    {
      std::lock_guard work(work_mu_);
      rc = sqlite3_wal_checkpoint_v2(db_->get(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr,
                                     &copied);
      if (rc != SQLITE_OK && rc != SQLITE_BUSY) error = sqlite3_errmsg(db_->get());
    }
    if (!error.empty()) {
      Log().warn("background checkpoint failed: {} (SQLite code {})", error, rc);
    }
    lock.lock();
    if (rc == SQLITE_OK && copied > copied_frames_) copied_frames_ = copied;
    copied_cv_.notify_all();
  }
}

}  // namespace cpcsync::sqlite
