#include "cpcsync/clock.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "cpcsync/errors.h"
#include "cpcsync/waiter.h"

namespace cpcsync {

double SystemClock::Now() const {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::shared_ptr<Clock> SystemClock::Default() {
  static const std::shared_ptr<Clock> clock = std::make_shared<SystemClock>();
  return clock;
}

VirtualClock::VirtualClock(double start) : now_(start) {
  if (!std::isfinite(start)) ThrowInvalid("VirtualClock start must be finite");
}

double VirtualClock::Now() const {
  std::lock_guard lock(mu_);
  return now_;
}

void VirtualClock::Attach(const std::shared_ptr<Waiter>& waiter) {
  std::lock_guard lock(mu_);
  waiters_.push_back(waiter);
}

void VirtualClock::Advance(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) {
    ThrowInvalid("advance: seconds must be finite and >= 0");
  }
  double target;
  {
    std::lock_guard lock(mu_);
    target = now_ + seconds;
  }
  AdvanceTo(target);
}

void VirtualClock::AdvanceTo(double t) {
  if (!std::isfinite(t)) ThrowInvalid("advance_to: time must be finite");
  std::vector<std::shared_ptr<Waiter>> live;
  {
    std::lock_guard lock(mu_);
    if (t > now_) now_ = t;
    // Drop waiters that are gone; wake the rest after releasing our lock, so a
    // waiter may read Now() while we notify it.
    std::erase_if(waiters_, [&](const std::weak_ptr<Waiter>& w) {
      auto s = w.lock();
      if (!s) return true;
      live.push_back(std::move(s));
      return false;
    });
  }
  for (auto& w : live) w->Tick();
}

std::shared_ptr<Waiter> Waiter::Create(std::shared_ptr<Clock> clock) {
  auto w = std::make_shared<Waiter>(std::move(clock));
  w->clock_->Attach(w);
  return w;
}

uint64_t Waiter::Generation() const {
  std::lock_guard lock(mu_);
  return generation_;
}

void Waiter::Notify() {
  {
    std::lock_guard lock(mu_);
    ++generation_;
  }
  cv_.notify_all();
}

void Waiter::Tick() {
  // Taking the lock orders this wake-up after a sleeper's check of the time.
  { std::lock_guard lock(mu_); }
  cv_.notify_all();
}

void Waiter::Close() {
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    ++generation_;
  }
  cv_.notify_all();
}

bool Waiter::closed() const {
  std::lock_guard lock(mu_);
  return closed_;
}

bool Waiter::WaitForReal(uint64_t seen, double seconds) {
  std::unique_lock lock(mu_);
  const auto until = std::chrono::steady_clock::now() +
                     std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                         std::chrono::duration<double>(std::clamp(seconds, 0.0, 1e9)));
  return cv_.wait_until(lock, until, [&] { return generation_ != seen || closed_; });
}

bool Waiter::WaitUntil(uint64_t seen, double deadline) {
  std::unique_lock lock(mu_);
  for (;;) {
    if (generation_ != seen || closed_) return true;
    const double now = clock_->Now();
    if (now >= deadline) return false;
    if (clock_->AutoAdvance() && !std::isinf(deadline)) {
      // The driver owns time: jump to the deadline (AdvanceTo ticks this waiter,
      // which takes mu_, so release it first).
      lock.unlock();
      if (auto* v = dynamic_cast<VirtualClock*>(clock_.get())) v->AdvanceTo(deadline);
      lock.lock();
      continue;
    }
    if (clock_->IsVirtual() || std::isinf(deadline)) {
      cv_.wait(lock);
    } else {
      // Cap each real wait so a far deadline cannot overflow the duration type.
      const double step = std::min(deadline - now, 3600.0);
      cv_.wait_for(lock, std::chrono::duration<double>(step));
    }
  }
}

}  // namespace cpcsync
