#include "cpcsync/hlc.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "cpcsync/errors.h"

namespace cpcsync {

uint64_t HybridLogicalClock::NextLocked(uint64_t floor) {
  const double wall = clock_->Now() * 1000.0;
  // Wall time before the epoch or absurdly far ahead is clamped into the valid range
  // (NaN reads as 0).
  const double clamped =
      std::isnan(wall) ? 0.0
                       : std::clamp(std::floor(wall), 0.0, static_cast<double>(kMaxPhysicalMs));
  const uint64_t physical = Pack(static_cast<uint64_t>(clamped), 0);
  // Strictly after everything seen; when the logical counter overflows, the +1
  // carries into the physical part, which is still monotonic. Never wraps.
  const uint64_t above = std::max(last_, floor);
  if (above == std::numeric_limits<uint64_t>::max()) {
    throw SyncError(ErrorCode::kInvalidArgument,
                    "HLC exhausted: no timestamp is greater than " + std::to_string(above) +
                        " (a stamp beyond the valid range was stored or observed)");
  }
  last_ = std::max(physical, above + 1);
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

void HybridLogicalClock::Validate(uint64_t stamp, const char* what) {
  if (PhysicalMs(stamp) > kMaxPhysicalMs) {
    ThrowInvalid(std::string(what) + " " + std::to_string(stamp) +
                 " is out of range: its physical part (" + std::to_string(PhysicalMs(stamp)) +
                 " ms) is after 9999-12-31 (" + std::to_string(kMaxPhysicalMs) + " ms)");
  }
}

void HybridLogicalClock::Observe(uint64_t remote) {
  Validate(remote);
  std::lock_guard lock(mu_);
  last_ = std::max(last_, remote);
}

uint64_t HybridLogicalClock::Last() const {
  std::lock_guard lock(mu_);
  return last_;
}

}  // namespace cpcsync
