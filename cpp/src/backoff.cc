#include "cpcsync/backoff.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

#include "cpcsync/errors.h"

namespace cpcsync {
namespace {

constexpr double kMaxDouble = std::numeric_limits<double>::max();

// Shortest round-trip text of a double, with ".0" added to integral values, as
// Python's repr writes floats.
std::string Num(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, ec == std::errc() ? end : buf);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // "n": inf, nan
  return s;
}

void CheckNonNegative(double v, const char* what) {
  if (!std::isfinite(v) || v < 0) {
    ThrowInvalid(std::string(what) + " must be a finite number >= 0, got " + Num(v));
  }
}

void CheckMaxDelay(double max_delay, double base) {
  CheckNonNegative(max_delay, "max_delay");
  if (max_delay < base) {
    ThrowInvalid("max_delay (" + Num(max_delay) + ") must be >= base (" + Num(base) + ")");
  }
}

uint64_t RandomSeed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

}  // namespace

void CheckAttempt(int attempt) {
  if (attempt < 1) {
    ThrowInvalid("attempt must be >= 1 (the number of failed attempts), got " +
                 std::to_string(attempt));
  }
}

double CheckDelay(double delay, const std::string& who) {
  if (!std::isfinite(delay) || delay < 0) {
    ThrowInvalid(who + " returned " + Num(delay) + "; a delay must be a finite number >= 0");
  }
  return delay;
}

// ----------------------------------------------------------------------------- constant

ConstantBackoff::ConstantBackoff(double delay) : delay_(delay) { CheckNonNegative(delay, "delay"); }

double ConstantBackoff::NextDelay(int attempt) {
  CheckAttempt(attempt);
  return delay_;
}

std::shared_ptr<BackoffStrategy> ConstantBackoff::Clone() const {
  return std::make_shared<ConstantBackoff>(delay_);
}

std::string ConstantBackoff::Describe() const {
  return "ConstantBackoff(delay=" + Num(delay_) + ")";
}

// ----------------------------------------------------------------------------- linear

LinearBackoff::LinearBackoff(double base, double step, double max_delay)
    : base_(base), step_(step), max_delay_(max_delay) {
  CheckNonNegative(base, "base");
  CheckNonNegative(step, "step");
  CheckMaxDelay(max_delay, base);
}

double LinearBackoff::NextDelay(int attempt) {
  CheckAttempt(attempt);
  // step * (attempt - 1) may be +inf for huge steps; min() then yields max_delay.
  return std::min(max_delay_, base_ + step_ * static_cast<double>(attempt - 1));
}

std::shared_ptr<BackoffStrategy> LinearBackoff::Clone() const {
  return std::make_shared<LinearBackoff>(base_, step_, max_delay_);
}

std::string LinearBackoff::Describe() const {
  return "LinearBackoff(base=" + Num(base_) + ", step=" + Num(step_) +
         ", max_delay=" + Num(max_delay_) + ")";
}

// ----------------------------------------------------------------------------- exponential

Jitter ParseJitter(std::string_view name) {
  if (name == "none") return Jitter::kNone;
  if (name == "full") return Jitter::kFull;
  if (name == "equal") return Jitter::kEqual;
  if (name == "decorrelated") return Jitter::kDecorrelated;
  ThrowInvalid("jitter must be \"none\", \"full\", \"equal\" or \"decorrelated\", got \"" +
               std::string(name) + "\"");
}

const char* JitterName(Jitter jitter) {
  switch (jitter) {
    case Jitter::kNone:
      return "none";
    case Jitter::kFull:
      return "full";
    case Jitter::kEqual:
      return "equal";
    case Jitter::kDecorrelated:
      return "decorrelated";
  }
  return "?";
}

ExponentialBackoff::ExponentialBackoff(double base, double factor, double max_delay, Jitter jitter,
                                       std::optional<uint64_t> seed)
    : base_(base),
      factor_(factor),
      max_delay_(max_delay),
      jitter_(jitter),
      seed_(seed),
      rng_(seed ? *seed : RandomSeed()),
      previous_(base) {
  CheckNonNegative(base, "base");
  if (!std::isfinite(factor) || factor < 1) {
    ThrowInvalid("factor must be a finite number >= 1, got " + Num(factor));
  }
  CheckMaxDelay(max_delay, base);
  if (jitter == Jitter::kDecorrelated && base == 0) {
    ThrowInvalid("decorrelated jitter needs base > 0 (with base 0 every delay would be 0)");
  }
  if (base > 0 && factor > 1) {
    log_factor_ = std::log(factor);
    log_limit_ = std::log(max_delay) - std::log(base) + 1e-9;  // margin for rounding
  }
}

double ExponentialBackoff::Expo(int attempt) const {
  if (base_ == 0 || factor_ == 1) return std::min(max_delay_, base_);
  const double k = static_cast<double>(attempt - 1);
  // In log space first: past the cap (with a margin for rounding), answer the cap
  // without computing a power that could overflow. Below it, the plain product, so
  // the value is exactly what `base * factor ** (n - 1)` gives in Python.
  if (k * log_factor_ > log_limit_) return max_delay_;
  return std::min(max_delay_, base_ * std::pow(factor_, k));
}

double ExponentialBackoff::Uniform01Locked() {
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

double ExponentialBackoff::NextDelay(int attempt) {
  CheckAttempt(attempt);
  if (jitter_ == Jitter::kNone) return Expo(attempt);
  if (jitter_ == Jitter::kDecorrelated) {
    std::lock_guard lock(mu_);
    if (attempt == 1 || attempt <= last_attempt_) previous_ = base_;  // a new sequence
    last_attempt_ = attempt;
    // previous_ <= max_delay_ is finite, but previous_ * 3 may overflow a huge cap.
    const double hi = std::min(previous_ * 3, kMaxDouble);
    previous_ = std::min(max_delay_, base_ + (hi - base_) * Uniform01Locked());
    return previous_;
  }
  const double expo = Expo(attempt);
  double u;
  {
    std::lock_guard lock(mu_);
    u = Uniform01Locked();
  }
  if (jitter_ == Jitter::kFull) return expo * u;
  return expo / 2 + expo / 2 * u;  // kEqual
}

std::shared_ptr<BackoffStrategy> ExponentialBackoff::Clone() const {
  std::optional<uint64_t> seed;
  if (seed_) {
    std::lock_guard lock(mu_);
    seed = rng_();
  }
  return std::make_shared<ExponentialBackoff>(base_, factor_, max_delay_, jitter_, seed);
}

std::string ExponentialBackoff::Describe() const {
  return "ExponentialBackoff(base=" + Num(base_) + ", factor=" + Num(factor_) +
         ", max_delay=" + Num(max_delay_) + ", jitter='" + JitterName(jitter_) +
         "', seed=" + (seed_ ? std::to_string(*seed_) : "None") + ")";
}

// ----------------------------------------------------------------------------- composites

SumBackoff::SumBackoff(std::shared_ptr<BackoffStrategy> a, std::shared_ptr<BackoffStrategy> b)
    : a_(std::move(a)), b_(std::move(b)) {
  if (!a_ || !b_) ThrowInvalid("SumBackoff: both strategies are required");
}

double SumBackoff::NextDelay(int attempt) {
  CheckAttempt(attempt);
  // No lock here: either part may be a Python strategy that takes the GIL.
  const double a = a_->NextDelay(attempt);
  const double b = b_->NextDelay(attempt);
  return std::min(a + b, kMaxDouble);
}

std::shared_ptr<BackoffStrategy> SumBackoff::Clone() const {
  return std::make_shared<SumBackoff>(a_->Clone(), b_->Clone());
}

bool SumBackoff::Stateful() const { return a_->Stateful() || b_->Stateful(); }

std::string SumBackoff::Describe() const { return a_->Describe() + " + " + b_->Describe(); }

CappedBackoff::CappedBackoff(std::shared_ptr<BackoffStrategy> inner, double max_delay)
    : inner_(std::move(inner)), max_delay_(max_delay) {
  if (!inner_) ThrowInvalid("CappedBackoff: a strategy is required");
  CheckNonNegative(max_delay, "max_delay");
}

double CappedBackoff::NextDelay(int attempt) {
  CheckAttempt(attempt);
  return std::min(max_delay_, inner_->NextDelay(attempt));
}

std::shared_ptr<BackoffStrategy> CappedBackoff::Clone() const {
  return std::make_shared<CappedBackoff>(inner_->Clone(), max_delay_);
}

bool CappedBackoff::Stateful() const { return inner_->Stateful(); }

std::string CappedBackoff::Describe() const {
  return "(" + inner_->Describe() + ").capped(" + Num(max_delay_) + ")";
}

}  // namespace cpcsync
