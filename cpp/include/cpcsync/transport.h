// Transport: how an operation reaches the server, and what happened.
//
// Send() delivers one operation and reports a DeliveryResult; it signals failure
// by the result, never by throwing (an implementation that throws is treated as a
// transient failure with the exception's message). A transport that can send many
// operations in one request overrides SendBatch (one result per op, in order).
// Thread-safety: an engine with concurrency > 1 calls Send from several threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cpcsync/conflict.h"
#include "cpcsync/operation.h"

namespace cpcsync {

struct DeliveryResult {
  enum class Kind {
    kDelivered,   // acknowledged: remove the op
    kTransient,   // try again after the backoff delay
    kNetwork,     // transient, and the network looks down (the monitor is told)
    kRetryAfter,  // try again after exactly retry_after seconds (server said so)
    kPermanent,   // never succeeds: dead-letter it
    kConflict,    // the server holds a different version: the resolver decides
  };
  Kind kind = Kind::kDelivered;
  std::string error;         // what went wrong (with its cause chain), for last_error
  double retry_after = 0.0;  // for kRetryAfter
  Remote remote;             // for kConflict: the server's value, hlc and version
  // The call was interrupted by the caller of ProcessOnce/Drain (Python's
  // KeyboardInterrupt or SystemExit on that thread): the op is put back, due at
  // once and never dead-lettered for it, and the round stops.
  bool interrupted = false;

  static DeliveryResult Delivered() { return {}; }
  static DeliveryResult Failed(Kind kind, std::string error) {
    DeliveryResult r;
    r.kind = kind;
    r.error = std::move(error);
    return r;
  }
};

class Transport;

// Sends `ops` one call each, in order, the way the engine does: after an interrupted
// result the rest are not sent (each gets an interrupted "not sent" result); if a
// call throws, the results already collected stand and every op from that one on
// gets a transient failure with the exception's message. One result per op.
std::vector<DeliveryResult> SendEach(Transport& transport, const std::vector<Operation>& ops);

class Transport {
 public:
  virtual ~Transport() = default;
  virtual DeliveryResult Send(const Operation& op) = 0;
  // True when SendBatch sends many ops per request.
  virtual bool SupportsBatch() const { return false; }
  virtual std::vector<DeliveryResult> SendBatch(const std::vector<Operation>& ops) {
    return SendEach(*this, ops);
  }
};

inline std::vector<DeliveryResult> SendEach(Transport& transport,
                                            const std::vector<Operation>& ops) {
  std::vector<DeliveryResult> out;
  out.reserve(ops.size());
  try {
    for (const auto& op : ops) {
      if (!out.empty() && out.back().interrupted) {
        DeliveryResult not_sent = DeliveryResult::Failed(DeliveryResult::Kind::kTransient,
                                                         "not sent: the call was interrupted");
        not_sent.interrupted = true;
        out.push_back(std::move(not_sent));
        continue;
      }
      out.push_back(transport.Send(op));
    }
  } catch (const std::exception& e) {
    out.resize(ops.size(), DeliveryResult::Failed(DeliveryResult::Kind::kTransient,
                                                  std::string("transport threw: ") + e.what()));
  }
  return out;
}

}  // namespace cpcsync
