// FaultProxy internals: the bytes a stream has read and not yet written.
//
// The bytes are stored back to back in 64 KiB blocks (a small read goes into the free
// space of the last block, not into a block of its own), and a separate list of marks
// records, for each read, how many bytes it brought and when it arrived: a latency
// toxic releases each read's bytes on its own schedule, while the memory stays about
// the bytes held. memory() counts what the queue really holds (whole blocks plus the
// marks), and every change is also added to a counter the proxy's stats read.
//
// Thread-safety: none (one I/O thread); the counters are atomics.
#pragma once

#include <array>
#include <asio/buffer.hpp>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <vector>

namespace cpcsync::proxy {

using SteadyClock = std::chrono::steady_clock;
using SteadyTime = SteadyClock::time_point;

// Recycles the I/O buffers (one thread only).
class BufferPool {
 public:
  static constexpr size_t kSize = size_t{64} * 1024;
  std::unique_ptr<char[]> Take();
  void Give(std::unique_ptr<char[]> buffer);

 private:
  static constexpr size_t kMaxFree = 64;
  std::vector<std::unique_ptr<char[]>> free_;
};

// Where a queue adds what it holds: payload bytes and memory (both may be shared by
// many queues).
struct HeldCounters {
  std::atomic<int64_t> bytes{0};
  std::atomic<int64_t> memory{0};
};

class ByteQueue {
 public:
  // One read: `size` bytes that arrived at `read_at`; `jitter_u` in [0, 1) places
  // its latency in [-jitter, +jitter].
  struct Mark {
    SteadyTime read_at;
    uint32_t size = 0;
    float jitter_u = 0.5f;
  };
  static constexpr size_t kMaxGather = 16;
  using Buffers = std::array<asio::const_buffer, kMaxGather>;

  ByteQueue(BufferPool& pool, HeldCounters& counters) : pool_(pool), counters_(counters) {}
  ~ByteQueue() { Clear(); }
  ByteQueue(const ByteQueue&) = delete;
  ByteQueue& operator=(const ByteQueue&) = delete;

  // Free space to read into (at least one byte): the rest of the last block, or a
  // new block.
  std::span<char> Tail();
  // The first `n` bytes of Tail() were filled at `read_at`. A read at the same
  // instant as the previous one extends its mark; otherwise `jitter_u` is used.
  void Commit(size_t n, SteadyTime read_at, float jitter_u);
  // Gives back a last block that nothing was committed to (after a read that
  // brought nothing).
  void TrimTail();

  bool empty() const { return marks_.empty(); }
  size_t bytes() const { return bytes_; }
  // Bytes of memory held: whole blocks plus the marks.
  size_t memory() const {
    return blocks_.size() * BufferPool::kSize + marks_.size() * sizeof(Mark);
  }
  const Mark& front() const { return marks_.front(); }
  // Bytes of the leading marks for which `ready` holds, stopping at the first that
  // does not or once `max` bytes are reached.
  size_t ReadyBytes(const std::function<bool(const Mark&)>& ready, size_t max) const;
  // Fills `out` with up to `limit` bytes from the front; returns how many buffers.
  size_t Gather(Buffers& out, size_t limit) const;
  // Removes `n` bytes from the front (written or dropped).
  void Consume(size_t n);
  // Removes everything and gives the blocks back.
  void Clear();

 private:
  struct Block {
    std::unique_ptr<char[]> data;
    size_t end = 0;  // bytes filled
  };
  void Account(int64_t bytes, int64_t memory);

  BufferPool& pool_;
  HeldCounters& counters_;
  std::deque<Block> blocks_;
  size_t head_ = 0;  // consumed bytes of blocks_.front()
  std::deque<Mark> marks_;
  size_t bytes_ = 0;
};

}  // namespace cpcsync::proxy
