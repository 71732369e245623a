#include "cpcsync/faulty_transport.h"

#include <algorithm>
#include <cmath>

#include "cpcsync/errors.h"

namespace cpcsync {
namespace {

using RKind = DeliveryResult::Kind;

void CheckSeconds(double v, const char* what) {
  if (!std::isfinite(v) || v < 0) ThrowInvalid(std::string(what) + " must be finite and >= 0");
}

void CheckFault(const Fault& f) {
  CheckSeconds(f.delay, "fault delay");
  CheckSeconds(f.retry_after, "retry_after");
}

void CheckRate(double rate) {
  if (!(rate >= 0.0 && rate <= 1.0)) ThrowInvalid("failure_rate must be within [0, 1]");
}

std::mt19937_64 Seeded(const std::optional<uint64_t>& seed) {
  if (seed) return std::mt19937_64(*seed);
  std::random_device rd;
  return std::mt19937_64((static_cast<uint64_t>(rd()) << 32) ^ rd());
}

// A uniform double in [0, 1) from 53 bits: the same on every platform.
double Unit(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

}  // namespace

Fault::Kind Fault::ParseKind(const std::string& name) {
  if (name == "transient") return Kind::kTransient;
  if (name == "network") return Kind::kNetwork;
  if (name == "timeout") return Kind::kTimeout;
  if (name == "reset") return Kind::kReset;
  if (name == "permanent") return Kind::kPermanent;
  if (name == "conflict") return Kind::kConflict;
  if (name == "retry_after") return Kind::kRetryAfter;
  ThrowInvalid("unknown fault kind '" + name +
               "' (transient, network, timeout, reset, permanent, conflict, retry_after)");
}

std::string Fault::KindName(Kind kind) {
  switch (kind) {
    case Kind::kTransient:
      return "transient";
    case Kind::kNetwork:
      return "network";
    case Kind::kTimeout:
      return "timeout";
    case Kind::kReset:
      return "reset";
    case Kind::kPermanent:
      return "permanent";
    case Kind::kConflict:
      return "conflict";
    case Kind::kRetryAfter:
      return "retry_after";
  }
  return "transient";
}

DeliveryResult Fault::ToResult() const {
  auto text = [&](const char* fallback) {
    return "injected: " + (message.empty() ? std::string(fallback) : message);
  };
  DeliveryResult r;
  switch (kind) {
    case Kind::kTransient:
      return DeliveryResult::Failed(RKind::kTransient, text("transient failure"));
    case Kind::kNetwork:
      return DeliveryResult::Failed(RKind::kNetwork, text("network unreachable"));
    case Kind::kTimeout:
      return DeliveryResult::Failed(RKind::kNetwork, text("timed out"));
    case Kind::kReset:
      return DeliveryResult::Failed(RKind::kNetwork, text("connection reset by peer"));
    case Kind::kPermanent:
      return DeliveryResult::Failed(RKind::kPermanent, text("permanent failure"));
    case Kind::kConflict:
      r = DeliveryResult::Failed(RKind::kConflict, text("conflict"));
      r.remote = remote;
      return r;
    case Kind::kRetryAfter:
      r = DeliveryResult::Failed(RKind::kRetryAfter, text("retry after"));
      r.retry_after = retry_after;
      return r;
  }
  return DeliveryResult::Failed(RKind::kTransient, text("transient failure"));
}

std::string OutcomeName(DeliveryResult::Kind kind) {
  switch (kind) {
    case RKind::kDelivered:
      return "delivered";
    case RKind::kTransient:
      return "transient";
    case RKind::kNetwork:
      return "network";
    case RKind::kRetryAfter:
      return "retry_after";
    case RKind::kPermanent:
      return "permanent";
    case RKind::kConflict:
      return "conflict";
  }
  return "transient";
}

FaultyTransport::FaultyTransport(std::shared_ptr<Transport> inner, FaultyTransportOptions options,
                                 std::shared_ptr<Clock> clock)
    : inner_(std::move(inner)),
      clock_(clock ? std::move(clock) : SystemClock::Default()),
      waiter_(Waiter::Create(clock_)),
      options_(std::move(options)),
      rng_(Seeded(options_.seed)) {
  CheckRate(options_.failure_rate);
  CheckFault(options_.rate_fault);
  CheckSeconds(options_.latency, "latency");
  CheckSeconds(options_.jitter, "jitter");
  CheckSeconds(options_.timeout, "timeout");
  for (const auto& f : options_.pattern) {
    if (f) CheckFault(*f);
  }
}

bool FaultyTransport::SupportsBatch() const { return inner_ && inner_->SupportsBatch(); }

bool FaultyTransport::PartitionedAt(double t) const {
  if (partitioned_) return true;
  for (const auto& [start, end] : partitions_) {
    if (t >= start && t < end) return true;
  }
  return false;
}

bool FaultyTransport::Partitioned() const {
  const double now = clock_->Monotonic();
  std::lock_guard lock(mu_);
  return PartitionedAt(now);
}

std::optional<Fault> FaultyTransport::Decide(double t) {
  if (!queued_.empty()) {
    Fault f = std::move(queued_.front());
    queued_.pop_front();
    return f;
  }
  for (const auto& w : fail_windows_) {
    if (t >= w.start && t < w.end) return w.fault;
  }
  if (!options_.pattern.empty()) {
    const auto& entry = options_.pattern[pattern_next_++ % options_.pattern.size()];
    if (entry) return entry;
  }
  if (options_.failure_rate > 0 && Unit(rng_) < options_.failure_rate) return options_.rate_fault;
  return std::nullopt;
}

void FaultyTransport::WaitUntil(double deadline) {
  for (;;) {
    const uint64_t seen = waiter_->Generation();
    if (waiter_->closed() || !waiter_->WaitUntil(seen, deadline)) return;
    if (waiter_->closed()) return;
  }
}

void FaultyTransport::Record(const Operation& op, double start, double waited,
                             const DeliveryResult& r) {
  Attempt a{start, op.id, op.key, op.priority, OutcomeName(r.kind), r.error, waited};
  std::lock_guard lock(mu_);
  history_.push_back(std::move(a));
}

DeliveryResult FaultyTransport::Send(const Operation& op) {
  std::vector<DeliveryResult> r = SendBatch({op});
  return std::move(r.front());
}

std::vector<DeliveryResult> FaultyTransport::SendBatch(const std::vector<Operation>& ops) {
  std::vector<DeliveryResult> out(ops.size());
  if (ops.empty()) return out;
  const double start = clock_->Monotonic();
  bool partitioned;
  double latency = 0;
  {
    std::lock_guard lock(mu_);
    calls_ += 1;
    calls_cv_.notify_all();
    partitioned = PartitionedAt(start);
    if (!partitioned) {
      latency = options_.latency + (options_.jitter > 0 ? Unit(rng_) * options_.jitter : 0.0);
    }
  }
  if (partitioned) {
    for (size_t i = 0; i < ops.size(); ++i) {
      out[i] = DeliveryResult::Failed(RKind::kNetwork, "injected: partitioned");
      Record(ops[i], start, 0.0, out[i]);
    }
    return out;
  }
  WaitUntil(start + latency);

  std::vector<std::optional<Fault>> faults;
  double fault_delay = 0;
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < ops.size(); ++i) {
      faults.push_back(Decide(start));
      auto& f = faults.back();
      if (f && f->kind == Fault::Kind::kTimeout && f->delay == 0) f->delay = options_.timeout;
      if (f) fault_delay = std::max(fault_delay, f->delay);
    }
  }
  if (fault_delay > 0) WaitUntil(start + latency + fault_delay);

  std::vector<Operation> pass;
  std::vector<size_t> pass_index;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (faults[i]) {
      out[i] = faults[i]->ToResult();
    } else {
      pass.push_back(ops[i]);
      pass_index.push_back(i);
    }
  }
  if (!pass.empty()) {
    std::vector<DeliveryResult> results;
    if (!inner_) {
      results.assign(pass.size(), DeliveryResult::Delivered());
    } else {
      if (pass.size() > 1 && inner_->SupportsBatch()) {
        try {
          results = inner_->SendBatch(pass);
        } catch (const std::exception& e) {  // which op got through is unknowable: resend all
          results.assign(pass.size(),
                         DeliveryResult::Failed(RKind::kTransient,
                                                std::string("transport threw: ") + e.what()));
        }
      } else {
        // One call each, as the engine would: earlier results stand when a later
        // call throws, and nothing more is sent after an interrupted call.
        results = SendEach(*inner_, pass);
      }
      results.resize(
          pass.size(),
          DeliveryResult::Failed(RKind::kTransient, "inner transport returned too few results"));
    }
    for (size_t j = 0; j < pass.size(); ++j) out[pass_index[j]] = std::move(results[j]);
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    Record(ops[i], start, latency + (faults[i] ? faults[i]->delay : 0.0), out[i]);
  }
  return out;
}

void FaultyTransport::FailNext(int n, const Fault& fault) {
  if (n < 0) ThrowInvalid("fail_next: n must be >= 0");
  CheckFault(fault);
  std::lock_guard lock(mu_);
  for (int i = 0; i < n; ++i) queued_.push_back(fault);
}

void FaultyTransport::FailFor(double seconds, Fault fault) {
  CheckSeconds(seconds, "fail_for seconds");
  CheckFault(fault);
  const double now = clock_->Monotonic();
  std::lock_guard lock(mu_);
  fail_windows_.push_back({now, now + seconds, std::move(fault)});
}

void FaultyTransport::SetPartitioned(bool on) {
  std::lock_guard lock(mu_);
  partitioned_ = on;
}

void FaultyTransport::AddPartition(double start, double end) {
  if (!std::isfinite(start) || !std::isfinite(end) || end < start) {
    ThrowInvalid("partition window: start and end must be finite with start <= end");
  }
  std::lock_guard lock(mu_);
  partitions_.emplace_back(start, end);
}

void FaultyTransport::Flap(double period, int count, std::optional<double> start) {
  if (!std::isfinite(period) || period <= 0) ThrowInvalid("flap: period must be finite and > 0");
  if (count < 0) ThrowInvalid("flap: count must be >= 0");
  const double t0 = start.value_or(clock_->Monotonic());
  if (!std::isfinite(t0)) ThrowInvalid("flap: start must be finite");
  std::lock_guard lock(mu_);
  for (int i = 0; i < count; ++i) {
    const double a = t0 + 2.0 * i * period;
    partitions_.emplace_back(a, a + period);
  }
}

void FaultyTransport::SetLatency(double latency, double jitter) {
  CheckSeconds(latency, "latency");
  CheckSeconds(jitter, "jitter");
  std::lock_guard lock(mu_);
  options_.latency = latency;
  options_.jitter = jitter;
}

void FaultyTransport::SetFailureRate(double rate, Fault fault) {
  CheckRate(rate);
  CheckFault(fault);
  std::lock_guard lock(mu_);
  options_.failure_rate = rate;
  options_.rate_fault = std::move(fault);
}

void FaultyTransport::Heal() {
  std::lock_guard lock(mu_);
  queued_.clear();
  fail_windows_.clear();
  partitions_.clear();
  partitioned_ = false;
  options_.pattern.clear();
  options_.failure_rate = 0;
  options_.latency = 0;
  options_.jitter = 0;
}

std::vector<Attempt> FaultyTransport::History() const {
  std::lock_guard lock(mu_);
  return history_;
}

uint64_t FaultyTransport::Calls() const {
  std::lock_guard lock(mu_);
  return calls_;
}

bool FaultyTransport::WaitForCalls(uint64_t n, std::optional<double> timeout) {
  std::unique_lock lock(mu_);
  auto done = [&] { return calls_ >= n; };
  if (!timeout) {
    calls_cv_.wait(lock, done);
    return true;
  }
  if (!std::isfinite(*timeout) || *timeout < 0) ThrowInvalid("timeout must be finite and >= 0");
  return calls_cv_.wait_for(lock, std::chrono::duration<double>(*timeout), done);
}

void FaultyTransport::ClearHistory() {
  std::lock_guard lock(mu_);
  history_.clear();
}

void FaultyTransport::Close() { waiter_->Close(); }

}  // namespace cpcsync
