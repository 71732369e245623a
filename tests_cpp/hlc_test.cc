#include "cpcsync/hlc.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "cpcsync/errors.h"

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

// Issue 13: observe(2**64 - 1) made later stamps wrap to small values.
TEST(Hlc, RefusesRemoteStampsOutOfRange) {
  auto clock = std::make_shared<VirtualClock>(1.0);
  HybridLogicalClock hlc(clock);
  const uint64_t before = hlc.Now();
  try {
    hlc.Observe(UINT64_MAX);
    FAIL() << "no error";
  } catch (const SyncError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
  }
  EXPECT_THROW(hlc.Observe(HybridLogicalClock::Pack(HybridLogicalClock::kMaxPhysicalMs + 1, 0)),
               SyncError);
  EXPECT_GT(hlc.Now(), before);  // unchanged by the refused stamps
  // The largest valid stamp is accepted and leaves room above it.
  const uint64_t top = HybridLogicalClock::Pack(HybridLogicalClock::kMaxPhysicalMs, 0xFFFF);
  hlc.Observe(top);
  uint64_t last = top;
  for (int i = 0; i < 70000; ++i) {  // past a logical-counter overflow
    const uint64_t next = hlc.Now();
    ASSERT_GT(next, last);
    last = next;
  }
}

TEST(Hlc, WallClockBeyondRangeSaturatesAndNeverWraps) {
  auto clock = std::make_shared<VirtualClock>(1e300);
  HybridLogicalClock hlc(clock);
  const uint64_t a = hlc.Now();
  EXPECT_EQ(HybridLogicalClock::PhysicalMs(a), HybridLogicalClock::kMaxPhysicalMs);
  EXPECT_GT(hlc.Now(), a);
  // A stamp past the range that bypassed Observe (a damaged file's): an error, never
  // a smaller value.
  HybridLogicalClock exhausted(clock, UINT64_MAX);
  EXPECT_THROW(exhausted.Now(), SyncError);
  HybridLogicalClock nearly(clock, UINT64_MAX - 1);
  EXPECT_EQ(nearly.Now(), UINT64_MAX);
  EXPECT_THROW(nearly.Now(), SyncError);
}

}  // namespace
}  // namespace cpcsync
