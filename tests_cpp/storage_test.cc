// Queue semantics, run against both storages (memory and SQLite).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "cpcsync/errors.h"
#include "cpcsync/sync_queue.h"

namespace cpcsync {
namespace {

namespace fs = std::filesystem;

std::string TempPath(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("cpcsync-test-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path p = dir / name;
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(p.string() + suffix);
  return p.string();
}

class QueueTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { q_ = Make(Limits{}); }
  void TearDown() override {
    if (q_) q_->Close();
  }
  std::shared_ptr<SyncQueue> Make(Limits limits) {
    if (!GetParam()) return SyncQueue::InMemory(limits, clock_);
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::string safe;
    for (char c : name) safe += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
    return SyncQueue::Open(TempPath(safe + ".db"), SqliteOptions{}, limits, clock_);
  }
  int64_t Put(const std::string& key, int prio, double delay = 0) {
    NewOp op;
    op.kind = "k";
    if (!key.empty()) op.key = key;
    op.payload = "p";
    op.priority = prio;
    op.delay = delay;
    return q_->Enqueue(op);
  }
  std::vector<int64_t> TakeIds(size_t n) {
    std::vector<int64_t> ids;
    for (auto& op : q_->Take(n)) ids.push_back(op.id);
    return ids;
  }
  std::shared_ptr<VirtualClock> clock_ = std::make_shared<VirtualClock>(1000.0);
  std::shared_ptr<SyncQueue> q_;
};

TEST_P(QueueTest, PriorityThenFifo) {
  const int64_t a = Put("", 25), b = Put("", 100), c = Put("", 25), d = Put("", 100);
  EXPECT_EQ(TakeIds(10), (std::vector<int64_t>{b, d, a, c}));
}

TEST_P(QueueTest, PerKeyOrderAndNoHeadOfLineBlocking) {
  const int64_t a1 = Put("a", 50), a2 = Put("a", 50), b1 = Put("b", 50);
  EXPECT_EQ(TakeIds(10), (std::vector<int64_t>{a1, b1}));  // a2 waits for a1
  q_->Retry(a1, 60, "down");
  EXPECT_TRUE(TakeIds(10).empty());  // a is blocked by its retrying head; b in flight
  q_->Ack(b1);
  clock_->Advance(60);
  EXPECT_EQ(TakeIds(10), (std::vector<int64_t>{a1}));
  q_->Ack(a1);
  EXPECT_EQ(TakeIds(10), (std::vector<int64_t>{a2}));
}

TEST_P(QueueTest, PriorityInheritance) {
  const int64_t low = Put("user", 25);
  const int64_t other = Put("", 75);
  const int64_t crit = Put("user", 100);
  // The key's CRITICAL op lifts its LOW head above the HIGH op.
  EXPECT_EQ(TakeIds(1), (std::vector<int64_t>{low}));
  q_->Ack(low);
  EXPECT_EQ(TakeIds(10), (std::vector<int64_t>{crit, other}));
}

TEST_P(QueueTest, DelayedOpsWaitForTheClock) {
  const int64_t a = Put("", 50, 10.0);
  EXPECT_TRUE(TakeIds(1).empty());
  ASSERT_TRUE(q_->NextReadyAt().has_value());
  EXPECT_DOUBLE_EQ(*q_->NextReadyAt(), 1010.0);
  clock_->Advance(10);
  EXPECT_EQ(TakeIds(1), (std::vector<int64_t>{a}));
}

TEST_P(QueueTest, DeadLetterRequeuePurge) {
  const int64_t a = Put("k", 50), b = Put("k", 50);
  ASSERT_EQ(TakeIds(1), (std::vector<int64_t>{a}));
  q_->DeadLetter(a, "poison");
  EXPECT_EQ(TakeIds(1), (std::vector<int64_t>{b}));  // the key moves on
  auto dead = q_->DeadLetters();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].last_error, "poison");
  EXPECT_EQ(dead[0].state, OpState::kDead);
  auto requeued = q_->RequeueDead(std::nullopt);
  ASSERT_EQ(requeued.size(), 1u);
  EXPECT_GT(requeued[0], b);
  q_->Ack(b);
  EXPECT_EQ(TakeIds(1), requeued);
  EXPECT_EQ(q_->PurgeDead(), 0);
  EXPECT_THROW(q_->Ack(12345), SyncError);
}

TEST_P(QueueTest, CoalesceReplacesLastPending) {
  NewOp op;
  op.kind = "set";
  op.key = "u";
  op.payload = "1";
  op.coalesce = true;
  const int64_t first = q_->Enqueue(op);
  op.payload = "22";
  EXPECT_EQ(q_->Enqueue(op), first);
  EXPECT_EQ(q_->Count(), 1);
  auto ops = q_->Take(1);
  ASSERT_EQ(ops.size(), 1u);
  EXPECT_EQ(ops[0].payload, "22");
  op.payload = "333";  // the last op is in flight now: append
  EXPECT_GT(q_->Enqueue(op), first);
}

TEST_P(QueueTest, TtlExpires) {
  NewOp op;
  op.kind = "k";
  op.ttl = 5;
  const int64_t id = q_->Enqueue(op);
  clock_->Advance(5);
  EXPECT_TRUE(q_->Take(1).empty());
  auto dead = q_->DeadLetters();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].id, id);
  EXPECT_EQ(dead[0].last_error, "expired");
}

TEST_P(QueueTest, CapacityRejectAndDropLowest) {
  q_->Close();
  q_ = Make(Limits{2, std::nullopt, Overflow::kReject});
  Put("", 50);
  Put("", 50);
  EXPECT_THROW(Put("", 50), SyncError);
  EXPECT_EQ(q_->Count(), 2);
  q_->Close();
  q_ = Make(Limits{2, std::nullopt, Overflow::kDropLowest});
  const int64_t low = Put("", 25);
  const int64_t high = Put("", 75);
  const int64_t mid = Put("", 50);
  EXPECT_EQ(q_->Count(), 2);
  auto dead = q_->DeadLetters();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].id, low);
  EXPECT_EQ(dead[0].last_error, "overflow");
  EXPECT_EQ(TakeIds(10), (std::vector<int64_t>{high, mid}));
}

TEST_P(QueueTest, PeekTakesNothing) {
  const int64_t a = Put("x", 25), b = Put("", 50), c = Put("x", 100);
  auto peeked = q_->Peek(10);
  std::vector<int64_t> ids;
  for (auto& op : peeked) ids.push_back(op.id);
  EXPECT_EQ(ids, (std::vector<int64_t>{a, c, b}));
  EXPECT_EQ(q_->Stats().in_flight, 0);
}

TEST_P(QueueTest, InvalidInputChangesNothing) {
  NewOp op;
  op.kind = "";
  EXPECT_THROW(q_->Enqueue(op), SyncError);
  op.kind = "k";
  op.priority = 256;
  EXPECT_THROW(q_->Enqueue(op), SyncError);
  op.priority = 50;
  op.delay = -1;
  EXPECT_THROW(q_->Enqueue(op), SyncError);
  EXPECT_EQ(q_->Count(), 0);
}

// Issue 13, "outages are not the op's fault": a network failure gives back the
// attempt the lease counted and is counted apart, per op and in the stats.
TEST_P(QueueTest, NetworkRetryIsNotAnAttempt) {
  const int64_t a = Put("a", 50);
  ASSERT_EQ(TakeIds(1), std::vector<int64_t>{a});
  q_->Retry(a, 0, "connection refused", /*network=*/true);
  EXPECT_EQ(q_->Get(a)->attempts, 0);
  EXPECT_EQ(q_->Get(a)->network_failures, 1);
  ASSERT_EQ(TakeIds(1), std::vector<int64_t>{a});
  EXPECT_EQ(q_->Get(a)->attempts, 1);  // leased: counted until the outcome says otherwise
  q_->Retry(a, 0, "503");              // an answer: the attempt stands
  EXPECT_EQ(q_->Get(a)->attempts, 1);
  EXPECT_EQ(q_->Get(a)->network_failures, 1);
  ASSERT_EQ(TakeIds(1), std::vector<int64_t>{a});
  q_->Retry(a, 0, "reset", true);
  const Operation op = *q_->Get(a);
  EXPECT_EQ(op.attempts, 1);
  EXPECT_EQ(op.network_failures, 2);
  EXPECT_EQ(q_->Stats().network_failures, 2);
  ASSERT_EQ(q_->Take(1).at(0).network_failures, 2);  // taken ops carry it
  q_->DeadLetter(a, "gave up");
  EXPECT_EQ(q_->DeadLetters().at(0).network_failures, 2);
  const int64_t again = q_->RequeueDead(std::nullopt).at(0);
  EXPECT_EQ(q_->Get(again)->network_failures, 0);  // a fresh start, as attempts
  EXPECT_EQ(q_->Stats().network_failures, 2);      // a lifetime total
}

// The HLC high-water mark is the storage's, not the handle's memory.
TEST_P(QueueTest, ObservedHlcIsStoredForEveryLaterStamp) {
  const uint64_t remote = HybridLogicalClock::Pack(50'000'000'000ULL, 9);
  q_->ObserveHlc(remote);
  EXPECT_GE(q_->hlc().Last(), remote);
  const int64_t id = Put("a", 50);
  EXPECT_GT(q_->Get(id)->hlc, remote);
  EXPECT_THROW(q_->ObserveHlc(UINT64_MAX), SyncError);
  const int64_t next = Put("a", 50);
  EXPECT_GT(q_->Get(next)->hlc, q_->Get(id)->hlc);
}

// LowWater: the lowest id still held pending, in flight or dead; the next id when none.
TEST_P(QueueTest, LowWaterIsTheLowestIdThatMayStillBeSent) {
  EXPECT_EQ(q_->LowWater(), 1);  // a new queue: the id the first enqueue gets
  const int64_t a = Put("", 50), b = Put("", 50), c = Put("", 50);
  EXPECT_EQ(a, 1);
  EXPECT_EQ(q_->LowWater(), a);
  ASSERT_EQ(TakeIds(3), (std::vector<int64_t>{a, b, c}));
  EXPECT_EQ(q_->LowWater(), a);  // in flight counts
  q_->Ack(b);
  EXPECT_EQ(q_->LowWater(), a);  // a gap in the middle does not move it
  q_->Ack(a);
  EXPECT_EQ(q_->LowWater(), c);  // past every acknowledged id
  q_->DeadLetter(c, "poison");
  const int64_t d = Put("", 50);
  EXPECT_EQ(q_->LowWater(), c);  // a dead letter can be requeued: it counts
  const std::vector<int64_t> requeued = q_->RequeueDead(std::nullopt);
  ASSERT_EQ(requeued.size(), 1u);
  EXPECT_GT(requeued[0], d);
  EXPECT_EQ(q_->LowWater(), d);  // c is gone; its requeued copy has a new id above d
  ASSERT_EQ(TakeIds(2), (std::vector<int64_t>{d, requeued[0]}));
  q_->DeadLetter(d, "poison");
  q_->Ack(requeued[0]);
  EXPECT_EQ(q_->LowWater(), d);
  EXPECT_EQ(q_->PurgeDead(), 1);
  EXPECT_EQ(q_->LowWater(), requeued[0] + 1);  // empty: the next id, never a used one
  EXPECT_EQ(Put("", 50), requeued[0] + 1);
}

TEST_P(QueueTest, LowWaterCountsPendingBehindABusyLaneAndTtlExpiries) {
  NewOp op;
  op.kind = "k";
  op.ttl = 5;
  const int64_t expiring = q_->Enqueue(op);
  const int64_t a1 = Put("a", 50), a2 = Put("a", 50);
  clock_->Advance(5);
  ASSERT_EQ(TakeIds(10), (std::vector<int64_t>{a1}));  // `expiring` is dead now
  EXPECT_EQ(q_->LowWater(), expiring);
  EXPECT_EQ(q_->PurgeDead(), 1);
  EXPECT_EQ(q_->LowWater(), a1);
  q_->Ack(a1);
  EXPECT_EQ(q_->LowWater(), a2);  // pending, not yet deliverable until a1 was acked
  q_->Close();
  EXPECT_THROW(q_->LowWater(), SyncError);
  q_.reset();
}

INSTANTIATE_TEST_SUITE_P(Storages, QueueTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Sqlite" : "Memory"; });

}  // namespace
}  // namespace cpcsync
