#include "proxy_sockets.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>

namespace cpcsync::testing {
namespace {

sockaddr_in Loopback(uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

void NoDelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

bool WriteAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) {
    reset();
    fd_ = o.release();
  }
  return *this;
}

void Fd::reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

// ---------------------------------------------------------------------------- EchoServer

EchoServer::EchoServer() : listener_(::socket(AF_INET, SOCK_STREAM, 0)) {
  sockaddr_in addr = Loopback(0);
  socklen_t len = sizeof addr;
  if (!listener_.valid() ||
      ::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listener_.get(), 64) != 0 ||
      ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    throw std::runtime_error("EchoServer: cannot listen on 127.0.0.1");
  }
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

EchoServer::~EchoServer() {
  stopping_ = true;
  ::shutdown(listener_.get(), SHUT_RDWR);  // wakes accept()
  acceptor_.join();
  {
    std::lock_guard lock(mu_);
    for (int fd : open_) ::shutdown(fd, SHUT_RDWR);  // wakes the readers
  }
  for (std::thread& t : threads_) t.join();
}

void EchoServer::AcceptLoop() {
  for (;;) {
    const int fd = ::accept(listener_.get(), nullptr, nullptr);
    if (fd < 0) {
      if (stopping_) return;
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;
    }
    NoDelay(fd);
    ++accepted_;
    std::lock_guard lock(mu_);
    open_.push_back(fd);
    threads_.emplace_back([this, fd] { Serve(fd); });
  }
}

void EchoServer::Serve(int fd) {
  std::vector<char> buffer(64 * 1024);
  for (;;) {
    const ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    received_ += static_cast<uint64_t>(n);
    if (!WriteAll(fd, buffer.data(), static_cast<size_t>(n))) break;
  }
  std::lock_guard lock(mu_);
  std::erase(open_, fd);
  ::close(fd);
}

// ---------------------------------------------------------------------------- Client

Client::Client(uint16_t port, std::chrono::milliseconds timeout)
    : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>(timeout.count() % 1000 * 1000);
  ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  NoDelay(fd_.get());
  sockaddr_in addr = Loopback(port);
  if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    error_ = errno;
    fd_.reset();
  }
}

bool Client::Send(const std::string& data) { return WriteAll(fd_.get(), data.data(), data.size()); }

void Client::ShutdownWrite() { ::shutdown(fd_.get(), SHUT_WR); }

ReadResult Client::Read(size_t n) {
  ReadResult r;
  char buffer[64 * 1024];
  while (r.data.size() < n) {
    const ssize_t got = ::recv(fd_.get(), buffer, std::min(sizeof buffer, n - r.data.size()), 0);
    if (got > 0) {
      r.data.append(buffer, static_cast<size_t>(got));
      continue;
    }
    if (got < 0 && errno == EINTR) continue;
    if (got == 0) {
      r.end = End::kEof;
    } else if (errno == ECONNRESET) {
      r.end = End::kReset;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      r.end = End::kTimeout;
    } else {
      r.end = End::kError;
    }
    return r;
  }
  return r;
}

ReadResult Client::ReadToEnd() { return Read(SIZE_MAX); }

ReadResult Client::RoundTrip(const std::string& data, std::chrono::nanoseconds* elapsed) {
  const auto start = std::chrono::steady_clock::now();
  ReadResult r;
  if (!Send(data)) {
    r.end = End::kError;
    return r;
  }
  r = Read(data.size());
  if (elapsed) *elapsed = std::chrono::steady_clock::now() - start;
  return r;
}

std::string Pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (char& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

}  // namespace cpcsync::testing
