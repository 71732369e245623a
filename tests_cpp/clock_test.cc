#include "cpcsync/clock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>

#include "cpcsync/errors.h"
#include "cpcsync/waiter.h"

namespace cpcsync {
namespace {

TEST(VirtualClock, MovesOnlyWhenAdvanced) {
  VirtualClock c(10.0);
  EXPECT_EQ(c.Now(), 10.0);
  c.Advance(2.5);
  EXPECT_EQ(c.Now(), 12.5);
  c.AdvanceTo(5.0);  // never backwards
  EXPECT_EQ(c.Now(), 12.5);
  EXPECT_THROW(c.Advance(-1), SyncError);
  EXPECT_THROW(c.Advance(std::numeric_limits<double>::quiet_NaN()), SyncError);
}

TEST(Waiter, WakesWhenVirtualTimePassesDeadline) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  auto w = Waiter::Create(clock);
  std::atomic<int> result{-1};
  std::thread sleeper([&] { result = w->WaitUntil(w->Generation(), 5.0) ? 1 : 0; });
  clock->Advance(4.0);
  // Not yet due: the sleeper must still be waiting after a wake-up at t=4.
  EXPECT_EQ(result.load(), -1);
  clock->Advance(1.0);
  sleeper.join();
  EXPECT_EQ(result.load(), 0);  // deadline, not a notify
}

TEST(Waiter, NotifyWakesBeforeDeadline) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  auto w = Waiter::Create(clock);
  const uint64_t g = w->Generation();
  std::thread notifier([&] { w->Notify(); });
  EXPECT_TRUE(w->WaitUntil(g, Waiter::kForever));
  notifier.join();
}

TEST(Waiter, CloseWakesForever) {
  auto w = Waiter::Create(SystemClock::Default());
  const uint64_t g = w->Generation();
  std::thread closer([&] { w->Close(); });
  EXPECT_TRUE(w->WaitUntil(g, Waiter::kForever));
  closer.join();
  EXPECT_TRUE(w->WaitUntil(w->Generation(), Waiter::kForever));
}

TEST(Waiter, SystemClockDeadlinePasses) {
  auto clock = SystemClock::Default();
  auto w = Waiter::Create(clock);
  const double start = clock->Now();
  EXPECT_FALSE(w->WaitUntil(w->Generation(), start + 0.02));
  EXPECT_GE(clock->Now(), start + 0.02);
}

TEST(VirtualClock, AutoAdvanceMakesAWaitJumpToItsDeadline) {
  auto clock = std::make_shared<VirtualClock>(1.0);
  clock->SetAutoAdvance(true);
  auto w = Waiter::Create(clock);
  EXPECT_FALSE(w->WaitUntil(w->Generation(), 61.0));  // returns at once: time jumped
  EXPECT_EQ(clock->Now(), 61.0);
  EXPECT_FALSE(w->WaitUntil(w->Generation(), 5.0));  // already past: no move back
  EXPECT_EQ(clock->Now(), 61.0);
  // An open-ended wait still blocks until notified.
  std::atomic<bool> woke{false};
  const uint64_t seen = w->Generation();
  std::thread sleeper([&] { woke = w->WaitUntil(seen, Waiter::kForever); });
  w->Notify();
  sleeper.join();
  EXPECT_TRUE(woke.load());
  clock->SetAutoAdvance(false);
  EXPECT_FALSE(clock->AutoAdvance());
}

TEST(VirtualClock, StepWallMovesOnlyTheWallReading) {
  VirtualClock c(100.0);
  EXPECT_EQ(c.Now(), 100.0);
  EXPECT_EQ(c.Monotonic(), 100.0);
  c.StepWall(-20.0);  // NTP steps the wall clock back: waits must not notice
  EXPECT_EQ(c.Now(), 80.0);
  EXPECT_EQ(c.Monotonic(), 100.0);
  c.Advance(2.0);  // both move
  EXPECT_EQ(c.Now(), 82.0);
  EXPECT_EQ(c.Monotonic(), 102.0);
  c.StepWall(3.0e7);  // a year forward, as a device without an RTC at its first sync
  EXPECT_EQ(c.Monotonic(), 102.0);
  EXPECT_EQ(c.Now(), 82.0 + 3.0e7);
  EXPECT_THROW(c.StepWall(std::numeric_limits<double>::infinity()), SyncError);
  EXPECT_THROW(c.StepWall(std::numeric_limits<double>::quiet_NaN()), SyncError);
  c.AdvanceTo(50.0);  // AdvanceTo is on the monotonic timeline: no move back
  EXPECT_EQ(c.Monotonic(), 102.0);
}

TEST(SystemClock, MonotonicNeverGoesBackAndHasOneAnchor) {
  SystemClock a, b;
  const double anchor = SystemClock::MonotonicAnchor();
  EXPECT_TRUE(std::isfinite(anchor));
  double last = a.Monotonic();
  for (int i = 0; i < 1000; ++i) {
    const double t = (i % 2 ? a : b).Monotonic();  // every instance, one timeline
    EXPECT_GE(t, last);
    last = t;
  }
  // It moves like the steady clock (give or take a suspend, which it counts).
  using std::chrono::steady_clock;
  const double m0 = a.Monotonic();
  const auto s0 = steady_clock::now();
  const double m1 = a.Monotonic();
  const double s = std::chrono::duration<double>(steady_clock::now() - s0).count();
  EXPECT_NEAR(m1 - m0, s, 0.5);
  EXPECT_EQ(SystemClock::MonotonicAnchor(), anchor);
}

// A deadline is on the monotonic timeline: a wall step back (-20 s) does not delay
// it (a 2 s wait took 22 s), and a step forward (+60 s) does not end it.
TEST(Waiter, DeadlinesIgnoreWallClockSteps) {
  for (const double step : {-20.0, 60.0}) {
    SCOPED_TRACE(step);
    auto clock = std::make_shared<VirtualClock>(0.0);
    auto w = Waiter::Create(clock);
    std::mutex mu;
    std::condition_variable cv;
    std::optional<double> returned_at;
    const uint64_t seen = w->Generation();
    std::thread sleeper([&] {
      const bool woken = w->WaitUntil(seen, 2.0);
      std::lock_guard lock(mu);
      returned_at = woken ? -1.0 : clock->Monotonic();
      cv.notify_all();
    });
    clock->StepWall(step);
    clock->Advance(2.0);
    {
      std::unique_lock lock(mu);
      const bool done =
          cv.wait_for(lock, std::chrono::seconds(30), [&] { return returned_at.has_value(); });
      if (!done) w->Close();  // unblock it: the assertion below reports the failure
      EXPECT_TRUE(done) << "a 2 s wait did not end 2 s later";
    }
    sleeper.join();
    EXPECT_EQ(returned_at.value_or(-2.0), 2.0);  // timed out, and not before t=2
  }
}

}  // namespace
}  // namespace cpcsync
