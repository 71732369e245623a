#include "cpcsync/memory_storage.h"

#include <algorithm>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>

#include "cpcsync/errors.h"
#include "lane_merge.h"

namespace cpcsync {
namespace {

enum class Sched : uint8_t { kNone, kReady, kWaiting };

// An operation plus where its lane scheduling has put it.
struct Slot : Operation {
  Sched sched = Sched::kNone;
  int sched_prio = 0;  // its lane's effective priority when scheduled
};

struct Lane {
  std::set<int64_t> live;            // pending + in flight, by id
  std::multiset<int> pending_prios;  // priorities of its pending ops
};

// (priority desc, id asc)
struct ReadyOrder {
  bool operator()(const std::pair<int, int64_t>& a, const std::pair<int, int64_t>& b) const {
    if (a.first != b.first) return a.first > b.first;
    return a.second < b.second;
  }
};

class MemoryStorage final : public QueueStorage {
 public:
  std::vector<int64_t> Insert(std::vector<StampedOp>& ops, const Limits& limits) override {
    std::lock_guard lock(mu_);
    if (limits.overflow == Overflow::kReject && (limits.max_ops || limits.max_bytes)) {
      CheckCapacityDryRun(ops, limits);
    }
    if (limits.overflow == Overflow::kDropLowest && (limits.max_ops || limits.max_bytes) &&
        InFlightAloneOver(limits)) {
      throw SyncError(ErrorCode::kQueueFull,
                      "queue is full with in-flight operations alone; nothing was stored");
    }
    std::vector<int64_t> ids;
    ids.reserve(ops.size());
    for (auto& s : ops) {
      s.hlc = std::max(s.hlc, max_hlc_ + 1);  // stamps follow insert order
      int64_t id = InsertOne(s);
      ids.push_back(id);
      if (limits.overflow == Overflow::kDropLowest) DropLowest(limits, s.now);
    }
    return ids;
  }

  std::vector<Operation> Take(size_t n, double now) override {
    std::lock_guard lock(mu_);
    while (!expiry_.empty() && expiry_.begin()->first <= now) {
      DeadLetterLocked(expiry_.begin()->second, "expired", now);
    }
    while (!waiting_.empty() && waiting_.begin()->first <= now) {
      Slot& slot = ops_.at(waiting_.begin()->second);
      waiting_.erase(waiting_.begin());
      ready_.emplace(slot.sched_prio, slot.id);
      slot.sched = Sched::kReady;
    }
    std::vector<Operation> out;
    while (out.size() < n && !ready_.empty()) {
      Slot& op = ops_.at(ready_.begin()->second);
      ready_.erase(ready_.begin());
      op.sched = Sched::kNone;
      ForgetPending(op);
      op.state = OpState::kInFlight;
      op.attempts += 1;
      if (!op.first_attempt_at) op.first_attempt_at = now;
      in_flight_.insert(op.id);
      out.push_back(op);
    }
    return out;
  }

  void Ack(int64_t id, double now) override {
    std::lock_guard lock(mu_);
    Operation& op = RequireState(id, OpState::kInFlight, "ack");
    std::optional<std::string> key = op.key;
    in_flight_.erase(id);
    live_bytes_ -= static_cast<int64_t>(op.payload.size());
    if (key) lanes_[*key].live.erase(id);
    ops_.erase(id);
    if (key) AdvanceLane(*key, now);
  }

  void Retry(int64_t id, double next_attempt_at, const std::optional<std::string>& error,
             double now, RetryKind kind) override {
    std::lock_guard lock(mu_);
    Slot& op = RequireState(id, OpState::kInFlight, "retry");
    if (kind != RetryKind::kAttempt) {  // not an attempt: give back the one Take counted
      op.attempts = std::max(0, op.attempts - 1);
    }
    if (kind == RetryKind::kNetwork) {
      op.network_failures += 1;
      network_failures_ += 1;
    }
    op.state = OpState::kPending;
    op.next_attempt_at = next_attempt_at;
    if (kind != RetryKind::kNotSent) op.last_error = error;
    in_flight_.erase(id);
    RememberPending(op);
    Schedule(op, now);
  }

  void DeadLetter(int64_t id, const std::string& reason, double now) override {
    std::lock_guard lock(mu_);
    auto it = ops_.find(id);
    if (it == ops_.end() || it->second.state == OpState::kDead) {
      throw SyncError(ErrorCode::kOperationState, "dead_letter: operation " + std::to_string(id) +
                                                      " is not pending or in flight");
    }
    DeadLetterLocked(id, reason, now);
  }

  void SetBaseVersion(int64_t id, std::optional<int64_t> version,
                      const std::optional<std::string>& payload) override {
    std::lock_guard lock(mu_);
    Operation& op = RequireState(id, OpState::kInFlight, "set_base_version");
    op.base_version = version;
    if (payload) {
      live_bytes_ +=
          static_cast<int64_t>(payload->size()) - static_cast<int64_t>(op.payload.size());
      op.payload = *payload;
    }
  }

  std::vector<Operation> Peek(size_t n, double now) override {
    std::lock_guard lock(mu_);
    Source source(*this, now);
    return MergeLanes(source, n);
  }

  std::optional<Operation> Get(int64_t id) override {
    std::lock_guard lock(mu_);
    auto it = ops_.find(id);
    if (it == ops_.end()) return std::nullopt;
    return it->second;
  }

  std::vector<Operation> DeadLetters(size_t limit) override {
    std::lock_guard lock(mu_);
    std::vector<Operation> out;
    for (int64_t id : dead_) {
      if (out.size() >= limit) break;
      out.push_back(ops_.at(id));
    }
    return out;
  }

  std::vector<int64_t> RequeueDead(const std::optional<std::vector<int64_t>>& ids,
                                   const Limits& limits, double now) override {
    std::lock_guard lock(mu_);
    std::vector<int64_t> chosen;
    if (ids) {
      for (int64_t id : *ids) {
        auto it = ops_.find(id);
        if (it == ops_.end() || it->second.state != OpState::kDead) {
          throw SyncError(ErrorCode::kOperationState,
                          "requeue_dead: operation " + std::to_string(id) + " is not dead");
        }
      }
      chosen = *ids;
    } else {
      chosen.assign(dead_.begin(), dead_.end());
    }
    if (limits.overflow == Overflow::kReject) {
      int64_t count = static_cast<int64_t>(ops_.size() - dead_.size());
      int64_t bytes = live_bytes_;
      std::set<int64_t> seen;
      for (int64_t id : chosen) {
        if (!seen.insert(id).second) continue;
        count += 1;
        bytes += static_cast<int64_t>(ops_.at(id).payload.size());
      }
      if ((limits.max_ops && count > *limits.max_ops) ||
          (limits.max_bytes && bytes > *limits.max_bytes)) {
        throw SyncError(ErrorCode::kQueueFull, FullMessage(limits, count, bytes));
      }
    }
    std::vector<int64_t> out;
    for (int64_t old_id : chosen) {
      if (!dead_.count(old_id)) continue;  // listed twice
      Operation op = ops_.at(old_id);
      ops_.erase(old_id);
      dead_.erase(old_id);
      op.id = next_id_++;
      op.state = OpState::kPending;
      op.attempts = 0;
      op.network_failures = 0;
      op.last_error.reset();
      op.created_at = now;
      op.next_attempt_at = now;
      op.expires_at.reset();
      op.first_attempt_at.reset();
      out.push_back(AddLive(std::move(op), now));
      if (limits.overflow == Overflow::kDropLowest) DropLowest(limits, now);
    }
    return out;
  }

  int64_t PurgeDead() override {
    std::lock_guard lock(mu_);
    int64_t n = static_cast<int64_t>(dead_.size());
    for (int64_t id : dead_) ops_.erase(id);
    dead_.clear();
    return n;
  }

  int64_t ResetInFlight(double now) override {
    std::lock_guard lock(mu_);
    int64_t n = 0;
    for (int64_t id : in_flight_) {  // id order, as before
      Slot& op = ops_.at(id);
      op.state = OpState::kPending;
      RememberPending(op);
      Schedule(op, now);
      ++n;
    }
    in_flight_.clear();
    return n;
  }

  int64_t Count() override {
    std::lock_guard lock(mu_);
    return static_cast<int64_t>(ops_.size() - dead_.size());
  }

  int64_t LowWater() override {
    std::lock_guard lock(mu_);
    return ops_.empty() ? next_id_ : ops_.begin()->first;  // ops_: live and dead, by id
  }

  QueueStats Stats() override {
    std::lock_guard lock(mu_);
    QueueStats s;
    s.in_flight = static_cast<int64_t>(in_flight_.size());
    s.dead = static_cast<int64_t>(dead_.size());
    s.pending = static_cast<int64_t>(ops_.size() - dead_.size() - in_flight_.size());
    s.bytes = live_bytes_;
    for (auto& [prio, count] : pending_by_prio_) {
      if (count > 0) s.by_priority[prio] = count;
    }
    for (auto& [id, op] : ops_) {
      if (op.state == OpState::kPending) {
        s.oldest_pending_created_at = op.created_at;
        break;
      }
    }
    if (!waiting_.empty()) s.next_due = waiting_.begin()->first;
    s.network_failures = network_failures_;
    return s;
  }

  std::optional<double> NextReadyAt() override {
    std::lock_guard lock(mu_);
    if (!ready_.empty()) return -std::numeric_limits<double>::infinity();
    if (waiting_.empty()) return std::nullopt;
    return waiting_.begin()->first;
  }

  uint64_t MaxHlc() override {
    std::lock_guard lock(mu_);
    return max_hlc_;
  }

  void ObserveHlc(uint64_t remote) override {
    std::lock_guard lock(mu_);
    max_hlc_ = std::max(max_hlc_, remote);
  }

  void Close() override {}

 private:
  class Source final : public LaneSource {
   public:
    Source(MemoryStorage& s, double now)
        : s_(s),
          now_(now),
          ready_it_(s.ready_.begin()),
          waiting_(BuildWaitingOrder(s)),
          waiting_it_(waiting_.begin()) {
      for (auto& [at, id] : s.expiry_) {
        if (at > now) break;
        const Operation& op = s.ops_.at(id);
        if (op.key) {
          dirty_keys_.insert(*op.key);
        } else {
          expired_ids_.insert(id);
        }
      }
    }
    std::optional<LaneHead> NextLane() override {
      for (;;) {
        bool have_r = ready_it_ != s_.ready_.end();
        bool have_w = waiting_it_ != waiting_.end();
        if (!have_r && !have_w) return std::nullopt;
        std::pair<int, int64_t> pick;
        if (have_r && (!have_w || ReadyOrder{}(*ready_it_, *waiting_it_))) {
          pick = *ready_it_++;
        } else {
          pick = *waiting_it_++;
        }
        const Operation& op = s_.ops_.at(pick.second);
        if (op.key ? dirty_keys_.count(*op.key) > 0 : expired_ids_.count(op.id) > 0) continue;
        return LaneHead{pick.first, pick.second, op.key};
      }
    }
    std::vector<LaneHead> ExtraLanes() override {
      std::set<std::string> keys = dirty_keys_;
      for (int64_t id : s_.in_flight_) {  // O(in flight), not O(ops)
        const Operation& op = s_.ops_.at(id);
        if (op.key) keys.insert(*op.key);
      }
      std::vector<LaneHead> out;
      for (const auto& key : keys) {
        if (auto next = NextInLane(key, 0)) out.push_back(*next);
      }
      return out;
    }
    std::optional<LaneHead> NextInLane(const std::string& key, int64_t after) override {
      const Lane& lane = s_.lanes_.at(key);
      // No pending op of the lane is above this: once reached, the rest cannot raise
      // eff_prio (normally at the first op, so this is not O(lane length)).
      const int ceiling = lane.pending_prios.empty() ? 0 : *lane.pending_prios.rbegin();
      std::optional<LaneHead> head;
      for (auto it = lane.live.upper_bound(after); it != lane.live.end(); ++it) {
        const Operation& op = s_.ops_.at(*it);
        if (op.state != OpState::kPending || (op.expires_at && *op.expires_at <= now_)) continue;
        if (!head) head = LaneHead{op.priority, op.id, key};
        head->eff_prio = std::max(head->eff_prio, op.priority);
        if (head->eff_prio >= ceiling) break;
      }
      return head;
    }
    Operation Load(int64_t id) override { return s_.ops_.at(id); }

   private:
    static std::set<std::pair<int, int64_t>, ReadyOrder> BuildWaitingOrder(MemoryStorage& s) {
      std::set<std::pair<int, int64_t>, ReadyOrder> w;
      for (auto& [due, id] : s.waiting_) w.emplace(s.ops_.at(id).sched_prio, id);
      return w;
    }
    MemoryStorage& s_;
    double now_;
    std::set<std::pair<int, int64_t>, ReadyOrder>::iterator ready_it_;
    std::set<std::pair<int, int64_t>, ReadyOrder> waiting_;
    std::set<std::pair<int, int64_t>, ReadyOrder>::iterator waiting_it_;
    std::set<std::string> dirty_keys_;
    std::set<int64_t> expired_ids_;
  };

  Slot& RequireState(int64_t id, OpState state, const char* what) {
    auto it = ops_.find(id);
    if (it == ops_.end() || it->second.state != state) {
      throw SyncError(ErrorCode::kOperationState, std::string(what) + ": operation " +
                                                      std::to_string(id) + " is not " +
                                                      OpStateName(state));
    }
    return it->second;
  }

  // The last live op of `key` if coalescing may merge into it.
  Slot* CoalesceTarget(const StampedOp& s) {
    if (!s.op.coalesce || !s.op.key) return nullptr;
    auto lane = lanes_.find(*s.op.key);
    if (lane == lanes_.end() || lane->second.live.empty()) return nullptr;
    Slot& last = ops_.at(*lane->second.live.rbegin());
    if (last.state != OpState::kPending || last.kind != s.op.kind) return nullptr;
    return &last;
  }

  void CheckCapacityDryRun(const std::vector<StampedOp>& ops, const Limits& limits) {
    int64_t count = static_cast<int64_t>(ops_.size() - dead_.size());
    int64_t bytes = live_bytes_;
    // Lanes touched by this batch: (kind, payload size) of their last pending op.
    std::unordered_map<std::string, std::pair<std::string, int64_t>> batch_last;
    for (const auto& s : ops) {
      int64_t size = static_cast<int64_t>(s.op.payload.size());
      bool merged = false;
      if (s.op.coalesce && s.op.key) {
        auto b = batch_last.find(*s.op.key);
        if (b != batch_last.end()) {
          if (b->second.first == s.op.kind) {
            bytes += size - b->second.second;
            merged = true;
          }
        } else if (Operation* t = CoalesceTarget(s)) {
          bytes += size - static_cast<int64_t>(t->payload.size());
          merged = true;
        }
      }
      if (!merged) {
        count += 1;
        bytes += size;
      }
      if (s.op.key) batch_last[*s.op.key] = {s.op.kind, size};
      if ((limits.max_ops && count > *limits.max_ops) ||
          (limits.max_bytes && bytes > *limits.max_bytes)) {
        throw SyncError(ErrorCode::kQueueFull, FullMessage(limits, count, bytes));
      }
    }
  }

  static std::string FullMessage(const Limits& limits, int64_t count, int64_t bytes) {
    std::string m = "queue is full (";
    if (limits.max_ops)
      m += std::to_string(count) + " ops > max_ops " + std::to_string(*limits.max_ops);
    if (limits.max_ops && limits.max_bytes) m += "; ";
    if (limits.max_bytes) {
      m += std::to_string(bytes) + " bytes > max_bytes " + std::to_string(*limits.max_bytes);
    }
    return m + "); nothing was stored";
  }

  int64_t InsertOne(StampedOp& s) {
    max_hlc_ = std::max(max_hlc_, s.hlc);
    if (Slot* t = CoalesceTarget(s)) {
      const bool is_head = *lanes_.at(*t->key).live.begin() == t->id;
      if (is_head) Unschedule(*t);
      ForgetPending(*t);
      live_bytes_ +=
          static_cast<int64_t>(s.op.payload.size()) - static_cast<int64_t>(t->payload.size());
      t->payload = std::move(s.op.payload);
      t->hlc = s.hlc;
      t->priority = std::max(t->priority, s.op.priority);
      t->idempotency_key = s.idempotency_key;
      t->attempts = 0;
      t->network_failures = 0;
      t->last_error.reset();
      t->first_attempt_at.reset();
      t->next_attempt_at = s.now + s.op.delay;
      t->expires_at = s.op.ttl ? std::optional<double>(s.now + *s.op.ttl) : std::nullopt;
      RememberPending(*t);
      if (is_head) {
        Schedule(*t, s.now);
      } else {
        RefreshLanePrio(*t->key);
      }
      return t->id;
    }
    Operation op;
    op.id = next_id_++;
    op.kind = std::move(s.op.kind);
    op.key = std::move(s.op.key);
    op.payload = std::move(s.op.payload);
    op.priority = s.op.priority;
    op.idempotency_key = s.idempotency_key;
    op.hlc = s.hlc;
    op.created_at = s.now;
    op.next_attempt_at = s.now + s.op.delay;
    if (s.op.ttl) op.expires_at = s.now + *s.op.ttl;
    return AddLive(std::move(op), s.now);
  }

  // Adds a pending op at the tail of its lane.
  int64_t AddLive(Operation op, double now) {
    int64_t id = op.id;
    live_bytes_ += static_cast<int64_t>(op.payload.size());
    Slot slot;
    static_cast<Operation&>(slot) = std::move(op);
    auto [it, _] = ops_.emplace(id, std::move(slot));
    Slot& stored = it->second;
    RememberPending(stored);
    if (!stored.key) {
      Schedule(stored, now);
      return id;
    }
    Lane& lane = lanes_[*stored.key];
    lane.live.insert(id);
    if (*lane.live.begin() == id) {
      Schedule(stored, now);
    } else {
      RefreshLanePrio(*stored.key);
    }
    return id;
  }

  void RememberPending(const Operation& op) {
    pending_by_prio_[op.priority] += 1;
    if (victims_valid_) victims_.emplace(op.priority, -op.id);
    if (op.expires_at) expiry_.emplace(*op.expires_at, op.id);
    if (op.key) lanes_[*op.key].pending_prios.insert(op.priority);
  }

  void ForgetPending(const Operation& op) {
    pending_by_prio_[op.priority] -= 1;
    if (victims_valid_) victims_.erase({op.priority, -op.id});
    if (op.expires_at) expiry_.erase({*op.expires_at, op.id});
    if (op.key) {
      auto& prios = lanes_[*op.key].pending_prios;
      prios.erase(prios.find(op.priority));
    }
  }

  int LanePrio(const Operation& head) {
    if (!head.key) return head.priority;
    const auto& prios = lanes_.at(*head.key).pending_prios;
    return prios.empty() ? head.priority : *prios.rbegin();
  }

  // Puts a pending lane head into ready (due) or waiting (later).
  void Schedule(Slot& head, double now) {
    head.sched_prio = LanePrio(head);
    if (head.next_attempt_at <= now) {
      ready_.emplace(head.sched_prio, head.id);
      head.sched = Sched::kReady;
    } else {
      waiting_.emplace(head.next_attempt_at, head.id);
      head.sched = Sched::kWaiting;
    }
  }

  void Unschedule(Slot& slot) {
    if (slot.sched == Sched::kReady) {
      ready_.erase({slot.sched_prio, slot.id});
    } else if (slot.sched == Sched::kWaiting) {
      waiting_.erase({slot.next_attempt_at, slot.id});
    }
    slot.sched = Sched::kNone;
  }

  // Recomputes the effective priority of the lane's scheduled head.
  void RefreshLanePrio(const std::string& key) {
    const Lane& lane = lanes_.at(key);
    if (lane.live.empty()) return;
    Slot& head = ops_.at(*lane.live.begin());
    const int prio = LanePrio(head);
    if (head.sched == Sched::kReady && head.sched_prio != prio) {
      ready_.erase({head.sched_prio, head.id});
      ready_.emplace(prio, head.id);
    }
    head.sched_prio = prio;
  }

  // After a lane's head left: schedules the next op, if any.
  void AdvanceLane(const std::string& key, double now) {
    auto lane = lanes_.find(key);
    if (lane == lanes_.end()) return;
    if (lane->second.live.empty()) {
      lanes_.erase(lane);
      return;
    }
    Slot& head = ops_.at(*lane->second.live.begin());
    if (head.state == OpState::kPending && head.sched == Sched::kNone) {
      Schedule(head, now);
    }
  }

  void DeadLetterLocked(int64_t id, const std::string& reason, double now) {
    Slot& op = ops_.at(id);
    bool was_head = true;
    if (op.state == OpState::kPending) {
      ForgetPending(op);
      was_head = op.sched != Sched::kNone;
      Unschedule(op);
    } else {
      in_flight_.erase(id);
    }
    live_bytes_ -= static_cast<int64_t>(op.payload.size());
    op.state = OpState::kDead;
    op.last_error = reason;
    dead_.insert(id);
    if (!op.key) return;
    lanes_[*op.key].live.erase(id);
    if (was_head) {
      AdvanceLane(*op.key, now);
    } else {
      RefreshLanePrio(*op.key);
    }
  }

  // True when the in-flight ops alone break a limit: dropping every pending op
  // (the new ones included) could not make room.
  bool InFlightAloneOver(const Limits& limits) const {
    if (limits.max_ops && static_cast<int64_t>(in_flight_.size()) > *limits.max_ops) return true;
    if (!limits.max_bytes || live_bytes_ <= *limits.max_bytes) return false;
    int64_t bytes = 0;
    for (int64_t id : in_flight_) bytes += static_cast<int64_t>(ops_.at(id).payload.size());
    return bytes > *limits.max_bytes;
  }

  void DropLowest(const Limits& limits, double now) {
    auto over = [&] {
      int64_t count = static_cast<int64_t>(ops_.size() - dead_.size());
      return (limits.max_ops && count > *limits.max_ops) ||
             (limits.max_bytes && live_bytes_ > *limits.max_bytes);
    };
    if (!over()) return;
    if (!victims_valid_) {  // built on first overflow, then kept up to date
      for (auto& [id, op] : ops_) {
        if (op.state == OpState::kPending) victims_.emplace(op.priority, -id);
      }
      victims_valid_ = true;
    }
    while (over() && !victims_.empty()) {
      DeadLetterLocked(-victims_.begin()->second, "overflow", now);
    }
  }

  std::mutex mu_;
  std::map<int64_t, Slot> ops_;  // live and dead
  std::unordered_map<std::string, Lane> lanes_;
  std::set<std::pair<int, int64_t>, ReadyOrder> ready_;  // due heads: (eff prio, id)
  std::set<std::pair<double, int64_t>> waiting_;         // heads not yet due: (due, id)
  std::set<std::pair<double, int64_t>> expiry_;          // pending ops with a ttl
  std::set<std::pair<int, int64_t>> victims_;            // pending: (priority, -id), once needed
  bool victims_valid_ = false;
  std::map<int, int64_t> pending_by_prio_;
  std::set<int64_t> dead_;
  int64_t next_id_ = 1;
  std::set<int64_t> in_flight_;  // ids of leased ops
  int64_t live_bytes_ = 0;
  uint64_t max_hlc_ = 0;
  int64_t network_failures_ = 0;  // recorded over the storage's lifetime
};

}  // namespace

std::unique_ptr<QueueStorage> NewMemoryStorage() { return std::make_unique<MemoryStorage>(); }

}  // namespace cpcsync
