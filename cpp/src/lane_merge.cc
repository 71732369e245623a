#include "lane_merge.h"

#include <queue>

namespace cpcsync {
namespace {

struct Worse {
  // priority_queue keeps the "largest" on top: make the best lane the largest.
  bool operator()(const LaneHead& a, const LaneHead& b) const {
    if (a.eff_prio != b.eff_prio) return a.eff_prio < b.eff_prio;
    return a.id > b.id;
  }
};

bool Better(const LaneHead& a, const LaneHead& b) { return Worse{}(b, a); }

}  // namespace

std::vector<Operation> MergeLanes(LaneSource& source, size_t n) {
  std::vector<Operation> out;
  std::priority_queue<LaneHead, std::vector<LaneHead>, Worse> active;
  for (auto& lane : source.ExtraLanes()) active.push(std::move(lane));
  std::optional<LaneHead> upcoming = source.NextLane();

  while (out.size() < n) {
    LaneHead pick;
    if (upcoming && (active.empty() || Better(*upcoming, active.top()))) {
      pick = std::move(*upcoming);
      upcoming = source.NextLane();
    } else if (!active.empty()) {
      pick = active.top();
      active.pop();
    } else {
      break;
    }
    out.push_back(source.Load(pick.id));
    if (pick.key) {
      if (auto next = source.NextInLane(*pick.key, pick.id)) active.push(std::move(*next));
    }
  }
  return out;
}

}  // namespace cpcsync
