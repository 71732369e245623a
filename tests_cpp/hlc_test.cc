#include "cpcsync/hlc.h"

#include <gtest/gtest.h>

namespace cpcsync {
namespace {

TEST(Hlc, PacksMillisecondsAndCounter) {
  auto clock = std::make_shared<VirtualClock>(1.5);  // 1500 ms
  HybridLogicalClock hlc(clock);
  const uint64_t a = hlc.Now();
  EXPECT_EQ(HybridLogicalClock::PhysicalMs(a), 1500u);
  EXPECT_EQ(HybridLogicalClock::Logical(a), 0u);
  const uint64_t b = hlc.Now();  // same millisecond: the counter moves
  EXPECT_EQ(HybridLogicalClock::PhysicalMs(b), 1500u);
  EXPECT_EQ(HybridLogicalClock::Logical(b), 1u);
}

TEST(Hlc, MonotonicWhenWallClockJumpsBack) {
  auto clock = std::make_shared<VirtualClock>(1000.0);
  HybridLogicalClock hlc(clock);
  const uint64_t before = hlc.Now();
  // A VirtualClock never goes back, so model the jump with a second clock.
  auto earlier = std::make_shared<VirtualClock>(10.0);
  HybridLogicalClock resumed(earlier, before);
  const uint64_t after = resumed.Now();
  EXPECT_GT(after, before);
}

TEST(Hlc, ObserveMovesPastRemote) {
  auto clock = std::make_shared<VirtualClock>(1.0);
  HybridLogicalClock hlc(clock);
  const uint64_t remote = HybridLogicalClock::Pack(999999, 7);
  hlc.Observe(remote);
  EXPECT_GT(hlc.Now(), remote);
  EXPECT_GT(hlc.NowAfter(remote + 100), remote + 100);
}

}  // namespace
}  // namespace cpcsync
