// SyncEngine robustness (issue 8): stop() from the engine's own threads, broken
// callbacks, interrupted calls, and a queue file that vanished under the engine.
// The Python catalogue (tests_py/test_bad_inputs.py) covers these end to end; these
// run the core alone, so `make sanitize` sees them under ASan/UBSan and TSan.
#include "cpcsync/sync_engine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>

#include "cpcsync/errors.h"
#include "engine_test_util.h"

namespace cpcsync {
namespace {

using Kind = DeliveryResult::Kind;
using testing::FnTransport;
using testing::Put;

class ThrowingResolver final : public ConflictResolver {
 public:
  Resolution Resolve(const Operation&, const Remote&) override {
    throw std::runtime_error("resolver bug");
  }
};

std::shared_ptr<SyncQueue> MemoryQueue(std::shared_ptr<Clock> clock) {
  return SyncQueue::InMemory(Limits{}, std::move(clock));
}

TEST(SyncEngineRobustness, StopFromAListenerReturnsAndTheWorkerExits) {
  auto q = MemoryQueue(nullptr);
  auto transport =
      std::make_shared<FnTransport>([](const Operation&) { return DeliveryResult::Delivered(); });
  EngineOptions options;
  options.concurrency = 2;
  auto engine = std::make_shared<SyncEngine>(q, transport, nullptr, nullptr, nullptr, options);
  std::mutex mu;
  std::condition_variable cv;
  int stops = 0;
  bool result = false;
  engine->On("delivered", [&](const EngineEvent&) {
    const bool r = engine->Stop();  // on a worker thread: must neither abort nor hang
    std::lock_guard lock(mu);
    result = r;
    ++stops;
    cv.notify_all();
  });
  engine->Start();
  Put(*q, "a");
  std::unique_lock lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return stops >= 1; }));
  EXPECT_TRUE(result);
  lock.unlock();
  EXPECT_FALSE(engine->running());
  EXPECT_TRUE(engine->Stop(false, 5.0));
  // drain=true on a worker would wait for itself: refused, counted as a listener error
  auto engine2 = std::make_shared<SyncEngine>(q, transport, nullptr, nullptr, nullptr, options);
  std::atomic<int> refused{0};
  engine2->On("delivered", [&](const EngineEvent&) {
    try {
      engine2->Stop(true, 1.0);
    } catch (const SyncError& e) {
      if (e.code() == ErrorCode::kInvalidArgument) refused.fetch_add(1);
    }
  });
  engine2->Start();
  Put(*q, "b");
  EXPECT_TRUE(engine2->WaitIdle(10.0));
  EXPECT_EQ(refused.load(), 1);
  EXPECT_TRUE(engine2->running());
  EXPECT_TRUE(engine2->Stop(false, 5.0));
}

TEST(SyncEngineRobustness, ABrokenResolverIsAFailedAttemptNotATightLoop) {
  auto clock = std::make_shared<VirtualClock>(100.0);
  auto q = MemoryQueue(clock);
  const int64_t id = Put(*q, "a");
  auto transport = std::make_shared<FnTransport>([](const Operation&) {
    DeliveryResult r = DeliveryResult::Failed(Kind::kConflict, "409");
    r.remote.version = 1;
    return r;
  });
  EngineOptions options;
  options.max_attempts = 2;
  SyncEngine engine(q, transport, nullptr, nullptr, std::make_shared<ThrowingResolver>(), options,
                    clock);
  engine.ProcessOnce();
  engine.ProcessOnce();  // not due: no second call at the same instant
  EXPECT_EQ(transport->calls.load(), 1);
  auto op = q->Get(id);
  ASSERT_TRUE(op.has_value());
  EXPECT_DOUBLE_EQ(op->next_attempt_at, 101.0);
  clock->Advance(1.0);
  const ProcessingSummary s = engine.ProcessOnce();
  ASSERT_EQ(s.failed.size(), 1u);
  EXPECT_EQ(s.failed[0].second.rfind("gave up after 2 attempts: engine: resolver bug", 0), 0u);
}

TEST(SyncEngineRobustness, AnInterruptedCallPutsTheOpBackAndEndsTheRound) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  auto q = MemoryQueue(clock);
  const int64_t first = Put(*q, "a");
  const int64_t second = Put(*q, "b");
  auto transport = std::make_shared<FnTransport>([](const Operation&) {
    DeliveryResult r = DeliveryResult::Failed(Kind::kTransient, "interrupted: Ctrl-C");
    r.interrupted = true;
    return r;
  });
  EngineOptions options;
  options.concurrency = 2;   // a round of two ops
  options.max_attempts = 1;  // an interruption never dead-letters
  SyncEngine engine(q, transport, nullptr, nullptr, nullptr, options, clock);
  const ProcessingSummary s = engine.ProcessOnce();
  EXPECT_TRUE(s.interrupted);
  EXPECT_EQ(transport->calls.load(), 1);  // the second op of the round was not sent
  EXPECT_TRUE(s.failed.empty());
  for (int64_t id : {first, second}) {
    auto op = q->Get(id);
    ASSERT_TRUE(op.has_value());
    EXPECT_EQ(op->state, OpState::kPending);
    EXPECT_DOUBLE_EQ(op->next_attempt_at, 0.0);  // due at once
  }
  EXPECT_TRUE(engine.Drain(10.0).interrupted);  // Drain stops too
}

TEST(SyncEngineRobustness, WritesToADeletedQueueFileAreRefused) {
  const std::string path =
      ::testing::TempDir() + "/engine_deleted_" + std::to_string(::getpid()) + ".db";
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((path + suffix).c_str());
  auto q = SyncQueue::Open(path, SqliteOptions{Durability::kNormal}, Limits{}, nullptr);
  Put(*q, "a");
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((path + suffix).c_str());
  try {
    Put(*q, "b");
    FAIL() << "an enqueue into a deleted file succeeded";
  } catch (const SyncError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kStorage);
    EXPECT_NE(std::string(e.what()).find("deleted, moved or replaced"), std::string::npos);
  }
  q->Close();
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((path + suffix).c_str());
}

}  // namespace
}  // namespace cpcsync
