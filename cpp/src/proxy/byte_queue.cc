#include "proxy/byte_queue.h"

#include <algorithm>

namespace cpcsync::proxy {

std::unique_ptr<char[]> BufferPool::Take() {
  if (free_.empty()) return std::make_unique_for_overwrite<char[]>(kSize);
  std::unique_ptr<char[]> b = std::move(free_.back());
  free_.pop_back();
  return b;
}

void BufferPool::Give(std::unique_ptr<char[]> buffer) {
  if (buffer && free_.size() < kMaxFree) free_.push_back(std::move(buffer));
}

std::span<char> ByteQueue::Tail() {
  if (blocks_.empty() || blocks_.back().end == BufferPool::kSize) {
    blocks_.push_back(Block{pool_.Take(), 0});
    Account(0, BufferPool::kSize);
  }
  Block& b = blocks_.back();
  return {b.data.get() + b.end, BufferPool::kSize - b.end};
}

void ByteQueue::Commit(size_t n, SteadyTime read_at, float jitter_u) {
  if (n == 0) return;
  blocks_.back().end += n;
  bytes_ += n;
  if (!marks_.empty() && marks_.back().read_at == read_at) {
    marks_.back().size += static_cast<uint32_t>(n);
    Account(static_cast<int64_t>(n), 0);
    return;
  }
  marks_.push_back(Mark{read_at, static_cast<uint32_t>(n), jitter_u});
  Account(static_cast<int64_t>(n), sizeof(Mark));
}

void ByteQueue::TrimTail() {
  if (blocks_.empty() || blocks_.back().end != 0) return;
  pool_.Give(std::move(blocks_.back().data));
  blocks_.pop_back();
  if (blocks_.empty()) head_ = 0;
  Account(0, -static_cast<int64_t>(BufferPool::kSize));
}

size_t ByteQueue::ReadyBytes(const std::function<bool(const Mark&)>& ready, size_t max) const {
  size_t n = 0;
  for (const Mark& m : marks_) {
    if (n >= max || !ready(m)) break;
    n += m.size;
  }
  return std::min(n, max);
}

size_t ByteQueue::Gather(Buffers& out, size_t limit) const {
  size_t count = 0, total = 0, skip = head_;
  for (const Block& b : blocks_) {
    if (count == out.size() || total >= limit) break;
    const size_t len = std::min(b.end - skip, limit - total);
    if (len > 0) out[count++] = asio::buffer(b.data.get() + skip, len);
    total += len;
    skip = 0;
  }
  return count;
}

void ByteQueue::Consume(size_t n) {
  n = std::min(n, bytes_);
  bytes_ -= n;
  int64_t memory = 0;
  for (size_t left = n; left > 0;) {
    Mark& m = marks_.front();
    const size_t take = std::min<size_t>(left, m.size);
    m.size -= static_cast<uint32_t>(take);
    left -= take;
    if (m.size == 0) {
      marks_.pop_front();
      memory -= sizeof(Mark);
    }
  }
  for (size_t left = n; left > 0;) {
    Block& b = blocks_.front();
    const size_t take = std::min(left, b.end - head_);
    head_ += take;
    left -= take;
    if (head_ == b.end && (b.end == BufferPool::kSize || bytes_ == 0)) {
      pool_.Give(std::move(b.data));
      blocks_.pop_front();
      head_ = 0;
      memory -= BufferPool::kSize;
    }
  }
  Account(-static_cast<int64_t>(n), memory);
}

void ByteQueue::Clear() {
  Consume(bytes_);
  while (!blocks_.empty()) {  // a last block with nothing committed to it
    pool_.Give(std::move(blocks_.back().data));
    blocks_.pop_back();
    Account(0, -static_cast<int64_t>(BufferPool::kSize));
  }
  head_ = 0;
}

void ByteQueue::Account(int64_t bytes, int64_t memory) {
  constexpr auto r = std::memory_order_relaxed;
  if (bytes != 0) counters_.bytes.fetch_add(bytes, r);
  if (memory != 0) counters_.memory.fetch_add(memory, r);
}

}  // namespace cpcsync::proxy
