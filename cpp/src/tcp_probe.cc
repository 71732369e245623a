#include "cpcsync/tcp_probe.h"

#ifndef ASIO_STANDALONE
#define ASIO_STANDALONE
#endif
#ifndef ASIO_NO_DEPRECATED
#define ASIO_NO_DEPRECATED
#endif
#include <asio.hpp>
#include <chrono>
#include <cmath>

#include "cpcsync/errors.h"
#include "cpcsync/log.h"

namespace cpcsync {

TcpProbe::TcpProbe(std::string host, uint16_t port, double timeout)
    : host_(std::move(host)), port_(port), timeout_(timeout) {
  if (host_.empty()) ThrowInvalid("TcpProbe: host must not be empty");
  if (port_ == 0) ThrowInvalid("TcpProbe: port must be in 1..65535");
  if (!std::isfinite(timeout_) || timeout_ <= 0) {
    ThrowInvalid("TcpProbe: timeout must be finite and > 0");
  }
}

bool TcpProbe::Check(double timeout) {
  if (!std::isfinite(timeout) || timeout <= 0) timeout = timeout_;
  using Clock = std::chrono::steady_clock;
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(std::min(timeout, 86400.0)));
  asio::io_context io;
  asio::error_code ec;
  // Blocking getaddrinfo: Asio's async resolver would run it on a thread of its own
  // that the io_context still waits for, so it bounds nothing.
  asio::ip::tcp::resolver resolver(io);
  const auto endpoints = resolver.resolve(host_, std::to_string(port_), ec);
  if (ec) {
    Log().debug("TcpProbe {}:{}: cannot resolve: {}", host_, port_, ec.message());
    return false;
  }
  if (Clock::now() >= deadline) return false;

  asio::ip::tcp::socket socket(io);
  asio::steady_timer timer(io, deadline);
  bool connected = false, timed_out = false;
  asio::error_code connect_error = asio::error::timed_out;
  asio::async_connect(socket, endpoints,
                      [&](const asio::error_code& e, const asio::ip::tcp::endpoint&) {
                        connect_error = e;
                        connected = !e && !timed_out;
                        timer.cancel();
                      });
  timer.async_wait([&](const asio::error_code& e) {
    if (e) return;  // cancelled: the connect finished first
    timed_out = true;
    asio::error_code ignored;
    socket.close(ignored);  // aborts the pending connect
  });
  io.run();
  if (!connected) {
    Log().debug("TcpProbe {}:{}: {}", host_, port_,
                timed_out ? std::string("timed out") : connect_error.message());
  }
  asio::error_code ignored;
  socket.close(ignored);
  return connected;
}

}  // namespace cpcsync
