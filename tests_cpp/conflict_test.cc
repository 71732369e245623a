#include "cpcsync/conflict.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "cpcsync/hlc.h"

namespace cpcsync {
namespace {

const uint64_t kT = HybridLogicalClock::Pack(1'000'000, 0);

Operation Op(uint64_t hlc, std::string payload = "{}") {
  Operation op;
  op.id = 1;
  op.kind = "set";
  op.key = "user:42";
  op.hlc = hlc;
  op.payload = std::move(payload);
  return op;
}

Remote Rem(std::optional<uint64_t> hlc, std::string value = "{}") {
  return Remote{std::move(value), hlc, 7};
}

// ----------------------------------------------------------------------------- simple ones

TEST(ResolutionTest, Factories) {
  EXPECT_EQ(Resolution::UseLocal().kind, Resolution::kUseLocal);
  EXPECT_EQ(Resolution::UseRemote().kind, Resolution::kUseRemote);
  const Resolution m = Resolution::Merge("{\"a\":1}");
  EXPECT_EQ(m.kind, Resolution::kMerge);
  EXPECT_EQ(m.payload, "{\"a\":1}");
  EXPECT_TRUE(Resolution::UseLocal().payload.empty());
  EXPECT_STREQ(ResolutionKindName(Resolution::kUseLocal), "use_local");
  EXPECT_STREQ(ResolutionKindName(Resolution::kUseRemote), "use_remote");
  EXPECT_STREQ(ResolutionKindName(Resolution::kMerge), "merge");
}

TEST(LastWriteWinsTest, NewerLocalWins) {
  LastWriteWins lww;
  EXPECT_EQ(lww.Resolve(Op(kT + 1), Rem(kT)), Resolution::UseLocal());
  // A later millisecond beats any logical counter.
  EXPECT_EQ(lww.Resolve(Op(HybridLogicalClock::Pack(1'000'001, 0)),
                        Rem(HybridLogicalClock::Pack(1'000'000, 0xFFFF))),
            Resolution::UseLocal());
}

TEST(LastWriteWinsTest, NewerRemoteWins) {
  LastWriteWins lww;
  EXPECT_EQ(lww.Resolve(Op(kT), Rem(kT + 1)), Resolution::UseRemote());
  EXPECT_EQ(lww.Resolve(Op(0), Rem(UINT64_MAX)), Resolution::UseRemote());
}

TEST(LastWriteWinsTest, TieGoesToLocal) {
  LastWriteWins lww;
  EXPECT_EQ(lww.Resolve(Op(kT), Rem(kT)), Resolution::UseLocal());
  EXPECT_EQ(lww.Resolve(Op(0), Rem(0)), Resolution::UseLocal());
}

TEST(LastWriteWinsTest, RemoteWithoutHlcLosesToLocal) {
  LastWriteWins lww;
  EXPECT_EQ(lww.Resolve(Op(0), Rem(std::nullopt)), Resolution::UseLocal());
  EXPECT_EQ(lww.Resolve(Op(kT), Rem(std::nullopt)), Resolution::UseLocal());
}

TEST(ServerClientWinsTest, IgnoreTimestamps) {
  ServerWins server;
  ClientWins client;
  for (auto [l, r] : std::vector<std::pair<uint64_t, std::optional<uint64_t>>>{
           {kT, kT + 1}, {kT + 1, kT}, {kT, kT}, {kT, std::nullopt}}) {
    EXPECT_EQ(server.Resolve(Op(l), Rem(r)), Resolution::UseRemote());
    EXPECT_EQ(client.Resolve(Op(l), Rem(r)), Resolution::UseLocal());
  }
}

// ----------------------------------------------------------------------------- field merge

Resolution Merge(const std::string& local, const std::string& remote, uint64_t local_hlc,
                 std::optional<uint64_t> remote_hlc) {
  FieldMerge fm;
  return fm.Resolve(Op(local_hlc, local), Rem(remote_hlc, remote));
}

TEST(FieldMergeTest, DisjointFieldsAreAllKept) {
  // Whichever side is newer: no field is on both sides.
  const auto expected = Resolution::Merge(R"({"a":1,"b":"x","c":2,"d":null})");
  EXPECT_EQ(Merge(R"({"a":1,"b":"x"})", R"({"c":2,"d":null})", kT + 1, kT), expected);
  EXPECT_EQ(Merge(R"({"a":1,"b":"x"})", R"({"c":2,"d":null})", kT, kT + 1), expected);
}

TEST(FieldMergeTest, OverlappingFieldsTakeTheNewerSide) {
  const std::string local = R"({"a":1,"b":"local","c":true})";
  const std::string remote = R"({"b":"remote","c":false,"d":4})";
  EXPECT_EQ(Merge(local, remote, kT + 1, kT),
            Resolution::Merge(R"({"a":1,"b":"local","c":true,"d":4})"));
  EXPECT_EQ(Merge(local, remote, kT, kT + 1),
            Resolution::Merge(R"({"a":1,"b":"remote","c":false,"d":4})"));
  // Tie and unknown remote time: local.
  EXPECT_EQ(Merge(local, remote, kT, kT),
            Resolution::Merge(R"({"a":1,"b":"local","c":true,"d":4})"));
  EXPECT_EQ(Merge(local, remote, kT, std::nullopt),
            Resolution::Merge(R"({"a":1,"b":"local","c":true,"d":4})"));
}

TEST(FieldMergeTest, NestedObjectsMergeRecursively) {
  const std::string local = R"({"profile":{"name":"Ann","address":{"city":"Oslo"}},"n":1})";
  const std::string remote =
      R"({"profile":{"name":"Bob","age":30,"address":{"city":"Rome","zip":"00100"}},"n":2})";
  EXPECT_EQ(
      Merge(local, remote, kT + 1, kT),
      Resolution::Merge(
          R"({"profile":{"name":"Ann","address":{"city":"Oslo","zip":"00100"},"age":30},"n":1})"));
  EXPECT_EQ(
      Merge(local, remote, kT, kT + 1),
      Resolution::Merge(
          R"({"profile":{"name":"Bob","address":{"city":"Rome","zip":"00100"},"age":30},"n":2})"));
}

TEST(FieldMergeTest, ObjectAgainstNonObjectIsAValue) {
  const std::string local = R"({"p":{"x":1}})";
  const std::string remote = R"({"p":5})";
  EXPECT_EQ(Merge(local, remote, kT + 1, kT), Resolution::Merge(R"({"p":{"x":1}})"));
  EXPECT_EQ(Merge(local, remote, kT, kT + 1), Resolution::Merge(R"({"p":5})"));
}

TEST(FieldMergeTest, ArraysAreValuesNotMerged) {
  const std::string local = R"({"tags":["a","b"],"m":[{"x":1}]})";
  const std::string remote = R"({"tags":["c"],"m":[{"y":2}]})";
  EXPECT_EQ(Merge(local, remote, kT + 1, kT), Resolution::Merge(local));
  EXPECT_EQ(Merge(local, remote, kT, kT + 1), Resolution::Merge(remote));
}

TEST(FieldMergeTest, NullIsAValueNotADeletion) {
  EXPECT_EQ(Merge(R"({"a":null})", R"({"a":1})", kT + 1, kT), Resolution::Merge(R"({"a":null})"));
  EXPECT_EQ(Merge(R"({"a":null})", R"({"a":1})", kT, kT + 1), Resolution::Merge(R"({"a":1})"));
}

TEST(FieldMergeTest, EmptyObjectsAndUnicode) {
  EXPECT_EQ(Merge("{}", "{}", kT, kT), Resolution::Merge("{}"));
  EXPECT_EQ(Merge(" { \"a\" : 1 } ", "{}", kT, kT), Resolution::Merge(R"({"a":1})"));
  // Non-ASCII stays UTF-8 (not \u escapes); escapes in the input are decoded.
  EXPECT_EQ(Merge(R"({"n":"Zoë"})", R"({"m":"\u00e9"})", kT, kT),
            Resolution::Merge("{\"n\":\"Zo\xc3\xab\",\"m\":\"\xc3\xa9\"}"));
}

TEST(FieldMergeTest, NonObjectPayloadsFallBackToLastWriteWins) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", R"({"a":1})"},            // invalid JSON locally
      {R"({"a":1})", "{\"a\":"},             // truncated remotely
      {"[1,2]", R"({"a":1})"},               // an array
      {R"({"a":1})", "42"},                  // a scalar
      {R"({"a":1})", "null"},                //
      {R"("text")", R"({"a":1})"},           // a JSON string
      {"", R"({"a":1})"},                    // empty
      {"{\"a\":\"\xff\"}", R"({"b":1})"},    // invalid UTF-8
      {R"({"a":1} {"b":2})", R"({"c":3})"},  // trailing data
  };
  for (const auto& [local, remote] : cases) {
    SCOPED_TRACE(local + " / " + remote);
    EXPECT_EQ(Merge(local, remote, kT + 1, kT), Resolution::UseLocal());
    EXPECT_EQ(Merge(local, remote, kT, kT + 1), Resolution::UseRemote());
    EXPECT_EQ(Merge(local, remote, kT, kT), Resolution::UseLocal());
    EXPECT_EQ(Merge(local, remote, kT, std::nullopt), Resolution::UseLocal());
  }
}

std::string Nested(int depth) {
  std::string s;
  for (int i = 0; i < depth; ++i) s += "{\"a\":";
  s += "1";
  for (int i = 0; i < depth; ++i) s += "}";
  return s;
}

TEST(FieldMergeTest, DeepNestingIsBoundedAndNeverCrashes) {
  // Up to the limit: merged; one level more: the last-write-wins fallback.
  const std::string ok = Nested(FieldMerge::kMaxMergeDepth);
  EXPECT_EQ(Merge(ok, ok, kT, kT), Resolution::Merge(ok));
  const std::string over = Nested(FieldMerge::kMaxMergeDepth + 1);
  EXPECT_EQ(Merge(over, R"({"b":1})", kT, kT), Resolution::UseLocal());
  EXPECT_EQ(Merge(R"({"b":1})", over, kT, kT + 1), Resolution::UseRemote());
  // Far past it (a stack-overflow attempt): the last-write-wins fallback.
  const std::string deep = Nested(1'000'000);
  EXPECT_EQ(Merge(deep, R"({"a":1})", kT, kT + 1), Resolution::UseRemote());
  EXPECT_EQ(Merge(R"({"a":1})", deep, kT + 1, kT), Resolution::UseLocal());
  std::string arrays(1'000'000, '[');
  EXPECT_EQ(Merge(R"({"a":1})", "{\"a\":" + arrays, kT + 1, kT), Resolution::UseLocal());
}

TEST(FieldMergeTest, MergeObjectsDirectly) {
  EXPECT_EQ(FieldMerge::MergeObjects(R"({"a":1})", R"({"a":2,"b":3})", true), R"({"a":1,"b":3})");
  EXPECT_EQ(FieldMerge::MergeObjects(R"({"a":1})", R"({"a":2,"b":3})", false), R"({"a":2,"b":3})");
  EXPECT_EQ(FieldMerge::MergeObjects("[]", "{}", true), std::nullopt);
}

TEST(ConflictResolverTest, BuiltinsAreSafeFromManyThreads) {
  FieldMerge fm;
  LastWriteWins lww;
  std::atomic<int> wrong{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t) {
    pool.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        const uint64_t l = kT + static_cast<uint64_t>((i + t) % 3);
        const Operation op = Op(l, R"({"a":1,"t":)" + std::to_string(t) + "}");
        const Remote r = Rem(kT + 1, R"({"a":2,"b":3})");
        const Resolution m = fm.Resolve(op, r);
        const std::string a = l >= kT + 1 ? "1" : "2";
        if (m.payload != R"({"a":)" + a + R"(,"t":)" + std::to_string(t) + R"(,"b":3})") ++wrong;
        if (lww.Resolve(op, r).kind !=
            (l >= kT + 1 ? Resolution::kUseLocal : Resolution::kUseRemote)) {
          ++wrong;
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

}  // namespace
}  // namespace cpcsync
