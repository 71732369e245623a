// Wall-clock steps (NTP correcting a device without a real-time clock) must neither
// delay, hurry nor expire anything: every wait, retry, TTL and age runs on the
// clock's monotonic timeline. VirtualClock::StepWall() moves only the wall reading,
// as libfaketime does to a real process (tests_py/test_faketime.py).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "cpcsync/backoff.h"
#include "cpcsync/clock.h"
#include "cpcsync/errors.h"
#include "cpcsync/hlc.h"
#include "cpcsync/sync_engine.h"
#include "cpcsync/sync_queue.h"
#include "cpcsync/transport.h"

namespace cpcsync {
namespace {

constexpr auto kPatience = std::chrono::seconds(30);  // test synchronisation, not timing
constexpr double kStart = 1.7e9;                      // a plausible Unix time

// Runs `call` (a wait with a 2 s timeout) on a thread while this thread steps the wall
// clock by `step` and then advances time by 0.25 s, again and again, until the call
// returns: so the wall clock moves while the call waits, whenever the thread got to
// start it. Returns how long the call took on the monotonic clock, or nullopt if it
// had not returned after 40 rounds (10 s: it was waiting on the wall clock); `unblock`
// then ends it. The short real-time wait per round only paces the rounds.
std::optional<double> ElapsedWhileStepping(VirtualClock& clock, double step,
                                           const std::function<void()>& call,
                                           const std::function<void()>& unblock) {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<double> elapsed;
  bool done = false;
  std::thread t([&] {
    const double begin = clock.Monotonic();
    std::optional<double> took;
    try {
      call();
      took = clock.Monotonic() - begin;
    } catch (const SyncError&) {  // unblocked after a failure
    }
    std::lock_guard lock(mu);
    elapsed = took;
    done = true;
    cv.notify_all();
  });
  for (int round = 0; round < 40; ++round) {
    clock.StepWall(step);
    clock.Advance(0.25);
    std::unique_lock lock(mu);
    if (cv.wait_for(lock, std::chrono::milliseconds(20), [&] { return done; })) break;
  }
  bool finished;
  {
    std::lock_guard lock(mu);
    finished = done;
  }
  if (!finished) unblock();
  t.join();
  return finished ? elapsed : std::nullopt;
}

// Runs each test on a memory queue and on a SQLite queue file.
class ClockStep : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    clock_ = std::make_shared<VirtualClock>(kStart);
    if (GetParam()) {
      std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
      for (char& c : name) {
        if (c == '/') c = '_';
      }
      dir_ = std::filesystem::temp_directory_path() /
             ("cpcsync-clock-step-" + std::to_string(::getpid()) + "-" + name);
      std::filesystem::remove_all(dir_);
      std::filesystem::create_directories(dir_);
      q_ = SyncQueue::Open((dir_ / "q.db").string(), SqliteOptions{}, Limits{}, clock_);
    } else {
      q_ = SyncQueue::InMemory(Limits{}, clock_);
    }
  }
  void TearDown() override {
    q_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  int64_t Put(std::optional<double> ttl = std::nullopt, double delay = 0.0) {
    NewOp op;
    op.kind = "put";
    op.key = "k";
    op.payload = "{}";
    op.ttl = ttl;
    op.delay = delay;
    return q_->Enqueue(std::move(op));
  }

  std::shared_ptr<VirtualClock> clock_;
  std::filesystem::path dir_;
  std::shared_ptr<SyncQueue> q_;
};

INSTANTIATE_TEST_SUITE_P(Storage, ClockStep, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Sqlite" : "Memory"; });

// A 2 s retry comes due 2 s later on the monotonic clock: not 22 s after a -20 s
// step, not at once after a +20 s one.
TEST_P(ClockStep, RetryDelayIgnoresWallSteps) {
  for (const double step : {-20.0, 20.0}) {
    SCOPED_TRACE(step);
    const int64_t id = Put();
    ASSERT_EQ(q_->Take(1).size(), 1u);
    q_->Retry(id, 2.0, "boom");
    clock_->StepWall(step);
    EXPECT_TRUE(q_->Take(1).empty()) << "a wall step made a retry due early";
    clock_->Advance(1.999);
    EXPECT_TRUE(q_->Take(1).empty());
    clock_->Advance(0.001);
    auto ops = q_->Take(1);
    ASSERT_EQ(ops.size(), 1u) << "a 2 s retry was not due 2 s later";
    q_->Ack(ops[0].id);
  }
}

// Times the queue stores are on the monotonic timeline; HLC stamps on the wall one.
TEST_P(ClockStep, StoredTimesAreMonotonicAndStampsAreWall) {
  clock_->StepWall(-3600.0);
  const int64_t id = Put(std::nullopt, 5.0);
  const auto op = q_->Get(id);
  ASSERT_TRUE(op);
  EXPECT_DOUBLE_EQ(op->created_at, kStart);
  EXPECT_DOUBLE_EQ(op->next_attempt_at, kStart + 5.0);
  // The HLC never goes back, but a new queue's first stamp follows the wall clock.
  EXPECT_EQ(HybridLogicalClock::PhysicalMs(op->hlc),
            static_cast<uint64_t>((kStart - 3600.0) * 1000.0));
  const QueueStats stats = q_->Stats();
  ASSERT_TRUE(stats.oldest_pending_created_at);
  EXPECT_DOUBLE_EQ(*stats.oldest_pending_created_at, kStart);
}

// TTL is monotonic while the process runs: a +60 s step does not expire a ttl=30 op
// (it was dead-lettered as expired at once), a -60 s step does not extend it.
TEST_P(ClockStep, TtlIgnoresWallSteps) {
  const int64_t keep = Put(30.0);
  clock_->StepWall(60.0);
  auto ops = q_->Take(1);
  ASSERT_EQ(ops.size(), 1u) << "a +60 s wall step expired a ttl=30 op";
  EXPECT_EQ(ops[0].id, keep);
  q_->Ack(keep);
  EXPECT_TRUE(q_->DeadLetters(10).empty());

  const int64_t expire = Put(30.0);
  clock_->StepWall(-120.0);
  clock_->Advance(30.0);
  EXPECT_TRUE(q_->Take(1).empty()) << "a -60 s wall step extended a ttl=30 op";
  const auto dead = q_->DeadLetters(10);
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].id, expire);
}

// q.wait(2) returns 2 s later on the monotonic clock whatever the wall clock does
// (it returned after 22 s with a -20 s step, at once with a forward one).
TEST_P(ClockStep, WaitTimeoutIgnoresWallSteps) {
  for (const double step : {-20.0, 60.0}) {
    SCOPED_TRACE(step);
    Put(std::nullopt, 1000.0);  // pending, not due for a long time
    q_->AcquireConsumer();
    bool ready = true;
    const auto elapsed = ElapsedWhileStepping(
        *clock_, step, [&] { ready = q_->Wait(2.0); }, [&] { q_->Close(); });
    ASSERT_TRUE(elapsed) << "wait(2) did not return 2 s later";
    EXPECT_FALSE(ready);
    EXPECT_GE(*elapsed, 2.0);  // not before its time
    EXPECT_LT(*elapsed, 5.0);  // generous: the pacing may let a round or two slip in
  }
}

class FnTransport final : public Transport {
 public:
  explicit FnTransport(std::function<DeliveryResult(const Operation&)> fn) : fn_(std::move(fn)) {}
  DeliveryResult Send(const Operation& op) override { return fn_(op); }

 private:
  std::function<DeliveryResult(const Operation&)> fn_;
};

// The engine's retry delay, its drain deadline and its latencies run on the
// monotonic clock.
TEST_P(ClockStep, EngineRetryAndDrainIgnoreWallSteps) {
  int calls = 0;
  auto transport = std::make_shared<FnTransport>([&](const Operation&) {
    return ++calls == 1 ? DeliveryResult::Failed(DeliveryResult::Kind::kTransient, "503")
                        : DeliveryResult::Delivered();
  });
  auto engine = std::make_shared<SyncEngine>(
      q_, transport, nullptr, std::make_shared<ConstantBackoff>(2.0), nullptr, EngineOptions{});
  Put();
  EXPECT_EQ(engine->ProcessOnce().retried.size(), 1u);
  clock_->StepWall(-20.0);
  clock_->Advance(2.0);
  EXPECT_EQ(engine->ProcessOnce().successful, 1) << "a 2 s retry was not due 2 s later";
  for (const double latency : engine->Stats().latencies) EXPECT_GE(latency, 0.0);

  // drain(2) with an op that never comes due returns 2 s later, not 22.
  Put(std::nullopt, 1000.0);
  for (const double step : {-20.0, 60.0}) {
    SCOPED_TRACE(step);
    ProcessingSummary summary;
    const auto elapsed = ElapsedWhileStepping(
        *clock_, step, [&] { summary = engine->Drain(2.0); }, [&] { q_->Close(); });
    ASSERT_TRUE(elapsed) << "drain(2) did not return 2 s later";
    EXPECT_EQ(summary.successful, 0);
    EXPECT_GE(*elapsed, 2.0);
    EXPECT_LT(*elapsed, 5.0);
  }
}

}  // namespace
}  // namespace cpcsync
