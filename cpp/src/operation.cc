#include "cpcsync/operation.h"

#include <cmath>

#include "cpcsync/errors.h"

namespace cpcsync {

const char* OpStateName(OpState s) {
  switch (s) {
    case OpState::kPending:
      return "pending";
    case OpState::kInFlight:
      return "in_flight";
    case OpState::kDead:
      return "dead";
  }
  return "unknown";
}

namespace {

void CheckText(const std::string& value, const char* field, size_t max_bytes) {
  if (value.empty()) ThrowInvalid(std::string(field) + " must not be empty");
  if (value.size() > max_bytes) {
    ThrowInvalid(std::string(field) + " is " + std::to_string(value.size()) +
                 " bytes; the limit is " + std::to_string(max_bytes));
  }
}

void CheckSeconds(double v, const char* field) {
  if (!std::isfinite(v) || v < 0) {
    ThrowInvalid(std::string(field) + " must be a finite number of seconds >= 0");
  }
}

}  // namespace

void ValidateNewOp(const NewOp& op) {
  CheckText(op.kind, "kind", 256);
  if (op.key) CheckText(*op.key, "key", 1024);
  if (op.idempotency_key) CheckText(*op.idempotency_key, "idempotency_key", 256);
  if (op.priority < priority::kMin || op.priority > priority::kMax) {
    ThrowInvalid("priority must be an int in 0..255, got " + std::to_string(op.priority));
  }
  CheckSeconds(op.delay, "delay");
  if (op.ttl) CheckSeconds(*op.ttl, "ttl");
  if (op.coalesce && !op.key) ThrowInvalid("coalesce=True needs a key");
}

}  // namespace cpcsync
