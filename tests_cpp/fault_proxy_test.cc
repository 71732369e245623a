// FaultProxy over real sockets on 127.0.0.1: an echo upstream, blocking clients.
// Delays are checked as lower bounds on measured time; nothing waits on a sleep.
#include "cpcsync/fault_proxy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <functional>
#include <thread>

#include "cpcsync/errors.h"
#include "fault_proxy_helpers.h"
#include "proxy_sockets.h"

namespace cpcsync {
namespace {

using namespace std::chrono_literals;
using testing::Client;
using testing::EchoServer;
using testing::End;
using testing::Eventually;
using testing::Pattern;
using testing::Spec;
using testing::To;

class FaultProxyTest : public ::testing::Test {
 protected:
  FaultProxyTest() : proxy(To(echo.port())) { proxy.Start(); }

  // One round trip of `n` bytes on a new connection; returns the elapsed time.
  std::chrono::nanoseconds TimedRoundTrip(size_t n = 100) {
    Client c(proxy.port());
    EXPECT_TRUE(c.ok());
    std::chrono::nanoseconds elapsed{};
    const std::string data = Pattern(n);
    const auto r = c.RoundTrip(data, &elapsed);
    EXPECT_EQ(r.end, End::kComplete);
    EXPECT_EQ(r.data, data);
    return elapsed;
  }

  EchoServer echo;
  FaultProxy proxy;
};

TEST_F(FaultProxyTest, ForwardsBothWaysAndCounts) {
  EXPECT_TRUE(proxy.running());
  EXPECT_NE(proxy.port(), 0);
  {
    Client c(proxy.port());
    ASSERT_TRUE(c.ok());
    const std::string data = Pattern(3 << 20);  // 3 MiB, more than the proxy buffers
    std::thread writer([&] { EXPECT_TRUE(c.Send(data)); });
    const auto r = c.Read(data.size());
    writer.join();
    ASSERT_EQ(r.end, End::kComplete);
    EXPECT_TRUE(r.data == data);
    // A write is counted when it completes on the proxy's I/O thread, which may be
    // just after the client has read its bytes.
    EXPECT_TRUE(Eventually([&] {
      const FaultProxyStats s = proxy.Stats();
      return s.bytes_upstream == data.size() && s.bytes_downstream == data.size();
    }));
    const FaultProxyStats s = proxy.Stats();
    EXPECT_EQ(s.connections, 1u);
    EXPECT_EQ(s.active, 1u);
    EXPECT_EQ(s.bytes_upstream, data.size());
    EXPECT_EQ(s.bytes_downstream, data.size());
    c.ShutdownWrite();  // half-close passes through: the echo server ends, so do we
    EXPECT_EQ(c.ReadToEnd().end, End::kEof);
  }
  EXPECT_TRUE(Eventually([&] { return proxy.Stats().active == 0; }));
  EXPECT_EQ(proxy.Stats().connections, 1u);
  EXPECT_EQ(echo.accepted(), 1u);
}

TEST_F(FaultProxyTest, BytesStayInOrderWhileToxicsComeAndGo) {
  // Toxics switch a stream between zero-copy forwarding and the buffered path while
  // 24 MiB flow both ways; every byte must arrive once, in order.
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  const std::string data = Pattern(24 << 20, 5);
  std::thread writer([&] { EXPECT_TRUE(c.Send(data)); });
  std::atomic<bool> done{false};
  std::thread toggler([&] {
    for (int i = 0; !done; ++i) {
      const auto stream = i % 2 ? ToxicStream::kUpstream : ToxicStream::kDownstream;
      const std::string name = proxy.AddToxic(
          i % 3 ? Spec("latency", {{"latency", 1}}, stream)
                : Spec("slicer", {{"average_size", 4000}, {"size_variation", 1000}}, stream));
      proxy.RemoveToxic(name);
    }
  });
  const auto r = c.Read(data.size());
  done = true;
  toggler.join();
  writer.join();
  ASSERT_EQ(r.end, End::kComplete);
  EXPECT_TRUE(r.data == data);
  EXPECT_EQ(proxy.Stats().bytes_downstream, data.size());
}

TEST_F(FaultProxyTest, LatencyDelaysTheChosenDirectionOnly) {
  proxy.AddToxic(Spec("latency", {{"latency", 60}}, ToxicStream::kDownstream));
  EXPECT_GE(TimedRoundTrip(), 60ms);
  proxy.RemoveToxic("latency_downstream");
  proxy.AddToxic(Spec("latency", {{"latency", 60}, {"jitter", 10}}, ToxicStream::kUpstream));
  EXPECT_GE(TimedRoundTrip(), 50ms);
  // Both directions add up.
  proxy.AddToxic(Spec("latency", {{"latency", 40}}, ToxicStream::kDownstream));
  EXPECT_GE(TimedRoundTrip(), 90ms);
}

TEST_F(FaultProxyTest, ToxicityZeroNeverApplies) {
  proxy.AddToxic(Spec("latency", {{"latency", 5000}}, ToxicStream::kDownstream, 0.0));
  EXPECT_LT(TimedRoundTrip(), 4s);  // loose: only "not delayed by the toxic"
}

TEST_F(FaultProxyTest, ToxicityIsPerConnectionAndReproducible) {
  // limit_data of 1 byte marks affected connections cheaply: they get 1 byte, then EOF.
  auto pattern = [](FaultProxy& p) {
    std::vector<bool> affected;
    for (int i = 0; i < 40; ++i) {
      Client c(p.port());
      EXPECT_TRUE(c.ok());
      const auto r = c.RoundTrip("hello");
      affected.push_back(r.end != End::kComplete);
      if (affected.back()) {
        EXPECT_EQ(r.data, "h");
      }
    }
    return affected;
  };
  proxy.AddToxic(Spec("limit_data", {{"bytes", 1}}, ToxicStream::kDownstream, 0.5));
  const std::vector<bool> first = pattern(proxy);
  const auto hits = std::count(first.begin(), first.end(), true);
  EXPECT_GT(hits, 5);
  EXPECT_LT(hits, 35);

  FaultProxy again(To(echo.port(), 7));  // same seed, same toxic order
  again.AddToxic(Spec("limit_data", {{"bytes", 1}}, ToxicStream::kDownstream, 0.5));
  again.Start();
  EXPECT_EQ(pattern(again), first);
  EXPECT_EQ(again.seed(), 7u);
}

TEST_F(FaultProxyTest, BandwidthLimitsTheRate) {
  proxy.AddToxic(Spec("bandwidth", {{"rate", 100}}));  // 100 KB/s downstream
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  std::chrono::nanoseconds elapsed{};
  const std::string data = Pattern(50'000);
  const auto r = c.RoundTrip(data, &elapsed);
  ASSERT_EQ(r.end, End::kComplete);
  EXPECT_TRUE(r.data == data);
  EXPECT_GE(elapsed, 490ms);  // 50 KB at 100 KB/s
}

TEST_F(FaultProxyTest, BandwidthUpstreamToo) {
  proxy.AddToxic(Spec("bandwidth", {{"rate", 50}}, ToxicStream::kUpstream));
  EXPECT_GE(TimedRoundTrip(20'000), 390ms);
}

TEST_F(FaultProxyTest, TimeoutStopsDataThenCloses) {
  proxy.AddToxic(Spec("timeout", {{"timeout", 150}}));
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(c.Send("ping"));
  const auto r = c.ReadToEnd();
  EXPECT_EQ(r.end, End::kEof);
  EXPECT_EQ(r.data, "");
  EXPECT_GE(std::chrono::steady_clock::now() - start, 140ms);
}

TEST_F(FaultProxyTest, ResetPeerSendsRstAfterTheTimeout) {
  proxy.AddToxic(Spec("reset_peer", {{"timeout", 100}}));
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  std::chrono::nanoseconds elapsed{};
  const auto r = c.RoundTrip("ping", &elapsed);
  EXPECT_EQ(r.end, End::kReset);
  EXPECT_EQ(r.data, "");
  EXPECT_GE(elapsed, 100ms);
}

TEST_F(FaultProxyTest, ResetPeerUpstreamNeverReachesTheServer) {
  proxy.AddToxic(Spec("reset_peer", {{"timeout", 0}}, ToxicStream::kUpstream));
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c.RoundTrip("ping").end, End::kReset);
  EXPECT_EQ(echo.received(), 0u);
  EXPECT_EQ(proxy.Stats().bytes_upstream, 0u);
}

TEST_F(FaultProxyTest, SlowCloseDelaysTheEof) {
  proxy.AddToxic(Spec("slow_close", {{"delay", 150}}));
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.RoundTrip("data").end, End::kComplete);  // data is not delayed
  const auto start = std::chrono::steady_clock::now();
  c.ShutdownWrite();  // the echo server closes; its EOF reaches us late
  EXPECT_EQ(c.ReadToEnd().end, End::kEof);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 150ms);
}

TEST_F(FaultProxyTest, SlicerSplitsWithDelays) {
  // 1,000 bytes in 10-byte slices 2 ms apart: at least 99 gaps.
  proxy.AddToxic(Spec("slicer", {{"average_size", 10}, {"size_variation", 0}, {"delay", 2000}}));
  EXPECT_GE(TimedRoundTrip(1000), 198ms);
  proxy.UpdateToxic("slicer_downstream", {{"average_size", 100}, {"size_variation", 50}});
  EXPECT_GE(TimedRoundTrip(1000), 2ms);  // still sliced (at most 150 bytes a slice)
}

TEST_F(FaultProxyTest, LimitDataClosesAfterThatManyBytes) {
  proxy.AddToxic(Spec("limit_data", {{"bytes", 100}}));
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  const std::string data = Pattern(1000);
  ASSERT_TRUE(c.Send(data));
  const auto r = c.ReadToEnd();
  EXPECT_NE(r.end, End::kComplete);
  EXPECT_NE(r.end, End::kTimeout);
  EXPECT_EQ(r.data, data.substr(0, 100));
  EXPECT_EQ(proxy.Stats().bytes_downstream, 100u);
}

TEST_F(FaultProxyTest, ToxicsChangeOnAnOpenConnection) {
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.RoundTrip("warm").end, End::kComplete);
  const std::string name =
      proxy.AddToxic(Spec("latency", {{"latency", 80}}, ToxicStream::kUpstream, 1.0, "slow"));
  EXPECT_EQ(name, "slow");
  std::chrono::nanoseconds elapsed{};
  ASSERT_EQ(c.RoundTrip("one", &elapsed).end, End::kComplete);
  EXPECT_GE(elapsed, 80ms);
  proxy.UpdateToxic("slow", {{"latency", 400}});
  ASSERT_EQ(c.RoundTrip("two", &elapsed).end, End::kComplete);
  EXPECT_GE(elapsed, 400ms);
  proxy.RemoveToxic("slow");
  ASSERT_EQ(c.RoundTrip("three", &elapsed).end, End::kComplete);
  EXPECT_LT(elapsed, 300ms);  // loose: only "no longer delayed by the 400 ms toxic"
  EXPECT_EQ(proxy.Stats().connections, 1u);
}

TEST_F(FaultProxyTest, DisableDropsAndRefusesEnableListensOnTheSamePort) {
  const uint16_t port = proxy.port();
  Client before(port);
  ASSERT_TRUE(before.ok());
  ASSERT_EQ(before.RoundTrip("up").end, End::kComplete);

  proxy.Disable();
  proxy.Disable();  // no-op
  EXPECT_FALSE(proxy.enabled());
  EXPECT_EQ(before.ReadToEnd().end, End::kReset);
  Client refused(port);
  EXPECT_FALSE(refused.ok());
  EXPECT_EQ(refused.error(), ECONNREFUSED);
  EXPECT_EQ(proxy.Stats().active, 0u);

  proxy.Enable();
  EXPECT_TRUE(proxy.enabled());
  EXPECT_EQ(proxy.port(), port);
  Client after(port);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after.RoundTrip("again").data, "again");
  EXPECT_EQ(proxy.Stats().connections, 2u);
}

TEST_F(FaultProxyTest, StopIsIdempotentAndARestartKeepsThePort) {
  const uint16_t port = proxy.port();
  Client open(port);
  ASSERT_TRUE(open.ok());
  ASSERT_EQ(open.RoundTrip("x").end, End::kComplete);
  proxy.Stop();
  proxy.Stop();
  EXPECT_FALSE(proxy.running());
  EXPECT_EQ(open.ReadToEnd().end, End::kEof);
  EXPECT_FALSE(Client(port).ok());
  proxy.Start();
  EXPECT_EQ(proxy.port(), port);
  EXPECT_EQ(TimedRoundTrip(10).count() > 0, true);
}

TEST(FaultProxy, UpstreamDownClosesTheClientAndCounts) {
  uint16_t dead_port;
  {
    EchoServer gone;  // a port nobody listens on once it is destroyed
    dead_port = gone.port();
  }
  FaultProxy proxy(To(dead_port));
  proxy.Start();
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());           // the proxy accepts...
  const auto r = c.ReadToEnd();  // ...then closes once the upstream refuses
  EXPECT_TRUE(r.end == End::kEof || r.end == End::kReset);
  EXPECT_TRUE(Eventually([&] { return proxy.Stats().upstream_failures == 1; }));
  EXPECT_TRUE(Eventually([&] { return proxy.Stats().active == 0; }));
}

TEST(FaultProxy, StartFailsCleanlyWhenThePortIsTaken) {
  EchoServer echo;
  FaultProxyOptions o = To(echo.port());
  o.listen_port = echo.port();
  FaultProxy proxy(o);
  try {
    proxy.Start();
    ADD_FAILURE() << "Start() on a port in use succeeded";
  } catch (const SyncError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kOs);
    EXPECT_EQ(e.sys_errno(), EADDRINUSE);
  }
  EXPECT_FALSE(proxy.running());
  EXPECT_THROW(proxy.Start(), SyncError);  // and again: nothing left over from the first try
}

TEST(FaultProxy, RejectsBadToxics) {
  FaultProxy proxy(To(9));
  auto invalid = [&](ToxicSpec spec) {
    try {
      proxy.AddToxic(std::move(spec));
    } catch (const SyncError& e) {
      return e.code() == ErrorCode::kInvalidArgument;
    }
    return false;
  };
  EXPECT_TRUE(invalid(Spec("latencyy", {})));
  EXPECT_TRUE(invalid(Spec("latency", {{"delay", 1}})));
  EXPECT_TRUE(invalid(Spec("latency", {{"latency", -1}})));
  EXPECT_TRUE(invalid(Spec("latency", {}, ToxicStream::kDownstream, 1.5)));
  EXPECT_TRUE(invalid(Spec("latency", {}, ToxicStream::kDownstream, std::nan(""))));
  EXPECT_TRUE(invalid(Spec("slicer", {{"size_variation", 1}})));
  EXPECT_TRUE(invalid(Spec("slicer", {{"average_size", 10}, {"size_variation", 10}})));
  EXPECT_TRUE(invalid(Spec("bandwidth", {{"rate", -5}})));
  EXPECT_EQ(proxy.AddToxic(Spec("latency", {})), "latency_downstream");
  EXPECT_TRUE(invalid(Spec("latency", {})));  // same default name
  EXPECT_EQ(proxy.AddToxic(Spec("latency", {}, ToxicStream::kUpstream)), "latency_upstream");
  EXPECT_THROW(proxy.RemoveToxic("nope"), SyncError);
  EXPECT_THROW(proxy.UpdateToxic("latency_upstream", {{"rate", 1}}), SyncError);
  EXPECT_THROW(proxy.UpdateToxic("latency_upstream", {}, -0.1), SyncError);
  EXPECT_THROW(FaultProxy(To(0)), SyncError);
}

TEST(FaultProxy, ListsToxicsWithEveryAttribute) {
  FaultProxy proxy(To(9));
  proxy.AddToxic(Spec("slicer", {{"average_size", 8}}, ToxicStream::kUpstream, 0.25, "s"));
  proxy.AddToxic(Spec("limit_data", {{"bytes", 5}}));
  proxy.UpdateToxic("s", {{"delay", 3}}, 0.5);
  const auto toxics = proxy.Toxics();
  ASSERT_EQ(toxics.size(), 2u);
  EXPECT_EQ(toxics[0].name, "s");
  EXPECT_EQ(toxics[0].type, "slicer");
  EXPECT_EQ(toxics[0].stream, ToxicStream::kUpstream);
  EXPECT_EQ(toxics[0].toxicity, 0.5);
  EXPECT_EQ(toxics[0].attributes, (std::map<std::string, int64_t>{
                                      {"average_size", 8}, {"delay", 3}, {"size_variation", 0}}));
  EXPECT_EQ(toxics[1].name, "limit_data_downstream");
  proxy.RemoveToxic("s");
  EXPECT_EQ(proxy.Toxics().size(), 1u);
}

TEST(FaultProxy, DestructorStopsARunningProxyWithOpenConnections) {
  EchoServer echo;
  auto proxy = std::make_unique<FaultProxy>(To(echo.port(), std::nullopt));
  proxy->Start();
  proxy->AddToxic(Spec("timeout", {{"timeout", 0}}));
  Client c(proxy->port());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.Send("stuck"));
  proxy.reset();
  EXPECT_NE(c.ReadToEnd().end, End::kTimeout);
}

TEST(FaultProxy, StartsDisabledWithoutListening) {
  EchoServer echo;
  FaultProxy proxy(To(echo.port()));
  proxy.Disable();
  proxy.Start();
  ASSERT_NE(proxy.port(), 0);
  EXPECT_FALSE(Client(proxy.port()).ok());
  proxy.Enable();
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c.RoundTrip("hi").data, "hi");
}

}  // namespace
}  // namespace cpcsync
