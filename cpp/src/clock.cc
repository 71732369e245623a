#include "cpcsync/clock.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>  // clock_gettime, CLOCK_BOOTTIME (POSIX, through glibc's <time.h>)
#include <fstream>
#include <optional>
#include <string>

#include "cpcsync/errors.h"
#include "cpcsync/waiter.h"

namespace cpcsync {

namespace {

double WallSeconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

// The monotonic source: CLOCK_BOOTTIME where there is one (it never jumps, and unlike
// CLOCK_MONOTONIC it counts time the machine spent suspended, so a retry or a TTL
// counts a night in suspend and stored times stay near the wall clock of the boot),
// else the steady clock.
double SteadySeconds() {
#ifdef CLOCK_BOOTTIME
  struct timespec ts {};
  if (::clock_gettime(CLOCK_BOOTTIME, &ts) == 0) {
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
  }
#endif
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// The kernel's id of this boot (steady time restarts at each boot), or "".
std::string BootId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  if (!(in >> id)) return {};
  // Only what a file name may hold (it is a UUID).
  if (id.empty() || id.size() > 64) return {};
  for (char c : id) {
    if (!(std::isxdigit(static_cast<unsigned char>(c)) || c == '-')) return {};
  }
  return id;
}

std::optional<double> ParseAnchor(const std::string& text) {
  double v = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || ptr == text.data() || !std::isfinite(v)) return std::nullopt;
  return v;
}

// Reads the anchor from `path` if it is a regular file of ours; nullopt otherwise.
std::optional<double> ReadAnchor(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct stat st {};
  std::optional<double> out;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid()) {
    char buf[64];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) out = ParseAnchor(std::string(buf, static_cast<size_t>(n)));
  }
  ::close(fd);
  return out;
}

// The per-boot anchor shared by this user's processes: read it, or publish ours
// (written to a private temporary file, then link()ed into place, so a reader never
// sees a half-written one and of two racing publishers exactly one wins).
std::optional<double> SharedAnchor(double mine) {
  const std::string boot = BootId();
  if (boot.empty()) return std::nullopt;
  struct stat dir {};
  if (::stat("/dev/shm", &dir) != 0 || !S_ISDIR(dir.st_mode)) return std::nullopt;
  const std::string path = "/dev/shm/cpcsync-clock-" + std::to_string(::geteuid()) + "-" + boot;
  if (auto v = ReadAnchor(path)) return v;
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  ::unlink(tmp.c_str());  // left by a process of this pid killed at this very point
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return std::nullopt;
  char buf[64];
  const int len = std::snprintf(buf, sizeof buf, "%.17g\n", mine);
  const bool written = len > 0 && ::write(fd, buf, static_cast<size_t>(len)) == len;
  ::close(fd);
  const bool linked = written && ::link(tmp.c_str(), path.c_str()) == 0;
  ::unlink(tmp.c_str());
  if (linked) return mine;
  return ReadAnchor(path);  // another process published first (or nothing works)
}

double ComputeAnchor() {
  const double mine = WallSeconds() - SteadySeconds();
  return SharedAnchor(mine).value_or(mine);
}

}  // namespace

double SystemClock::Now() const { return WallSeconds(); }

double SystemClock::MonotonicAnchor() {
  static const double anchor = ComputeAnchor();  // once per process, at first use
  return anchor;
}

double SystemClock::Monotonic() const { return MonotonicAnchor() + SteadySeconds(); }

std::shared_ptr<Clock> SystemClock::Default() {
  static const std::shared_ptr<Clock> clock = std::make_shared<SystemClock>();
  return clock;
}

VirtualClock::VirtualClock(double start) : now_(start) {
  if (!std::isfinite(start)) ThrowInvalid("VirtualClock start must be finite");
}

double VirtualClock::Now() const {
  std::lock_guard lock(mu_);
  return now_ + wall_offset_;
}

double VirtualClock::Monotonic() const {
  std::lock_guard lock(mu_);
  return now_;
}

void VirtualClock::StepWall(double seconds) {
  if (!std::isfinite(seconds)) ThrowInvalid("step_wall: seconds must be finite");
  std::vector<std::shared_ptr<Waiter>> live;
  {
    std::lock_guard lock(mu_);
    wall_offset_ += seconds;
    live = LiveWaitersLocked();
  }
  for (auto& w : live) w->Tick();
}

std::vector<std::shared_ptr<Waiter>> VirtualClock::LiveWaitersLocked() {
  // Drops waiters that are gone; the caller wakes the rest after releasing our lock,
  // so a waiter may read the time while it is notified.
  std::vector<std::shared_ptr<Waiter>> live;
  std::erase_if(waiters_, [&](const std::weak_ptr<Waiter>& w) {
    auto s = w.lock();
    if (!s) return true;
    live.push_back(std::move(s));
    return false;
  });
  return live;
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
    live = LiveWaitersLocked();
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
    const double now = clock_->Monotonic();
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
