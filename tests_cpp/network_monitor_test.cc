#include "cpcsync/network_monitor.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "cpcsync/clock.h"
#include "cpcsync/errors.h"
#include "cpcsync/tcp_probe.h"

// Abandon(): a monitor that spins holding its mutex cannot be stopped or destroyed.
#include "abandon.h"

namespace cpcsync {
namespace {

using std::chrono::steady_clock;
constexpr auto kPatience = std::chrono::seconds(30);  // test synchronisation, not timing

// A probe answering from a script (one entry per call; the last one repeats). A
// "block" entry blocks the check until Release().
class ScriptedProbe final : public Probe {
 public:
  enum Result { kOk, kFail, kThrow, kBlock };
  explicit ScriptedProbe(std::vector<Result> script) : script_(std::move(script)) {}

  bool Check(double) override {
    std::unique_lock lock(mu_);
    const Result r = script_[std::min(calls_, script_.size() - 1)];
    ++calls_;
    cv_.notify_all();
    if (r == kThrow) throw std::runtime_error("probe exploded");
    if (r == kBlock) {
      cv_.wait(lock, [&] { return released_; });
      ++finished_blocked_;
      cv_.notify_all();
      return true;
    }
    return r == kOk;
  }
  void SetScript(std::vector<Result> script) {
    std::lock_guard lock(mu_);
    script_ = std::move(script);
    calls_ = 0;
  }
  void Release() {
    std::lock_guard lock(mu_);
    released_ = true;
    cv_.notify_all();
  }
  size_t calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }
  bool WaitCalls(size_t n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kPatience, [&] { return calls_ >= n; });
  }
  bool WaitFinishedBlocked(int n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kPatience, [&] { return finished_blocked_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Result> script_;
  size_t calls_ = 0;
  int finished_blocked_ = 0;
  bool released_ = false;
};

// Records (state, clock time) of every notification.
class Recorder {
 public:
  explicit Recorder(std::shared_ptr<Clock> clock) : clock_(std::move(clock)) {}
  NetworkMonitor::Observer Observer() {
    return [this](bool connected) {
      std::lock_guard lock(mu_);
      events_.emplace_back(connected, clock_->Monotonic());
      cv_.notify_all();
    };
  }
  std::vector<std::pair<bool, double>> events() {
    std::lock_guard lock(mu_);
    return events_;
  }
  bool WaitEvents(size_t n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kPatience, [&] { return events_.size() >= n; });
  }

 private:
  std::shared_ptr<Clock> clock_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<bool, double>> events_;
};

NetworkMonitorOptions Opts(bool connected, double interval = 5.0, int up = 1, int down = 1,
                           double damping = 0.0) {
  NetworkMonitorOptions o;
  o.connected = connected;
  o.interval = interval;
  o.up_after = up;
  o.down_after = down;
  o.min_transition_interval = damping;
  return o;
}

using Events = std::vector<std::pair<bool, double>>;

TEST(NetworkMonitor, ManualTransitionsNotifyOnlyOnChangeInSubscriptionOrder) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  NetworkMonitor m(Opts(false), nullptr, clock);
  std::vector<std::string> calls;
  m.Subscribe([&](bool c) { calls.push_back(std::string("a:") + (c ? "up" : "down")); });
  const auto b =
      m.Subscribe([&](bool c) { calls.push_back(std::string("b:") + (c ? "up" : "down")); });
  m.Subscribe([&](bool c) { calls.push_back(std::string("c:") + (c ? "up" : "down")); });

  m.SetConnected(false);  // no change: nobody is told
  EXPECT_TRUE(calls.empty());
  m.SetConnected(true);
  EXPECT_TRUE(m.IsConnected());
  m.SetConnected(true);
  EXPECT_EQ(calls, (std::vector<std::string>{"a:up", "b:up", "c:up"}));
  EXPECT_TRUE(m.Unsubscribe(b));
  EXPECT_FALSE(m.Unsubscribe(b));
  m.SetConnected(false);
  EXPECT_EQ(calls, (std::vector<std::string>{"a:up", "b:up", "c:up", "a:down", "c:down"}));
  const auto s = m.Stats();
  EXPECT_EQ(s.transitions, 2u);
  EXPECT_EQ(s.observer_calls, 5u);
  EXPECT_FALSE(s.connected);
  EXPECT_FALSE(s.probing);
}

TEST(NetworkMonitor, ThrowingObserverIsCountedAndOthersStillRun) {
  NetworkMonitor m(Opts(false));
  int before = 0, after = 0;
  m.Subscribe([&](bool) { ++before; });
  m.Subscribe([](bool) { throw std::runtime_error("observer bug"); });
  m.Subscribe([](bool) { throw 42; });  // not even a std::exception
  m.Subscribe([&](bool) { ++after; });
  m.SetConnected(true);
  m.SetConnected(false);
  EXPECT_EQ(before, 2);
  EXPECT_EQ(after, 2);
  EXPECT_EQ(m.observer_errors(), 4u);
  EXPECT_EQ(m.Stats().observer_errors, 4u);
  EXPECT_THROW(m.Subscribe(nullptr), SyncError);
}

TEST(NetworkMonitor, ObserversRunWithoutTheLockAndMayCallBack) {
  NetworkMonitor m(Opts(false));
  std::vector<bool> seen;
  m.Subscribe([&](bool c) {
    seen.push_back(c);
    // Each of these takes the monitor's lock: a lock held here would deadlock.
    EXPECT_EQ(m.IsConnected(), c);
    (void)m.Stats();
    m.Unsubscribe(m.Subscribe([](bool) {}));
    if (c) m.SetConnected(false);  // nested: delivered after this round, in order
  });
  m.SetConnected(true);
  EXPECT_EQ(seen, (std::vector<bool>{true, false}));
  EXPECT_FALSE(m.IsConnected());
}

TEST(NetworkMonitor, ConcurrentSetConnectedIsDeliveredInOrder) {
  NetworkMonitor m(Opts(false));
  std::mutex mu;
  std::vector<bool> seen;
  for (int i = 0; i < 3; ++i) {
    m.Subscribe([&, i](bool c) {
      if (i != 0) return;
      std::lock_guard lock(mu);
      seen.push_back(c);
    });
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 2000; ++i) m.SetConnected(rng() % 2 == 0);
    });
  }
  for (auto& t : threads) t.join();
  // Every SetConnected returned after its own transition was delivered, so all are in.
  const auto s = m.Stats();
  ASSERT_EQ(seen.size(), s.transitions);
  ASSERT_GT(seen.size(), 0u);
  EXPECT_TRUE(seen[0]);  // from false, the first transition is to true
  for (size_t i = 1; i < seen.size(); ++i) ASSERT_NE(seen[i], seen[i - 1]) << "at " << i;
  EXPECT_EQ(seen.back(), m.IsConnected());
  EXPECT_EQ(s.observer_calls, 3 * s.transitions);
}

TEST(NetworkMonitor, HysteresisOnVirtualClockAtExactTimes) {
  using P = ScriptedProbe;
  auto clock = std::make_shared<VirtualClock>(100.0);
  auto probe = std::make_shared<P>(std::vector<P::Result>{
      P::kOk, P::kOk, P::kFail, P::kFail, P::kOk, P::kFail, P::kFail, P::kFail, P::kOk, P::kOk});
  NetworkMonitor m(Opts(false, 5.0, /*up=*/2, /*down=*/3), probe, clock);
  Recorder rec(clock);
  m.Subscribe(rec.Observer());
  m.Start();
  EXPECT_TRUE(m.probing());
  ASSERT_TRUE(m.WaitForProbes(1));  // the first check runs at once, at t=100
  EXPECT_FALSE(m.IsConnected());    // one success is not enough
  for (int i = 1; i < 10; ++i) {
    clock->Advance(5.0);
    ASSERT_TRUE(m.WaitForProbes(i + 1));
  }
  EXPECT_EQ(probe->calls(), 10u);
  EXPECT_EQ(rec.events(), (Events{{true, 105.0}, {false, 135.0}, {true, 145.0}}));
  const auto s = m.Stats();
  EXPECT_EQ(s.probes, 10u);
  EXPECT_EQ(s.probe_failures, 5u);
  EXPECT_EQ(s.consecutive_successes, 2);
  EXPECT_EQ(s.last_transition_at, 145.0);
  m.Stop();
  EXPECT_FALSE(m.probing());
  clock->Advance(50.0);  // no more checks once stopped
  EXPECT_EQ(probe->calls(), 10u);
}

TEST(NetworkMonitor, ThrowingProbeIsAFailure) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  auto probe = std::make_shared<ScriptedProbe>(std::vector{ScriptedProbe::kThrow});
  NetworkMonitor m(Opts(true), probe, clock);
  m.Start();
  ASSERT_TRUE(m.WaitForProbes(1));
  EXPECT_FALSE(m.IsConnected());
  clock->Advance(5.0);
  ASSERT_TRUE(m.WaitForProbes(2));  // the thread survived the exception
  EXPECT_EQ(m.Stats().probe_failures, 2u);
}

TEST(NetworkMonitor, HungProbeTimesOutOnTheClockAndOnlyOneRunsAtATime) {
  using P = ScriptedProbe;
  auto clock = std::make_shared<VirtualClock>(0.0);
  auto probe = std::make_shared<P>(std::vector{P::kBlock, P::kOk});
  auto o = Opts(true, 5.0);
  o.probe_timeout = 2.0;
  NetworkMonitor m(o, probe, clock);
  Recorder rec(clock);
  m.Subscribe(rec.Observer());
  m.Start();
  ASSERT_TRUE(probe->WaitCalls(1));
  clock->Advance(1.0);
  EXPECT_TRUE(m.IsConnected());  // still within its timeout
  clock->Advance(1.0);
  ASSERT_TRUE(m.WaitForProbes(1));  // t=2: timed out
  EXPECT_EQ(rec.events(), (Events{{false, 2.0}}));
  clock->Advance(3.0);  // t=5: the hung check still runs, so no second one starts
  ASSERT_TRUE(m.WaitForProbes(2));
  EXPECT_EQ(probe->calls(), 1u);
  auto s = m.Stats();
  EXPECT_EQ(s.probe_timeouts, 2u);
  EXPECT_EQ(s.probe_failures, 2u);
  probe->Release();
  ASSERT_TRUE(probe->WaitFinishedBlocked(1));
  // The abandoned check's thread records its end just after the probe returns; until
  // then each due check still counts as failed. Then a fresh check runs and succeeds.
  uint64_t probes = 2;
  while (probe->calls() < 2) {
    clock->Advance(5.0);
    ASSERT_TRUE(m.WaitForProbes(++probes));
  }
  const double t = clock->Now();
  EXPECT_EQ(rec.events(), (Events{{false, 2.0}, {true, t}}));
  EXPECT_EQ(m.Stats().probe_timeouts, probes - 1);
}

TEST(NetworkMonitor, StopAndDestroyReturnPromptlyWhileAProbeIsBlocked) {
  auto probe = std::make_shared<ScriptedProbe>(std::vector{ScriptedProbe::kBlock});
  {
    NetworkMonitor m(Opts(false, 0.05), probe);  // SystemClock
    m.Start();
    ASSERT_TRUE(probe->WaitCalls(1));
    const auto t0 = steady_clock::now();
    m.Stop();
    EXPECT_FALSE(m.probing());
    m.Start();  // the abandoned check still runs: the restarted monitor must not hang
    m.Stop();
    EXPECT_LT(steady_clock::now() - t0, std::chrono::seconds(2));
    // Destroyed while the check is still blocked.
  }
  EXPECT_EQ(probe->calls(), 1u);
  probe->Release();  // the abandoned check ends on its own thread
  ASSERT_TRUE(probe->WaitFinishedBlocked(1));
}

TEST(NetworkMonitor, DestroyWhileProbingJoinsPromptly) {
  auto probe = std::make_shared<ScriptedProbe>(std::vector{ScriptedProbe::kBlock});
  auto t0 = steady_clock::now();
  {
    NetworkMonitor m(Opts(false, 0.05), probe);
    m.Start();
    ASSERT_TRUE(probe->WaitCalls(1));
    t0 = steady_clock::now();
  }
  EXPECT_LT(steady_clock::now() - t0, std::chrono::seconds(2));
  probe->Release();
  ASSERT_TRUE(probe->WaitFinishedBlocked(1));
}

TEST(NetworkMonitor, PassiveSignalsProbeAtOnce) {
  using P = ScriptedProbe;
  auto clock = std::make_shared<VirtualClock>(0.0);
  auto probe = std::make_shared<P>(std::vector{P::kOk, P::kFail});
  NetworkMonitor m(Opts(false, /*interval=*/60.0), probe, clock);
  m.ReportFailure();  // not probing: only counted
  EXPECT_EQ(probe->calls(), 0u);
  m.Start();
  ASSERT_TRUE(m.WaitForProbes(1));
  EXPECT_TRUE(m.IsConnected());
  m.ReportFailure();  // probes at once: no clock advance needed
  ASSERT_TRUE(m.WaitForProbes(2));
  EXPECT_FALSE(m.IsConnected());
  EXPECT_EQ(clock->Now(), 0.0);
  probe->SetScript({P::kOk});
  m.ReportSuccess();
  ASSERT_TRUE(m.WaitForProbes(3));
  EXPECT_TRUE(m.IsConnected());
  const auto s = m.Stats();
  EXPECT_EQ(s.passive_failures, 2u);
  EXPECT_EQ(s.passive_successes, 1u);
  EXPECT_EQ(s.last_transition_at, 0.0);
  // The interval restarts from the signalled check: next scheduled one at t=60.
  clock->Advance(59.0);
  EXPECT_EQ(probe->calls(), 1u);  // SetScript reset the count to 0, then one check
  clock->Advance(1.0);
  ASSERT_TRUE(m.WaitForProbes(4));
}

TEST(NetworkMonitor, WithoutAProbeOnlySetConnectedChangesIt) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  NetworkMonitor m(Opts(true), nullptr, clock);
  m.Start();  // no-op without a probe
  EXPECT_FALSE(m.probing());
  for (int i = 0; i < 5; ++i) m.ReportFailure();
  clock->Advance(100.0);
  EXPECT_TRUE(m.IsConnected());
  EXPECT_EQ(m.Stats().passive_failures, 5u);
  EXPECT_EQ(m.Stats().transitions, 0u);
}

TEST(NetworkMonitor, FlapDampingDefersAndCancels) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  NetworkMonitor m(Opts(false, 5.0, 1, 1, /*damping=*/10.0), nullptr, clock);
  Recorder rec(clock);
  m.Subscribe(rec.Observer());
  m.SetConnected(true);  // the first transition is never damped
  clock->AdvanceTo(1.0);
  m.SetConnected(false);  // within the window: deferred
  EXPECT_TRUE(m.IsConnected());
  EXPECT_EQ(m.Stats().pending, std::optional<bool>(false));
  clock->AdvanceTo(2.0);
  m.SetConnected(true);  // back to the current state: the deferral is cancelled
  EXPECT_EQ(m.Stats().pending, std::nullopt);
  clock->AdvanceTo(3.0);
  m.SetConnected(false);  // deferred again
  clock->AdvanceTo(9.5);
  EXPECT_TRUE(m.IsConnected());
  clock->AdvanceTo(10.0);  // the window ends: applied by the monitor's thread
  ASSERT_TRUE(m.WaitUntil(false));
  ASSERT_TRUE(rec.WaitEvents(2));
  EXPECT_EQ(rec.events(), (Events{{true, 0.0}, {false, 10.0}}));
  EXPECT_EQ(m.Stats().damped, 2u);
  EXPECT_EQ(m.Stats().pending, std::nullopt);
  clock->AdvanceTo(25.0);  // outside the window: immediate
  m.SetConnected(true);
  EXPECT_EQ(rec.events().back(), std::make_pair(true, 25.0));
}

TEST(NetworkMonitor, FlapDampingBoundsNotifications) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  constexpr double kWindow = 10.0, kStep = 0.1;
  constexpr int kSteps = 1000;  // 100 s of flapping every 0.1 s
  NetworkMonitor m(Opts(false, 5.0, 1, 1, kWindow), nullptr, clock);
  Recorder rec(clock);
  m.Subscribe(rec.Observer());
  std::mt19937 rng(7);
  bool last = false;
  for (int i = 0; i < kSteps; ++i) {
    last = rng() % 2 == 0;
    m.SetConnected(last);
    clock->Advance(kStep);
  }
  clock->Advance(kWindow);  // let a last deferred transition land
  ASSERT_TRUE(m.WaitUntil(last));
  const auto s = m.Stats();
  ASSERT_TRUE(rec.WaitEvents(s.transitions));
  const auto events = rec.events();
  const double span = kSteps * kStep + kWindow;
  EXPECT_LE(events.size(), static_cast<size_t>(span / kWindow) + 1);
  EXPECT_GE(s.damped, 1u);
  for (size_t i = 1; i < events.size(); ++i) {
    EXPECT_GE(events[i].second - events[i - 1].second, kWindow - 1e-9);
    EXPECT_NE(events[i].first, events[i - 1].first);
  }
  EXPECT_EQ(m.IsConnected(), last);  // the final state always wins
}

TEST(NetworkMonitor, WaitUntilOnVirtualTime) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  NetworkMonitor m(Opts(false), nullptr, clock);
  EXPECT_TRUE(m.WaitUntil(false, 0.0));
  EXPECT_FALSE(m.WaitUntil(true, 0.0));
  std::atomic<int> timed{-1};
  double started = 0, ended = 0;
  std::thread waiter([&] {
    started = clock->Now();
    const bool reached = m.WaitUntil(true, 5.0);
    ended = clock->Now();
    timed = reached ? 1 : 0;
  });
  // The waiter's deadline is 5 s after it began, whenever that was: move virtual time
  // in small steps until it gives up.
  while (timed.load() == -1) {
    clock->Advance(0.25);
    std::this_thread::yield();
  }
  waiter.join();
  EXPECT_EQ(timed.load(), 0);
  EXPECT_GE(ended - started, 5.0);

  std::atomic<int> woken{-1};
  std::thread waiter2([&] { woken = m.WaitUntil(true) ? 1 : 0; });
  m.SetConnected(true);
  waiter2.join();
  EXPECT_EQ(woken.load(), 1);
  EXPECT_THROW(m.WaitUntil(true, -1.0), SyncError);
}

TEST(NetworkMonitor, RejectsBadOptions) {
  EXPECT_THROW(NetworkMonitor(Opts(false, 0.0)), SyncError);
  EXPECT_THROW(NetworkMonitor(Opts(false, 5.0, 0)), SyncError);
  EXPECT_THROW(NetworkMonitor(Opts(false, 5.0, 1, 0)), SyncError);
  EXPECT_THROW(NetworkMonitor(Opts(false, 5.0, 1, 1, -1.0)), SyncError);
  auto o = Opts(false);
  o.probe_timeout = 0.0;
  EXPECT_THROW(NetworkMonitor{o}, SyncError);
  EXPECT_THROW(TcpProbe("", 80), SyncError);
  EXPECT_THROW(TcpProbe("127.0.0.1", 0), SyncError);
  EXPECT_THROW(TcpProbe("127.0.0.1", 80, 0.0), SyncError);
}

// A TCP listener on 127.0.0.1 with a kernel-chosen port.
class Listener {
 public:
  Listener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(fd_, 16) != 0) {
      throw std::runtime_error("cannot listen on 127.0.0.1");
    }
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~Listener() { Close(); }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

TEST(TcpProbe, SucceedsAgainstAListenerAndFailsOnceItCloses) {
  Listener listener;
  TcpProbe probe("127.0.0.1", listener.port(), 2.0);
  EXPECT_TRUE(probe.Check());
  EXPECT_TRUE(TcpProbe("localhost", listener.port(), 2.0).Check());
  listener.Close();
  const auto t0 = steady_clock::now();
  EXPECT_FALSE(probe.Check());  // connection refused, at once
  EXPECT_LT(steady_clock::now() - t0, std::chrono::seconds(2));
}

TEST(TcpProbe, DrivesAMonitor) {
  auto clock = std::make_shared<VirtualClock>(0.0);
  Listener listener;
  auto probe = std::make_shared<TcpProbe>("127.0.0.1", listener.port(), 2.0);
  NetworkMonitor m(Opts(false, 5.0), probe, clock);
  Recorder rec(clock);
  m.Subscribe(rec.Observer());
  m.Start();
  ASSERT_TRUE(m.WaitForProbes(1));
  EXPECT_TRUE(m.IsConnected());
  listener.Close();
  clock->Advance(5.0);
  ASSERT_TRUE(m.WaitForProbes(2));
  EXPECT_FALSE(m.IsConnected());
  EXPECT_EQ(rec.events(), (Events{{true, 0.0}, {false, 5.0}}));
}

// Two monitors whose observers call each other's SetConnected(), from two threads at
// once: each thread delivers its own monitor's transition and, inside that round,
// changes the other monitor, whose round the other thread is running. Waiting for
// that delivery would deadlock both (it did, on the first try).
TEST(NetworkMonitor, ObserversOfTwoMonitorsCallingEachOtherFromTwoThreadsDoNotDeadlock) {
  // shared_ptr copies live in the threads: if they deadlock, the test fails and the
  // threads are left behind (detached) instead of hanging the suite.
  auto a = std::make_shared<NetworkMonitor>(Opts(false));
  auto b = std::make_shared<NetworkMonitor>(Opts(false));
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    int inside = 0;  // threads inside their first observer call
    int done = 0;
  };
  auto sh = std::make_shared<Shared>();
  // Each observer, on its first call, waits until both threads are inside an observer,
  // then flips the other monitor back to false (a change, as the other thread has
  // just set it to true).
  auto cross = [sh](const std::shared_ptr<NetworkMonitor>& other) {
    auto first = std::make_shared<std::atomic<bool>>(true);
    std::weak_ptr<NetworkMonitor> weak = other;
    return [sh, first, weak](bool) {
      if (!first->exchange(false)) return;
      {
        std::unique_lock lock(sh->mu);
        ++sh->inside;
        sh->cv.notify_all();
        sh->cv.wait_for(lock, kPatience, [&] { return sh->inside >= 2; });
      }
      if (auto o = weak.lock()) o->SetConnected(false);
    };
  };
  a->Subscribe(cross(b));
  b->Subscribe(cross(a));
  auto run = [sh](std::shared_ptr<NetworkMonitor> m) {
    return std::thread([sh, m] {
      m->SetConnected(true);
      std::lock_guard lock(sh->mu);
      ++sh->done;
      sh->cv.notify_all();
    });
  };
  std::thread t1 = run(a), t2 = run(b);
  bool finished;
  {
    std::unique_lock lock(sh->mu);
    finished = sh->cv.wait_for(lock, kPatience, [&] { return sh->done == 2; });
  }
  if (!finished) {
    t1.detach();
    t2.detach();
    FAIL() << "SetConnected() from observers of two monitors deadlocked";
  }
  t1.join();
  t2.join();
  // Every requested transition was delivered: both ended where the observers left them.
  EXPECT_TRUE(a->WaitUntil(false, 0.0));
  EXPECT_TRUE(b->WaitUntil(false, 0.0));
  EXPECT_EQ(a->Stats().transitions, 2u);
  EXPECT_EQ(b->Stats().transitions, 2u);
}

TEST(NetworkMonitor, RejectsIntervalsBelowOneMillisecond) {
  EXPECT_THROW(NetworkMonitor(Opts(false, 1e-9)), SyncError);
  EXPECT_THROW(NetworkMonitor(Opts(false, 0.000999)), SyncError);
  try {
    NetworkMonitor m(Opts(false, 1e-9));
  } catch (const SyncError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }
  EXPECT_NO_THROW(NetworkMonitor(Opts(false, kMinProbeInterval)));
}

// A probe recording the clock's monotonic time of every call.
class TimedProbe final : public Probe {
 public:
  explicit TimedProbe(std::shared_ptr<Clock> clock) : clock_(std::move(clock)) {}
  bool Check(double) override {
    std::lock_guard lock(mu_);
    times_.push_back(clock_->Monotonic());
    cv_.notify_all();
    return true;
  }
  // Waits up to `patience` for n calls.
  bool WaitCalls(size_t n, std::chrono::milliseconds patience) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, patience, [&] { return times_.size() >= n; });
  }
  std::vector<double> times() {
    std::lock_guard lock(mu_);
    return times_;
  }

 private:
  std::shared_ptr<Clock> clock_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<double> times_;
};

// At 1e17 s a double has steps of 16 s: now + 1 == now. The next probe (and the
// probe's deadline) must still be strictly later, or the monitor's thread spins,
// probing over and over at one instant.
TEST(NetworkMonitor, NextProbeTimeStrictlyAdvancesWhereNowPlusIntervalEqualsNow) {
  auto clock = std::make_shared<VirtualClock>(1e17);
  auto probe = std::make_shared<TimedProbe>(clock);
  auto m = std::make_shared<NetworkMonitor>(Opts(false, 1.0), probe, clock);
  m->Start();
  ASSERT_TRUE(probe->WaitCalls(1, kPatience));
  // Nothing may happen until time moves. A spinning monitor probes again at once,
  // at the same instant, and holds its mutex all the while: then every call on it
  // would block, so it is left behind (leaked) and the test fails instead of hanging.
  // (This bounded wait is how long we give it to show itself.)
  if (probe->WaitCalls(2, std::chrono::milliseconds(300))) {
    const auto times = probe->times();
    if (times[1] <= times[0]) {
      Abandon(std::move(m));
      FAIL() << "the monitor probed twice at t=" << times[0] << " (spinning)";
    }
  }
  ASSERT_TRUE(m->WaitForProbes(1));
  EXPECT_EQ(m->Stats().probe_timeouts, 0u);
  clock->AdvanceTo(std::nextafter(1e17, 1e18));  // one step of the double
  ASSERT_TRUE(probe->WaitCalls(2, kPatience));
  m->Stop();
  const auto times = probe->times();
  for (size_t i = 1; i < times.size(); ++i) EXPECT_LT(times[i - 1], times[i]) << i;
}

// The interval runs on the monotonic clock: stepping the wall clock back 60 s (NTP)
// neither stops probing (it did: "a 0.2 s monitor probed once in 3 s") nor, stepping
// it forward, hurries a probe.
TEST(NetworkMonitor, WallClockStepsNeitherStopNorHurryProbing) {
  for (const double step : {-60.0, 60.0}) {
    SCOPED_TRACE(step);
    auto clock = std::make_shared<VirtualClock>(1000.0);
    auto probe = std::make_shared<TimedProbe>(clock);
    NetworkMonitor m(Opts(false, 0.2), probe, clock);
    m.Start();
    ASSERT_TRUE(m.WaitForProbes(1));
    clock->StepWall(step);
    // A probe hurried by the step would come now (bounded wait, then we move on).
    EXPECT_FALSE(probe->WaitCalls(2, std::chrono::milliseconds(100)));
    clock->Advance(0.2);
    ASSERT_TRUE(probe->WaitCalls(2, kPatience)) << "no probe 0.2 s after a wall step";
    ASSERT_TRUE(m.WaitForProbes(2));  // applied: advancing cannot time it out
    clock->StepWall(step);
    clock->Advance(0.2);
    ASSERT_TRUE(probe->WaitCalls(3, kPatience));
    m.Stop();
    const auto times = probe->times();
    ASSERT_GE(times.size(), 3u);
    EXPECT_DOUBLE_EQ(times[0], 1000.0);
    EXPECT_DOUBLE_EQ(times[1], 1000.2);  // not earlier: a forward step hurries nothing
    EXPECT_DOUBLE_EQ(times[2], 1000.4);
  }
}

}  // namespace
}  // namespace cpcsync
