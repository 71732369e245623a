#include "proxy/splice.h"

#include <cerrno>

#if defined(__linux__)
#include <fcntl.h>
#include <unistd.h>
#endif

namespace cpcsync::proxy {

#if defined(__linux__)

namespace {

constexpr int kPipeSize = 1 << 20;  // asked for; the kernel may grant less (pipe-max-size)
constexpr unsigned kFlags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;

SpliceRelay::Result FromErrno(int error) {
  if (error == EAGAIN || error == EWOULDBLOCK) return {SpliceRelay::Status::kWouldBlock};
  if (error == EINVAL || error == ENOSYS) return {SpliceRelay::Status::kUnsupported, 0, error};
  return {SpliceRelay::Status::kError, 0, error};
}

}  // namespace

SpliceRelay::~SpliceRelay() {
  if (read_end_ >= 0) ::close(read_end_);
  if (write_end_ >= 0) ::close(write_end_);
}

bool SpliceRelay::Open() {
  if (read_end_ >= 0) return true;
  if (unsupported_) return false;
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    unsupported_ = true;  // out of descriptors: the buffered path still works
    return false;
  }
  read_end_ = fds[0];
  write_end_ = fds[1];
  ::fcntl(write_end_, F_SETPIPE_SZ, kPipeSize);  // best effort
  return true;
}

SpliceRelay::Result SpliceRelay::Fill(int from, size_t max) {
  if (!Open()) return {Status::kUnsupported};
  for (;;) {
    const ssize_t n = ::splice(from, nullptr, write_end_, nullptr, max, kFlags);
    if (n > 0) {
      pending_ += static_cast<size_t>(n);
      return {Status::kMoved, static_cast<size_t>(n)};
    }
    if (n == 0) return {Status::kEof};
    if (errno == EINTR) continue;
    Result r = FromErrno(errno);
    if (r.status == Status::kUnsupported && pending_ == 0) unsupported_ = true;
    return r;
  }
}

SpliceRelay::Result SpliceRelay::Drain(int to) {
  if (pending_ == 0) return {Status::kWouldBlock};
  for (;;) {
    const ssize_t n = ::splice(read_end_, nullptr, to, nullptr, pending_, kFlags);
    if (n > 0) {
      pending_ -= static_cast<size_t>(n);
      return {Status::kMoved, static_cast<size_t>(n)};
    }
    if (n < 0 && errno == EINTR) continue;
    // Writing to a socket does not return 0; treat it as a failure all the same.
    return n == 0 ? Result{Status::kError, 0, EIO} : FromErrno(errno);
  }
}

SpliceRelay::Result SpliceRelay::ReadOut(char* out, size_t size) {
  if (pending_ == 0) return {Status::kWouldBlock};
  for (;;) {
    const ssize_t n = ::read(read_end_, out, size < pending_ ? size : pending_);
    if (n > 0) {
      pending_ -= static_cast<size_t>(n);
      return {Status::kMoved, static_cast<size_t>(n)};
    }
    if (n < 0 && errno == EINTR) continue;
    return n == 0 ? Result{Status::kError, 0, EIO} : FromErrno(errno);
  }
}

#else  // no splice(2): every call sends the caller to the buffered path

SpliceRelay::~SpliceRelay() = default;
bool SpliceRelay::Open() { return false; }
SpliceRelay::Result SpliceRelay::Fill(int, size_t) { return {Status::kUnsupported}; }
SpliceRelay::Result SpliceRelay::Drain(int) { return {Status::kUnsupported}; }
SpliceRelay::Result SpliceRelay::ReadOut(char*, size_t) { return {Status::kUnsupported}; }

#endif

}  // namespace cpcsync::proxy
