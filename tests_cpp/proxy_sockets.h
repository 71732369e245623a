// Blocking-socket helpers for the FaultProxy tests: an echo upstream on 127.0.0.1 and a
// client with a read timeout (a safety net: tests never wait on sleeps).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace cpcsync::testing {

// A file descriptor, closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset();
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// Echoes every byte of every connection back, in a thread per connection; when a
// client half-closes, it finishes echoing and closes.
class EchoServer {
 public:
  EchoServer();
  ~EchoServer();
  EchoServer(const EchoServer&) = delete;
  EchoServer& operator=(const EchoServer&) = delete;
  uint16_t port() const { return port_; }
  uint64_t accepted() const { return accepted_.load(); }
  uint64_t received() const { return received_.load(); }

 private:
  void AcceptLoop();
  void Serve(int fd);

  Fd listener_;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> accepted_{0};
  std::atomic<uint64_t> received_{0};
  std::mutex mu_;
  std::vector<int> open_;  // connection fds being served (shut down on destruction)
  std::vector<std::thread> threads_;
  std::thread acceptor_;
};

// How a read ended.
enum class End { kComplete, kEof, kReset, kTimeout, kError };

struct ReadResult {
  std::string data;
  End end = End::kComplete;
};

// A connected blocking client socket; reads give up after `timeout`.
class Client {
 public:
  // Connects to 127.0.0.1:port; ok() is false (and error() the errno) when refused.
  explicit Client(uint16_t port, std::chrono::milliseconds timeout = std::chrono::seconds(20));
  bool ok() const { return fd_.valid(); }
  int error() const { return error_; }
  bool Send(const std::string& data);
  void ShutdownWrite();
  // Reads until `n` bytes arrived (kComplete), or the stream ended first.
  ReadResult Read(size_t n);
  // Reads until EOF, reset, error or timeout.
  ReadResult ReadToEnd();
  // Send(data) then Read(data.size()); the elapsed time in `elapsed`.
  ReadResult RoundTrip(const std::string& data, std::chrono::nanoseconds* elapsed = nullptr);

 private:
  Fd fd_;
  int error_ = 0;
};

// `n` bytes of a recognisable pattern.
std::string Pattern(size_t n, uint32_t seed = 1);

}  // namespace cpcsync::testing
