// FaultProxy: a real TCP proxy on 127.0.0.1 that injects network faults ("toxics").
//
// It listens on `listen_host:listen_port` (port 0: an ephemeral port, chosen by the
// first Start() and kept for the proxy's life) and forwards every accepted
// connection to `upstream_host:upstream_port`. Each connection has two streams:
// "upstream" (client -> server) and "downstream" (server -> client). Bytes are
// forwarded as they arrive (no framing), with TCP_NODELAY on both sockets, and a
// half-close (EOF) on one side is passed on as a shutdown of the other side's
// sending direction; the connection ends when both directions have ended, or on an
// error (a reset from either peer is passed on as a reset to the other).
//
// Toxics use Toxiproxy's names and attributes (all integers); each belongs to one
// stream and has a toxicity, the probability that it applies to a given connection,
// drawn per (connection, toxic) from the proxy's seed when the toxic takes effect and
// again on every update of the toxic (as in Toxiproxy), so a seeded run with the same
// calls and connection order is reproducible:
//   latency     latency, jitter (ms)     each read's bytes are held until they are
//                                        `latency` +/- `jitter` old (uniform; >= 0)
//   bandwidth   rate (KB/s, 1 KB = 1000) at most `rate` KB per second; 0: no data
//                                        passes until the rate changes or the toxic goes
//   timeout     timeout (ms)             data is dropped; the connection is closed
//                                        `timeout` ms after the toxic took effect or was
//                                        last updated (0: not), when its stream ends,
//                                        or when the toxic is removed
//   reset_peer  timeout (ms)             from the first data (or EOF) on the stream,
//                                        data stops and after `timeout` ms both peers
//                                        get a TCP RST (SO_LINGER 0, then close), also
//                                        on connections open before it was added
//   slow_close  delay (ms)               the EOF is passed on `delay` ms late
//   slicer      average_size, size_variation (bytes), delay (us)
//                                        data is written in slices of average_size +/-
//                                        size_variation bytes, `delay` us apart
//   limit_data  bytes                    the connection is closed once `bytes` bytes
//                                        have passed on the stream since the toxic took
//                                        effect
// Several toxics on one stream combine: latencies add, the lowest rate wins, the
// slicer with the smallest average_size - size_variation sets the slice size and the
// longest slicer delay applies, slow_close delays add, and any timeout, reset_peer or
// limit_data may end the connection. Toxics may be added, updated and removed while
// traffic flows; a change applies at once to every open connection (a toxic "takes
// effect" on a connection when it is added, or when the connection opens). Held
// data is stored back to back in shared 64 KiB blocks (plus 16 bytes per read), and
// bounded by that memory (about 1 MiB per stream); beyond that the proxy stops
// reading, so TCP flow control pushes back on the sender.
//
// Disable() closes the listener (new connections are refused) and resets every open
// connection (its client gets a TCP RST; its server a FIN); Enable() listens again
// on the same port. When the upstream refuses or is unreachable, the client's
// connection is closed (counted in upstream_failures).
//
// The proxy runs in real time (std::chrono::steady_clock), not on a cpcsync Clock.
//
// Thread-safety: all methods are safe from any thread. The proxy owns one I/O thread
// (between Start and Stop) that does all socket work and never throws; errors are
// logged through cpcsync's logger. Control calls (Start, Stop, Enable, Disable and
// the toxic calls) are serialised and block until the I/O thread has applied them,
// so when they return the change is in effect for every open connection. The
// destructor stops the proxy.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace cpcsync {

enum class ToxicStream { kUpstream, kDownstream };

// One toxic as given to AddToxic, and as listed by Toxics().
struct ToxicSpec {
  std::string type;  // latency, bandwidth, timeout, reset_peer, slow_close, slicer, limit_data
  std::string name;  // empty: "<type>_<stream>"
  ToxicStream stream = ToxicStream::kDownstream;
  double toxicity = 1.0;                      // 0..1
  std::map<std::string, int64_t> attributes;  // missing ones default to 0 (as in Toxiproxy)
};

struct FaultProxyOptions {
  std::string upstream_host = "127.0.0.1";
  uint16_t upstream_port = 0;  // required (1..65535)
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;      // 0: ephemeral
  std::optional<uint64_t> seed;  // nullopt: random (see seed())
};

// Byte counts are taken when each write completes on the I/O thread: a peer may have
// read the bytes a moment before they are counted.
struct FaultProxyStats {
  uint64_t connections = 0;        // accepted in total
  uint64_t active = 0;             // open now
  uint64_t bytes_upstream = 0;     // forwarded client -> server
  uint64_t bytes_downstream = 0;   // forwarded server -> client
  uint64_t upstream_failures = 0;  // connections closed because the upstream connect failed
  uint64_t held_bytes = 0;         // read and not yet written (held by toxics), all connections
  uint64_t held_memory = 0;        // memory holding them: 64 KiB blocks plus 16 bytes per read
};

class FaultProxy {
 public:
  // Throws SyncError(kInvalidArgument) for an empty host or upstream port 0. Nothing
  // is opened until Start().
  explicit FaultProxy(FaultProxyOptions options);
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  // Resolves the upstream (SyncError(kInvalidArgument) if it does not resolve), binds
  // the listener (SyncError(kOs) if that fails), starts the I/O thread. A disabled
  // proxy starts without listening. No-op when running. A stopped proxy may start
  // again (on the same port).
  void Start();
  // Closes the listener and every connection (FIN), joins the thread. Idempotent.
  void Stop();
  // See the class comment. Enable() on a running proxy throws SyncError(kOs) if the
  // port was taken meanwhile. Both are no-ops when already in that state.
  void Disable();
  void Enable();

  // Validates and adds a toxic; returns its name. Throws SyncError(kInvalidArgument)
  // for an unknown type or attribute, a value out of range, a toxicity outside 0..1,
  // or a name already in use.
  std::string AddToxic(ToxicSpec spec);
  // Changes some attributes (the others keep their values) and, if given, the
  // toxicity. Throws SyncError(kInvalidArgument) for an unknown name or a bad value.
  void UpdateToxic(const std::string& name, const std::map<std::string, int64_t>& attributes,
                   std::optional<double> toxicity = std::nullopt);
  // Throws SyncError(kInvalidArgument) for an unknown name.
  void RemoveToxic(const std::string& name);
  // The toxics in the order they were added, every attribute filled in.
  std::vector<ToxicSpec> Toxics() const;

  FaultProxyStats Stats() const;
  bool running() const;
  bool enabled() const;
  const std::string& listen_host() const;
  // The listening port: the chosen one after the first Start(), else the configured one.
  uint16_t port() const;
  const std::string& upstream_host() const;
  uint16_t upstream_port() const;
  // The seed toxicity, jitter and slice sizes are drawn from (random unless given).
  uint64_t seed() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

const char* ToxicStreamName(ToxicStream stream);

}  // namespace cpcsync
