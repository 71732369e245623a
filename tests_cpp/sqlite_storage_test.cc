// What only the SQLite storage does: files, schema, consumers, durability.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "counting_vfs.h"
#include "cpcsync/errors.h"
#include "cpcsync/sync_queue.h"
#include "sqlite/checkpointer.h"

namespace cpcsync {
namespace {

namespace fs = std::filesystem;

std::string Fresh(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("cpcsync-sq-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string p = (dir / name).string();
  for (const char* s : {"", "-wal", "-shm"}) fs::remove(p + s);
  return p;
}

NewOp Op(const std::string& kind = "k") {
  NewOp op;
  op.kind = kind;
  op.payload = "payload";
  return op;
}

ErrorCode CodeOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const SyncError& e) {
    return e.code();
  }
  ADD_FAILURE() << "no SyncError";
  return ErrorCode::kStorage;
}

TEST(SqliteStorage, FileIsCreated0600AndPersists) {
  const std::string path = Fresh("persist.db");
  {
    auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
    q->Enqueue(Op());
    q->Enqueue(Op());
  }
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
  EXPECT_EQ(q->Count(), 2);
}

TEST(SqliteStorage, InFlightOpsReturnOnReopen) {
  const std::string path = Fresh("inflight.db");
  {
    auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
    q->Enqueue(Op());
    ASSERT_EQ(q->Take(1).size(), 1u);
    // Leaked without Close(): simulate a consumer that died (its lock is freed
    // by destruction, its lease stays in the file).
  }
  auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
  auto ops = q->Take(1);
  ASSERT_EQ(ops.size(), 1u);
  EXPECT_EQ(ops[0].attempts, 2);
}

TEST(SqliteStorage, SecondConsumerIsLocked) {
  const std::string path = Fresh("locked.db");
  auto a = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
  auto b = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
  a->Enqueue(Op());
  b->Enqueue(Op());  // producers are fine
  a->Take(1);
  EXPECT_EQ(CodeOf([&] { b->Take(1); }), ErrorCode::kQueueLocked);
  a->Close();
  EXPECT_EQ(b->Take(5).size(), 2u);  // the lease of the closed consumer came back
}

TEST(SqliteStorage, ForeignFilesAreRefusedUntouched) {
  const std::string text = Fresh("text.db");
  { std::ofstream(text) << std::string(500, 'x'); }
  EXPECT_EQ(CodeOf([&] { SyncQueue::Open(text, SqliteOptions{}, Limits{}, nullptr); }),
            ErrorCode::kNotAQueue);
  EXPECT_EQ(fs::file_size(text), 500u);
  EXPECT_FALSE(fs::exists(text + "-wal"));

  const std::string other = Fresh("other.db");
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(other.c_str(), &db), SQLITE_OK);
  sqlite3_exec(db, "CREATE TABLE t(x)", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  const auto size = fs::file_size(other);
  EXPECT_EQ(CodeOf([&] { SyncQueue::Open(other, SqliteOptions{}, Limits{}, nullptr); }),
            ErrorCode::kNotAQueue);
  EXPECT_EQ(fs::file_size(other), size);

  EXPECT_EQ(CodeOf([&] {
              SyncQueue::Open(fs::temp_directory_path().string(), SqliteOptions{}, Limits{},
                              nullptr);
            }),
            ErrorCode::kStorage);
}

TEST(SqliteStorage, MigratesOlderSchemaForward) {
  const std::string path = Fresh("v1.db");
  CreateSqliteQueueAtVersion(path, 1);
  auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
  q->Enqueue(Op());
  q->Close();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, nullptr);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 4);
  sqlite3_finalize(st);
  sqlite3_close(db);
}

// Issue 13: a device whose clock was corrected backwards across a restart. Reopened
// with the clock an hour earlier, a retry due in 5 s stayed due in 3,605 s. Becoming
// the consumer clamps each due time to the op's own delay and each TTL to its ttl.
TEST(SqliteStorage, ClockBackAcrossReopenClampsDueTimesAndTtls) {
  const std::string path = Fresh("clock-back.db");
  const double t0 = 1'000'000.0;
  int64_t retried = 0, delayed = 0, ttl = 0, plain = 0;
  {
    auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, std::make_shared<VirtualClock>(t0));
    retried = q->Enqueue(Op());
    NewOp d = Op();
    d.delay = 10;
    delayed = q->Enqueue(d);
    NewOp t = Op();
    t.ttl = 30;
    t.key = "t";
    ttl = q->Enqueue(t);
    NewOp p = Op();
    p.key = "p";
    plain = q->Enqueue(p);
    ASSERT_EQ(q->Take(1).at(0).id, retried);
    q->Retry(retried, 5, "503");
  }
  const double t1 = t0 - 3600;
  auto clock = std::make_shared<VirtualClock>(t1);
  auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, clock);
  q->AcquireConsumer();
  EXPECT_LE(q->Get(retried)->next_attempt_at, t1 + 5 + 1e-6);
  EXPECT_GE(q->Get(retried)->next_attempt_at, t1 + 5 - 1e-6);
  EXPECT_LE(q->Get(delayed)->next_attempt_at, t1 + 10 + 1e-6);
  EXPECT_LE(*q->Get(ttl)->expires_at, t1 + 30 + 1e-6);
  EXPECT_LE(q->Get(plain)->created_at, t1);
  const auto next = q->NextReadyAt();
  ASSERT_TRUE(next.has_value());
  EXPECT_LE(*next, t1);  // the ttl and plain ops are ready now
  const QueueStats s = q->Stats();
  ASSERT_TRUE(s.oldest_pending_created_at.has_value());
  EXPECT_LE(*s.oldest_pending_created_at, t1);
  ASSERT_TRUE(s.next_due.has_value());
  EXPECT_LE(*s.next_due, t1 + 10 + 1e-6);
  clock->Advance(5);
  std::vector<int64_t> ids;
  for (const auto& op : q->Take(10)) ids.push_back(op.id);
  EXPECT_EQ(ids.size(), 3u);  // retried (due), ttl, plain; the delayed op in 5 s more
  clock->Advance(5);
  EXPECT_EQ(q->Take(10).size(), 1u);
}

// Schema 3 keeps pending depth by priority in the counters row: a migrated file starts
// from what its ops say, and every later change keeps it exact.
TEST(SqliteStorage, MigrationFillsPendingDepthByPriority) {
  const std::string path = Fresh("v2.db");
  CreateSqliteQueueAtVersion(path, 2);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const char* fill =
      "INSERT INTO ops(kind, payload, size, priority, idempotency_key, hlc, created_at, "
      "next_attempt_at, state) VALUES "
      "('k', x'00', 1, 50, 'a', 1, 0, 0, 0), ('k', x'00', 1, 50, 'b', 2, 0, 0, 0), "
      "('k', x'00', 1, 100, 'c', 3, 0, 0, 0), ('k', x'00', 1, 75, 'd', 4, 0, 0, 2);"
      "INSERT INTO ready(op_id, prio) VALUES (1, 50), (2, 50), (3, 100);"
      "UPDATE counters SET live_ops=3, live_bytes=3, dead_ops=1, max_hlc=4;";
  ASSERT_EQ(sqlite3_exec(db, fill, nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);

  auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
  EXPECT_EQ(q->Stats().by_priority, (std::map<int, int64_t>{{50, 2}, {100, 1}}));
  auto taken = q->Take(1);
  ASSERT_EQ(taken.size(), 1u);
  EXPECT_EQ(taken[0].priority, 100);
  EXPECT_EQ(q->Stats().by_priority, (std::map<int, int64_t>{{50, 2}}));
  q->Retry(taken[0].id, 0, "again");
  NewOp high = Op();
  high.priority = 75;
  q->Enqueue(high);
  EXPECT_EQ(q->Stats().by_priority, (std::map<int, int64_t>{{50, 2}, {75, 1}, {100, 1}}));
  q->Close();

  auto again = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);  // stored, not kept
  EXPECT_EQ(again->Stats().by_priority, (std::map<int, int64_t>{{50, 2}, {75, 1}, {100, 1}}));
  again->Close();
}

// The oldest pending op is found per priority (one index seek each): whatever its
// priority, and however many leased or dead ops come before it.
TEST(SqliteStorage, OldestPendingAcrossPrioritiesSkipsLeasedAndDead) {
  auto clock = std::make_shared<VirtualClock>(100.0);
  auto q = SyncQueue::Open(Fresh("oldest.db"), SqliteOptions{}, Limits{}, clock);
  for (int i = 0; i < 3; ++i) q->Enqueue(Op());  // t=100, MEDIUM
  clock->Advance(1);
  NewOp low = Op();
  low.priority = 25;
  q->Enqueue(low);  // t=101: the oldest pending
  clock->Advance(1);
  NewOp high = Op();
  high.priority = 100;
  q->Enqueue(high);  // t=102
  EXPECT_EQ(q->Stats().oldest_pending_created_at, std::optional<double>(100.0));
  auto taken = q->Take(3);  // CRITICAL first, then the two oldest MEDIUM
  ASSERT_EQ(taken.size(), 3u);
  q->DeadLetter(taken[1].id, "gone");
  EXPECT_EQ(q->Stats().oldest_pending_created_at, std::optional<double>(100.0));  // op 3
  auto rest = q->Take(1);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(q->Stats().oldest_pending_created_at, std::optional<double>(101.0));
  q->Close();
}

// Commits hand WAL checkpoints to the Checkpointer's thread, and the WAL stays bounded.
// Issue 13: the observed HLC high-water mark lived in the consumer handle's memory.
TEST(SqliteStorage, ObservedHlcReachesProducersAndReopens) {
  const std::string path = Fresh("hlc.db");
  auto clock = std::make_shared<VirtualClock>(1000.0);
  auto consumer = SyncQueue::Open(path, SqliteOptions{}, Limits{}, clock);
  auto producer = SyncQueue::Open(path, SqliteOptions{}, Limits{}, clock);
  const uint64_t remote = HybridLogicalClock::Pack(9'000'000'000ULL, 3);
  consumer->ObserveHlc(remote);
  EXPECT_GT(consumer->Get(producer->Enqueue(Op()))->hlc, remote);
  consumer->Close();
  producer->Close();
  auto reopened = SyncQueue::Open(path, SqliteOptions{}, Limits{}, clock);
  const uint64_t later = reopened->Get(reopened->Enqueue(Op()))->hlc;
  EXPECT_GT(later, remote);
  reopened->ObserveHlc(remote - 5);  // lower: no change
  EXPECT_GT(reopened->Get(reopened->Enqueue(Op()))->hlc, later);
}

// LowWater is read from the file: what the ops table holds, else the AUTOINCREMENT
// sequence, so a file emptied by acks and reopened never hands out a used id again.
TEST(SqliteStorage, LowWaterSurvivesReopenAndNeverGoesBackWhenEmptied) {
  const std::string path = Fresh("lowwater.db");
  int64_t last = 0;
  {
    auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
    q->Enqueue(Op());
    q->Enqueue(Op());
    last = q->Enqueue(Op());
    auto ops = q->Take(2);
    ASSERT_EQ(ops.size(), 2u);
    q->Ack(ops[0].id);
    q->Close();
  }
  {
    auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
    EXPECT_EQ(q->LowWater(), 2);  // the in-flight op of the closed handle, pending again
    SqliteOptions ro;
    ro.read_only = true;
    auto reader = SyncQueue::Open(path, ro, Limits{}, nullptr);
    EXPECT_EQ(reader->LowWater(), 2);  // inspection handles read it too
    for (const auto& op : q->Take(10)) q->Ack(op.id);
    EXPECT_EQ(q->Count(), 0);
    EXPECT_EQ(q->LowWater(), last + 1);
    EXPECT_EQ(reader->LowWater(), last + 1);
  }
  auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
  EXPECT_EQ(q->LowWater(), last + 1);  // emptied and reopened: still the next id
  EXPECT_EQ(q->Enqueue(Op()), last + 1);
  EXPECT_EQ(q->LowWater(), last + 1);
}

TEST(SqliteCheckpointer, CheckpointsInTheBackgroundAndBoundsTheWal) {
  const std::string path = Fresh("ckpt.db");
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "PRAGMA page_size=2048; PRAGMA journal_mode=WAL; "
                         "PRAGMA synchronous=OFF; CREATE TABLE t(x BLOB)",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  {
    sqlite::Checkpointer ckpt(path, 5000);
    ckpt.Attach(db);
    // Each commit appends a few frames: 4,000 commits write several times kInlineFrames.
    for (int i = 0; i < 4000; ++i) {
      ASSERT_EQ(
          sqlite3_exec(db, "INSERT INTO t VALUES(randomblob(600))", nullptr, nullptr, nullptr),
          SQLITE_OK)
          << "commit " << i << ": " << sqlite3_errmsg(db);
      ckpt.AfterCommit(db);
    }
    // The thread copied frames itself (AfterCommit alone would also bound the WAL).
    EXPECT_TRUE(ckpt.WaitForCopiedFrames(1, std::chrono::seconds(30)));
    sqlite::Checkpointer::Detach(db);
  }
  // Whatever the thread managed, the committing connection never let the WAL pass the
  // inline bound (plus the frames of the commit that crossed it).
  const auto wal = fs::file_size(path + "-wal");
  EXPECT_LE(wal, static_cast<uintmax_t>(sqlite::Checkpointer::kInlineFrames + 16) * (2048 + 24));
  sqlite3_close(db);
}

// A counters row whose pending depth does not add up (a process of schema 2 writing
// during an upgrade, a damaged row): stats() counts instead, and a writable open
// rebuilds the row.
TEST(SqliteStorage, PendingDepthThatDoesNotAddUpIsRebuilt) {
  const std::string path = Fresh("drift.db");
  {
    auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
    NewOp high = Op();
    high.priority = 90;
    q->Enqueue(Op());
    q->Enqueue(Op());
    q->Enqueue(high);
    q->Close();
  }
  auto set_row = [&](const char* text) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "UPDATE counters SET pending_by_prio=?1", -1, &st, nullptr),
              SQLITE_OK);
    sqlite3_bind_text(st, 1, text, -1, SQLITE_TRANSIENT);
    EXPECT_EQ(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
  };
  auto read_row = [&] {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db, "SELECT pending_by_prio FROM counters", -1, &st, nullptr);
    std::string text;
    if (sqlite3_step(st) == SQLITE_ROW) {
      text = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return text;
  };
  const std::map<int, int64_t> truth{{50, 2}, {90, 1}};
  for (const char* wrong : {"50:2", "50:3,90:1", "50:-1,90:4", ""}) {
    SCOPED_TRACE(std::string("row '") + wrong + "'");
    set_row(wrong);
    SqliteOptions ro;
    ro.read_only = true;
    auto view = SyncQueue::Open(path, ro, Limits{}, nullptr);
    EXPECT_EQ(view->Stats().by_priority, truth);  // counted, not trusted
    view->Close();
    EXPECT_EQ(read_row(), wrong);  // a read-only handle writes nothing
    auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
    EXPECT_EQ(read_row(), "50:2,90:1");  // rebuilt at open
    EXPECT_EQ(q->Stats().by_priority, truth);
    q->Close();
  }
}

TEST(SqliteStorage, ReadOnlyInspectsWhileConsumed) {
  const std::string path = Fresh("ro.db");
  auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
  q->Enqueue(Op());
  q->Enqueue(Op());
  q->Take(1);
  SqliteOptions ro;
  ro.read_only = true;
  auto view = SyncQueue::Open(path, ro, Limits{}, nullptr);
  EXPECT_EQ(view->Count(), 2);
  EXPECT_EQ(view->Stats().in_flight, 1);
  EXPECT_EQ(CodeOf([&] { view->Enqueue(Op()); }), ErrorCode::kInvalidArgument);
}

TEST(SqliteStorage, GroupCommitKeepsEveryEnqueue) {
  const std::string path = Fresh("group.db");
  auto q = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) q->Enqueue(Op());
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(q->Count(), 200);
  std::set<int64_t> ids;
  for (auto& op : q->Take(1000)) ids.insert(op.id);
  EXPECT_EQ(ids.size(), 200u);
}

TEST(SqliteStorage, RejectedBatchStoresNothingAndOthersInTheGroupSurvive) {
  const std::string path = Fresh("batch.db");
  auto q =
      SyncQueue::Open(path, SqliteOptions{}, Limits{3, std::nullopt, Overflow::kReject}, nullptr);
  std::vector<NewOp> four(4, Op());
  EXPECT_EQ(CodeOf([&] { q->EnqueueMany(four); }), ErrorCode::kQueueFull);
  EXPECT_EQ(q->Count(), 0);
  std::vector<NewOp> three(3, Op());
  EXPECT_EQ(q->EnqueueMany(three).size(), 3u);
}

TEST(SqliteStorage, WaitWakesOnAnotherHandlesEnqueue) {
  const std::string path = Fresh("wake.db");
  auto consumer = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
  auto producer = SyncQueue::Open(path, SqliteOptions{}, Limits{}, nullptr);
  consumer->AcquireConsumer();
  std::thread t([&] { producer->Enqueue(Op()); });
  EXPECT_TRUE(consumer->Wait(30.0));
  t.join();
  EXPECT_EQ(consumer->Take(1).size(), 1u);
}

}  // namespace
}  // namespace cpcsync

namespace cpcsync {
namespace {

int WalSyncsFor(Durability d, int enqueues) {
  auto& counts = testing::InstallCountingVfs();
  SqliteOptions o;
  o.durability = d;
  auto q = SyncQueue::Open(Fresh("sync.db"), o, Limits{}, nullptr);
  counts.Reset();
  for (int i = 0; i < enqueues; ++i) q->Enqueue(Op());
  const int syncs = counts.wal.load();
  q->Close();
  return syncs;
}

TEST(SqliteDurability, FullSyncsTheWalOnEveryEnqueue) {
  EXPECT_GE(WalSyncsFor(Durability::kFull, 20), 20);
}

TEST(SqliteDurability, NormalAndOffDoNotSyncPerEnqueue) {
  EXPECT_LT(WalSyncsFor(Durability::kNormal, 20), 5);
  EXPECT_LT(WalSyncsFor(Durability::kOff, 20), 5);
}

TEST(SqliteDurability, ConsumerCallsDoNotSyncButTheNextFullEnqueueDoes) {
  auto& counts = testing::InstallCountingVfs();
  auto q = SyncQueue::Open(Fresh("consumer-sync.db"), SqliteOptions{}, Limits{}, nullptr);
  for (int i = 0; i < 10; ++i) q->Enqueue(Op());
  counts.Reset();
  for (auto& op : q->Take(10)) q->Ack(op.id);
  EXPECT_LT(counts.wal.load(), 3);
  q->Enqueue(Op());
  EXPECT_GE(counts.wal.load(), 1);
}

}  // namespace
}  // namespace cpcsync
