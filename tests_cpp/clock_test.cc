#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "cpcsync/clock.h"
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

}  // namespace
}  // namespace cpcsync
