// The order peek() reports: successive take(1)+ack cycles as if every op were due
// and expired ops had already been swept into the dead letters.
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
  int eff_prio = 0;  // highest priority among the lane's live pending ops from `id` on
  int64_t id = 0;    // the lane's next live pending op
  std::optional<std::string> key;
};

// "Live" below means pending and not expired at the merge's `now`.
class LaneSource {
 public:
  virtual ~LaneSource() = default;
  // Lanes whose head is pending and whose stored priority is exact (no expired
  // op in them), best first: (eff_prio desc, id asc). nullopt at the end.
  virtual std::optional<LaneHead> NextLane() = 0;
  // Every other lane with a live pending op: lanes whose head is in flight and
  // lanes holding expired ops, with their first live op and exact eff_prio.
  virtual std::vector<LaneHead> ExtraLanes() = 0;
  // The lane's first live op with id > after (nullopt: none).
  virtual std::optional<LaneHead> NextInLane(const std::string& key, int64_t after) = 0;
  virtual Operation Load(int64_t id) = 0;
};

// The first `n` ops of the merge.
std::vector<Operation> MergeLanes(LaneSource& source, size_t n);

}  // namespace cpcsync
