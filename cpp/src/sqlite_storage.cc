#include "cpcsync/sqlite_storage.h"

#include <pthread.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <string_view>
#include <utility>

#include "cpcsync/errors.h"
#include "cpcsync/log.h"
#include "lane_merge.h"
#include "no_destructor.h"
#include "sqlite/checkpointer.h"
#include "sqlite/consumer_lock.h"
#include "sqlite/db.h"
#include "sqlite/schema.h"

namespace cpcsync {
namespace {

using sqlite::Db;
using sqlite::Stmt;
using sqlite::Use;

// fork(): SQLite keeps each process's lock bookkeeping per file in memory, shared by
// all its connections to that file. A child forked while another thread was inside
// a transaction inherits "a connection of this process holds the write lock", and a
// handle the child opens on the same file then waits for that lock forever. So fork()
// waits until no queue connection is inside a call (every connection's mutex is
// held across it); the child then finds every inherited connection idle.
class ForkGuard {
 public:
  static void Add(std::mutex* m) {
    ForkGuard& g = Get();
    std::lock_guard lock(g.mu_);
    g.connections_.insert(m);
  }
  static void Remove(std::mutex* m) {
    ForkGuard& g = Get();
    std::lock_guard lock(g.mu_);
    g.connections_.erase(m);
  }

 private:
  static ForkGuard& Get() {
    static NoDestructor<ForkGuard> guard;  // threads may close handles during exit()
    static std::once_flag once;
    std::call_once(once, [] { pthread_atfork(&Prepare, &Release, &Release); });
    return *guard;
  }
  static void Prepare() {
    ForkGuard& g = Get();
    g.mu_.lock();
    // Held across fork() and let go in Release(). cppcheck's localMutex takes `m` (a
    // pointer to a connection's mutex) for a mutex local to this loop: a false positive.
    // cppcheck-suppress localMutex
    for (std::mutex* m : g.connections_) m->lock();
  }
  static void Release() {
    ForkGuard& g = Get();
    for (std::mutex* m : g.connections_) m->unlock();
    g.mu_.unlock();
  }

  std::mutex mu_;
  std::set<std::mutex*> connections_;
};

// WAL frames after which a handle at "full" checkpoints inline (SQLite default: 1,000).
constexpr int kFullAutoCheckpointFrames = 4000;

// The WAL's bound (issue 13: on a 2 MiB disk a WAL grown towards the fixed thresholds
// filled it, and every write failed until a manual checkpoint). The inline checkpoint
// threshold, and journal_size_limit (the size a restarted WAL is truncated back to),
// are a quarter of the free space on the file's filesystem, rounded down to a power of
// two frames, between kMinWalFrames and the fixed thresholds above; re-read every
// kWalBudgetEvery commits (one statvfs).
constexpr int64_t kWalShareOfFree = 4;
constexpr int kMinWalFrames = 32;
constexpr int kWalBudgetEvery = 16;
// On SQLITE_FULL, the TRUNCATE checkpoint waits at most this long for readers (of any
// process) to leave the WAL, then frees what it can.
constexpr int kFullDiskCheckpointWaitMs = 1000;

bool IsDiskFull(const SyncError& e) { return (e.sqlite_code() & 0xFF) == SQLITE_FULL; }

bool IsDiskFull(const std::exception_ptr& e) {
  if (!e) return false;
  try {
    std::rethrow_exception(e);
  } catch (const SyncError& s) {
    return IsDiskFull(s);
  } catch (...) {
    return false;
  }
}

constexpr const char* kOpColumns =
    "id, kind, key, payload, priority, idempotency_key, hlc, created_at, attempts, "
    "next_attempt_at, last_error, state, expires_at, first_attempt_at, base_version, "
    "network_failures";

Operation ReadOp(const Stmt& s) {
  Operation op;
  op.id = s.Int(0);
  op.kind = s.Text(1);
  op.key = s.OptText(2);
  op.payload = s.Blob(3);
  op.priority = static_cast<int>(s.Int(4));
  op.idempotency_key = s.Text(5);
  op.hlc = static_cast<uint64_t>(s.Int(6));
  op.created_at = s.Real(7);
  op.attempts = static_cast<int>(s.Int(8));
  op.next_attempt_at = s.Real(9);
  op.last_error = s.OptText(10);
  op.state = static_cast<OpState>(s.Int(11));
  op.expires_at = s.OptReal(12);
  op.first_attempt_at = s.OptReal(13);
  op.base_version = s.OptInt(14);
  op.network_failures = static_cast<int>(s.Int(15));
  return op;
}

std::string Sql(const std::string& head, const std::string& tail = "") {
  return head + kOpColumns + tail;
}

struct Counters {
  int64_t live_ops = 0, live_bytes = 0, dead_ops = 0;
  uint64_t max_hlc = 0;
  std::map<int, int64_t> pending_by_prio;  // priority -> pending ops (no zero entries)
  int64_t network_failures = 0;            // over the file's lifetime (schema 4)
  double wall_high = 0;                    // the latest `now` a write stored in an op (schema 4)
  bool operator==(const Counters&) const = default;

  void AddPending(int priority, int64_t n) {
    const int64_t now = pending_by_prio[priority] += n;
    if (now == 0) pending_by_prio.erase(priority);
  }
};

// The counters row's pending_by_prio text: "prio:count,..." in ascending priority.
std::string EncodeByPrio(const std::map<int, int64_t>& m) {
  std::string out;
  for (const auto& [prio, n] : m) {
    if (!out.empty()) out += ',';
    out += std::to_string(prio);
    out += ':';
    out += std::to_string(n);
  }
  return out;
}

std::map<int, int64_t> DecodeByPrio(std::string_view text) {
  std::map<int, int64_t> out;
  while (!text.empty()) {
    const size_t comma = text.find(',');
    const std::string_view item = text.substr(0, comma);
    const size_t colon = item.find(':');
    int prio = 0;
    int64_t n = 0;
    const char* end = item.data() + item.size();
    if (colon == std::string_view::npos ||
        std::from_chars(item.data(), item.data() + colon, prio).ec != std::errc() ||
        std::from_chars(item.data() + colon + 1, end, n).ec != std::errc()) {
      throw SyncError(ErrorCode::kCorrupt, "queue file has a damaged counters row");
    }
    if (n != 0) out[prio] = n;
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return out;
}

// Every statement the storage runs, prepared once per connection.
struct Statements {
  explicit Statements(sqlite3* db)
      : begin(db, "BEGIN"),
        begin_immediate(db, "BEGIN IMMEDIATE"),
        commit(db, "COMMIT"),
        rollback(db, "ROLLBACK"),
        savepoint(db, "SAVEPOINT batch_item"),
        release(db, "RELEASE batch_item"),
        rollback_to(db, "ROLLBACK TO batch_item"),
        read_counters(db,
                      "SELECT live_ops, live_bytes, dead_ops, max_hlc, pending_by_prio, "
                      "network_failures, wall_high FROM counters"),
        write_counters(db,
                       "UPDATE counters SET live_ops=?1, live_bytes=?2, dead_ops=?3, max_hlc=?4, "
                       "pending_by_prio=?5, network_failures=?6, wall_high=?7"),
        // Changes the counters row and back within one transaction: its page is then
        // dirty (SQLite skips a write that changes no byte), so the commit writes one
        // WAL frame and a FULL commit has something to sync (see SyncEarlierCommits).
        nudge_up(db, "UPDATE counters SET wall_high=wall_high+1"),
        nudge_down(db, "UPDATE counters SET wall_high=wall_high-1"),
        insert(db,
               "INSERT INTO ops(kind, key, payload, size, priority, idempotency_key, hlc, "
               "created_at, attempts, next_attempt_at, last_error, state, expires_at, "
               "first_attempt_at, base_version) "
               "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, NULL, 0, ?10, NULL, ?11)"),
        load(db, Sql("SELECT ", " FROM ops WHERE id=?1")),
        brief(db, "SELECT key, state, size, priority, next_attempt_at FROM ops WHERE id=?1"),
        lane_head(db, "SELECT id FROM ops WHERE key=?1 AND state<2 ORDER BY id LIMIT 1"),
        lane_last(db,
                  "SELECT id, kind, state, size, priority FROM ops WHERE key=?1 AND state<2 "
                  "ORDER BY id DESC LIMIT 1"),
        lane_prio(db, "SELECT max(priority) FROM ops WHERE key=?1 AND state=0"),
        // Both walk one lane from `after` on and stop at the first match (INDEXED BY: left
        // to itself the planner reads the whole lane through ops_lane_prio, then sorts it,
        // which cost O(lane length) per peeked op: 10.8 ms per peek(10) at 1,000 ops a lane).
        lane_next(db,
                  "SELECT id FROM ops INDEXED BY ops_lane WHERE key=?1 AND state<2 AND id>?2 "
                  "AND state=0 AND (expires_at IS NULL OR expires_at>?3) ORDER BY id LIMIT 1"),
        // Highest priority first, newest first within it: the first live op with id >= ?2
        // found is the answer, normally the first entry read.
        lane_prio_from(db,
                       "SELECT priority FROM ops INDEXED BY ops_lane_prio WHERE key=?1 AND "
                       "state=0 AND id>=?2 AND (expires_at IS NULL OR expires_at>?3) "
                       "ORDER BY priority DESC, id DESC LIMIT 1"),
        expired_all(db, "SELECT id, key FROM ops WHERE state=0 AND expires_at<=?1"),
        ready_add(db, "INSERT INTO ready(op_id, prio) VALUES(?1, ?2)"),
        waiting_add(db, "INSERT INTO waiting(op_id, prio, due) VALUES(?1, ?2, ?3)"),
        ready_del(db, "DELETE FROM ready WHERE op_id=?1"),
        waiting_del(db, "DELETE FROM waiting WHERE op_id=?1"),
        ready_bump(db, "UPDATE ready SET prio=?2 WHERE op_id=?1 AND prio<?2"),
        waiting_bump(db, "UPDATE waiting SET prio=?2 WHERE op_id=?1 AND prio<?2"),
        ready_set(db, "UPDATE ready SET prio=?2 WHERE op_id=?1"),
        waiting_set(db, "UPDATE waiting SET prio=?2 WHERE op_id=?1"),
        coalesce(db,
                 "UPDATE ops SET payload=?2, size=?3, hlc=?4, priority=max(priority, ?5), "
                 "idempotency_key=?6, attempts=0, network_failures=0, last_error=NULL, "
                 "first_attempt_at=NULL, next_attempt_at=?7, expires_at=?8, scheduled_at=?9 "
                 "WHERE id=?1"),
        victim(db, "SELECT id FROM ops WHERE state=0 ORDER BY priority, id DESC LIMIT 1"),
        expired(db,
                "SELECT id FROM ops WHERE state=0 AND expires_at<=?1 ORDER BY expires_at "
                "LIMIT 256"),
        promote(db, "INSERT INTO ready(op_id, prio) SELECT op_id, prio FROM waiting WHERE due<=?1"),
        promoted(db, "DELETE FROM waiting WHERE due<=?1"),
        pick(db, "SELECT op_id FROM ready ORDER BY prio DESC, op_id LIMIT ?1"),
        lease(db, Sql("UPDATE ops SET state=1, attempts=attempts+1, "
                      "first_attempt_at=coalesce(first_attempt_at, ?2) WHERE id=?1 RETURNING ")),
        ack(db, "DELETE FROM ops WHERE id=?1"),
        // ?4 = 1 when it was not an attempt (the lease counted one); ?6 = 1 for a
        // network failure; ?7 = 1 to keep last_error (never sent).
        retry(db,
              "UPDATE ops SET state=0, next_attempt_at=?2, scheduled_at=?5, "
              "last_error=CASE WHEN ?7 THEN last_error ELSE ?3 END, "
              "attempts=max(0, attempts-?4), network_failures=network_failures+?6 WHERE id=?1"),
        bury(db, "UPDATE ops SET state=2, last_error=?2, dead_at=?3 WHERE id=?1"),
        base_version(db, "UPDATE ops SET base_version=?2 WHERE id=?1"),
        replace_payload(db, "UPDATE ops SET payload=?2, size=?3 WHERE id=?1"),
        dead_list(db, Sql("SELECT ", " FROM ops WHERE state=2 ORDER BY id LIMIT ?1")),
        dead_ids(db, "SELECT id FROM ops WHERE state=2 ORDER BY id"),
        requeue(db,
                "INSERT INTO ops(kind, key, payload, size, priority, idempotency_key, hlc, "
                "created_at, attempts, next_attempt_at, last_error, state, expires_at, "
                "first_attempt_at, base_version) "
                "SELECT kind, key, payload, size, priority, idempotency_key, hlc, ?2, 0, ?2, "
                "NULL, 0, NULL, NULL, base_version FROM ops WHERE id=?1"),
        purge(db, "DELETE FROM ops WHERE state=2"),
        in_flight(db, "SELECT id, key, priority FROM ops WHERE state=1 ORDER BY id"),
        unlease(db, "UPDATE ops SET state=0 WHERE id=?1"),
        count_in_flight(db, "SELECT count(*) FROM ops WHERE state=1"),
        count_pending_by_prio(db,
                              "SELECT priority, count(*) FROM ops WHERE state=0 "
                              "GROUP BY priority"),
        // The oldest pending op of one priority: the end of its run in ops_by_priority
        // (one seek). Stats() asks once per priority present, so dead letters and leases
        // ahead of the oldest pending op are never read.
        oldest(db,
               "SELECT id, created_at FROM ops INDEXED BY ops_by_priority "
               "WHERE state=0 AND priority=?1 ORDER BY id LIMIT 1"),
        // The lowest id held (one seek at the start of the rowid tree); with no row, the
        // id AUTOINCREMENT gives next: above the largest ever used, which sqlite_sequence
        // keeps (one row per AUTOINCREMENT table; none before the first insert).
        low_water(db,
                  "SELECT coalesce((SELECT min(id) FROM ops), "
                  "(SELECT seq FROM sqlite_sequence WHERE name='ops') + 1, 1)"),
        any_ready(db, "SELECT 1 FROM ready LIMIT 1"),
        first_due(db, "SELECT min(due) FROM waiting"),
        ready_scan(db,
                   "SELECT r.op_id, r.prio, o.key FROM ready r JOIN ops o ON o.id=r.op_id "
                   "ORDER BY r.prio DESC, r.op_id"),
        waiting_scan(db,
                     "SELECT w.op_id, w.prio, o.key FROM waiting w JOIN ops o ON o.id=w.op_id "
                     "ORDER BY w.prio DESC, w.op_id"),
        // After the wall clock went back (now ?1 < wall_high): a due time no further
        // ahead than the op's own delay, a TTL deadline no further than its ttl, and no
        // creation time in the future. Scans the live ops, only then.
        clamp_due(db,
                  "UPDATE ops SET next_attempt_at=?1+max(0, next_attempt_at-coalesce(scheduled_at, "
                  "created_at)), scheduled_at=?1 WHERE state<2 AND coalesce(scheduled_at, "
                  "created_at)>?1"),
        clamp_created(db,
                      "UPDATE ops SET expires_at=expires_at-(created_at-?1), created_at=?1 "
                      "WHERE state<2 AND created_at>?1"),
        clamp_waiting(db,
                      "UPDATE waiting SET due=(SELECT next_attempt_at FROM ops WHERE "
                      "ops.id=waiting.op_id) WHERE due>?1") {}

  Stmt begin, begin_immediate, commit, rollback, savepoint, release, rollback_to;
  Stmt read_counters, write_counters, nudge_up, nudge_down;
  Stmt insert, load, brief, lane_head, lane_last, lane_prio, lane_next, lane_prio_from, expired_all;
  Stmt ready_add, waiting_add, ready_del, waiting_del, ready_bump, waiting_bump, ready_set,
      waiting_set;
  Stmt coalesce, victim, expired, promote, promoted, pick, lease, ack, retry, bury;
  Stmt base_version, replace_payload, dead_list, dead_ids, requeue, purge, in_flight, unlease;
  Stmt count_in_flight, count_pending_by_prio, oldest, low_water, any_ready, first_due, ready_scan,
      waiting_scan, clamp_due, clamp_created, clamp_waiting;
};

class SqliteStorage final : public QueueStorage {
 public:
  SqliteStorage(const std::string& path, const SqliteOptions& options)
      : path_(path), options_(options) {
    OpenFile();
    stmts_ = std::make_unique<Statements>(db_.get());
    if (!options_.read_only) {
      notify_name_ = sqlite::NotifyName(path_);
      notifier_ = std::make_unique<sqlite::Notifier>(notify_name_);
      RepairPendingDepth();
      RecoverOrphanedLeases();
    }
    ForkGuard::Add(&db_mu_);
    if (checkpointer_) ForkGuard::Add(&checkpointer_->work_mutex());
  }

  ~SqliteStorage() override {
    ForkGuard::Remove(&db_mu_);
    try {
      Close();
    } catch (const std::exception& e) {
      Log().error("closing queue '{}': {}", path_, e.what());
    }
  }

  std::vector<int64_t> Insert(std::vector<StampedOp>& ops, const Limits& limits) override {
    RequireWritable("enqueue");
    Request req{&ops, &limits, {}, nullptr, false};
    {
      std::unique_lock lk(gc_mu_);
      gc_pending_.push_back(&req);
      gc_writers_ = std::max(gc_writers_, gc_pending_.size() + gc_in_commit_);
      if (gc_gathering_) gc_cv_.notify_all();
      while (!req.done) {
        if (gc_leader_) {
          gc_cv_.wait(lk);
          continue;
        }
        gc_leader_ = true;
        Gather(lk);
        std::vector<Request*> batch;
        batch.swap(gc_pending_);
        gc_in_commit_ = batch.size();
        lk.unlock();
        const auto start = std::chrono::steady_clock::now();
        CommitBatch(batch);
        const auto took = std::chrono::steady_clock::now() - start;
        lk.lock();
        gc_last_commit_ = std::chrono::duration_cast<std::chrono::microseconds>(took);
        for (Request* r : batch) r->done = true;
        gc_in_commit_ = 0;
        gc_leader_ = false;
        gc_cv_.notify_all();
      }
    }
    if (req.error) std::rethrow_exception(req.error);
    if (!is_consumer_.load()) notifier_->Notify();
    return std::move(req.ids);
  }

  std::vector<Operation> Take(size_t n, double now) override {
    std::lock_guard lock(db_mu_);
    return WithSpaceRetry([&] { return TakeLocked(n, now); });
  }

  std::vector<Operation> TakeLocked(size_t n, double now) {
    Txn txn(*this, Durability::kNormal);
    while (true) {
      std::vector<int64_t> expired;
      {
        Use s(st().expired);
        s->Bind(1, now);
        while (s->Step()) expired.push_back(s->Int(0));
      }
      for (int64_t id : expired) DeadLetterLocked(id, "expired", now);
      if (expired.size() < 256) break;
    }
    Use(st().promote)->Bind(1, now).Run();
    Use(st().promoted)->Bind(1, now).Run();
    std::vector<int64_t> ids;
    {
      Use s(st().pick);
      s->Bind(1, static_cast<int64_t>(n));
      while (s->Step()) ids.push_back(s->Int(0));
    }
    std::vector<Operation> out;
    out.reserve(ids.size());
    for (int64_t id : ids) {
      Use(st().ready_del)->Bind(1, id).Run();
      Use s(st().lease);
      s->Bind(1, id).Bind(2, now);
      if (!s->Step()) {
        throw SyncError(ErrorCode::kCorrupt, "ready op " + std::to_string(id) + " is missing");
      }
      out.push_back(ReadOp(*s));
      counters_.AddPending(out.back().priority, -1);
    }
    txn.Commit();
    return out;
  }

  void Ack(int64_t id, double now) override {
    std::lock_guard lock(db_mu_);
    WithSpaceRetry([&] {
      Txn txn(*this, Durability::kNormal);
      Brief b = RequireState(id, OpState::kInFlight, "ack");
      Use(st().ack)->Bind(1, id).Run();
      counters_.live_ops -= 1;
      counters_.live_bytes -= b.size;
      if (b.key) AdvanceLane(*b.key, now);
      txn.Commit();
    });
  }

  void Retry(int64_t id, double next_attempt_at, const std::optional<std::string>& error,
             double now, RetryKind kind) override {
    const bool network = kind == RetryKind::kNetwork;
    std::lock_guard lock(db_mu_);
    WithSpaceRetry([&] {
      Txn txn(*this, Durability::kNormal);
      Brief b = RequireState(id, OpState::kInFlight, "retry");
      Use(st().retry)
          ->Bind(1, id)
          .Bind(2, next_attempt_at)
          .Bind(3, error)
          .Bind(4, kind == RetryKind::kAttempt ? 0 : 1)
          .Bind(5, now)
          .Bind(6, network ? 1 : 0)
          .Bind(7, kind == RetryKind::kNotSent ? 1 : 0)
          .Run();
      counters_.AddPending(b.priority, 1);
      if (network) counters_.network_failures += 1;
      counters_.wall_high = std::max(counters_.wall_high, now);
      Schedule(id, b.key, b.priority, next_attempt_at, now);
      txn.Commit();
    });
  }

  void DeadLetter(int64_t id, const std::string& reason, double now) override {
    std::lock_guard lock(db_mu_);
    WithSpaceRetry([&] {
      Txn txn(*this, Durability::kNormal);
      auto b = GetBrief(id);
      if (!b || b->state == OpState::kDead) {
        throw SyncError(ErrorCode::kOperationState, "dead_letter: operation " + std::to_string(id) +
                                                        " is not pending or in flight");
      }
      DeadLetterLocked(id, reason, now);
      txn.Commit();
    });
  }

  void SetBaseVersion(int64_t id, std::optional<int64_t> version,
                      const std::optional<std::string>& payload) override {
    std::lock_guard lock(db_mu_);
    WithSpaceRetry([&] { SetBaseVersionLocked(id, version, payload); });
  }

  void SetBaseVersionLocked(int64_t id, std::optional<int64_t> version,
                            const std::optional<std::string>& payload) {
    Txn txn(*this, Durability::kNormal);
    Brief b = RequireState(id, OpState::kInFlight, "set_base_version");
    Use(st().base_version)->Bind(1, id).Bind(2, version).Run();
    if (payload) {
      Use(st().replace_payload)
          ->Bind(1, id)
          .BindBlob(2, *payload)
          .Bind(3, static_cast<int64_t>(payload->size()))
          .Run();
      counters_.live_bytes += static_cast<int64_t>(payload->size()) - b.size;
    }
    txn.Commit();
  }

  std::vector<Operation> Peek(size_t n, double now) override {
    std::lock_guard lock(db_mu_);
    ReadTxn txn(*this);
    Source source(*this, now);
    return MergeLanes(source, n);
  }

  std::optional<Operation> Get(int64_t id) override {
    std::lock_guard lock(db_mu_);
    return LoadLocked(id);
  }

  std::vector<Operation> DeadLetters(size_t limit) override {
    std::lock_guard lock(db_mu_);
    std::vector<Operation> out;
    Use s(st().dead_list);
    s->Bind(1, static_cast<int64_t>(std::min<size_t>(limit, INT64_MAX)));
    while (s->Step()) out.push_back(ReadOp(*s));
    return out;
  }

  std::vector<int64_t> RequeueDead(const std::optional<std::vector<int64_t>>& ids,
                                   const Limits& limits, double now) override {
    std::lock_guard lock(db_mu_);
    return WithSpaceRetry([&] { return RequeueDeadLocked(ids, limits, now); });
  }

  std::vector<int64_t> RequeueDeadLocked(const std::optional<std::vector<int64_t>>& ids,
                                         const Limits& limits, double now) {
    Txn txn(*this, Durability::kNormal);
    counters_.wall_high = std::max(counters_.wall_high, now);
    std::vector<int64_t> chosen;
    if (ids) {
      for (int64_t id : *ids) {
        auto b = GetBrief(id);
        if (!b || b->state != OpState::kDead) {
          throw SyncError(ErrorCode::kOperationState,
                          "requeue_dead: operation " + std::to_string(id) + " is not dead");
        }
      }
      chosen = *ids;
    } else {
      Use s(st().dead_ids);
      while (s->Step()) chosen.push_back(s->Int(0));
    }
    std::vector<int64_t> out;
    for (int64_t old_id : chosen) {
      auto b = GetBrief(old_id);
      if (!b || b->state != OpState::kDead) continue;  // listed twice
      Use(st().requeue)->Bind(1, old_id).Bind(2, now).Run();
      const int64_t id = db_.LastInsertId();
      Use(st().ack)->Bind(1, old_id).Run();
      counters_.dead_ops -= 1;
      counters_.live_ops += 1;
      counters_.live_bytes += b->size;
      counters_.AddPending(b->priority, 1);
      Placed(id, b->key, b->priority, now, now);
      out.push_back(id);
      EnforceLimits(limits, now);
    }
    txn.Commit();
    return out;
  }

  int64_t PurgeDead() override {
    std::lock_guard lock(db_mu_);
    return WithSpaceRetry([&] {
      Txn txn(*this, Durability::kNormal);
      Use(st().purge)->Run();
      const int64_t n = db_.Changes();
      counters_.dead_ops -= n;
      txn.Commit();
      return n;
    });
  }

  int64_t ResetInFlight(double now) override {
    std::lock_guard lock(db_mu_);
    return WithSpaceRetry([&] {
      Txn txn(*this, Durability::kNormal);
      const int64_t n = ResetInFlightLocked(now);
      txn.Commit();
      return n;
    });
  }

  int64_t Count() override {
    std::lock_guard lock(db_mu_);
    return ReadCountersNow().live_ops;
  }

  int64_t LowWater() override {
    std::lock_guard lock(db_mu_);
    SyncEarlierCommits();
    Use q(st().low_water);
    q->Step();
    return q->Int(0);
  }

  QueueStats Stats() override {
    std::lock_guard lock(db_mu_);
    ReadTxn txn(*this);
    const Counters c = ReadCountersNow();
    QueueStats s;
    s.dead = c.dead_ops;
    s.bytes = c.live_bytes;
    {
      Use q(st().count_in_flight);
      q->Step();
      s.in_flight = q->Int(0);
    }
    s.pending = c.live_ops - s.in_flight;
    std::map<int, int64_t> by_prio = c.pending_by_prio;
    if (!PendingDepthAddsUp(by_prio, s.pending)) {
      Log().warn("queue '{}': pending depth by priority does not add up; counted instead", path_);
      by_prio = CountPendingByPriority();
    }
    for (const auto& [prio, n] : by_prio) s.by_priority[prio] = n;
    {
      int64_t first = std::numeric_limits<int64_t>::max();
      for (const auto& [prio, n] : by_prio) {
        Use q(st().oldest);
        q->Bind(1, prio);
        if (q->Step() && q->Int(0) < first) {
          first = q->Int(0);
          s.oldest_pending_created_at = q->Real(1);
        }
      }
    }
    {
      Use q(st().first_due);
      if (q->Step()) s.next_due = q->OptReal(0);
    }
    s.network_failures = c.network_failures;
    return s;
  }

  std::optional<double> NextReadyAt() override {
    std::lock_guard lock(db_mu_);
    ReadTxn txn(*this);
    {
      Use q(st().any_ready);
      if (q->Step()) return -std::numeric_limits<double>::infinity();
    }
    Use q(st().first_due);
    q->Step();
    return q->OptReal(0);
  }

  uint64_t MaxHlc() override {
    std::lock_guard lock(db_mu_);
    return ReadCountersNow().max_hlc;
  }

  void ObserveHlc(uint64_t remote) override {
    RequireWritable("observe_hlc");
    std::lock_guard lock(db_mu_);
    if (ReadCountersNow().max_hlc >= remote) return;  // the usual case: no write
    WithSpaceRetry([&] {
      // At NORMAL, like the consumer's writes: WAL frames survive a power cut only as a
      // prefix, so a mark lost with the last unsynced frames takes with it what came
      // after it (the ack or retry of the conflicting op, which is then delivered
      // again and observed again); and the next enqueue at "full" syncs it.
      Txn txn(*this, Durability::kNormal);
      counters_.max_hlc = std::max(counters_.max_hlc, remote);
      txn.Commit();
    });
  }

  void AcquireConsumer(double now, const std::function<void()>& wake) override {
    std::lock_guard lock(db_mu_);
    if (consumer_) return;
    RequireWritable("consume");
    auto lock_holder = std::make_unique<sqlite::ConsumerLock>(notify_name_, wake);
    const auto [n, clamped] = WithSpaceRetry([&] {
      Txn txn(*this, Durability::kNormal);
      const int64_t reset = ResetInFlightLocked(now);
      const int64_t moved = ClampToClockLocked(now);
      txn.Commit();
      return std::pair{reset, moved};
    });
    if (n > 0)
      Log().info("queue '{}': {} in-flight ops of a previous consumer are pending again", path_, n);
    if (clamped > 0) {
      Log().warn(
          "queue '{}': the wall clock is behind the latest time stored; {} ops' due times, "
          "TTL deadlines or creation times were moved back to match it",
          path_, clamped);
    }
    consumer_ = std::move(lock_holder);
    is_consumer_.store(true);
  }

  // Pending depth by priority is kept in the counters row by every write (schema 3).
  // A process of an older version still writing the file during an upgrade, or a
  // damaged row, can leave it wrong: each writable open checks it against the op
  // count and rebuilds it from the ops if it does not add up.
  static bool PendingDepthAddsUp(const std::map<int, int64_t>& by_prio, int64_t pending) {
    int64_t sum = 0;
    for (const auto& [prio, n] : by_prio) {
      if (n <= 0) return false;
      sum += n;
    }
    return sum == pending;
  }

  std::map<int, int64_t> CountPendingByPriority() {
    std::map<int, int64_t> out;
    Use q(st().count_pending_by_prio);
    while (q->Step()) out[static_cast<int>(q->Int(0))] = q->Int(1);
    return out;
  }

  bool PendingDepthAddsUpNow(const Counters& c) {
    Use q(st().count_in_flight);
    const int64_t in_flight = q->Step() ? q->Int(0) : 0;
    return PendingDepthAddsUp(c.pending_by_prio, c.live_ops - in_flight);
  }

  void RepairPendingDepth() {
    std::lock_guard lock(db_mu_);
    {
      ReadTxn read(*this);
      if (PendingDepthAddsUpNow(ReadCountersNow())) return;  // the usual case: no write lock
    }
    Txn txn(*this, Durability::kNormal);
    if (PendingDepthAddsUpNow(counters_)) return;  // another process repaired it meanwhile
    counters_.pending_by_prio = CountPendingByPriority();
    txn.Commit();
    Log().warn("queue '{}': pending depth by priority did not add up; rebuilt from the ops", path_);
  }

  // If no consumer is alive, leases in the file belong to a consumer that died:
  // make them pending now, so a reopened queue shows them as ready. Holding the
  // consumer lock meanwhile keeps a real consumer from starting halfway.
  void RecoverOrphanedLeases() {
    std::lock_guard lock(db_mu_);
    {
      Use q(st().count_in_flight);
      if (!q->Step() || q->Int(0) == 0) return;
    }
    std::unique_ptr<sqlite::ConsumerLock> probe;
    try {
      probe = std::make_unique<sqlite::ConsumerLock>(notify_name_, [] {});
    } catch (const SyncError& e) {
      if (e.code() == ErrorCode::kQueueLocked) return;  // a live consumer owns its leases
      throw;
    }
    Txn txn(*this, Durability::kNormal);
    const int64_t n = ResetInFlightLocked(0);
    txn.Commit();
    if (n > 0)
      Log().info("queue '{}': {} in-flight ops of a dead consumer are pending again", path_, n);
  }

  void Close() override {
    std::unique_ptr<sqlite::Checkpointer> checkpointer;
    {
      std::lock_guard lock(db_mu_);
      if (checkpointer_) {
        sqlite::Checkpointer::Detach(db_.get());  // no commit can reach it any more
        checkpointer = std::move(checkpointer_);
      }
      CloseLocked();
    }
    // Joined without db_mu_: fork()'s guard may hold the thread's work mutex while it
    // waits for db_mu_, and the thread may need that mutex to finish.
    if (checkpointer) {
      ForkGuard::Remove(&checkpointer->work_mutex());
      checkpointer.reset();
    }
  }

  void CloseLocked() {
    if (!db_.get()) return;
    if (consumer_) {
      try {
        Txn txn(*this, Durability::kNormal);
        ResetInFlightLocked(0);
        txn.Commit();
      } catch (const std::exception& e) {
        Log().warn("queue '{}': in-flight ops stay leased until the next consumer: {}", path_,
                   e.what());
      }
      consumer_.reset();
      is_consumer_.store(false);
    }
    stmts_.reset();
    db_.Close();
  }

 private:
  struct Request {
    std::vector<StampedOp>* ops;
    const Limits* limits;
    std::vector<int64_t> ids;
    std::exception_ptr error;
    bool done = false;
  };

  struct Brief {
    std::optional<std::string> key;
    OpState state;
    int64_t size;
    int priority;
    double next_attempt_at;
  };

  // A write transaction; rolls back unless committed. Re-reads the shared
  // counters (other processes write them too) and writes them back on commit.
  class Txn {
   public:
    Txn(SqliteStorage& s, Durability sync) : s_(s) {
      s_.RequireFileInPlace();
      s_.SetSync(sync);
      Use(s_.st().begin_immediate)->Run();
      try {
        s_.counters_ = s_.ReadCountersNow();
      } catch (...) {  // the destructor will not run: never leave the write lock held
        sqlite3_exec(s_.db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
        throw;
      }
      start_ = s_.counters_;
    }
    void Commit() {
      if (!(s_.counters_ == start_)) {
        Use(s_.st().write_counters)
            ->Bind(1, s_.counters_.live_ops)
            .Bind(2, s_.counters_.live_bytes)
            .Bind(3, s_.counters_.dead_ops)
            .Bind(4, static_cast<int64_t>(s_.counters_.max_hlc))
            .BindText(5, EncodeByPrio(s_.counters_.pending_by_prio))
            .Bind(6, s_.counters_.network_failures)
            .Bind(7, s_.counters_.wall_high)
            .Run();
      }
      Use(s_.st().commit)->Run();
      done_ = true;
      s_.AfterCommit();
    }
    ~Txn() {
      if (!done_) sqlite3_exec(s_.db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
    }

   private:
    SqliteStorage& s_;
    Counters start_;
    bool done_ = false;
  };

  // A read transaction: one consistent snapshot for multi-statement reads.
  class ReadTxn {
   public:
    explicit ReadTxn(SqliteStorage& s) : s_(s) { Use(s_.st().begin)->Run(); }
    ~ReadTxn() { sqlite3_exec(s_.db_.get(), "COMMIT", nullptr, nullptr, nullptr); }

   private:
    SqliteStorage& s_;
  };

  class Source final : public LaneSource {
   public:
    Source(SqliteStorage& s, double now)
        : s_(s), now_(now), ready_(s.st().ready_scan), waiting_(s.st().waiting_scan) {
      {
        Use q(s_.st().expired_all);
        q->Bind(1, now_);
        while (q->Step()) {
          if (q->IsNull(1)) {
            expired_ids_.insert(q->Int(0));
          } else {
            dirty_keys_.insert(q->Text(1));
          }
        }
      }
      Fetch(ready_, r_);
      Fetch(waiting_, w_);
    }
    ~Source() override {
      ready_.Reset();
      waiting_.Reset();
    }
    std::optional<LaneHead> NextLane() override {
      for (;;) {
        if (!r_ && !w_) return std::nullopt;
        const bool take_r = r_ && (!w_ || r_->eff_prio > w_->eff_prio ||
                                   (r_->eff_prio == w_->eff_prio && r_->id < w_->id));
        LaneHead out;
        if (take_r) {
          out = std::move(*r_);
          Fetch(ready_, r_);
        } else {
          out = std::move(*w_);
          Fetch(waiting_, w_);
        }
        if (out.key ? dirty_keys_.count(*out.key) > 0 : expired_ids_.count(out.id) > 0) continue;
        return out;
      }
    }
    std::vector<LaneHead> ExtraLanes() override {
      std::set<std::string> keys = dirty_keys_;
      {
        Use q(s_.st().in_flight);
        while (q->Step()) {
          if (!q->IsNull(1)) keys.insert(q->Text(1));
        }
      }
      std::vector<LaneHead> out;
      for (const auto& key : keys) {
        if (auto next = NextInLane(key, 0)) out.push_back(std::move(*next));
      }
      return out;
    }
    std::optional<LaneHead> NextInLane(const std::string& key, int64_t after) override {
      int64_t next;
      {
        Use q(s_.st().lane_next);
        q->BindText(1, key).Bind(2, after).Bind(3, now_);
        if (!q->Step()) return std::nullopt;
        next = q->Int(0);
      }
      Use q(s_.st().lane_prio_from);
      q->BindText(1, key).Bind(2, next).Bind(3, now_);
      if (!q->Step()) {
        throw SyncError(ErrorCode::kCorrupt, "lane op " + std::to_string(next) + " is missing");
      }
      return LaneHead{static_cast<int>(q->Int(0)), next, key};
    }
    Operation Load(int64_t id) override { return *s_.LoadLocked(id); }

   private:
    static void Fetch(Stmt& s, std::optional<LaneHead>& into) {
      if (s.Step()) {
        into = LaneHead{static_cast<int>(s.Int(1)), s.Int(0), s.OptText(2)};
      } else {
        into.reset();
      }
    }
    SqliteStorage& s_;
    double now_;
    Stmt& ready_;
    Stmt& waiting_;
    std::optional<LaneHead> r_, w_;
    std::set<std::string> dirty_keys_;
    std::set<int64_t> expired_ids_;
  };

  Statements& st() {
    if (!stmts_) throw SyncError(ErrorCode::kClosed, "queue is closed");
    return *stmts_;
  }

  void OpenFile() {
    const sqlite::FileKind kind = sqlite::Examine(path_);
    if (options_.read_only) {
      if (kind != sqlite::FileKind::kQueue) {
        throw SyncError(ErrorCode::kNotAQueue,
                        "'" + path_ + "' is not a cpcsync queue (read-only open of " +
                            (kind == sqlite::FileKind::kMissing ? "a missing" : "an empty") +
                            " file)");
      }
      db_.Open(path_, SQLITE_OPEN_READONLY);
      Configure();
      const int v = sqlite::UserVersion(db_);
      if (v != sqlite::kSchemaVersion) {
        throw SyncError(ErrorCode::kNotAQueue, "queue file has schema version " +
                                                   std::to_string(v) +
                                                   "; open it read-write once to migrate it");
      }
      return;
    }
    if (kind == sqlite::FileKind::kMissing) sqlite::CreateFile0600(path_);
    db_.Open(path_, SQLITE_OPEN_READWRITE);
    Configure();
    if (kind != sqlite::FileKind::kQueue && sqlite::UserVersion(db_) == 0) {
      sqlite::CreateSchema(db_);
    }
    db_.Exec("PRAGMA journal_mode=WAL");
    sqlite::Migrate(db_);
    // At "full" every commit waits for an fdatasync, and a checkpoint running beside it
    // slows that sync more than an inline one costs (enqueue "full" measured 1.04-1.11x
    // of the raw SQLite ceiling without it, 1.29-1.43x with it): keep SQLite's own.
    if (options_.durability != Durability::kFull) {
      checkpointer_ = std::make_unique<sqlite::Checkpointer>(path_, options_.busy_timeout_ms);
      checkpointer_->Attach(db_.get());
    } else {
      // Fewer, larger inline checkpoints: a page dirtied by several commits is copied
      // once (take+ack at 10,000,000 pending: 1.34x of 10,000 -> 1.22x).
      sqlite3_wal_autocheckpoint(db_.get(), kFullAutoCheckpointFrames);
    }
    {
      Stmt q(db_.get(), "PRAGMA page_size");
      if (q.Step()) page_size_ = q.Int(0);
    }
    RefreshWalBudget();
  }

  void Configure() {
    sqlite3_busy_timeout(db_.get(), options_.busy_timeout_ms);
    // Page cache up to 32 MiB (allocated as used): with a backlog of millions over many
    // keys, each lane's head and tail index leaves are touched in turn; an 8 MiB cache
    // re-read them (take+ack at 10,000,000 pending: 1.52x of 10,000 -> 1.34x).
    // Reading page 1 now turns a damaged header into an error at open time.
    db_.Exec(
        "PRAGMA cache_size=-32768; PRAGMA temp_store=MEMORY; SELECT count(*) FROM sqlite_schema");
  }

  void RequireWritable(const char* what) {
    if (options_.read_only) {
      throw SyncError(ErrorCode::kInvalidArgument,
                      std::string(what) + ": the queue was opened read_only");
    }
  }

  // Writing to a file that was deleted, moved or replaced while open would "commit"
  // into an inode nobody will ever open again: refuse instead (one stat() per write
  // transaction, SQLite's SQLITE_FCNTL_HAS_MOVED).
  void RequireFileInPlace() {
    int moved = 0;
    if (sqlite3_file_control(db_.get(), "main", SQLITE_FCNTL_HAS_MOVED, &moved) == SQLITE_OK &&
        moved != 0) {
      throw SyncError(ErrorCode::kStorage,
                      "queue file '" + path_ +
                          "' was deleted, moved or replaced while open; nothing was written "
                          "(close this handle and open the queue again)");
    }
  }

  void SetSync(Durability d) {
    if (d == sync_) return;
    // Not a cached statement: SQLite applies this pragma when it is prepared, and
    // re-running a prepared copy does nothing.
    db_.Exec(d == Durability::kFull     ? "PRAGMA synchronous=FULL"
             : d == Durability::kNormal ? "PRAGMA synchronous=NORMAL"
                                        : "PRAGMA synchronous=OFF");
    sync_ = d;
  }

  Counters ReadCountersNow() {
    Use s(st().read_counters);
    if (!s->Step()) throw SyncError(ErrorCode::kCorrupt, "queue file has no counters row");
    return Counters{
        s->Int(0), s->Int(1), s->Int(2), static_cast<uint64_t>(s->Int(3)), DecodeByPrio(s->Text(4)),
        s->Int(5), s->Real(6)};
  }

  // Group commit: a new leader waits, up to a quarter of a commit's time, for the writers
  // seen recently to queue up, so one commit (one fsync at "full") serves them
  // all. One writer alone never waits; a writer that left shrinks the estimate
  // at the first wait that times out.
  void Gather(std::unique_lock<std::mutex>& lk) {
    if (gc_pending_.size() >= gc_writers_) return;
    const auto window = std::min(gc_last_commit_ / 4, std::chrono::microseconds(2000));
    gc_gathering_ = true;
    const bool all = gc_cv_.wait_for(lk, window, [&] { return gc_pending_.size() >= gc_writers_; });
    gc_gathering_ = false;
    if (!all) gc_writers_ = std::max<size_t>(1, gc_pending_.size());
  }

  void CommitBatch(const std::vector<Request*>& batch) {
    std::lock_guard lock(db_mu_);
    CommitBatchLocked(batch);
    // The requests the disk being full failed (their ops are not stored, whether or
    // not the others committed): free the WAL and try them once more.
    std::vector<Request*> again;
    for (Request* r : batch) {
      if (IsDiskFull(r->error)) again.push_back(r);
    }
    if (again.empty()) return;
    FreeWalSpace();
    for (Request* r : again) r->error = nullptr;
    CommitBatchLocked(again);
  }

  void CommitBatchLocked(const std::vector<Request*>& batch) {
    try {
      Txn txn(*this, options_.durability);
      for (Request* r : batch) {
        if (batch.size() == 1) {
          r->ids = InsertOps(*r->ops, *r->limits);
          continue;
        }
        const Counters before = counters_;
        Use(st().savepoint)->Run();
        try {
          r->ids = InsertOps(*r->ops, *r->limits);
          Use(st().release)->Run();
        } catch (...) {
          r->error = std::current_exception();
          r->ids.clear();
          Use(st().rollback_to)->Run();
          Use(st().release)->Run();
          counters_ = before;
        }
      }
      txn.Commit();
    } catch (...) {
      for (Request* r : batch) {
        if (!r->error) r->error = std::current_exception();
        r->ids.clear();
      }
    }
  }

  std::vector<int64_t> InsertOps(std::vector<StampedOp>& ops, const Limits& limits) {
    std::vector<int64_t> ids;
    ids.reserve(ops.size());
    for (StampedOp& s : ops) {
      counters_.wall_high = std::max(counters_.wall_high, s.now);
      // Stamps follow commit order, also across processes sharing the file.
      s.hlc = std::max(s.hlc, counters_.max_hlc + 1);
      counters_.max_hlc = s.hlc;
      ids.push_back(InsertOne(s));
      EnforceLimits(limits, s.now);
    }
    return ids;
  }

  // After an op was added: rejects (throws, the transaction rolls back) or
  // dead-letters the lowest-priority newest pending ops until within limits.
  void EnforceLimits(const Limits& limits, double now) {
    if (!Over(limits)) return;
    if (limits.overflow == Overflow::kReject) {
      throw SyncError(ErrorCode::kQueueFull,
                      "queue is full (" + std::to_string(counters_.live_ops) + " ops, " +
                          std::to_string(counters_.live_bytes) + " bytes; max_ops " +
                          (limits.max_ops ? std::to_string(*limits.max_ops) : "none") +
                          ", max_bytes " +
                          (limits.max_bytes ? std::to_string(*limits.max_bytes) : "none") +
                          "); nothing was stored");
    }
    while (Over(limits)) {
      int64_t victim;
      {
        Use v(st().victim);
        if (!v->Step()) {
          throw SyncError(ErrorCode::kQueueFull,
                          "queue is full with in-flight operations alone; nothing was stored");
        }
        victim = v->Int(0);
      }
      DeadLetterLocked(victim, "overflow", now);
    }
  }

  bool Over(const Limits& limits) const {
    return (limits.max_ops && counters_.live_ops > *limits.max_ops) ||
           (limits.max_bytes && counters_.live_bytes > *limits.max_bytes);
  }

  int64_t InsertOne(StampedOp& s) {
    const NewOp& op = s.op;
    const int64_t size = static_cast<int64_t>(op.payload.size());
    const double next_at = s.now + op.delay;
    std::optional<double> expires;
    if (op.ttl) expires = s.now + *op.ttl;
    if (op.coalesce && op.key) {
      int64_t target = 0, old_size = 0;
      int old_prio = 0;
      {
        Use q(st().lane_last);
        q->BindText(1, *op.key);
        if (q->Step() && q->Int(2) == static_cast<int>(OpState::kPending) &&
            q->Text(1) == op.kind) {
          target = q->Int(0);
          old_size = q->Int(3);
          old_prio = static_cast<int>(q->Int(4));
        }
      }
      if (target) {
        const bool is_head = HeadOf(*op.key) == target;
        if (is_head) Unschedule(target);
        Use(st().coalesce)
            ->Bind(1, target)
            .BindBlob(2, op.payload)
            .Bind(3, size)
            .Bind(4, static_cast<int64_t>(s.hlc))
            .Bind(5, op.priority)
            .BindText(6, s.idempotency_key)
            .Bind(7, next_at)
            .Bind(8, expires)
            .Bind(9, s.now)
            .Run();
        counters_.live_bytes += size - old_size;
        if (op.priority > old_prio) {  // the stored priority became max(old, new)
          counters_.AddPending(old_prio, -1);
          counters_.AddPending(op.priority, 1);
        }
        if (is_head) {
          Schedule(target, op.key, op.priority, next_at, s.now);
        } else {
          Bump(HeadOf(*op.key).value(), op.priority);
        }
        return target;
      }
    }
    Use(st().insert)
        ->BindText(1, op.kind)
        .Bind(2, op.key)
        .BindBlob(3, op.payload)
        .Bind(4, size)
        .Bind(5, op.priority)
        .BindText(6, s.idempotency_key)
        .Bind(7, static_cast<int64_t>(s.hlc))
        .Bind(8, s.now)
        .Bind(9, next_at)
        .Bind(10, expires)
        .BindNull(11)
        .Run();
    const int64_t id = db_.LastInsertId();
    counters_.live_ops += 1;
    counters_.live_bytes += size;
    counters_.AddPending(op.priority, 1);
    Placed(id, op.key, op.priority, next_at, s.now);
    return id;
  }

  // A new pending op was appended to its lane: schedule it if it heads the lane,
  // else lift the lane head's effective priority.
  void Placed(int64_t id, const std::optional<std::string>& key, int priority, double next_at,
              double now) {
    if (!key) {
      ScheduleAt(id, priority, next_at, now);
      return;
    }
    const int64_t head = HeadOf(*key).value();
    if (head == id) {
      ScheduleAt(id, priority, next_at, now);
    } else {
      Bump(head, priority);
    }
  }

  std::optional<int64_t> HeadOf(const std::string& key) {
    Use q(st().lane_head);
    q->BindText(1, key);
    if (!q->Step()) return std::nullopt;
    return q->Int(0);
  }

  int LanePrio(const std::string& key, int fallback) {
    Use q(st().lane_prio);
    q->BindText(1, key);
    q->Step();
    return q->IsNull(0) ? fallback : static_cast<int>(q->Int(0));
  }

  void ScheduleAt(int64_t id, int prio, double next_at, double now) {
    if (next_at <= now) {
      Use(st().ready_add)->Bind(1, id).Bind(2, prio).Run();
    } else {
      Use(st().waiting_add)->Bind(1, id).Bind(2, prio).Bind(3, next_at).Run();
    }
  }

  // Schedules a pending lane head with its lane's effective priority.
  void Schedule(int64_t id, const std::optional<std::string>& key, int priority, double next_at,
                double now) {
    ScheduleAt(id, key ? LanePrio(*key, priority) : priority, next_at, now);
  }

  bool Unschedule(int64_t id) {
    Use(st().ready_del)->Bind(1, id).Run();
    if (db_.Changes() > 0) return true;
    Use(st().waiting_del)->Bind(1, id).Run();
    return db_.Changes() > 0;
  }

  void Bump(int64_t head, int prio) {
    Use(st().ready_bump)->Bind(1, head).Bind(2, prio).Run();
    Use(st().waiting_bump)->Bind(1, head).Bind(2, prio).Run();
  }

  void RefreshLanePrio(const std::string& key) {
    auto head = HeadOf(key);
    if (!head) return;
    const int prio = LanePrio(key, 0);
    Use(st().ready_set)->Bind(1, *head).Bind(2, prio).Run();
    Use(st().waiting_set)->Bind(1, *head).Bind(2, prio).Run();
  }

  void AdvanceLane(const std::string& key, double now) {
    auto head = HeadOf(key);
    if (!head) return;
    Brief b = *GetBrief(*head);
    if (b.state == OpState::kPending) Schedule(*head, b.key, b.priority, b.next_attempt_at, now);
  }

  std::optional<Brief> GetBrief(int64_t id) {
    Use q(st().brief);
    q->Bind(1, id);
    if (!q->Step()) return std::nullopt;
    return Brief{q->OptText(0), static_cast<OpState>(q->Int(1)), q->Int(2),
                 static_cast<int>(q->Int(3)), q->Real(4)};
  }

  Brief RequireState(int64_t id, OpState state, const char* what) {
    auto b = GetBrief(id);
    if (!b || b->state != state) {
      throw SyncError(ErrorCode::kOperationState, std::string(what) + ": operation " +
                                                      std::to_string(id) + " is not " +
                                                      OpStateName(state));
    }
    return *b;
  }

  std::optional<Operation> LoadLocked(int64_t id) {
    Use q(st().load);
    q->Bind(1, id);
    if (!q->Step()) return std::nullopt;
    return ReadOp(*q);
  }

  void DeadLetterLocked(int64_t id, const std::string& reason, double now) {
    Brief b = *GetBrief(id);
    const bool was_head = b.state == OpState::kInFlight || Unschedule(id);
    if (b.state == OpState::kPending) counters_.AddPending(b.priority, -1);
    Use(st().bury)->Bind(1, id).BindText(2, reason).Bind(3, now).Run();
    counters_.live_ops -= 1;
    counters_.live_bytes -= b.size;
    counters_.dead_ops += 1;
    if (!b.key) return;
    if (was_head) {
      AdvanceLane(*b.key, now);
    } else {
      RefreshLanePrio(*b.key);
    }
  }

  // After a commit: keeps the WAL bounded (see kWalShareOfFree).
  // Takes, acks and retries commit at NORMAL: a power cut may undo the latest ones.
  // Before LowWater() reports ops as acknowledged for good (a server prunes its
  // idempotency records below it), make those commits durable with one FULL commit
  // (one frame and an fsync of the WAL). Nothing to do when the last commit was FULL,
  // for a read-only handle, or at durability "off" (no promise of durability).
  void SyncEarlierCommits() {
    if (!unsynced_commits_ || options_.read_only || options_.durability == Durability::kOff) {
      return;
    }
    Txn txn(*this, Durability::kFull);
    Use(st().nudge_up)->Run();
    Use(st().nudge_down)->Run();
    txn.Commit();
  }

  void AfterCommit() {
    // A FULL commit syncs the WAL, and with it every frame committed before it.
    unsynced_commits_ = sync_ != Durability::kFull;
    if (++commits_since_budget_ >= kWalBudgetEvery) RefreshWalBudget();
    if (checkpointer_) checkpointer_->AfterCommit(db_.get());
  }

  void RefreshWalBudget() {
    commits_since_budget_ = 0;
    struct statvfs fs {};
    if (::statvfs(path_.c_str(), &fs) != 0) return;  // keep the bound we have
    const int64_t free_bytes = static_cast<int64_t>(fs.f_bavail) * fs.f_frsize;
    const int64_t frame = page_size_ + 24;  // a WAL frame: its header and one page
    const int64_t most =
        checkpointer_ ? sqlite::Checkpointer::kInlineFrames : kFullAutoCheckpointFrames;
    const int64_t frames = std::clamp<int64_t>(
        std::bit_floor(static_cast<uint64_t>(free_bytes / kWalShareOfFree / frame)), kMinWalFrames,
        most);
    if (frames == wal_frames_) return;
    wal_frames_ = frames;
    if (checkpointer_) {
      checkpointer_->SetInlineFrames(static_cast<int>(frames));
    } else {
      sqlite3_wal_autocheckpoint(db_.get(), static_cast<int>(frames));
    }
    const int64_t limit = frames * frame;
    try {  // no I/O; and a commit that already happened must not report a failure
      db_.Exec(("PRAGMA journal_size_limit = " + std::to_string(limit)).c_str());
    } catch (const SyncError& e) {
      Log().warn("queue '{}': cannot set the WAL size limit: {}", path_, e.what());
    }
  }

  // SQLITE_FULL: if the queue's own WAL filled the disk, a TRUNCATE checkpoint (all
  // frames copied into the database, the WAL file cut to 0 bytes) frees it.
  void FreeWalSpace() {
    if (!sqlite3_get_autocommit(db_.get())) {
      sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
    }
    sqlite3_busy_timeout(db_.get(), std::min(options_.busy_timeout_ms, kFullDiskCheckpointWaitMs));
    int log = -1, copied = -1;
    const int rc =
        sqlite3_wal_checkpoint_v2(db_.get(), nullptr, SQLITE_CHECKPOINT_TRUNCATE, &log, &copied);
    sqlite3_busy_timeout(db_.get(), options_.busy_timeout_ms);
    Log().warn(
        "queue '{}': disk full; WAL checkpoint (truncate): {} ({} of {} frames copied); "
        "retrying once",
        path_, sqlite3_errstr(rc), copied, log);
    RefreshWalBudget();
  }

  // Run a write (a whole transaction, which rolls back if it throws); if it failed on a
  // full disk, free the WAL and run it once more. A second failure is reported.
  template <class F>
  auto WithSpaceRetry(F&& write) -> decltype(write()) {
    try {
      return write();
    } catch (const SyncError& e) {
      if (!IsDiskFull(e)) throw;
    }
    FreeWalSpace();
    return write();
  }

  // The wall clock is behind the latest time a write stored (a device whose clock was
  // corrected backwards across a restart): no due time may then be further ahead than
  // the op's own delay (next_attempt_at - scheduled_at), no TTL deadline further than
  // its ttl (expires_at - created_at), and no op created in the future. One scan of
  // the live ops, only when the clock did go back; O(1) otherwise.
  int64_t ClampToClockLocked(double now) {
    if (!(now < counters_.wall_high)) return 0;
    Use(st().clamp_due)->Bind(1, now).Run();
    int64_t n = db_.Changes();
    Use(st().clamp_created)->Bind(1, now).Run();
    n = std::max(n, db_.Changes());
    Use(st().clamp_waiting)->Bind(1, now).Run();
    counters_.wall_high = now;
    return n;
  }

  int64_t ResetInFlightLocked(double now) {
    std::vector<std::tuple<int64_t, std::optional<std::string>, int>> leased;
    {
      Use q(st().in_flight);
      while (q->Step()) leased.emplace_back(q->Int(0), q->OptText(1), static_cast<int>(q->Int(2)));
    }
    for (auto& [id, key, prio] : leased) {
      Use(st().unlease)->Bind(1, id).Run();
      counters_.AddPending(prio, 1);
      // Leased ops were due when taken, so they are ready at once.
      ScheduleAt(id, key ? LanePrio(*key, prio) : prio, -std::numeric_limits<double>::infinity(),
                 now);
    }
    return static_cast<int64_t>(leased.size());
  }

  std::string path_;
  std::string notify_name_;  // from the file's device and inode, fixed at open
  SqliteOptions options_;
  std::mutex db_mu_;  // guards the connection and everything below
  Db db_;
  std::unique_ptr<sqlite::Checkpointer> checkpointer_;  // read-write handles only
  int64_t page_size_ = 2048;
  int64_t wal_frames_ = 0;  // the WAL bound in force (RefreshWalBudget)
  int commits_since_budget_ = 0;
  bool unsynced_commits_ = false;  // a NORMAL/OFF commit since the WAL was last synced
  std::unique_ptr<Statements> stmts_;
  std::optional<Durability> sync_;
  Counters counters_;
  std::unique_ptr<sqlite::ConsumerLock> consumer_;
  std::atomic<bool> is_consumer_{false};
  std::unique_ptr<sqlite::Notifier> notifier_;

  std::mutex gc_mu_;  // group commit: requests waiting for a leader
  std::condition_variable gc_cv_;
  std::vector<Request*> gc_pending_;
  bool gc_leader_ = false;
  bool gc_gathering_ = false;
  size_t gc_writers_ = 1;    // writers seen at once recently (the gather target)
  size_t gc_in_commit_ = 0;  // requests in the commit under way
  std::chrono::microseconds gc_last_commit_{0};
};

}  // namespace

std::unique_ptr<QueueStorage> OpenSqliteStorage(const std::string& path,
                                                const SqliteOptions& options) {
  return std::make_unique<SqliteStorage>(path, options);
}

void CreateSqliteQueueAtVersion(const std::string& path, int version) {
  if (version < 1 || version > sqlite::kSchemaVersion) ThrowInvalid("no such schema version");
  if (sqlite::Examine(path) != sqlite::FileKind::kMissing) ThrowInvalid("file exists: " + path);
  sqlite::CreateFile0600(path);
  sqlite::Db db;
  db.Open(path, SQLITE_OPEN_READWRITE);
  sqlite::CreateSchema(db, version);
  db.Exec("PRAGMA journal_mode=WAL");
}

}  // namespace cpcsync
