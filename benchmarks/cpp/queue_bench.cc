// Micro-benchmarks of ready selection: take(1)+ack and peek(10) on MemoryStorage and
// SqliteStorage with a standing backlog, the lane merge alone, and an operation's
// trip into and out of its SQLite row.
//
// Backlogs are half independent ops and half keyed over 1,000 keys (as
// benchmarks/bench_scale.py). Each (storage, size) queue is built once per process and
// topped up (outside the timed region) when take+ack has drained half of it.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cpcsync/clock.h"
#include "cpcsync/sync_queue.h"
#include "lane_merge.h"

namespace cpcsync {
namespace {

constexpr int kKeys = 1000;
const std::string kPayload =
    R"({"user_id":"user:000042","field":"currency","value":"BTC","seq":123456,)"
    R"("ts":1700000000.123,"device":"ios-17"})";

NewOp MakeOp(int64_t i) {
  NewOp op;
  op.kind = "set_field";
  op.payload = kPayload;
  if (i % 2 == 1) op.key = "user:" + std::to_string((i / 2) % kKeys);
  return op;
}

// A queue file in the temp directory, removed (with its -wal/-shm) at exit.
class TempQueueFile {
 public:
  explicit TempQueueFile(const std::string& tag)
      : path_((std::filesystem::temp_directory_path() /
               ("cpcsync-bench-" + std::to_string(::getpid()) + "-" + tag + ".db"))
                  .string()) {
    Remove();
  }
  ~TempQueueFile() { Remove(); }
  TempQueueFile(const TempQueueFile&) = delete;
  TempQueueFile& operator=(const TempQueueFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  void Remove() {
    std::error_code ec;
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path_ + suffix, ec);
  }
  std::string path_;
};

struct Backlog {
  std::unique_ptr<TempQueueFile> file;  // null for memory
  std::shared_ptr<SyncQueue> queue;
  int64_t size = 0;
  int64_t next = 0;  // op counter for keys

  void Fill(int64_t target) {
    while (queue->Count() < target) {
      std::vector<NewOp> batch;
      const int64_t k = std::min<int64_t>(10000, target - queue->Count());
      batch.reserve(k);
      for (int64_t i = 0; i < k; ++i) batch.push_back(MakeOp(next++));
      queue->EnqueueMany(std::move(batch));
    }
  }
};

// The shared backlogs; main() closes them (and removes their files) after the run,
// before static destruction (the core's logger must still be alive then).
std::map<std::pair<bool, int64_t>, std::unique_ptr<Backlog>>& Backlogs() {
  static auto* m = new std::map<std::pair<bool, int64_t>, std::unique_ptr<Backlog>>();
  return *m;
}

Backlog& GetBacklog(bool sqlite, int64_t size) {
  auto& slot = Backlogs()[{sqlite, size}];
  if (!slot) {
    slot = std::make_unique<Backlog>();
    slot->size = size;
    auto clock = SystemClock::Default();
    if (sqlite) {
      slot->file = std::make_unique<TempQueueFile>(std::to_string(size));
      SqliteOptions opts;
      opts.durability = Durability::kOff;  // the build; take and ack commit at NORMAL anyway
      slot->queue = SyncQueue::Open(slot->file->path(), opts, Limits{}, clock);
    } else {
      slot->queue = SyncQueue::InMemory(Limits{}, clock);
    }
    slot->Fill(size);
  }
  return *slot;
}

void TakeAck(benchmark::State& state, bool sqlite) {
  Backlog& b = GetBacklog(sqlite, state.range(0));
  for (auto _ : state) {
    auto ops = b.queue->Take(1);
    b.queue->Ack(ops.at(0).id);
    if (b.queue->Count() < b.size / 2) {
      state.PauseTiming();
      b.Fill(b.size);
      state.ResumeTiming();
    }
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_TakeAck_Memory(benchmark::State& state) { TakeAck(state, false); }
void BM_TakeAck_Sqlite(benchmark::State& state) { TakeAck(state, true); }
BENCHMARK(BM_TakeAck_Memory)->Arg(10000)->Arg(100000);
BENCHMARK(BM_TakeAck_Sqlite)->Arg(10000)->Arg(100000);

void Peek(benchmark::State& state, bool sqlite) {
  Backlog& b = GetBacklog(sqlite, state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(b.queue->Peek(10));
  state.SetItemsProcessed(state.iterations() * 10);
}

void BM_Peek10_Memory(benchmark::State& state) { Peek(state, false); }
void BM_Peek10_Sqlite(benchmark::State& state) { Peek(state, true); }
BENCHMARK(BM_Peek10_Memory)->Arg(10000)->Arg(100000);
BENCHMARK(BM_Peek10_Sqlite)->Arg(10000)->Arg(100000);

// The merge alone over a synthetic source: `lanes` keyed lanes of 8 ops, heads in order.
class VectorSource final : public LaneSource {
 public:
  explicit VectorSource(int lanes) {
    for (int l = 0; l < lanes; ++l) {
      heads_.push_back(LaneHead{50 + (l % 4) * 10, l, "k" + std::to_string(l)});
    }
    std::stable_sort(heads_.begin(), heads_.end(), [](const LaneHead& a, const LaneHead& b) {
      return a.eff_prio != b.eff_prio ? a.eff_prio > b.eff_prio : a.id < b.id;
    });
    op_.payload = kPayload;
  }
  void Rewind() { pos_ = 0; }
  std::optional<LaneHead> NextLane() override {
    if (pos_ >= heads_.size()) return std::nullopt;
    return heads_[pos_++];
  }
  std::vector<LaneHead> ExtraLanes() override { return {}; }
  std::optional<LaneHead> NextInLane(const std::string& key, int64_t after) override {
    const int64_t lanes = static_cast<int64_t>(heads_.size());
    if (after + lanes >= lanes * 8) return std::nullopt;
    return LaneHead{50, after + lanes, key};
  }
  Operation Load(int64_t id) override {
    op_.id = id;
    return op_;
  }

 private:
  std::vector<LaneHead> heads_;
  size_t pos_ = 0;
  Operation op_;
};

void BM_LaneMerge(benchmark::State& state) {
  VectorSource source(static_cast<int>(state.range(0)));
  const auto n = static_cast<size_t>(state.range(1));
  for (auto _ : state) {
    source.Rewind();
    benchmark::DoNotOptimize(MergeLanes(source, n));
  }
  state.SetItemsProcessed(state.iterations() * state.range(1));
}
BENCHMARK(BM_LaneMerge)->Args({1000, 10})->Args({1000, 100})->Args({100000, 100});

// Encode: an operation into its SQLite row (enqueue at durability "off": validation,
// stamping, the row and its index entries, no fsync). Decode: the row back (get by id).
void BM_OpEncode_Sqlite(benchmark::State& state) {
  TempQueueFile file("encode");
  SqliteOptions opts;
  opts.durability = Durability::kOff;
  auto q = SyncQueue::Open(file.path(), opts, Limits{}, SystemClock::Default());
  int64_t i = 0;
  for (auto _ : state) benchmark::DoNotOptimize(q->Enqueue(MakeOp(i++)));
  state.SetItemsProcessed(state.iterations());
  q->Close();
}
BENCHMARK(BM_OpEncode_Sqlite);

void BM_OpDecode_Sqlite(benchmark::State& state) {
  Backlog& b = GetBacklog(true, 100000);
  const int64_t first = b.queue->Peek(1).at(0).id;
  int64_t i = 0;
  for (auto _ : state) benchmark::DoNotOptimize(b.queue->Get(first + (i++ % 50000)));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_OpDecode_Sqlite);

void BM_OpEncode_Memory(benchmark::State& state) {
  auto q = SyncQueue::InMemory(Limits{}, SystemClock::Default());
  int64_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(q->Enqueue(MakeOp(i++)));
    if (i % 100000 == 0) {
      state.PauseTiming();
      q = SyncQueue::InMemory(Limits{}, SystemClock::Default());
      state.ResumeTiming();
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_OpEncode_Memory);

}  // namespace

void CloseBacklogs() {
  for (auto& [k, b] : Backlogs()) b->queue->Close();
  Backlogs().clear();
}

}  // namespace cpcsync

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  cpcsync::CloseBacklogs();
  benchmark::Shutdown();
  return 0;
}
