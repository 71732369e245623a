// Storage fault sweeps (issue 8): every I/O call that a queue call makes fails in
// turn, once (transient), from then on (persistent), or as a full disk (every write
// from the Nth on returns SQLITE_FULL). Each time: the call happens entirely or not
// at all (the whole file is compared before and after), a SyncError(kStorage) with
// SQLite's error nested reaches the caller, the same handle works again once the
// fault clears, nothing stored is lost, and the file passes integrity_check.
#include <gtest/gtest.h>

#include <cstdlib>
#include <exception>
#include <functional>
#include <iostream>

#include "cpcsync/errors.h"
#include "cpcsync/sync_queue.h"
#include "fault_sweep_fixture.h"
#include "sqlite/schema.h"

namespace cpcsync {
namespace {

using testing::Fault;
using testing::FaultVfs;
using testing::QueueSnapshot;

enum class Kind { kTransient, kPersistent, kFull };

const char* KindName(Kind k) {
  return k == Kind::kTransient ? "transient" : k == Kind::kPersistent ? "persistent" : "full";
}

// The calls a sweep counts: a full disk fails writes only; unlocks fail in the long
// sweep only (see kIoNoUnlock).
unsigned Counted(Kind kind) {
  if (kind == Kind::kFull) return testing::kIoWrite;
  return testing::LongSweep() ? testing::kIoAll : testing::kIoNoUnlock;
}

Fault FaultFor(Kind kind, int64_t nth) {
  const auto mode = kind == Kind::kTransient ? Fault::Mode::kTransient : Fault::Mode::kPersistent;
  return Fault{nth, mode, Counted(kind), kind == Kind::kFull ? SQLITE_FULL : SQLITE_IOERR};
}

struct Outcome {
  bool ok = true;
  ErrorCode code = ErrorCode::kStorage;
  bool nests_sqlite = false;
  std::string what;
};

// Runs `call`; a SyncError is an outcome, anything else escapes and fails the test.
Outcome Attempt(const std::function<void()>& call) {
  try {
    call();
    return {};
  } catch (const SyncError& e) {
    Outcome out{false, e.code(), false, e.what()};
    try {
      std::rethrow_if_nested(e);
    } catch (const SyncError& inner) {
      out.nests_sqlite = inner.code() == ErrorCode::kSqlite;
      out.what += std::string(" <- ") + inner.what();
    } catch (...) {
    }
    return out;
  }
}

struct Case {
  std::string name;
  Durability durability;
  std::function<void(testing::SweepQueue&)> call;
};

NewOp Put(std::optional<std::string> key, int prio, const std::string& idem) {
  return testing::NewPut(std::move(key), prio, idem);
}

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {"enqueue_full", Durability::kFull, [](auto& f) { f.q->Enqueue(Put("a", 75, "new")); }},
      {"enqueue_normal", Durability::kNormal, [](auto& f) { f.q->Enqueue(Put("a", 75, "new")); }},
      {"enqueue_off", Durability::kOff, [](auto& f) { f.q->Enqueue(Put("a", 75, "new")); }},
      {"enqueue_many", Durability::kFull,
       [](auto& f) {
         f.q->EnqueueMany({Put("a", 75, "m1"), Put("e", 50, "m2"), Put(std::nullopt, 25, "m3")});
       }},
      {"take", Durability::kFull, [](auto& f) { f.q->Take(10); }},
      {"ack", Durability::kFull, [](auto& f) { f.q->Ack(f.leased); }},
      {"retry", Durability::kFull, [](auto& f) { f.q->Retry(f.leased, 5.0, "boom"); }},
      {"dead_letter", Durability::kFull, [](auto& f) { f.q->DeadLetter(f.leased, "bad"); }},
      {"requeue_dead", Durability::kFull, [](auto& f) { f.q->RequeueDead(std::nullopt); }},
      {"purge_dead", Durability::kFull, [](auto& f) { f.q->PurgeDead(); }},
  };
  return cases;
}

// Figures for docs/reliability-storage.md: printed once per sweep.
struct Figures {
  int64_t calls = 0;     // I/O calls (of the counted kind) the call makes
  int64_t failed = 0;    // runs where the call reported the fault
  int64_t absorbed = 0;  // runs where SQLite absorbed it and the call succeeded
};

class StorageFaultSweep : public ::testing::TestWithParam<std::tuple<size_t, Kind>> {};

TEST_P(StorageFaultSweep, AllOrNothingAndRecovers) {
  const Case& c = Cases()[std::get<0>(GetParam())];
  const Kind kind = std::get<1>(GetParam());
  FaultVfs& vfs = testing::SweepVfs();

  // Dry run: what the call does, and how many I/O calls it makes.
  QueueSnapshot expected, expected_no_hlc;
  Figures fig;
  {
    testing::SweepQueue f(c.name, c.durability);
    testing::Snapshot(f.path);  // as the runs below do: it changes what SQLite reads
    vfs.Count(Counted(kind));
    c.call(f);
    fig.calls = vfs.calls();
    expected = testing::Snapshot(f.path);
    expected_no_hlc = testing::Snapshot(f.path, true);
  }
  ASSERT_GT(fig.calls, 0);

  for (int64_t n = 1; n <= fig.calls; n += testing::SweepStride()) {
    SCOPED_TRACE(c.name + " " + KindName(kind) + " fault at I/O call " + std::to_string(n));
    testing::SweepQueue f(c.name, c.durability);
    const QueueSnapshot before = testing::Snapshot(f.path);
    vfs.Arm(FaultFor(kind, n));
    const Outcome out = Attempt([&] { c.call(f); });
    const bool fired = vfs.failed() > 0;
    const std::string hit = testing::IoCallName(vfs.failed_kind());
    vfs.Clear();
    SCOPED_TRACE(std::string("failed call: ") + hit + "; outcome: " + (out.ok ? "ok" : out.what));
    ASSERT_TRUE(fired);
    ASSERT_EQ(testing::IntegrityCheck(f.path), "ok");
    const QueueSnapshot after = testing::Snapshot(f.path);
    if (out.ok) {
      ++fig.absorbed;
      ASSERT_EQ(after, expected) << testing::Describe(after);
    } else {
      ++fig.failed;
      EXPECT_EQ(out.code, ErrorCode::kStorage);
      EXPECT_TRUE(out.nests_sqlite);
      ASSERT_EQ(after, before) << "a failed call changed the queue:\n" << testing::Describe(after);
      // The fault is gone: the same handle does the call (HLC stamps move on).
      const Outcome again = Attempt([&] { c.call(f); });
      ASSERT_TRUE(again.ok) << again.what;
      ASSERT_EQ(testing::Snapshot(f.path, true), expected_no_hlc);
    }
    f.CheckStillWorks();
    if (::testing::Test::HasFatalFailure()) return;
  }
  std::cout << "[sweep] " << c.name << " " << KindName(kind) << ": " << fig.calls
            << " I/O calls; failed " << fig.failed << ", absorbed " << fig.absorbed << "\n";
}

std::string Name(const ::testing::TestParamInfo<std::tuple<size_t, Kind>>& info) {
  return Cases()[std::get<0>(info.param)].name + "_" + KindName(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Calls, StorageFaultSweep,
                         ::testing::Combine(::testing::Range<size_t>(0, 10),
                                            ::testing::Values(Kind::kTransient, Kind::kPersistent,
                                                              Kind::kFull)),
                         Name);

// A full disk that clears by itself (issue 13: the queue's own WAL filled it, and one
// TRUNCATE checkpoint frees it): SQLITE_FULL from any one write of a call, once. The
// storage checkpoints, truncates the WAL and retries the call, which succeeds, whole.
class DiskFullOnce : public ::testing::TestWithParam<size_t> {};

TEST_P(DiskFullOnce, RetriedAfterFreeingTheWal) {
  const Case& c = Cases()[GetParam()];
  FaultVfs& vfs = testing::SweepVfs();
  QueueSnapshot expected;
  int64_t calls = 0;
  {
    testing::SweepQueue f(c.name, c.durability);
    testing::Snapshot(f.path);
    vfs.Count(testing::kIoWrite);
    c.call(f);
    calls = vfs.calls();
    expected = testing::Snapshot(f.path, true);
  }
  ASSERT_GT(calls, 0);
  for (int64_t n = 1; n <= calls; n += testing::SweepStride()) {
    SCOPED_TRACE(c.name + " SQLITE_FULL once at write " + std::to_string(n));
    testing::SweepQueue f(c.name, c.durability);
    testing::Snapshot(f.path);
    vfs.Arm(Fault{n, Fault::Mode::kTransient, testing::kIoWrite, SQLITE_FULL});
    const Outcome out = Attempt([&] { c.call(f); });
    const bool fired = vfs.failed() > 0;
    vfs.Clear();
    ASSERT_TRUE(fired);
    ASSERT_TRUE(out.ok) << out.what;
    ASSERT_EQ(testing::IntegrityCheck(f.path), "ok");
    ASSERT_EQ(testing::Snapshot(f.path, true), expected);
    f.CheckStillWorks();
    if (::testing::Test::HasFatalFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Calls, DiskFullOnce, ::testing::Range<size_t>(0, 10),
                         [](const auto& info) { return Cases()[info.param].name; });

// Opening a queue file of schema 1 migrates it to the current schema in one
// transaction: under every fault the file is at one version or the other, whole,
// and the next open (without the fault) migrates it.
class MigrationFaultSweep : public ::testing::TestWithParam<Kind> {};

TEST_P(MigrationFaultSweep, OneVersionOrTheOther) {
  const Kind kind = GetParam();
  FaultVfs& vfs = testing::SweepVfs();
  const std::string path = testing::SweepPath("migrate");
  QueueSnapshot before, expected;
  int64_t calls = 0;
  {
    testing::PrepareVersion1(path);
    before = testing::Snapshot(path);
    vfs.Count(Counted(kind));
    auto q = testing::OpenSweepQueue(path, Durability::kFull);
    calls = vfs.calls();
    q->Close();
    expected = testing::Snapshot(path);
  }
  ASSERT_EQ(before.user_version, 1);
  ASSERT_EQ(expected.user_version, sqlite::kSchemaVersion);
  int64_t failed = 0;
  for (int64_t n = 1; n <= calls; n += testing::SweepStride()) {
    SCOPED_TRACE(std::string(KindName(kind)) + " fault at I/O call " + std::to_string(n));
    testing::PrepareVersion1(path);
    vfs.Arm(FaultFor(kind, n));
    const Outcome out = Attempt([&] { testing::OpenSweepQueue(path, Durability::kFull)->Close(); });
    const std::string hit = testing::IoCallName(vfs.failed_kind());
    vfs.Clear();
    SCOPED_TRACE(std::string("failed call: ") + hit + "; outcome: " + (out.ok ? "ok" : out.what));
    ASSERT_EQ(testing::IntegrityCheck(path), "ok");
    const QueueSnapshot after = testing::Snapshot(path);
    if (!out.ok) {
      ++failed;
      EXPECT_EQ(out.code, ErrorCode::kStorage);
      EXPECT_TRUE(out.nests_sqlite);
      ASSERT_TRUE(after == before || after == expected) << testing::Describe(after);
    }
    auto q = testing::OpenSweepQueue(path, Durability::kFull);
    q->Close();
    ASSERT_EQ(testing::Snapshot(path), expected);
  }
  std::cout << "[sweep] migrate " << KindName(kind) << ": " << calls << " I/O calls; failed "
            << failed << "\n";
}

INSTANTIATE_TEST_SUITE_P(Faults, MigrationFaultSweep,
                         ::testing::Values(Kind::kTransient, Kind::kPersistent, Kind::kFull),
                         [](const auto& info) { return std::string(KindName(info.param)); });

}  // namespace
}  // namespace cpcsync
