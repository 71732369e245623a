#include "cpcsync/hlc.h"

#include <algorithm>
#include <cmath>

namespace cpcsync {

uint64_t HybridLogicalClock::NextLocked(uint64_t floor) {
  const double wall = clock_->Now() * 1000.0;
  // Wall time before the epoch or absurdly far ahead is clamped into 48 bits.
  const double clamped = std::clamp(std::floor(wall), 0.0, static_cast<double>((1ULL << 48) - 1));
  const uint64_t physical = Pack(static_cast<uint64_t>(clamped), 0);
  // Strictly after everything seen; when the logical counter overflows, the +1
  // carries into the physical part, which is still monotonic.
  last_ = std::max({physical, last_ + 1, floor + 1});
  return last_;
}

uint64_t HybridLogicalClock::Now() {
  std::lock_guard lock(mu_);
  return NextLocked(0);
}

uint64_t HybridLogicalClock::NowAfter(uint64_t floor) {
  std::lock_guard lock(mu_);
  return NextLocked(floor);
}

void HybridLogicalClock::Observe(uint64_t remote) {
  std::lock_guard lock(mu_);
  last_ = std::max(last_, remote);
}

uint64_t HybridLogicalClock::Last() const {
  std::lock_guard lock(mu_);
  return last_;
}

}  // namespace cpcsync
