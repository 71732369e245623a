// SyncEngine, issue 13: outages never use up attempts (and back the whole engine
// off), Retry-After is bounded, repeated conflicts back off, stop() is bounded and
// drain=true means "the queue emptied". The Python tests (test_engine_outages.py,
// test_engine_stop.py) cover these end to end; these run the core alone, with real
// worker threads, so `make sanitize` sees them under ASan/UBSan and TSan.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cpcsync/errors.h"
#include "cpcsync/sync_engine.h"
#include "engine_test_util.h"
#include "fault_sweep_fixture.h"

namespace cpcsync {
namespace {

using Kind = DeliveryResult::Kind;
using testing::FnTransport;
using testing::Put;

TEST(EngineOutage, NetworkFailuresNeverDeadLetterWithManyWorkers) {
  auto q = SyncQueue::InMemory(Limits{}, nullptr);
  for (int i = 0; i < 12; ++i) Put(*q, "k" + std::to_string(i));
  std::atomic<int> failures_left{40};
  auto transport = std::make_shared<FnTransport>([&](const Operation&) {
    if (failures_left.fetch_sub(1) > 0) return DeliveryResult::Failed(Kind::kNetwork, "refused");
    return DeliveryResult::Delivered();
  });
  EngineOptions options;
  options.max_attempts = 1;  // a counted failure would bury at once
  options.concurrency = 4;
  auto engine = std::make_shared<SyncEngine>(
      q, transport, nullptr, std::make_shared<ConstantBackoff>(0.001), nullptr, options);
  std::atomic<int> network_retries{0};
  engine->On("retry", [&](const EngineEvent& e) {
    if (e.network.value_or(false)) network_retries.fetch_add(1);
  });
  engine->Start();
  ASSERT_TRUE(engine->Stop(/*drain=*/true, 60.0));
  EXPECT_EQ(q->Count(), 0);
  EXPECT_TRUE(q->DeadLetters().empty());
  EXPECT_GE(network_retries.load(), 40);
  const EngineStats s = engine->Stats();
  EXPECT_EQ(s.delivered, 12);
  EXPECT_EQ(s.dead_lettered, 0);
  EXPECT_EQ(s.network_failures, network_retries.load());
  EXPECT_EQ(s.outage_failures, 0);  // the first delivery opened the gate
}

TEST(EngineOutage, TheGateHoldsEveryWorkerButOneProbe) {
  auto clock = std::make_shared<VirtualClock>(100.0);
  auto q = SyncQueue::InMemory(Limits{}, clock);
  for (int i = 0; i < 6; ++i) Put(*q, "k" + std::to_string(i));
  auto transport = std::make_shared<FnTransport>(
      [](const Operation&) { return DeliveryResult::Failed(Kind::kNetwork, "refused"); });
  EngineOptions options;
  options.batch_size = 1;
  options.concurrency = 3;
  auto engine = std::make_shared<SyncEngine>(
      q, transport, nullptr, std::make_shared<ConstantBackoff>(10.0), nullptr, options, clock);
  // One round on this thread: the three ops it takes fail, the gate closes.
  const ProcessingSummary first = engine->ProcessOnce();
  EXPECT_EQ(first.retried.size(), 3u);
  EXPECT_TRUE(first.failed.empty());
  // One step, not three: the ops of one round failing together are one outage signal.
  EXPECT_EQ(engine->Stats().outage_failures, 1);
  EXPECT_EQ(engine->NextAttemptAt(), std::optional<double>(110.0));
  EXPECT_TRUE(engine->ProcessOnce().retried.empty());  // gated: nothing taken
  clock->Advance(10.0);
  const ProcessingSummary probe = engine->ProcessOnce();  // one probe, not three
  EXPECT_EQ(probe.retried.size(), 1u);
  EXPECT_EQ(transport->calls.load(), 4);
  EXPECT_EQ(engine->Stats().outage_failures, 2);  // the probe's failure: one step more
  EXPECT_TRUE(q->DeadLetters().empty());
}

// Delays from a list, in call order (the gate asks before the op's own retry does).
class ListBackoff final : public BackoffStrategy {
 public:
  explicit ListBackoff(std::vector<double> delays) : delays_(std::move(delays)) {}
  double NextDelay(int) override {
    std::lock_guard lock(mu_);
    const double d = delays_[next_ % delays_.size()];
    ++next_;
    return d;
  }
  std::shared_ptr<BackoffStrategy> Clone() const override {
    return std::make_shared<ListBackoff>(delays_);
  }
  std::string Describe() const override { return "ListBackoff"; }

 private:
  std::mutex mu_;
  std::vector<double> delays_;
  size_t next_ = 0;
};

double ProcessCpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

TEST(EngineOutage, AWorkerDoesNotSpinWhenTheGateOpensBeforeAnyOpIsDue) {
  // The gate's step (0.1 s) ends long before the op's own retry (5 s): the probe's
  // take finds nothing, and the worker must sleep until the op is due. It used to
  // wake itself up in a loop (~2 million times a second) until then.
  auto q = SyncQueue::InMemory(Limits{}, nullptr);
  std::mutex mu;
  std::condition_variable cv;
  int calls = 0;
  auto transport = std::make_shared<FnTransport>([&](const Operation&) {
    std::lock_guard lock(mu);
    ++calls;
    cv.notify_all();
    return DeliveryResult::Failed(Kind::kNetwork, "refused");
  });
  auto engine = std::make_shared<SyncEngine>(
      q, transport, nullptr, std::make_shared<ListBackoff>(std::vector<double>{0.1, 5.0}), nullptr,
      EngineOptions{});
  engine->Start();
  Put(*q, "a");
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return calls >= 1; }));
  }
  const double cpu_before = ProcessCpuSeconds();
  const auto start = std::chrono::steady_clock::now();
  // An observation window, not synchronisation: a spinning worker burns all of it.
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double cpu = ProcessCpuSeconds() - cpu_before;
  EXPECT_LT(cpu, 0.3 * wall) << "the worker spun: " << cpu << " s of CPU in " << wall << " s";
  EXPECT_EQ(transport->calls.load(), 1);  // nothing was due: no call
  EXPECT_TRUE(engine->Stop(false, 10.0));
}

TEST(EngineOutage, AZeroOrHugeBackoffStillGivesBoundedGateSteps) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  auto q = SyncQueue::InMemory(Limits{}, clock);
  Put(*q, "a");
  auto transport = std::make_shared<FnTransport>(
      [](const Operation&) { return DeliveryResult::Failed(Kind::kNetwork, "refused"); });
  EngineOptions options;
  options.max_retry_after = 60.0;
  auto zero = std::make_shared<SyncEngine>(
      q, transport, nullptr, std::make_shared<ConstantBackoff>(0.0), nullptr, options, clock);
  zero->ProcessOnce();
  EXPECT_EQ(zero->NextAttemptAt(), std::optional<double>(0.1));  // never a tight loop
  EXPECT_TRUE(zero->ProcessOnce().retried.empty());
  zero.reset();
  clock->Advance(1.0);
  auto huge = std::make_shared<SyncEngine>(
      q, transport, nullptr, std::make_shared<ConstantBackoff>(1e9), nullptr, options, clock);
  const ProcessingSummary s = huge->ProcessOnce();
  ASSERT_EQ(s.retried.size(), 1u);
  EXPECT_DOUBLE_EQ(s.retried[0].second, 60.0);  // the op's own wait: at most max_retry_after
  EXPECT_EQ(huge->NextAttemptAt(), std::optional<double>(61.0));  // and the gate's
}

TEST(EngineOutage, AReconnectOpensTheGate) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  auto q = SyncQueue::InMemory(Limits{}, clock);
  Put(*q, "a");
  Put(*q, "b");
  std::atomic<bool> down{true};
  auto transport = std::make_shared<FnTransport>([&](const Operation&) {
    return down.load() ? DeliveryResult::Failed(Kind::kNetwork, "refused")
                       : DeliveryResult::Delivered();
  });
  NetworkMonitorOptions mo;
  mo.connected = true;
  auto monitor = std::make_shared<NetworkMonitor>(mo, nullptr, clock);
  auto engine =
      std::make_shared<SyncEngine>(q, transport, monitor, std::make_shared<ConstantBackoff>(3600.0),
                                   nullptr, EngineOptions{}, clock);
  engine->ProcessOnce();
  EXPECT_EQ(engine->Stats().outage_failures, 1);
  monitor->SetConnected(false);
  down = false;
  monitor->SetConnected(true);  // the monitor says the server is back: no hour's wait
  EXPECT_EQ(engine->Stats().outage_failures, 0);
  clock->Advance(3600.0);  // the failed op's own retry comes due
  const ProcessingSummary s = engine->Drain(100.0);
  EXPECT_EQ(s.successful, 2);
}

TEST(EngineBackoff, SequencesOfOpsThatLeftByTtlAreDropped) {
  // Before: a stateful backoff's per-op sequence stayed for good when its op left by
  // TTL (or overflow, or purge) instead of by an outcome from the engine.
  auto clock = std::make_shared<VirtualClock>(0.0);
  auto q = SyncQueue::InMemory(Limits{}, clock);
  auto transport = std::make_shared<FnTransport>(
      [](const Operation&) { return DeliveryResult::Failed(Kind::kTransient, "503"); });
  EngineOptions options;
  options.batch_size = 200;
  options.max_attempts = 100;
  auto engine = std::make_shared<SyncEngine>(
      q, transport, nullptr,
      std::make_shared<ExponentialBackoff>(1.0, 2.0, 5.0, Jitter::kDecorrelated, 7), nullptr,
      options, clock);
  auto fail_all_once = [&](int n, std::optional<double> ttl, const std::string& prefix) {
    for (int i = 0; i < n; ++i) {
      NewOp op;
      op.kind = "put";
      op.key = prefix + std::to_string(i);
      op.payload = "{}";
      op.ttl = ttl;
      q->Enqueue(std::move(op));
    }
    for (int taken = 0; taken < n;) {
      const ProcessingSummary s = engine->ProcessOnce();
      ASSERT_FALSE(s.retried.empty());
      taken += static_cast<int>(s.retried.size());
    }
  };
  fail_all_once(1000, 10.0, "ttl");
  EXPECT_EQ(engine->SequencesForTesting(), 1000u);
  clock->Advance(20.0);  // every op of the first batch expires (at the next take)
  fail_all_once(1100, std::nullopt, "live");
  // The sweep at the 1,024th and 2,048th new sequence dropped the expired ops' ones.
  EXPECT_LE(engine->SequencesForTesting(), 1100u);
  EXPECT_GE(engine->SequencesForTesting(), 1024u);
}

TEST(EngineRetryAfter, HugeIsClampedZeroBacksOffTinyIsFloored) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  auto q = SyncQueue::InMemory(Limits{}, clock);
  std::vector<double> answers = {1e20, std::numeric_limits<double>::quiet_NaN(), 0.0, 1e-9, 7.0};
  size_t next = 0;
  auto transport = std::make_shared<FnTransport>([&](const Operation&) {
    DeliveryResult r = DeliveryResult::Failed(Kind::kRetryAfter, "429");
    r.retry_after = answers[next++];
    return r;
  });
  EngineOptions options;
  options.max_retry_after = 120.0;
  auto engine = std::make_shared<SyncEngine>(
      q, transport, nullptr, std::make_shared<ConstantBackoff>(2.5), nullptr, options, clock);
  const int64_t id = Put(*q, "a");
  std::vector<double> delays;
  for (size_t i = 0; i < answers.size(); ++i) {
    const ProcessingSummary s = engine->ProcessOnce();
    ASSERT_EQ(s.retried.size(), 1u) << i;
    EXPECT_EQ(s.retried[0].first, id);
    delays.push_back(s.retried[0].second);
    clock->Advance(s.retried[0].second);
  }
  EXPECT_EQ(delays, (std::vector<double>{120.0, 120.0, 2.5, kMinRetryAfter, 7.0}));
  EngineOptions bad;
  bad.max_retry_after = 0.0;
  EXPECT_THROW(std::make_shared<SyncEngine>(q, transport, nullptr, nullptr, nullptr, bad, clock),
               SyncError);
}

TEST(EngineConflicts, AServerThatKeepsReportingAConflictIsBackedOffThenNamed) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  auto q = SyncQueue::InMemory(Limits{}, clock);
  auto transport = std::make_shared<FnTransport>([](const Operation&) {
    DeliveryResult r = DeliveryResult::Failed(Kind::kConflict, "409");
    r.remote.value = "{}";
    r.remote.hlc = 1;  // older than the op: LastWriteWins keeps the local value
    r.remote.version = 7;
    return r;
  });
  EngineOptions options;
  options.max_attempts = 3;
  auto engine = std::make_shared<SyncEngine>(
      q, transport, nullptr, std::make_shared<ConstantBackoff>(4.0), nullptr, options, clock);
  Put(*q, "a");
  std::vector<double> delays;
  for (int i = 0; i < 3; ++i) {
    const ProcessingSummary s = engine->ProcessOnce();
    if (!s.retried.empty()) {
      delays.push_back(s.retried[0].second);
      clock->Advance(s.retried[0].second);
    }
  }
  EXPECT_EQ(delays, (std::vector<double>{0.0, 4.0}));
  const auto dead = q->DeadLetters();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].last_error.value_or(""),
            "gave up after 3 attempts: the server kept reporting a conflict (version 7)");
}

TEST(EngineStop, DrainWaitsForAnEmptyQueueEvenOffline) {
  auto q = SyncQueue::InMemory(Limits{}, nullptr);
  Put(*q, "a");
  NetworkMonitorOptions mo;
  mo.connected = false;
  auto monitor = std::make_shared<NetworkMonitor>(mo, nullptr, nullptr);
  auto transport =
      std::make_shared<FnTransport>([](const Operation&) { return DeliveryResult::Delivered(); });
  auto engine =
      std::make_shared<SyncEngine>(q, transport, monitor, nullptr, nullptr, EngineOptions{});
  engine->Start();
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(engine->Stop(/*drain=*/true, 0.2));  // offline: not drained
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(200));
  EXPECT_EQ(q->Count(), 1);
  engine->Start();
  monitor->SetConnected(true);
  EXPECT_TRUE(engine->Stop(/*drain=*/true, 60.0));
  EXPECT_EQ(q->Count(), 0);
  EXPECT_EQ(transport->calls.load(), 1);
}

TEST(EngineClocks, AVirtualClockCannotBeMixedWithAnother) {
  auto q = SyncQueue::InMemory(Limits{}, std::make_shared<VirtualClock>(0.0));
  auto transport =
      std::make_shared<FnTransport>([](const Operation&) { return DeliveryResult::Delivered(); });
  EXPECT_THROW(std::make_shared<SyncEngine>(q, transport, nullptr, nullptr, nullptr,
                                            EngineOptions{}, std::make_shared<VirtualClock>(0.0)),
               SyncError);
  EXPECT_THROW(std::make_shared<SyncEngine>(q, transport, nullptr, nullptr, nullptr,
                                            EngineOptions{}, SystemClock::Default()),
               SyncError);
  EXPECT_NO_THROW(std::make_shared<SyncEngine>(q, transport, nullptr, nullptr, nullptr,
                                               EngineOptions{}, q->clock()));
}

TEST(EngineIdle, NotIdleWhileAnOpWhoseAckFailedIsStillLeased) {
  // Before: wait_idle() returned True with the op leased (engine in_flight 0, queue
  // in_flight 1) after its ack failed on a full disk.
  testing::FaultVfs& vfs = testing::SweepVfs();
  const std::string path = testing::SweepPath("engine_leftover");
  auto q = testing::OpenSweepQueue(path, Durability::kNormal);
  Put(*q, "a");
  bool armed = false;
  auto transport = std::make_shared<FnTransport>([&](const Operation&) {
    if (!armed) {  // the server has it; from now on the disk refuses every write
      armed = true;
      vfs.Arm(testing::Fault{1, testing::Fault::Mode::kPersistent,
                             testing::kIoWrite | testing::kIoSync, SQLITE_IOERR});
    }
    return DeliveryResult::Delivered();
  });
  auto engine = std::make_shared<SyncEngine>(q, transport, nullptr, nullptr, nullptr,
                                             EngineOptions{}, q->clock());
  engine->ProcessOnce();
  EXPECT_GT(vfs.failed(), 0);
  EXPECT_FALSE(engine->WaitIdle(0.0));  // leased, its outcome unwritten: not idle
  vfs.Clear();
  engine->ProcessOnce();  // puts it back, then delivers it again (at least once)
  EXPECT_TRUE(engine->WaitIdle(0.0));
  EXPECT_EQ(q->Count(), 0);
  EXPECT_EQ(transport->calls.load(), 2);
  q->Close();
}

}  // namespace
}  // namespace cpcsync
