#include "cpcsync/backoff.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "cpcsync/errors.h"

namespace cpcsync {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// The documented mapping of a generator output onto [0, 1).
double U(std::mt19937_64& g) { return static_cast<double>(g() >> 11) * 0x1.0p-53; }

std::vector<double> Draw(BackoffStrategy& s, int n) {
  std::vector<double> out;
  for (int i = 1; i <= n; ++i) out.push_back(s.NextDelay(i));
  return out;
}

void ExpectInvalid(const std::function<void()>& f) {
  try {
    f();
    ADD_FAILURE() << "no exception";
  } catch (const SyncError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
  }
}

TEST(ConstantBackoff, SameDelayEveryTime) {
  ConstantBackoff b(1.5);
  for (int n : {1, 2, 10, 1000, INT_MAX}) EXPECT_EQ(b.NextDelay(n), 1.5);
  EXPECT_EQ(ConstantBackoff(0).NextDelay(3), 0.0);
  EXPECT_FALSE(b.Stateful());
  EXPECT_EQ(b.Describe(), "ConstantBackoff(delay=1.5)");
}

TEST(LinearBackoff, ExactValuesAndCap) {
  LinearBackoff b(0.5, 0.25, 2.0);
  EXPECT_EQ(b.NextDelay(1), 0.5);
  EXPECT_EQ(b.NextDelay(2), 0.75);
  EXPECT_EQ(b.NextDelay(3), 1.0);
  EXPECT_EQ(b.NextDelay(7), 2.0);  // 0.5 + 1.5 = 2.0 exactly
  EXPECT_EQ(b.NextDelay(8), 2.0);  // capped
  EXPECT_EQ(b.NextDelay(INT_MAX), 2.0);
  LinearBackoff huge(0, std::numeric_limits<double>::max(), 10);  // step * n overflows to inf
  EXPECT_EQ(huge.NextDelay(INT_MAX), 10.0);
  EXPECT_EQ(huge.NextDelay(1), 0.0);
  EXPECT_EQ(b.Describe(), "LinearBackoff(base=0.5, step=0.25, max_delay=2.0)");
}

TEST(ExponentialBackoff, NoJitterIsExactlyTheFormula) {
  ExponentialBackoff b(0.1, 2.0, 60.0, Jitter::kNone);
  for (int n = 1; n <= 40; ++n) {
    EXPECT_EQ(b.NextDelay(n), std::min(60.0, 0.1 * std::pow(2.0, n - 1))) << n;
  }
  EXPECT_EQ(b.NextDelay(1), 0.1);
  EXPECT_EQ(b.NextDelay(3), 0.4);
  EXPECT_EQ(b.NextDelay(10), 51.2);
  EXPECT_EQ(b.NextDelay(11), 60.0);
  ExponentialBackoff three(1.0, 3.0, 1000.0, Jitter::kNone);
  EXPECT_EQ(Draw(three, 8), (std::vector<double>{1, 3, 9, 27, 81, 243, 729, 1000}));
  // factor 1 and base 0 are constant.
  EXPECT_EQ(ExponentialBackoff(0.5, 1.0, 1.0, Jitter::kNone).NextDelay(INT_MAX), 0.5);
  EXPECT_EQ(ExponentialBackoff(0.0, 2.0, 1.0, Jitter::kNone).NextDelay(INT_MAX), 0.0);
}

TEST(ExponentialBackoff, HugeAttemptsGiveTheCap) {
  for (Jitter j : {Jitter::kNone, Jitter::kFull, Jitter::kEqual, Jitter::kDecorrelated}) {
    ExponentialBackoff b(0.1, 2.0, 60.0, j, 7);
    for (int n : {1030, 10'000, 1'000'000'000, INT_MAX}) {
      const double d = b.NextDelay(n);
      EXPECT_TRUE(std::isfinite(d)) << JitterName(j) << " n=" << n;
      EXPECT_GE(d, 0.0);
      EXPECT_LE(d, 60.0);
      if (j == Jitter::kNone) {
        EXPECT_EQ(d, 60.0);
      }
      EXPECT_EQ(b.Expo(n), 60.0);
    }
  }
  // Extreme parameters: a tiny base with a huge cap, and a huge factor.
  ExponentialBackoff tiny(1e-300, 1e300, std::numeric_limits<double>::max(), Jitter::kNone);
  EXPECT_EQ(tiny.NextDelay(INT_MAX), std::numeric_limits<double>::max());
  EXPECT_EQ(tiny.NextDelay(2), 1.0);
  ExponentialBackoff big(1.0, 1e308, 1e308, Jitter::kDecorrelated, 1);
  for (int n = 1; n < 50; ++n) EXPECT_TRUE(std::isfinite(big.NextDelay(n)));
}

TEST(ExponentialBackoff, SeededSequencesFollowTheDocumentedGenerator) {
  // full: expo(n) * u; equal: expo/2 + expo/2 * u; decorrelated: base + (3 prev - base) u.
  const uint64_t seed = 12345;
  ExponentialBackoff full(0.1, 2.0, 60.0, Jitter::kFull, seed);
  ExponentialBackoff equal(0.1, 2.0, 60.0, Jitter::kEqual, seed);
  ExponentialBackoff dec(0.1, 2.0, 5.0, Jitter::kDecorrelated, seed);
  std::mt19937_64 gf(seed), ge(seed), gd(seed);
  double prev = 0.1;
  for (int n = 1; n <= 30; ++n) {
    const double expo = std::min(60.0, 0.1 * std::pow(2.0, n - 1));
    EXPECT_EQ(full.NextDelay(n), expo * U(gf)) << n;
    EXPECT_EQ(equal.NextDelay(n), expo / 2 + expo / 2 * U(ge)) << n;
    prev = std::min(5.0, 0.1 + (prev * 3 - 0.1) * U(gd));
    EXPECT_EQ(dec.NextDelay(n), prev) << n;
  }
}

TEST(ExponentialBackoff, SameSeedSameSequenceDifferentSeedsDiffer) {
  for (Jitter j : {Jitter::kFull, Jitter::kEqual, Jitter::kDecorrelated}) {
    ExponentialBackoff a(0.1, 2.0, 60.0, j, 42), b(0.1, 2.0, 60.0, j, 42);
    ExponentialBackoff c(0.1, 2.0, 60.0, j, 43);
    const auto sa = Draw(a, 20), sb = Draw(b, 20), sc = Draw(c, 20);
    EXPECT_EQ(sa, sb) << JitterName(j);
    EXPECT_NE(sa, sc) << JitterName(j);
  }
  // Unseeded instances draw from random_device: two of them practically never agree.
  ExponentialBackoff u1(1, 2, 60, Jitter::kFull), u2(1, 2, 60, Jitter::kFull);
  EXPECT_NE(Draw(u1, 10), Draw(u2, 10));
}

struct Stats {
  double min = kInf, max = -kInf, sum = 0;
  int count = 0;
  void Add(double x) {
    min = std::min(min, x);
    max = std::max(max, x);
    sum += x;
    ++count;
  }
  double mean() const { return sum / count; }
};

TEST(ExponentialBackoff, FullJitterBoundsAndMean) {
  ExponentialBackoff b(0.5, 2.0, 60.0, Jitter::kFull, 1);
  for (int n : {1, 4, 9}) {
    const double expo = b.Expo(n);
    Stats s;
    for (int i = 0; i < 20'000; ++i) s.Add(b.NextDelay(n));
    EXPECT_GE(s.min, 0.0);
    EXPECT_LE(s.max, expo);
    // uniform(0, e): mean e/2, sd e/sqrt(12); the mean of 20,000 is within 5 sd/sqrt(N).
    EXPECT_NEAR(s.mean(), expo / 2, 5 * expo / std::sqrt(12.0) / std::sqrt(20'000.0)) << n;
    EXPECT_LT(s.min, 0.01 * expo);  // the whole range is used
    EXPECT_GT(s.max, 0.99 * expo);
  }
}

TEST(ExponentialBackoff, EqualJitterBoundsAndMean) {
  ExponentialBackoff b(0.5, 2.0, 60.0, Jitter::kEqual, 2);
  for (int n : {1, 4, 9}) {
    const double expo = b.Expo(n);
    Stats s;
    for (int i = 0; i < 20'000; ++i) s.Add(b.NextDelay(n));
    EXPECT_GE(s.min, expo / 2);
    EXPECT_LE(s.max, expo);
    EXPECT_NEAR(s.mean(), 0.75 * expo, 5 * (expo / 2) / std::sqrt(12.0) / std::sqrt(20'000.0));
    EXPECT_LT(s.min, 0.51 * expo);
    EXPECT_GT(s.max, 0.99 * expo);
  }
}

TEST(ExponentialBackoff, DecorrelatedJitterStaysWithinPreviousTimesThree) {
  const double base = 0.2, cap = 30.0;
  ExponentialBackoff b(base, 2.0, cap, Jitter::kDecorrelated, 3);
  int at_cap = 0;
  Stats first;
  for (int seq = 0; seq < 2'000; ++seq) {
    double prev = base;
    for (int n = 1; n <= 10; ++n) {
      const double d = b.NextDelay(n);
      EXPECT_GE(d, base);
      EXPECT_LE(d, std::min(cap, prev * 3));
      if (n == 1) first.Add(d);
      if (d == cap) ++at_cap;
      prev = d;
    }
  }
  // n == 1 starts over: uniform(base, 3 base), mean 2 base.
  EXPECT_LE(first.max, 3 * base);
  EXPECT_NEAR(first.mean(), 2 * base, 5 * (2 * base) / std::sqrt(12.0) / std::sqrt(2'000.0));
  EXPECT_GT(at_cap, 0);  // min(cap, ...) is reached
}

TEST(ExponentialBackoff, DecorrelatedRestartsWhenAttemptDoesNotGrow) {
  ExponentialBackoff a(1.0, 2.0, 1e6, Jitter::kDecorrelated, 9);
  ExponentialBackoff b(1.0, 2.0, 1e6, Jitter::kDecorrelated, 9);
  EXPECT_TRUE(a.Stateful());
  std::mt19937_64 g(9);
  Draw(a, 5);
  for (int i = 0; i < 5; ++i) U(g);
  // a: n=2 after n=5 restarts from previous = base.
  EXPECT_EQ(a.NextDelay(2), 1.0 + (3.0 - 1.0) * U(g));
  // b: an uninterrupted sequence grows beyond 3 base sooner or later.
  const auto sb = Draw(b, 30);
  EXPECT_GT(*std::max_element(sb.begin(), sb.end()), 3.0);
}

TEST(ExponentialBackoff, CloneStartsAFreshSequenceWithItsOwnSeed) {
  ExponentialBackoff a(0.1, 2.0, 60.0, Jitter::kDecorrelated, 5);
  ExponentialBackoff twin(0.1, 2.0, 60.0, Jitter::kDecorrelated, 5);
  auto c1 = a.Clone();
  auto c2 = a.Clone();
  auto t1 = twin.Clone();
  const auto s1 = Draw(*c1, 10), s2 = Draw(*c2, 10);
  EXPECT_NE(s1, s2);             // clones do not share jitter
  EXPECT_EQ(s1, Draw(*t1, 10));  // but are reproducible from the seed
  EXPECT_TRUE(c1->Stateful());
  // Unseeded clones work too.
  ExponentialBackoff u(0.1, 2.0, 60.0, Jitter::kFull);
  auto uc = u.Clone();
  EXPECT_LE(uc->NextDelay(3), 0.4);
  EXPECT_FALSE(uc->Stateful());
  EXPECT_EQ(uc->Describe(),
            "ExponentialBackoff(base=0.1, factor=2.0, max_delay=60.0, jitter='full', seed=None)");
}

TEST(ExponentialBackoff, ConcurrentCallsStayInBounds) {
  ExponentialBackoff b(0.1, 2.0, 10.0, Jitter::kFull, 11);
  std::atomic<int> bad{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t) {
    pool.emplace_back([&] {
      for (int i = 0; i < 20'000; ++i) {
        const int n = 1 + i % 12;
        const double d = b.NextDelay(n);
        if (!(d >= 0 && d <= b.Expo(n))) ++bad;
      }
    });
  }
  for (auto& t : pool) t.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(Backoff, BadParametersAreInvalidArgument) {
  ExpectInvalid([] { (void)ConstantBackoff(-1); });
  ExpectInvalid([] { (void)ConstantBackoff(kNaN); });
  ExpectInvalid([] { (void)ConstantBackoff(kInf); });
  ExpectInvalid([] { (void)LinearBackoff(-1, 1, 10); });
  ExpectInvalid([] { (void)LinearBackoff(1, -1, 10); });
  ExpectInvalid([] { (void)LinearBackoff(1, kNaN, 10); });
  ExpectInvalid([] { (void)LinearBackoff(5, 1, 4); });
  ExpectInvalid([] { (void)LinearBackoff(1, 1, kInf); });
  ExpectInvalid([] { (void)ExponentialBackoff(-0.1); });
  ExpectInvalid([] { (void)ExponentialBackoff(kNaN); });
  ExpectInvalid([] { (void)ExponentialBackoff(0.1, 0.5); });
  ExpectInvalid([] { (void)ExponentialBackoff(0.1, kNaN); });
  ExpectInvalid([] { (void)ExponentialBackoff(0.1, kInf); });
  ExpectInvalid([] { (void)ExponentialBackoff(1.0, 2.0, 0.5); });
  ExpectInvalid([] { (void)ExponentialBackoff(1.0, 2.0, kInf); });
  ExpectInvalid([] { (void)ExponentialBackoff(1.0, 2.0, kNaN); });
  ExpectInvalid([] { (void)ExponentialBackoff(0.0, 2.0, 1.0, Jitter::kDecorrelated); });
  ExpectInvalid([] { (void)ParseJitter("Full"); });
  ExpectInvalid([] { (void)ParseJitter(""); });
  EXPECT_EQ(ParseJitter("decorrelated"), Jitter::kDecorrelated);
  ExpectInvalid([] { (void)CappedBackoff(nullptr, 1); });
  ExpectInvalid([] { (void)CappedBackoff(std::make_shared<ConstantBackoff>(1), -1); });
  ExpectInvalid([] { (void)SumBackoff(std::make_shared<ConstantBackoff>(1), nullptr); });
  // max_delay == base is fine.
  EXPECT_EQ(ExponentialBackoff(2.0, 2.0, 2.0, Jitter::kNone).NextDelay(5), 2.0);
}

TEST(Backoff, AttemptBelowOneIsInvalidArgument) {
  ExponentialBackoff e(0.1, 2.0, 60.0, Jitter::kFull, 1);
  ConstantBackoff c(1);
  LinearBackoff l(1, 1, 5);
  SumBackoff s(std::make_shared<ConstantBackoff>(1), std::make_shared<ConstantBackoff>(2));
  CappedBackoff cap(std::make_shared<ConstantBackoff>(1), 5);
  for (BackoffStrategy* b : std::vector<BackoffStrategy*>{&e, &c, &l, &s, &cap}) {
    ExpectInvalid([&] { b->NextDelay(0); });
    ExpectInvalid([&] { b->NextDelay(-5); });
    ExpectInvalid([&] { b->NextDelay(INT_MIN); });
  }
}

TEST(Backoff, SumAndCapCompose) {
  auto expo = std::make_shared<ExponentialBackoff>(1.0, 2.0, 100.0, Jitter::kNone);
  auto sum = std::make_shared<SumBackoff>(expo, std::make_shared<ConstantBackoff>(0.5));
  EXPECT_EQ(Draw(*sum, 4), (std::vector<double>{1.5, 2.5, 4.5, 8.5}));
  CappedBackoff capped(sum, 3.0);
  EXPECT_EQ(Draw(capped, 4), (std::vector<double>{1.5, 2.5, 3.0, 3.0}));
  EXPECT_EQ(capped.Describe(),
            "(ExponentialBackoff(base=1.0, factor=2.0, max_delay=100.0, jitter='none', "
            "seed=None) + ConstantBackoff(delay=0.5)).capped(3.0)");
  // Sums never overflow.
  auto big = std::make_shared<ConstantBackoff>(std::numeric_limits<double>::max());
  EXPECT_EQ(SumBackoff(big, big).NextDelay(1), std::numeric_limits<double>::max());
}

TEST(Backoff, CompositesAreStatefulWhenAPartIsAndCloneTheirParts) {
  auto dec = std::make_shared<ExponentialBackoff>(1.0, 2.0, 1e6, Jitter::kDecorrelated, 4);
  auto c = std::make_shared<ConstantBackoff>(1);
  SumBackoff stateful(c, dec);
  SumBackoff stateless(c, c);
  EXPECT_TRUE(stateful.Stateful());
  EXPECT_FALSE(stateless.Stateful());
  EXPECT_TRUE(CappedBackoff(dec, 10).Stateful());
  // A clone's decorrelated part has no history: its first delay is in [1 + 1, 1 + 3].
  Draw(stateful, 20);
  auto fresh = stateful.Clone();
  const double d = fresh->NextDelay(2);  // n=2 without n=1: still starts from base
  EXPECT_GE(d, 2.0);
  EXPECT_LE(d, 4.0);
}

}  // namespace
}  // namespace cpcsync
