// Shared pieces of the SyncEngine tests: a transport answering from a function and a
// one-line enqueue.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <utility>

#include "cpcsync/sync_queue.h"
#include "cpcsync/transport.h"

namespace cpcsync::testing {

// A transport answering from a function; counts calls.
class FnTransport final : public Transport {
 public:
  explicit FnTransport(std::function<DeliveryResult(const Operation&)> fn) : fn_(std::move(fn)) {}
  DeliveryResult Send(const Operation& op) override {
    calls.fetch_add(1);
    return fn_(op);
  }
  std::atomic<int> calls{0};

 private:
  std::function<DeliveryResult(const Operation&)> fn_;
};

// Enqueues a "put" of "{}" on `key`; returns its id.
inline int64_t Put(SyncQueue& q, const std::string& key) {
  NewOp op;
  op.kind = "put";
  op.key = key;
  op.payload = "{}";
  return q.Enqueue(std::move(op));
}

}  // namespace cpcsync::testing
