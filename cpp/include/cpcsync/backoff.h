// BackoffStrategy: how long to wait before retrying an operation that failed.
//
// NextDelay(n) is the delay in seconds after the n-th failed attempt (n >= 1). It is
// always finite and >= 0, whatever n (up to INT_MAX) and whatever the parameters that
// the constructor accepted; n < 1 throws SyncError(kInvalidArgument). Constructors
// validate their parameters and throw SyncError(kInvalidArgument) for bad ones
// (negative or non-finite numbers, factor < 1, max_delay < base, unknown jitter).
//
// Strategies:
//   ConstantBackoff(d)               d
//   LinearBackoff(b, s, max)         min(max, b + s*(n-1))
//   ExponentialBackoff(b, f, max, j) expo(n) = min(max, b*f^(n-1)), jittered by j as in
//                                    the AWS note "Exponential Backoff And Jitter":
//     kNone          expo(n)
//     kFull          uniform(0, expo(n))
//     kEqual         expo(n)/2 + uniform(0, expo(n)/2)
//     kDecorrelated  min(max, uniform(b, previous*3)), previous = b before the first call
//   SumBackoff(a, b)                 a(n) + b(n)           (tenacity's wait_combine)
//   CappedBackoff(s, cap)            min(cap, s(n))
//
// Sequences. A strategy instance describes ONE retry sequence (one operation's
// failures). Only decorrelated jitter depends on earlier calls: it remembers the
// previous delay, and starts over (previous = base) when it is called with n == 1 or
// with an n not greater than the previous call's. Stateful() says whether a strategy
// has such history (composites: if any part has); Clone() returns a fresh instance
// with the same parameters and no history. An engine that retries many operations
// at once therefore keeps one Clone() per operation for a stateful strategy and may
// share one instance otherwise. Sharing a stateful instance is safe but mixes the
// sequences: every delay stays within the formula's bounds, only the "previous"
// comes from whichever operation called last.
//
// Randomness. Each jittered ExponentialBackoff owns a std::mt19937_64. With a seed it
// is seeded with exactly that value, and a uniform(a, b) draw is a + (b - a) * u with
// u = (g() >> 11) * 2^-53. The standard fixes mt19937_64's output and we do not use
// std::uniform_real_distribution (whose algorithm is implementation-defined), so a seed
// gives the same draws on any platform (a delay may differ in its last bit only where
// libm's pow rounds differently, never for powers of two). Without a seed it is seeded
// from std::random_device. Clone() of a seeded strategy is seeded with the next output
// of the original's generator: reproducible for a given order of calls, and different
// clones draw different sequences (identical jitter across operations would defeat its
// purpose). Clone() of an unseeded one is seeded from std::random_device.
//
// Thread-safety: every method is safe to call from any thread. The generator and
// the decorrelated history are guarded by a mutex held only for the arithmetic;
// composites call their parts without holding any lock, so a part implemented in
// Python may take the GIL.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>

namespace cpcsync {

class BackoffStrategy {
 public:
  virtual ~BackoffStrategy() = default;
  // Seconds to wait after the `attempt`-th failed attempt (attempt >= 1): finite, >= 0.
  virtual double NextDelay(int attempt) = 0;
  // A new instance with the same parameters and no per-sequence history.
  virtual std::shared_ptr<BackoffStrategy> Clone() const = 0;
  // True when NextDelay depends on earlier calls (then use one Clone() per sequence).
  virtual bool Stateful() const { return false; }
  // A constructor-like description, e.g. "ConstantBackoff(delay=1.0)".
  virtual std::string Describe() const = 0;
};

class ConstantBackoff final : public BackoffStrategy {
 public:
  // Throws SyncError(kInvalidArgument) unless delay is finite and >= 0.
  explicit ConstantBackoff(double delay);
  double NextDelay(int attempt) override;
  std::shared_ptr<BackoffStrategy> Clone() const override;
  std::string Describe() const override;
  double delay() const { return delay_; }

 private:
  double delay_;
};

class LinearBackoff final : public BackoffStrategy {
 public:
  // base and step finite and >= 0, max_delay finite and >= base.
  LinearBackoff(double base, double step, double max_delay);
  double NextDelay(int attempt) override;  // min(max_delay, base + step*(attempt-1))
  std::shared_ptr<BackoffStrategy> Clone() const override;
  std::string Describe() const override;
  double base() const { return base_; }
  double step() const { return step_; }
  double max_delay() const { return max_delay_; }

 private:
  double base_, step_, max_delay_;
};

enum class Jitter { kNone, kFull, kEqual, kDecorrelated };

// "none", "full", "equal" or "decorrelated"; SyncError(kInvalidArgument) otherwise.
Jitter ParseJitter(std::string_view name);
const char* JitterName(Jitter jitter);

class ExponentialBackoff final : public BackoffStrategy {
 public:
  // base finite and >= 0 (> 0 for kDecorrelated, whose delays would all be 0),
  // factor finite and >= 1, max_delay finite and >= base.
  ExponentialBackoff(double base = 0.1, double factor = 2.0, double max_delay = 60.0,
                     Jitter jitter = Jitter::kFull, std::optional<uint64_t> seed = std::nullopt);
  double NextDelay(int attempt) override;
  std::shared_ptr<BackoffStrategy> Clone() const override;
  bool Stateful() const override { return jitter_ == Jitter::kDecorrelated; }
  std::string Describe() const override;

  // expo(n) = min(max_delay, base * factor^(n-1)), exactly that product whenever it is
  // below max_delay (so it matches Python's `base * factor ** (n - 1)`); no overflow.
  double Expo(int attempt) const;
  double base() const { return base_; }
  double factor() const { return factor_; }
  double max_delay() const { return max_delay_; }
  Jitter jitter() const { return jitter_; }
  const std::optional<uint64_t>& seed() const { return seed_; }

 private:
  double Uniform01Locked();  // u in [0, 1), 53 random bits

  const double base_, factor_, max_delay_;
  const Jitter jitter_;
  const std::optional<uint64_t> seed_;
  // Expo() is max_delay_ once (n-1) * log(factor) exceeds log(max_delay) - log(base).
  double log_factor_ = 0, log_limit_ = 0;
  mutable std::mutex mu_;
  mutable std::mt19937_64 rng_;  // guarded by mu_ (Clone draws a seed from it)
  double previous_;              // decorrelated history, guarded by mu_
  int last_attempt_ = 0;         // guarded by mu_
};

class SumBackoff final : public BackoffStrategy {
 public:
  // Both parts non-null (SyncError(kInvalidArgument) otherwise).
  SumBackoff(std::shared_ptr<BackoffStrategy> a, std::shared_ptr<BackoffStrategy> b);
  double NextDelay(int attempt) override;  // a(n) + b(n), at most DBL_MAX
  std::shared_ptr<BackoffStrategy> Clone() const override;
  bool Stateful() const override;
  std::string Describe() const override;
  const std::shared_ptr<BackoffStrategy>& first() const { return a_; }
  const std::shared_ptr<BackoffStrategy>& second() const { return b_; }

 private:
  const std::shared_ptr<BackoffStrategy> a_, b_;
};

class CappedBackoff final : public BackoffStrategy {
 public:
  // inner non-null, max_delay finite and >= 0.
  CappedBackoff(std::shared_ptr<BackoffStrategy> inner, double max_delay);
  double NextDelay(int attempt) override;  // min(max_delay, inner(n))
  std::shared_ptr<BackoffStrategy> Clone() const override;
  bool Stateful() const override;
  std::string Describe() const override;
  const std::shared_ptr<BackoffStrategy>& inner() const { return inner_; }
  double max_delay() const { return max_delay_; }

 private:
  const std::shared_ptr<BackoffStrategy> inner_;
  const double max_delay_;
};

// Throws SyncError(kInvalidArgument) when attempt < 1. For custom strategies.
void CheckAttempt(int attempt);
// Throws SyncError(kInvalidArgument) unless `delay` (returned by `who`) is finite and
// >= 0. For strategies whose delays come from user code.
double CheckDelay(double delay, const std::string& who);

}  // namespace cpcsync
