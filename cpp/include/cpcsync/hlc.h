// HybridLogicalClock: timestamps that order events across machines whose wall
// clocks disagree (Kulkarni et al., 2014).
//
// A timestamp is a uint64: physical milliseconds in the high 48 bits and a logical
// counter in the low 16. Now() is strictly greater than every timestamp this clock
// returned or observed before, even when the wall clock jumps backwards.
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

  static uint64_t Pack(uint64_t physical_ms, uint64_t logical) {
    return (physical_ms << 16) | (logical & 0xFFFF);
  }
  static uint64_t PhysicalMs(uint64_t hlc) { return hlc >> 16; }
  static uint64_t Logical(uint64_t hlc) { return hlc & 0xFFFF; }

  // A new timestamp for a local event.
  uint64_t Now();
  // A new timestamp that is also after `floor` (a timestamp stored elsewhere).
  uint64_t NowAfter(uint64_t floor);
  // Merges a remote timestamp: later Now() results are after it.
  void Observe(uint64_t remote);
  uint64_t Last() const;

 private:
  uint64_t NextLocked(uint64_t floor);
  std::shared_ptr<Clock> clock_;
  mutable std::mutex mu_;
  uint64_t last_;
};

}  // namespace cpcsync
