// FaultProxy where it follows Toxiproxy's semantics (timeout, bandwidth 0, toxicity
// draws) or deliberately does not (reset_peer on an open connection), and the memory
// the proxy holds for data it delays. Real sockets on 127.0.0.1; read timeouts on the
// client show that nothing passed, and counters are polled, never slept on.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "cpcsync/fault_proxy.h"
#include "fault_proxy_helpers.h"
#include "proxy_sockets.h"

namespace cpcsync {
namespace {

using namespace std::chrono_literals;
using namespace cpcsync::testing;  // sockets, echo server, Spec, To, Eventually

constexpr uint64_t kBlock = 64 * 1024;  // the proxy's buffer size
constexpr uint64_t kCap = 16 * kBlock;  // memory held per stream before it stops reading

class ToxiproxySemantics : public ::testing::Test {
 protected:
  ToxiproxySemantics() : proxy(To(echo.port())) { proxy.Start(); }

  EchoServer echo;
  FaultProxy proxy;
};

TEST_F(ToxiproxySemantics, TimeoutDropsDataAndItsRemovalClosesTheConnection) {
  proxy.AddToxic(Spec("timeout", {{"timeout", 0}}, ToxicStream::kUpstream));
  Client c(proxy.port(), 300ms);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.Send("lost"));
  EXPECT_EQ(c.Read(4).end, End::kTimeout);                                 // nothing passes...
  EXPECT_TRUE(Eventually([&] { return proxy.Stats().held_bytes == 0; }));  // ...or is kept
  proxy.RemoveToxic("timeout_upstream");  // the connection ends; the data stays lost
  const auto r = c.ReadToEnd();
  EXPECT_TRUE(r.end == End::kEof || r.end == End::kReset);
  EXPECT_EQ(r.data, "");
  EXPECT_EQ(echo.received(), 0u);
  EXPECT_TRUE(Eventually([&] { return proxy.Stats().active == 0; }));
  EXPECT_EQ(proxy.Stats().bytes_upstream, 0u);
}

TEST_F(ToxiproxySemantics, TimeoutEndsTheConnectionWhenItsStreamEnds) {
  proxy.AddToxic(Spec("timeout", {{"timeout", 0}}, ToxicStream::kUpstream));
  Client c(proxy.port(), 5000ms);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.Send("lost"));
  c.ShutdownWrite();
  const auto r = c.ReadToEnd();
  EXPECT_TRUE(r.end == End::kEof || r.end == End::kReset);
  EXPECT_EQ(echo.received(), 0u);
}

TEST_F(ToxiproxySemantics, TimeoutRemovalSparesConnectionsItDidNotApplyTo) {
  proxy.AddToxic(Spec("timeout", {{"timeout", 0}}, ToxicStream::kUpstream, 0.0));
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.RoundTrip("before").end, End::kComplete);
  proxy.RemoveToxic("timeout_upstream");
  EXPECT_EQ(c.RoundTrip("after").data, "after");
}

TEST_F(ToxiproxySemantics, AnUpdatedTimeoutCountsFromTheUpdate) {
  proxy.AddToxic(Spec("timeout", {{"timeout", 60'000}}));
  Client c(proxy.port(), 300ms);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.Send("x"));
  ASSERT_EQ(c.Read(1).end, End::kTimeout);  // 300 ms in effect by now
  proxy.UpdateToxic("timeout_downstream", {{"timeout", 200}});
  const auto updated = std::chrono::steady_clock::now();
  const auto r = c.ReadToEnd();
  EXPECT_EQ(r.end, End::kEof);
  EXPECT_GE(std::chrono::steady_clock::now() - updated, 190ms);
}

TEST_F(ToxiproxySemantics, BandwidthZeroStallsUntilTheRateChanges) {
  proxy.AddToxic(Spec("bandwidth", {{"rate", 0}}));
  Client c(proxy.port(), 300ms);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.Send("stalled"));
  const auto stalled = c.Read(7);
  EXPECT_EQ(stalled.end, End::kTimeout);
  EXPECT_EQ(stalled.data, "");
  EXPECT_EQ(proxy.Stats().held_bytes, 7u);
  proxy.UpdateToxic("bandwidth_downstream", {{"rate", 1000}});
  const auto r = c.Read(7);
  EXPECT_EQ(r.end, End::kComplete);
  EXPECT_EQ(r.data, "stalled");
}

TEST_F(ToxiproxySemantics, BandwidthZeroReleasesOnRemovalAndPassesAnEof) {
  proxy.AddToxic(Spec("bandwidth", {{"rate", 0}}));
  Client c(proxy.port(), 300ms);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.Send("held"));
  EXPECT_EQ(c.Read(4).end, End::kTimeout);
  proxy.RemoveToxic("bandwidth_downstream");
  EXPECT_EQ(c.Read(4).data, "held");
  proxy.AddToxic(Spec("bandwidth", {{"rate", 0}}));
  c.ShutdownWrite();  // nothing is held: the end of the stream passes
  EXPECT_EQ(c.ReadToEnd().end, End::kEof);
}

TEST_F(ToxiproxySemantics, ResetPeerAddedToAnOpenConnectionResetsIt) {
  // Deliberately unlike Toxiproxy, which closes such a connection with a FIN.
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.RoundTrip("open").end, End::kComplete);
  proxy.AddToxic(Spec("reset_peer", {{"timeout", 0}}));
  const auto r = c.RoundTrip("ping");
  EXPECT_EQ(r.end, End::kReset);
  EXPECT_EQ(r.data, "");
}

TEST_F(ToxiproxySemantics, ToxicityIsDrawnAgainOnEveryUpdate) {
  // limit_data of 0 bytes closes a connection it applies to at its next data, so the
  // survivors of each round are the connections it did not apply to.
  proxy.AddToxic(Spec("limit_data", {{"bytes", 0}}, ToxicStream::kDownstream, 0.5, "cut"));
  std::vector<std::unique_ptr<Client>> open;
  for (int i = 0; i < 30; ++i) {
    auto c = std::make_unique<Client>(proxy.port());
    ASSERT_TRUE(c->ok());
    if (c->RoundTrip("x").end == End::kComplete) open.push_back(std::move(c));
  }
  ASSERT_GE(open.size(), 5u);
  const size_t before = open.size();
  proxy.UpdateToxic("cut", {{"bytes", 0}});  // same values: a new draw all the same
  size_t cut = 0;
  for (const auto& c : open) cut += c->RoundTrip("y").end != End::kComplete;
  EXPECT_GT(cut, 0u) << "of " << before;
  EXPECT_LT(cut, before);
}

TEST_F(ToxiproxySemantics, SmallReadsShareBuffers) {
  // 30,000 one-byte writes held by a latency: about 30 KB of memory, not a 64 KiB
  // buffer per read.
  proxy.AddToxic(Spec("latency", {{"latency", 60'000}}, ToxicStream::kUpstream));
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  constexpr uint64_t kWrites = 30'000;
  for (uint64_t i = 0; i < kWrites; ++i) ASSERT_TRUE(c.Send("z"));
  ASSERT_TRUE(Eventually([&] { return proxy.Stats().held_bytes == kWrites; }));
  const FaultProxyStats held = proxy.Stats();
  EXPECT_LE(held.held_memory, kBlock + kWrites * 16);  // one block, at most 16 B a read
  EXPECT_GE(held.held_memory, kBlock);
  proxy.RemoveToxic("latency_upstream");
  const auto r = c.Read(kWrites);
  EXPECT_EQ(r.end, End::kComplete);
  EXPECT_EQ(r.data, std::string(kWrites, 'z'));
  EXPECT_TRUE(Eventually([&] {
    const FaultProxyStats s = proxy.Stats();
    return s.held_bytes == 0 && s.held_memory == 0;
  }));
}

TEST_F(ToxiproxySemantics, HeldMemoryStopsReadingAtTheCap) {
  proxy.AddToxic(Spec("latency", {{"latency", 60'000}}, ToxicStream::kUpstream));
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  const std::string data = Pattern(8 << 20);
  std::thread writer([&] { EXPECT_TRUE(c.Send(data)); });  // blocks once the proxy stops
  ASSERT_TRUE(Eventually([&] { return proxy.Stats().held_memory >= kCap - kBlock; }));
  EXPECT_LE(proxy.Stats().held_memory, kCap + kBlock);
  EXPECT_LT(proxy.Stats().held_bytes, kCap + kBlock);
  proxy.RemoveToxic("latency_upstream");
  const auto r = c.Read(data.size());
  writer.join();
  EXPECT_EQ(r.end, End::kComplete);
  EXPECT_TRUE(r.data == data);
}

TEST_F(ToxiproxySemantics, LatencyHoldsEachReadForItsOwnTime) {
  // A later read must not leave with an earlier one that became ready first.
  proxy.AddToxic(Spec("latency", {{"latency", 300}}));
  Client c(proxy.port());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.Send("a"));
  ASSERT_TRUE(Eventually([&] { return proxy.Stats().held_bytes == 1; }));
  const auto first = std::chrono::steady_clock::now();
  // The scenario needs the second write well after the first: a gap, not a wait for
  // the proxy (which is what Eventually is for above).
  ASSERT_TRUE(Eventually([&] { return std::chrono::steady_clock::now() - first >= 100ms; }));
  const auto second = std::chrono::steady_clock::now();
  ASSERT_TRUE(c.Send("b"));
  EXPECT_EQ(c.Read(1).data, "a");
  EXPECT_EQ(c.Read(1).data, "b");
  EXPECT_GE(std::chrono::steady_clock::now() - second, 300ms);
}

}  // namespace
}  // namespace cpcsync
