// FaultProxy internals: zero-copy forwarding through a kernel pipe (Linux splice(2)).
//
// A stream that no toxic touches does not need its bytes in user space: Fill() moves
// what the source socket has into the relay's pipe and Drain() moves the pipe's
// content to the sink, so the kernel hands pages over instead of copying them twice
// through a buffer of ours. Everything is non-blocking. Where splice is not available
// (another OS, or a kernel that refuses it for these descriptors), the calls report
// kUnsupported and the caller falls back to read/write.
//
// Thread-safety: none (one I/O thread).
#pragma once

#include <cstddef>

namespace cpcsync::proxy {

class SpliceRelay {
 public:
  enum class Status {
    kMoved,        // `bytes` > 0 moved
    kWouldBlock,   // nothing moved now (source empty, pipe full or sink full)
    kEof,          // the source ended
    kError,        // `error` is the errno
    kUnsupported,  // no splice here: use read/write
  };
  struct Result {
    Status status;
    size_t bytes = 0;
    int error = 0;
  };

  SpliceRelay() = default;
  SpliceRelay(const SpliceRelay&) = delete;
  SpliceRelay& operator=(const SpliceRelay&) = delete;
  ~SpliceRelay();

  // Moves up to `max` bytes from socket `from` into the pipe (made on first use).
  Result Fill(int from, size_t max);
  // Moves the pipe's content (or part of it) to socket `to`.
  Result Drain(int to);
  // Copies up to `size` bytes of the pipe's content into `out` (to hand queued bytes
  // over to the buffered path).
  Result ReadOut(char* out, size_t size);
  // Bytes in the pipe.
  size_t pending() const { return pending_; }

 private:
  bool Open();

  int read_end_ = -1;
  int write_end_ = -1;
  bool unsupported_ = false;
  size_t pending_ = 0;
};

}  // namespace cpcsync::proxy
