// Operation: one unit of work a service records for delivery.
//
// Operations are values: copying one copies its payload. Ids are assigned by the
// queue in enqueue order and never reused.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace cpcsync {

namespace priority {
inline constexpr int kCritical = 100;
inline constexpr int kHigh = 75;
inline constexpr int kMedium = 50;
inline constexpr int kLow = 25;
inline constexpr int kMin = 0;
inline constexpr int kMax = 255;
}  // namespace priority

enum class OpState : int { kPending = 0, kInFlight = 1, kDead = 2 };

const char* OpStateName(OpState s);

struct Operation {
  int64_t id = 0;
  std::string kind;
  std::optional<std::string> key;
  std::string payload;  // bytes
  int priority = priority::kMedium;
  std::string idempotency_key;
  uint64_t hlc = 0;
  double created_at = 0;
  int attempts = 0;          // answered failures so far, plus the lease in progress
  int network_failures = 0;  // failures where no server answered (never counted as attempts)
  double next_attempt_at = 0;
  std::optional<std::string> last_error;
  OpState state = OpState::kPending;
  std::optional<double> expires_at;
  std::optional<double> first_attempt_at;
  std::optional<int64_t> base_version;
  // When the take that returned this copy leased it (queue clock). Not stored: set
  // only on the ops SyncQueue::Take returns, none on those Peek or DeadLetters read.
  std::optional<double> taken_at;
};

// What a caller hands to SyncQueue::Enqueue.
struct NewOp {
  std::string kind;
  std::optional<std::string> key;
  std::string payload;
  int priority = priority::kMedium;
  std::optional<std::string> idempotency_key;  // generated when empty
  bool coalesce = false;
  std::optional<double> ttl;  // seconds; none = never expires
  double delay = 0.0;         // seconds before the op is ready
};

// Validates a NewOp against the limits of docs/queue-semantics.md.
// Throws SyncError(kInvalidArgument) naming the bad field.
void ValidateNewOp(const NewOp& op);

}  // namespace cpcsync
