// FaultyTransport: the decision order, every knob, history, and waits on the clock.
#include "cpcsync/faulty_transport.h"

#include <gtest/gtest.h>

#include <future>
#include <stdexcept>
#include <thread>

#include "cpcsync/errors.h"

namespace cpcsync {
namespace {

using Kind = DeliveryResult::Kind;

Operation Op(int64_t id, std::string key = "k", int priority = 50) {
  Operation op;
  op.id = id;
  op.kind = "set";
  op.key = std::move(key);
  op.priority = priority;
  return op;
}

Fault F(Fault::Kind kind) {
  Fault f;
  f.kind = kind;
  return f;
}

// An inner transport that records what reached it and answers from a script.
class Recorder final : public Transport {
 public:
  DeliveryResult Send(const Operation& op) override {
    std::lock_guard lock(mu);
    seen.push_back(op.id);
    return DeliveryResult::Delivered();
  }
  std::mutex mu;
  std::vector<int64_t> seen;
};

std::shared_ptr<VirtualClock> Clock0() { return std::make_shared<VirtualClock>(0.0); }

TEST(FaultyTransport, SinkDeliversAndRecordsHistory) {
  auto clock = Clock0();
  FaultyTransport t(nullptr, {}, clock);
  clock->Advance(3);
  EXPECT_EQ(t.Send(Op(7, "a", 90)).kind, Kind::kDelivered);
  auto h = t.History();
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].time, 3.0);
  EXPECT_EQ(h[0].op_id, 7);
  EXPECT_EQ(h[0].key, "a");
  EXPECT_EQ(h[0].priority, 90);
  EXPECT_EQ(h[0].outcome, "delivered");
  EXPECT_TRUE(h[0].error.empty());
}

TEST(FaultyTransport, PatternCyclesAndPassesSuccessesToInner) {
  auto inner = std::make_shared<Recorder>();
  FaultyTransportOptions o;
  o.pattern = {std::nullopt, F(Fault::Kind::kTransient), F(Fault::Kind::kPermanent)};
  FaultyTransport t(inner, o, Clock0());
  std::vector<Kind> kinds;
  for (int i = 1; i <= 6; ++i) kinds.push_back(t.Send(Op(i)).kind);
  EXPECT_EQ(kinds, (std::vector<Kind>{Kind::kDelivered, Kind::kTransient, Kind::kPermanent,
                                      Kind::kDelivered, Kind::kTransient, Kind::kPermanent}));
  EXPECT_EQ(inner->seen, (std::vector<int64_t>{1, 4}));
}

TEST(FaultyTransport, DecisionOrderPartitionThenFailNextThenWindowThenPattern) {
  auto clock = Clock0();
  FaultyTransportOptions o;
  o.pattern = {F(Fault::Kind::kPermanent)};
  FaultyTransport t(nullptr, o, clock);
  t.FailFor(10, F(Fault::Kind::kReset));
  t.FailNext(1, F(Fault::Kind::kRetryAfter));
  t.SetPartitioned(true);
  auto r = t.Send(Op(1));
  EXPECT_EQ(r.kind, Kind::kNetwork);
  EXPECT_NE(r.error.find("partitioned"), std::string::npos);
  t.SetPartitioned(false);
  EXPECT_EQ(t.Send(Op(2)).kind, Kind::kRetryAfter);  // fail_next first
  r = t.Send(Op(3));                                 // then the window
  EXPECT_EQ(r.kind, Kind::kNetwork);
  EXPECT_NE(r.error.find("reset"), std::string::npos);
  clock->Advance(10);  // window over: the pattern
  EXPECT_EQ(t.Send(Op(4)).kind, Kind::kPermanent);
  // The pattern did not advance while earlier rules decided.
  EXPECT_EQ(t.History().size(), 4u);
}

TEST(FaultyTransport, ScheduledPartitionsAndFlapping) {
  auto clock = Clock0();
  FaultyTransport t(nullptr, {}, clock);
  t.AddPartition(5, 7);
  t.Flap(1, 2, 10);  // down [10,11) and [12,13)
  const std::vector<std::pair<double, bool>> expect = {{0, false},   {5, true},   {6.9, true},
                                                       {7, false},   {10, true},  {11, false},
                                                       {12.5, true}, {13, false}, {100, false}};
  for (auto [at, down] : expect) {
    clock->AdvanceTo(at);
    EXPECT_EQ(t.Partitioned(), down) << "at " << at;
    EXPECT_EQ(t.Send(Op(1)).kind == Kind::kNetwork, down) << "at " << at;
  }
}

TEST(FaultyTransport, FaultKindsMapToResults) {
  FaultyTransportOptions o;
  o.timeout = 0;  // a timeout fault fails at once here
  FaultyTransport t(nullptr, o, Clock0());
  Fault conflict = F(Fault::Kind::kConflict);
  conflict.remote.value = R"({"v":1})";
  conflict.remote.hlc = 42;
  conflict.remote.version = 3;
  Fault retry = F(Fault::Kind::kRetryAfter);
  retry.retry_after = 7.5;
  Fault custom = F(Fault::Kind::kTransient);
  custom.message = "HTTP 503";
  t.FailNext(1, conflict);
  t.FailNext(1, retry);
  t.FailNext(1, custom);
  t.FailNext(1, F(Fault::Kind::kTimeout));
  auto r = t.Send(Op(1));
  EXPECT_EQ(r.kind, Kind::kConflict);
  EXPECT_EQ(r.remote.value, R"({"v":1})");
  EXPECT_EQ(r.remote.hlc, 42u);
  EXPECT_EQ(r.remote.version, 3);
  r = t.Send(Op(2));
  EXPECT_EQ(r.kind, Kind::kRetryAfter);
  EXPECT_EQ(r.retry_after, 7.5);
  EXPECT_EQ(t.Send(Op(3)).error, "injected: HTTP 503");
  r = t.Send(Op(4));
  EXPECT_EQ(r.kind, Kind::kNetwork);
  EXPECT_NE(r.error.find("timed out"), std::string::npos);
  EXPECT_EQ(t.History()[0].outcome, "conflict");
  EXPECT_EQ(t.History()[1].outcome, "retry_after");
}

TEST(FaultyTransport, SeededFailureRateReplaysExactly) {
  auto run = [](uint64_t seed) {
    FaultyTransportOptions o;
    o.failure_rate = 0.3;
    o.seed = seed;
    FaultyTransport t(nullptr, o, Clock0());
    std::string s;
    for (int i = 0; i < 2000; ++i) s += t.Send(Op(i)).kind == Kind::kDelivered ? '.' : 'x';
    return s;
  };
  const std::string a = run(11);
  EXPECT_EQ(a, run(11));
  EXPECT_NE(a, run(12));
  const auto failures = std::count(a.begin(), a.end(), 'x');
  EXPECT_GT(failures, 500);  // 600 expected; 5 sigma is ~100
  EXPECT_LT(failures, 700);
}

TEST(FaultyTransport, LatencyWaitsOnTheVirtualClockUntilAdvanced) {
  auto clock = Clock0();
  FaultyTransportOptions o;
  o.latency = 2.0;
  auto t = std::make_shared<FaultyTransport>(nullptr, o, clock);
  auto done = std::async(std::launch::async, [&] { return t->Send(Op(1)).kind; });
  ASSERT_TRUE(t->WaitForCalls(1, 30.0));  // the call read its start time (t=0)
  clock->Advance(1.0);
  EXPECT_EQ(done.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout);
  clock->Advance(1.0);
  EXPECT_EQ(done.get(), Kind::kDelivered);
  EXPECT_EQ(t->History()[0].latency, 2.0);
}

TEST(FaultyTransport, AutoAdvanceClockJumpsOverLatencyAndFaultDelay) {
  auto clock = Clock0();
  clock->SetAutoAdvance(true);
  FaultyTransportOptions o;
  o.latency = 0.5;
  o.jitter = 0.25;
  o.seed = 1;
  FaultyTransport t(nullptr, o, clock);
  Fault timeout = F(Fault::Kind::kTimeout);
  timeout.delay = 30;
  t.FailNext(1, timeout);
  EXPECT_EQ(t.Send(Op(1)).kind, Kind::kNetwork);
  const double first = clock->Now();
  EXPECT_GE(first, 30.5);
  EXPECT_LE(first, 30.75);
  EXPECT_EQ(t.History()[0].latency, first);
  EXPECT_EQ(t.Send(Op(2)).kind, Kind::kDelivered);
  EXPECT_GE(clock->Now() - first, 0.5);
}

TEST(FaultyTransport, ATimeoutFaultWaitsTheTimeoutOnTheClock) {
  auto clock = Clock0();
  clock->SetAutoAdvance(true);
  FaultyTransportOptions o;
  o.timeout = 12;
  FaultyTransport t(nullptr, o, clock);
  t.FailNext(1, F(Fault::Kind::kTimeout));
  EXPECT_EQ(t.Send(Op(1)).kind, Kind::kNetwork);
  EXPECT_EQ(clock->Now(), 12.0);
  EXPECT_EQ(t.History()[0].latency, 12.0);
}

TEST(FaultyTransport, CloseEndsAWaitInProgress) {
  auto clock = Clock0();
  FaultyTransportOptions o;
  o.latency = 1e6;
  auto t = std::make_shared<FaultyTransport>(nullptr, o, clock);
  auto done = std::async(std::launch::async, [&] { return t->Send(Op(1)).kind; });
  t->Close();
  EXPECT_EQ(done.get(), Kind::kDelivered);
}

TEST(FaultyTransport, BatchDecidesPerOpAndPassesTheRestTogether) {
  auto inner = std::make_shared<Recorder>();
  FaultyTransport t(inner, {}, Clock0());
  t.FailNext(1, F(Fault::Kind::kPermanent));
  auto r = t.SendBatch({Op(1), Op(2), Op(3)});
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].kind, Kind::kPermanent);
  EXPECT_EQ(r[1].kind, Kind::kDelivered);
  EXPECT_EQ(inner->seen, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t.History().size(), 3u);
}

// An inner transport that delivers, then throws or reports an interrupted call.
class Breaking final : public Transport {
 public:
  explicit Breaking(int64_t at, bool interrupt) : at_(at), interrupt_(interrupt) {}
  DeliveryResult Send(const Operation& op) override {
    seen.push_back(op.id);
    if (op.id != at_) return DeliveryResult::Delivered();
    if (!interrupt_) throw std::runtime_error("inner broke");
    DeliveryResult r = DeliveryResult::Failed(Kind::kTransient, "interrupted: Ctrl-C");
    r.interrupted = true;
    return r;
  }
  std::vector<int64_t> seen;

 private:
  int64_t at_;
  bool interrupt_;
};

TEST(FaultyTransport, BatchKeepsResultsCollectedBeforeTheInnerTransportThrows) {
  // Before: results.assign() made the delivered op 1 "transient", so it was resent.
  auto inner = std::make_shared<Breaking>(2, /*interrupt=*/false);
  FaultyTransport t(inner, {}, Clock0());
  auto r = t.SendBatch({Op(1), Op(2), Op(3)});
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].kind, Kind::kDelivered);
  EXPECT_EQ(r[1].kind, Kind::kTransient);
  EXPECT_NE(r[1].error.find("inner broke"), std::string::npos);
  EXPECT_EQ(r[2].kind, Kind::kTransient);
  EXPECT_EQ(inner->seen, (std::vector<int64_t>{1, 2}));
}

TEST(FaultyTransport, BatchStopsSendingAfterAnInterruptedCall) {
  auto inner = std::make_shared<Breaking>(2, /*interrupt=*/true);
  FaultyTransport t(inner, {}, Clock0());
  auto r = t.SendBatch({Op(1), Op(2), Op(3)});
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].kind, Kind::kDelivered);
  EXPECT_TRUE(r[1].interrupted);
  EXPECT_TRUE(r[2].interrupted);  // not sent, put back by the engine
  EXPECT_EQ(inner->seen, (std::vector<int64_t>{1, 2}));
}

TEST(FaultyTransport, HealDropsEveryFault) {
  auto clock = Clock0();
  FaultyTransportOptions o;
  o.pattern = {F(Fault::Kind::kTransient)};
  o.failure_rate = 1.0;
  FaultyTransport t(nullptr, o, clock);
  t.FailNext(3, {});
  t.FailFor(100, {});
  t.AddPartition(0, 100);
  t.Heal();
  EXPECT_EQ(t.Send(Op(1)).kind, Kind::kDelivered);
}

TEST(FaultyTransport, RejectsBadParameters) {
  auto clock = Clock0();
  FaultyTransportOptions bad_rate;
  bad_rate.failure_rate = 1.5;
  EXPECT_THROW(FaultyTransport(nullptr, bad_rate, clock), SyncError);
  FaultyTransportOptions bad_latency;
  bad_latency.latency = -1;
  EXPECT_THROW(FaultyTransport(nullptr, bad_latency, clock), SyncError);
  FaultyTransport t(nullptr, {}, clock);
  EXPECT_THROW(t.FailNext(-1, {}), SyncError);
  EXPECT_THROW(t.FailFor(std::numeric_limits<double>::infinity(), {}), SyncError);
  EXPECT_THROW(t.AddPartition(5, 1), SyncError);
  EXPECT_THROW(t.Flap(0, 3, std::nullopt), SyncError);
  EXPECT_THROW(t.SetLatency(std::nan(""), 0), SyncError);
  Fault f;
  f.delay = -2;
  EXPECT_THROW(t.FailNext(1, f), SyncError);
  EXPECT_THROW(Fault::ParseKind("explode"), SyncError);
  FaultyTransportOptions bad_timeout;
  bad_timeout.timeout = -1;
  EXPECT_THROW(FaultyTransport(nullptr, bad_timeout, clock), SyncError);
  EXPECT_EQ(Fault::ParseKind("retry_after"), Fault::Kind::kRetryAfter);
}

}  // namespace
}  // namespace cpcsync
