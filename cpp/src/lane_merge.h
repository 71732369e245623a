// The order peek() reports: successive take(1)+ack cycles as if every op were due.
//
// Both storages describe their lanes through LaneSource and share this merge, so
// the order is defined once. See docs/queue-semantics.md ("peek").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cpcsync/operation.h"

namespace cpcsync {

struct LaneHead {
  int eff_prio = 0;  // highest priority among the lane's pending ops from `id` on
  int64_t id = 0;    // the lane's next pending op
  std::optional<std::string> key;
};

class LaneSource {
 public:
  virtual ~LaneSource() = default;
  // Lanes whose head is pending, best first: (eff_prio desc, id asc). nullopt at the end.
  virtual std::optional<LaneHead> NextLane() = 0;
  // For lanes whose head is in flight: their first pending op, with its eff_prio.
  virtual std::vector<LaneHead> InFlightLanes() = 0;
  // The lane's first pending op with id > after (nullopt: none).
  virtual std::optional<LaneHead> NextInLane(const std::string& key, int64_t after) = 0;
  virtual Operation Load(int64_t id) = 0;
};

// The first `n` ops of the merge, skipping (but still ranking) ops expired at `now`.
std::vector<Operation> MergeLanes(LaneSource& source, size_t n, double now);

}  // namespace cpcsync
