// TcpProbe: a Probe that succeeds when a TCP handshake with host:port completes in time.
//
// Check(timeout) resolves `host` (a name or a numeric address), then connects to each
// resolved address in turn with a non-blocking connect (standalone Asio), giving up
// when `timeout` seconds of real time have passed. It succeeds as soon as one
// handshake completes, and closes the connection at once without sending anything.
// A refused connection, an unreachable network, a name that does not resolve and a
// timeout are all failures (false); Check() never throws for network errors.
// Name resolution is a blocking getaddrinfo() and may outlast the timeout when DNS
// hangs; a NetworkMonitor still counts such a check as failed at its deadline.
//
// Thread-safety: immutable after construction; Check() may run on several threads at once.
#pragma once

#include <cstdint>
#include <string>

#include "cpcsync/probe.h"

namespace cpcsync {

class TcpProbe final : public Probe {
 public:
  // Throws SyncError(kInvalidArgument) for an empty host, port 0 or a timeout that is
  // not finite and > 0.
  TcpProbe(std::string host, uint16_t port, double timeout = 1.0);

  // Connects with the given timeout (seconds; <= 0 or non-finite: the probe's own).
  bool Check(double timeout) override;
  // Connects with the probe's own timeout.
  bool Check() { return Check(timeout_); }
  double timeout() const override { return timeout_; }

  const std::string& host() const { return host_; }
  uint16_t port() const { return port_; }

 private:
  std::string host_;
  uint16_t port_;
  double timeout_;
};

}  // namespace cpcsync
