// HybridLogicalClock: timestamps that order events across machines whose wall
// clocks disagree (Kulkarni et al., 2014).
//
// A timestamp is a uint64: physical milliseconds in the high 48 bits and a logical
// counter in the low 16. Now() is strictly greater than every timestamp this clock
// returned or observed before, even when the wall clock jumps backwards.
//
// Range: a timestamp's physical part must not be later than kMaxPhysicalMs (the end
// of year 9999 in ms since the epoch). Observe() refuses a remote stamp beyond it with
// SyncError(kInvalidArgument) (a garbled or hostile stamp such as 2**64 - 1 would
// otherwise leave no room above it, and later stamps would wrap to small values);
// a wall clock beyond it is read as kMaxPhysicalMs. So Now() never wraps: above the
// largest valid stamp there are 2**16 * (2**48 - kMaxPhysicalMs) more. Should a
// clock still run out (only a stamp that bypassed these checks, e.g. a damaged
// file's, can get there), Now() throws SyncError(kInvalidArgument) instead of
// returning a smaller value.
// Thread-safety: all methods are safe from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>

#include "cpcsync/clock.h"

namespace cpcsync {

class HybridLogicalClock {
 public:
  explicit HybridLogicalClock(std::shared_ptr<Clock> clock, uint64_t last = 0)
      : clock_(std::move(clock)), last_(last) {}

  // 9999-12-31T23:59:59.999Z in milliseconds since the Unix epoch.
  static constexpr uint64_t kMaxPhysicalMs = 253402300799999ULL;

  static uint64_t Pack(uint64_t physical_ms, uint64_t logical) {
    return (physical_ms << 16) | (logical & 0xFFFF);
  }
  static uint64_t PhysicalMs(uint64_t hlc) { return hlc >> 16; }
  static uint64_t Logical(uint64_t hlc) { return hlc & 0xFFFF; }

  // A new timestamp for a local event.
  uint64_t Now();
  // A new timestamp that is also after `floor` (a timestamp stored elsewhere).
  uint64_t NowAfter(uint64_t floor);
  // Merges a remote timestamp: later Now() results are after it. Throws
  // SyncError(kInvalidArgument) when PhysicalMs(remote) > kMaxPhysicalMs (nothing
  // changes then).
  void Observe(uint64_t remote);
  // Throws SyncError(kInvalidArgument) unless `stamp` is within range (see above);
  // `what` names it in the message.
  static void Validate(uint64_t stamp, const char* what = "HLC timestamp");
  uint64_t Last() const;

 private:
  uint64_t NextLocked(uint64_t floor);
  std::shared_ptr<Clock> clock_;
  mutable std::mutex mu_;
  uint64_t last_;
};

}  // namespace cpcsync
