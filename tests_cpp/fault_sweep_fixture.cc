#include "fault_sweep_fixture.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

namespace cpcsync::testing {
namespace {

namespace fs = std::filesystem;

constexpr double kStart = 1000.0;

void Remove(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(path + suffix);
}

// The seeded queue, written once per process and closed cleanly (one file, no WAL).
const std::string& Template() {
  static const std::string path = [] {
    const std::string p = SweepPath("template");
    auto q = OpenSweepQueue(p, Durability::kFull);
    q->Enqueue(NewPut("a", 50, "i1"));
    q->Enqueue(NewPut("a", 25, "i2"));
    q->Enqueue(NewPut("b", 75, "i3"));
    NewOp delayed = NewPut("c", 50, "i4");
    delayed.delay = 30;
    q->Enqueue(delayed);
    q->Enqueue(NewPut(std::nullopt, 100, "i5"));
    q->Enqueue(NewPut(std::nullopt, 25, "i6"));
    const int64_t doomed = q->Enqueue(NewPut("d", 10, "i7"));
    q->Take(10);
    q->DeadLetter(doomed, "seeded");
    q->Close();  // the other leases become pending again
    return p;
  }();
  return path;
}

}  // namespace

FaultVfs& SweepVfs() {
  static FaultVfs vfs;
  vfs.MakeDefault();
  return vfs;
}

std::string SweepPath(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("cpcsync-fault-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string p = (dir / (name + ".db")).string();
  Remove(p);
  return p;
}

int64_t SweepStride() {
  const char* s = std::getenv("CPCSYNC_FAULT_SWEEP_STRIDE");
  const int64_t v = s ? std::atoll(s) : 1;
  return v > 0 ? v : 1;
}

bool LongSweep() {
  const char* s = std::getenv("CPCSYNC_FAULT_SWEEP");
  return s && std::string(s) == "full";
}

NewOp NewPut(std::optional<std::string> key, int prio, const std::string& idempotency_key,
             std::string payload) {
  NewOp op;
  op.kind = "put";
  op.key = std::move(key);
  op.priority = prio;
  op.idempotency_key = idempotency_key;
  op.payload = std::move(payload);
  return op;
}

std::shared_ptr<SyncQueue> OpenSweepQueue(const std::string& path, Durability durability) {
  SqliteOptions options;
  options.durability = durability;
  return SyncQueue::Open(path, options, Limits{}, std::make_shared<VirtualClock>(kStart));
}

SweepQueue::SweepQueue(const std::string& name, Durability durability) : path(SweepPath(name)) {
  SweepVfs();
  fs::copy_file(Template(), path);
  q = OpenSweepQueue(path, durability);
  for (const auto& op : q->Take(3)) {
    if (op.idempotency_key == "i1") leased = op.id;
  }
  EXPECT_NE(leased, 0);
}

SweepQueue::~SweepQueue() {
  try {
    q->Close();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "close: " << e.what();
  }
}

void SweepQueue::CheckStillWorks() {
  const int64_t id = q->Enqueue(NewPut("z", 200, "after-fault"));
  const auto ops = q->Take(1);
  ASSERT_EQ(ops.size(), 1u);
  ASSERT_EQ(ops[0].id, id);
  q->Ack(id);
  const int64_t live = q->Count();
  q->Close();
  ASSERT_EQ(IntegrityCheck(path), "ok");
  auto reopened = OpenSweepQueue(path, Durability::kFull);
  EXPECT_EQ(reopened->Count(), live);
  reopened->Close();
}

void PrepareVersion1(const std::string& path) {
  Remove(path);
  fs::copy_file(Template(), path);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  // Undo migrations 4, 3 and 2 (newest first), so the file is what version 1 wrote.
  EXPECT_EQ(sqlite3_exec(db,
                         "ALTER TABLE counters DROP COLUMN wall_high;"
                         "ALTER TABLE counters DROP COLUMN network_failures;"
                         "ALTER TABLE ops DROP COLUMN scheduled_at;"
                         "ALTER TABLE ops DROP COLUMN network_failures;"
                         "DROP INDEX ops_errors;"
                         "ALTER TABLE counters DROP COLUMN pending_by_prio;"
                         "DROP INDEX ops_by_priority;"
                         "PRAGMA user_version=1",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
}

}  // namespace cpcsync::testing
