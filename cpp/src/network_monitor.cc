#include "cpcsync/network_monitor.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#if defined(__GLIBCXX__)
#include <cxxabi.h>
#endif

#include "cpcsync/errors.h"
#include "cpcsync/log.h"
#include "cpcsync/waiter.h"

namespace cpcsync {
namespace {

// One probe check, shared by the monitor's thread and the thread running the check.
// The check thread owns a reference, so an abandoned check outlives Stop() and even
// the monitor safely.
struct Attempt {
  std::mutex mu;
  bool done = false;
  bool ok = false;
  std::string error;  // non-empty when the check threw

  bool Done() {
    std::lock_guard lock(mu);
    return done;
  }
};

// Runs `fn`, turning any exception into its message. Forced unwinding (a thread
// ending inside Python at interpreter exit) is let through: swallowing it aborts.
template <typename Fn>
std::string Guarded(Fn&& fn) {
  try {
    fn();
    return {};
#if defined(__GLIBCXX__)
  } catch (abi::__forced_unwind&) {
    throw;
#endif
  } catch (const std::exception& e) {
    return std::string(e.what()).empty() ? std::string("exception") : e.what();
  } catch (...) {
    return "unknown exception";
  }
}

// Observer rounds this thread is inside, of any monitor. A SetConnected() made from
// an observer must not wait for another thread's delivery: that thread may itself be
// inside an observer waiting for ours (two monitors whose observers call each other).
thread_local int t_observer_depth = 0;

class ObserverScope {
 public:
  ObserverScope() { ++t_observer_depth; }
  ~ObserverScope() { --t_observer_depth; }
  ObserverScope(const ObserverScope&) = delete;
  ObserverScope& operator=(const ObserverScope&) = delete;
};

// `now + delta`, but strictly later than `now` even where floating point cannot
// represent the sum (a clock at 1e17 s has steps of 16 s): every "next time" advances,
// so no loop spins on a deadline that is already due.
double StrictlyAfter(double now, double delta) {
  const double t = now + delta;
  return t > now ? t : std::nextafter(now, Waiter::kForever);
}

void CheckFiniteNonNegative(double v, const char* name) {
  if (!std::isfinite(v) || v < 0) {
    ThrowInvalid(std::string(name) + " must be finite and >= 0");
  }
}

}  // namespace

class NetworkMonitor::Impl {
 public:
  Impl(const NetworkMonitorOptions& options, std::shared_ptr<Probe> probe,
       std::shared_ptr<Clock> clock)
      : options_(options),
        probe_(std::move(probe)),
        clock_(clock ? std::move(clock) : SystemClock::Default()),
        waiter_(Waiter::Create(clock_)),
        connected_(options_.connected) {
    if (!std::isfinite(options_.interval) || options_.interval < kMinProbeInterval) {
      ThrowInvalid("interval must be finite and >= 0.001 (1 ms)");
    }
    if (options_.up_after < 1) ThrowInvalid("up_after must be >= 1");
    if (options_.down_after < 1) ThrowInvalid("down_after must be >= 1");
    CheckFiniteNonNegative(options_.min_transition_interval, "min_transition_interval");
    if (options_.probe_timeout &&
        (!std::isfinite(*options_.probe_timeout) || *options_.probe_timeout <= 0)) {
      ThrowInvalid("probe_timeout must be finite and > 0");
    }
    if (options_.probe_timeout) {
      probe_timeout_ = *options_.probe_timeout;
    } else if (probe_ && std::isfinite(probe_->timeout()) && probe_->timeout() > 0) {
      probe_timeout_ = probe_->timeout();
    } else {
      probe_timeout_ = options_.interval;
    }
  }

  // Stops the thread for good. Joins it unless called on it (an observer dropping
  // the last reference), in which case the thread ends by itself right after.
  void Shutdown() {
    std::thread worker;
    {
      std::lock_guard lock(mu_);
      if (shutdown_) return;
      shutdown_ = true;
      probing_ = false;
      if (attempt_) abandoned_ = std::move(attempt_);
      worker = std::move(worker_);
    }
    waiter_->Notify();
    if (!worker.joinable()) return;
    if (worker.get_id() == std::this_thread::get_id()) {
      worker.detach();
    } else {
      worker.join();
    }
  }

  bool IsConnected() const {
    std::lock_guard lock(mu_);
    return connected_;
  }

  void SetConnected(bool state) {
    std::unique_lock lock(mu_);
    const uint64_t seq = RequestLocked(state, clock_->Monotonic());
    if (seq == 0) return;  // no change, or deferred by damping
    if (delivering_ && deliverer_ == std::this_thread::get_id()) return;  // from an observer
    DeliverLocked(lock);
    // Inside an observer of another monitor, the thread delivering ours may be waiting
    // for this one: it delivers ours after its current round; do not wait for it.
    if (t_observer_depth > 0) return;
    WaitLocked(lock, Waiter::kForever, [&] { return delivered_seq_ >= seq || shutdown_; });
  }

  Token Subscribe(Observer observer) {
    if (!observer) ThrowInvalid("subscribe: the observer must not be empty");
    auto shared = std::make_shared<const Observer>(std::move(observer));
    std::lock_guard lock(mu_);
    const Token token = ++last_token_;
    observers_.emplace_back(token, std::move(shared));
    return token;
  }

  bool Unsubscribe(Token token) {
    std::shared_ptr<const Observer> removed;  // destroyed after the lock is released
    std::lock_guard lock(mu_);
    auto it = std::find_if(observers_.begin(), observers_.end(),
                           [&](const auto& entry) { return entry.first == token; });
    if (it == observers_.end()) return false;
    removed = std::move(it->second);
    observers_.erase(it);
    return true;
  }

  bool WaitUntil(bool state, std::optional<double> timeout) {
    const double deadline = Deadline(timeout);
    std::unique_lock lock(mu_);
    return WaitLocked(lock, deadline, [&] { return connected_ == state; });
  }

  bool WaitForProbes(uint64_t count, std::optional<double> timeout) {
    const double deadline = Deadline(timeout);
    std::unique_lock lock(mu_);
    return WaitLocked(lock, deadline,
                      [&] { return probes_ >= count && delivered_seq_ >= last_seq_; });
  }

  void Start() {
    std::lock_guard lock(mu_);
    if (!probe_ || probing_ || shutdown_) return;
    probing_ = true;
    probe_now_ = false;
    next_probe_at_ = clock_->Monotonic();
    consecutive_successes_ = consecutive_failures_ = 0;
    EnsureWorkerLocked();
    waiter_->Notify();
  }

  void Stop() {
    {
      std::lock_guard lock(mu_);
      if (!probing_) return;
      probing_ = false;
      probe_now_ = false;
      if (attempt_) abandoned_ = std::move(attempt_);
    }
    waiter_->Notify();
  }

  bool probing() const {
    std::lock_guard lock(mu_);
    return probing_;
  }

  void Report(bool success) {
    {
      std::lock_guard lock(mu_);
      ++(success ? passive_successes_ : passive_failures_);
      // A check in progress answers the signal; otherwise probe now.
      if (!probing_ || attempt_) return;
      probe_now_ = true;
    }
    waiter_->Notify();
  }

  NetworkMonitorStats Stats() const {
    std::lock_guard lock(mu_);
    NetworkMonitorStats s;
    s.connected = connected_;
    s.probing = probing_;
    s.pending = deferred_;
    s.transitions = transitions_;
    s.damped = damped_;
    s.observer_calls = observer_calls_.load();
    s.observer_errors = observer_errors_.load();
    s.probes = probes_;
    s.probe_failures = probe_failures_;
    s.probe_timeouts = probe_timeouts_;
    s.passive_failures = passive_failures_;
    s.passive_successes = passive_successes_;
    s.consecutive_successes = consecutive_successes_;
    s.consecutive_failures = consecutive_failures_;
    if (transitions_ > 0) s.last_transition_at = last_transition_at_;
    return s;
  }

  uint64_t observer_errors() const { return observer_errors_.load(); }
  const std::shared_ptr<Clock>& clock() const { return clock_; }
  const std::shared_ptr<Probe>& probe() const { return probe_; }
  const NetworkMonitorOptions& options() const { return options_; }

 private:
  struct Event {
    bool connected;
    uint64_t seq;
  };

  double Deadline(std::optional<double> timeout) const {
    if (!timeout) return Waiter::kForever;
    if (std::isnan(*timeout) || *timeout < 0) ThrowInvalid("timeout must be >= 0");
    return clock_->Monotonic() + *timeout;
  }

  // Waits (lock released) until pred() holds or the deadline passes on the clock.
  template <typename Pred>
  bool WaitLocked(std::unique_lock<std::mutex>& lock, double deadline, Pred pred) {
    for (;;) {
      // The generation is read before the check, so a change made after the check
      // bumps it and the wait returns at once.
      const uint64_t seen = waiter_->Generation();
      if (pred()) return true;
      lock.unlock();
      const bool woken = waiter_->WaitUntil(seen, deadline);
      lock.lock();
      if (!woken) return pred();
    }
  }

  // Applies or defers a requested state. Returns the sequence number of the
  // transition it applied, or 0 when nothing changed now.
  uint64_t RequestLocked(bool state, double now) {
    const double damping = options_.min_transition_interval;
    if (damping > 0 && transitions_ > 0 && now < last_transition_at_ + damping) {
      if (state != connected_) {
        if (!deferred_) {
          ++damped_;
          Log().debug("network monitor: transition to {} deferred by flap damping until {}",
                      state ? "connected" : "disconnected", last_transition_at_ + damping);
        }
        deferred_ = state;
        EnsureWorkerLocked();
        waiter_->Notify();
      } else {
        deferred_.reset();  // flapped back within the window: nothing to tell
      }
      return 0;
    }
    deferred_.reset();
    if (state == connected_) return 0;
    return ApplyLocked(state, now);
  }

  uint64_t ApplyLocked(bool state, double now) {
    connected_ = state;
    last_transition_at_ = now;
    ++transitions_;
    pending_.push_back({state, ++last_seq_});
    Log().info("network monitor: {} at {:.3f}", state ? "connected" : "disconnected", now);
    waiter_->Notify();
    return last_seq_;
  }

  // Delivers queued transitions in order, unless another thread is delivering (it
  // will deliver ours too). Observers run with the lock released.
  void DeliverLocked(std::unique_lock<std::mutex>& lock) {
    if (delivering_) return;
    delivering_ = true;
    deliverer_ = std::this_thread::get_id();
    while (!pending_.empty() && !shutdown_) {
      const Event event = pending_.front();
      pending_.pop_front();
      std::vector<std::shared_ptr<const Observer>> round;
      round.reserve(observers_.size());
      for (const auto& entry : observers_) round.push_back(entry.second);
      lock.unlock();
      for (const auto& observer : round) Notify(*observer, event.connected);
      round.clear();  // an observer unsubscribed meanwhile is destroyed here, unlocked
      lock.lock();
      delivered_seq_ = event.seq;
      waiter_->Notify();
    }
    delivering_ = false;
    deliverer_ = {};
  }

  void Notify(const Observer& observer, bool connected) {
    ++observer_calls_;
    ObserverScope scope;
    const std::string error = Guarded([&] { observer(connected); });
    if (!error.empty()) {
      ++observer_errors_;
      Log().error("network monitor: an observer failed on the transition to {}: {}",
                  connected ? "connected" : "disconnected", error);
    }
  }

  void EnsureWorkerLocked() {
    if (running_ || shutdown_) return;
    // A previous thread that found nothing to do has ended (it cleared running_ under
    // the lock, its last act), so this join returns at once.
    if (worker_.joinable()) worker_.join();
    running_ = true;
    try {
      worker_ = std::thread([self = self_.lock(), this] { Run(); });
    } catch (const std::system_error& e) {
      running_ = false;
      Log().error("network monitor: cannot start its thread: {}", e.what());
      throw SyncError(ErrorCode::kOs, std::string("cannot start a thread: ") + e.what(),
                      e.code().value());
    }
  }

  // Applies a probe result to the hysteresis counters and, maybe, the state.
  void OnProbeResultLocked(bool ok, double now) {
    ++probes_;
    if (ok) {
      ++consecutive_successes_;
      consecutive_failures_ = 0;
    } else {
      ++probe_failures_;
      ++consecutive_failures_;
      consecutive_successes_ = 0;
    }
    const bool target = deferred_ ? *deferred_ : connected_;
    if (ok && !target && consecutive_successes_ >= options_.up_after) {
      RequestLocked(true, now);
    } else if (!ok && target && consecutive_failures_ >= options_.down_after) {
      RequestLocked(false, now);
    }
    waiter_->Notify();  // WaitForProbes
  }

  void StartAttemptLocked(double now) {
    auto attempt = std::make_shared<Attempt>();
    attempt_deadline_ = StrictlyAfter(now, probe_timeout_);
    try {
      std::thread([attempt, probe = probe_, waiter = waiter_, timeout = probe_timeout_] {
        bool ok = false;
        std::string error = Guarded([&] { ok = probe->Check(timeout); });
        {
          std::lock_guard lock(attempt->mu);
          attempt->done = true;
          attempt->ok = ok && error.empty();
          attempt->error = std::move(error);
        }
        waiter->Notify();
      }).detach();
    } catch (const std::system_error& e) {
      Log().error("network monitor: cannot start a probe thread: {}", e.what());
      OnProbeResultLocked(false, now);
      return;
    }
    attempt_ = std::move(attempt);
  }

  // The monitor's thread: probes while probing_, applies deferred transitions, and
  // ends when it has neither to do.
  void Run() {
    std::unique_lock lock(mu_);
    while (!shutdown_) {
      const uint64_t seen = waiter_->Generation();
      const double now = clock_->Monotonic();
      const double damping = options_.min_transition_interval;
      if (deferred_ && now >= last_transition_at_ + damping) {
        const bool state = *deferred_;
        deferred_.reset();
        if (state != connected_) ApplyLocked(state, now);
        DeliverLocked(lock);
        continue;
      }
      if (attempt_) {
        std::shared_ptr<Attempt> a = attempt_;
        bool done, ok;
        std::string error;
        {
          std::lock_guard alock(a->mu);
          done = a->done;
          ok = a->ok;
          error = a->error;
        }
        if (done) {
          attempt_.reset();
          if (!error.empty()) Log().warn("network monitor: the probe failed: {}", error);
          OnProbeResultLocked(ok, now);
          DeliverLocked(lock);
          continue;
        }
        if (now >= attempt_deadline_) {
          abandoned_ = std::move(attempt_);
          ++probe_timeouts_;
          Log().warn("network monitor: the probe did not answer within {} s", probe_timeout_);
          OnProbeResultLocked(false, now);
          DeliverLocked(lock);
          continue;
        }
      } else if (probing_ && (probe_now_ || now >= next_probe_at_)) {
        const double scheduled = probe_now_ ? now : next_probe_at_;
        next_probe_at_ = scheduled + options_.interval;
        if (next_probe_at_ <= now) next_probe_at_ = StrictlyAfter(now, options_.interval);
        probe_now_ = false;
        if (abandoned_ && !abandoned_->Done()) {
          // One check at a time: a check abandoned earlier is still running.
          ++probe_timeouts_;
          Log().debug("network monitor: the previous probe is still running; counted as failed");
          OnProbeResultLocked(false, now);
          DeliverLocked(lock);
          continue;
        }
        abandoned_.reset();
        StartAttemptLocked(now);
        continue;
      }
      if (!probing_ && !deferred_ && !attempt_) break;
      double deadline = Waiter::kForever;
      if (attempt_) {
        deadline = attempt_deadline_;
      } else if (probing_) {
        deadline = next_probe_at_;
      }
      if (deferred_) deadline = std::min(deadline, last_transition_at_ + damping);
      lock.unlock();
      waiter_->WaitUntil(seen, deadline);
      lock.lock();
    }
    running_ = false;
  }

  friend class NetworkMonitor;

  const NetworkMonitorOptions options_;
  const std::shared_ptr<Probe> probe_;
  const std::shared_ptr<Clock> clock_;
  const std::shared_ptr<Waiter> waiter_;  // every change Notify()s it; every wait uses it
  double probe_timeout_ = 0;
  std::weak_ptr<Impl> self_;  // the thread holds a strong reference while it runs

  mutable std::mutex mu_;
  bool connected_;
  std::optional<bool> deferred_;
  double last_transition_at_ = 0;
  uint64_t transitions_ = 0, damped_ = 0;
  std::vector<std::pair<Token, std::shared_ptr<const Observer>>> observers_;
  Token last_token_ = 0;

  // Delivery: transitions queued in order, one deliverer at a time.
  std::deque<Event> pending_;
  uint64_t last_seq_ = 0, delivered_seq_ = 0;
  bool delivering_ = false;
  std::thread::id deliverer_;
  std::atomic<uint64_t> observer_calls_{0}, observer_errors_{0};

  // Probing.
  bool probing_ = false, probe_now_ = false, running_ = false, shutdown_ = false;
  double next_probe_at_ = 0, attempt_deadline_ = 0;
  std::shared_ptr<Attempt> attempt_, abandoned_;
  uint64_t probes_ = 0, probe_failures_ = 0, probe_timeouts_ = 0;
  uint64_t passive_failures_ = 0, passive_successes_ = 0;
  int consecutive_successes_ = 0, consecutive_failures_ = 0;
  std::thread worker_;
};

NetworkMonitor::NetworkMonitor(const NetworkMonitorOptions& options, std::shared_ptr<Probe> probe,
                               std::shared_ptr<Clock> clock)
    : impl_(std::make_shared<Impl>(options, std::move(probe), std::move(clock))) {
  impl_->self_ = impl_;
}

NetworkMonitor::~NetworkMonitor() { impl_->Shutdown(); }

bool NetworkMonitor::IsConnected() const { return impl_->IsConnected(); }

void NetworkMonitor::SetConnected(bool connected) {
  auto keep = impl_;  // an observer may destroy this monitor meanwhile
  keep->SetConnected(connected);
}

NetworkMonitor::Token NetworkMonitor::Subscribe(Observer observer) {
  return impl_->Subscribe(std::move(observer));
}

bool NetworkMonitor::Unsubscribe(Token token) { return impl_->Unsubscribe(token); }

bool NetworkMonitor::WaitUntil(bool state, std::optional<double> timeout) {
  auto keep = impl_;
  return keep->WaitUntil(state, timeout);
}

void NetworkMonitor::Start() { impl_->Start(); }
void NetworkMonitor::Stop() { impl_->Stop(); }
bool NetworkMonitor::probing() const { return impl_->probing(); }
void NetworkMonitor::ReportFailure() { impl_->Report(false); }
void NetworkMonitor::ReportSuccess() { impl_->Report(true); }

bool NetworkMonitor::WaitForProbes(uint64_t count, std::optional<double> timeout) {
  auto keep = impl_;
  return keep->WaitForProbes(count, timeout);
}

NetworkMonitorStats NetworkMonitor::Stats() const { return impl_->Stats(); }
uint64_t NetworkMonitor::observer_errors() const { return impl_->observer_errors(); }
const std::shared_ptr<Clock>& NetworkMonitor::clock() const { return impl_->clock(); }
const std::shared_ptr<Probe>& NetworkMonitor::probe() const { return impl_->probe(); }
const NetworkMonitorOptions& NetworkMonitor::options() const { return impl_->options(); }

}  // namespace cpcsync
