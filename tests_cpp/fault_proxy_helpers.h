// Shared by the FaultProxy tests: options, toxic specs and polling on observable state.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>

#include "cpcsync/fault_proxy.h"

namespace cpcsync::testing {

inline FaultProxyOptions To(uint16_t upstream_port, std::optional<uint64_t> seed = 7) {
  FaultProxyOptions o;
  o.upstream_port = upstream_port;
  o.seed = seed;
  return o;
}

inline ToxicSpec Spec(std::string type, std::map<std::string, int64_t> attributes,
                      ToxicStream stream = ToxicStream::kDownstream, double toxicity = 1.0,
                      std::string name = "") {
  ToxicSpec s;
  s.type = std::move(type);
  s.attributes = std::move(attributes);
  s.stream = stream;
  s.toxicity = toxicity;
  s.name = std::move(name);
  return s;
}

// Polls `condition` until it holds (true) or 20 s pass (false): waiting for a state
// the proxy reaches asynchronously, not a timing assumption.
inline bool Eventually(const std::function<bool()>& condition) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

}  // namespace cpcsync::testing
