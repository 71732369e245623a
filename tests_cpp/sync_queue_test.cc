// SyncQueue's own policy: stamping, closing, waiting.
#include "cpcsync/sync_queue.h"

#include <gtest/gtest.h>

#include <regex>
#include <thread>

#include "cpcsync/errors.h"

namespace cpcsync {
namespace {

TEST(SyncQueue, StampsIdempotencyKeyAndHlc) {
  auto clock = std::make_shared<VirtualClock>(2.0);
  auto q = SyncQueue::InMemory(Limits{}, clock);
  NewOp op;
  op.kind = "k";
  q->Enqueue(op);
  op.idempotency_key = "mine";
  q->Enqueue(op);
  auto ops = q->Take(2);
  ASSERT_EQ(ops.size(), 2u);
  EXPECT_TRUE(std::regex_match(
      ops[0].idempotency_key,
      std::regex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")));
  EXPECT_EQ(ops[1].idempotency_key, "mine");
  EXPECT_EQ(HybridLogicalClock::PhysicalMs(ops[0].hlc), 2000u);
  EXPECT_GT(ops[1].hlc, ops[0].hlc);
}

TEST(SyncQueue, WaitWakesOnVirtualTimeAndOnEnqueue) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  auto q = SyncQueue::InMemory(Limits{}, clock);
  NewOp op;
  op.kind = "k";
  op.delay = 30;
  q->Enqueue(op);
  std::thread advancer([&] { clock->Advance(30); });
  EXPECT_TRUE(q->Wait(std::nullopt));
  advancer.join();
  q->Take(1);
  EXPECT_FALSE(q->Wait(0.0));
  std::thread producer([&] {
    NewOp now;
    now.kind = "k";
    q->Enqueue(now);
  });
  EXPECT_TRUE(q->Wait(std::nullopt));
  producer.join();
}

TEST(SyncQueue, CloseWakesWaitersAndRefusesCalls) {
  auto q = SyncQueue::InMemory(Limits{}, nullptr);
  std::thread closer([&] { q->Close(); });
  EXPECT_THROW(q->Wait(std::nullopt), SyncError);
  closer.join();
  NewOp op;
  op.kind = "k";
  try {
    q->Enqueue(op);
    FAIL() << "enqueue after close";
  } catch (const SyncError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kClosed);
  }
}

}  // namespace
}  // namespace cpcsync
