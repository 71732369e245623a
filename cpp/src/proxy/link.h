// FaultProxy internals: one proxied connection (Connection) and its two directions
// (Pipe), and what they share with the proxy (Hub). Everything here runs on the
// proxy's I/O thread only, except the atomic counters in Hub.
//
// A Pipe reads from its source socket when it is readable (non-blocking reads into a
// ByteQueue, until it holds kPipeCap bytes of memory), and Pump() writes the queue to
// the sink as far as the toxics allow, with non-blocking gathering writes. While no toxic applies
// to the stream and nothing is queued, bytes go through a SpliceRelay instead (zero-copy); when a
// toxic starts to apply, what the relay holds moves into the queue, so order is kept and the toxic
// sees it. What a pipe cannot do now it waits for: the socket becoming readable or writable, or the
// pipe's timer (the earliest moment a toxic lets something happen). Pump() recomputes everything
// from the current state, so a spurious call is harmless; that is how toxic changes reach open
// connections.
#pragma once

#include <asio.hpp>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <unordered_map>
#include <vector>

#include "proxy/byte_queue.h"
#include "proxy/splice.h"
#include "proxy/toxics.h"

namespace cpcsync::proxy {

using asio::ip::tcp;

class Connection;

// What connections share with their proxy.
struct Hub {
  uint64_t seed = 0;
  ToxicSnapshot toxics = std::make_shared<const ToxicList>();
  BufferPool pool;
  HeldCounters held;  // what every pipe's queue holds
  std::unordered_map<uint64_t, std::shared_ptr<Connection>> connections;
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> active{0};
  std::atomic<uint64_t> bytes_upstream{0};
  std::atomic<uint64_t> bytes_downstream{0};
  std::atomic<uint64_t> upstream_failures{0};
};

enum class CloseMode {
  kGraceful,     // close both sockets (FIN)
  kReset,        // RST to both peers
  kResetClient,  // RST to the client, FIN to the server (Disable)
};

class Pipe {
 public:
  Pipe(Connection& connection, tcp::socket& source, tcp::socket& sink, ToxicStream stream);
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;

  // Takes the toxics of `snapshot` that belong to this stream; keeps the state of
  // those it already had (their start time, bytes passed, a pending reset). Returns
  // false when the change ends the connection (a timeout toxic that applied here was
  // removed); the caller closes it then.
  bool Sync(const ToxicSnapshot& snapshot, SteadyTime now);
  // Moves data as far as the toxics allow now, and arranges to be called again.
  void Pump();
  // Stops the timer and lets go of the held data (the connection closed).
  void Cancel();
  bool finished() const { return shutdown_sent_; }

 private:
  struct State {
    const Toxic* toxic = nullptr;  // points into snapshot_
    bool applies = false;
    SteadyTime start;                    // when the toxic took effect on this connection
    uint64_t bytes = 0;                  // limit_data: bytes passed since `start`
    std::optional<SteadyTime> reset_at;  // reset_peer: armed by the first data or EOF
  };
  // The decisions of the stream's toxics at `now`.
  struct Plan {
    bool hold = false;   // armed reset_peer: nothing passes
    bool drop = false;   // timeout: what arrives is discarded
    bool stall = false;  // bandwidth with rate 0: no data passes (an EOF alone does)
    SteadyTime wake = SteadyTime::max();
    int64_t latency_ms = 0, jitter_ms = 0, rate = 0, slow_close_ms = 0;
    int64_t slice_min = 0, slice_var = 0, slice_delay_us = 0;
    int64_t limit_left = -1;  // limit_data: bytes that may still pass (-1: no limit)
  };

  // Fills `plan`; returns false when a toxic closed the connection.
  bool MakePlan(SteadyTime now, Plan& plan);
  // One step of Pump(); false when nothing more can happen now.
  bool Step(SteadyTime now, Plan& plan);
  void WaitReadable();
  void WaitWritable();
  // Waits until `socket` is ready for `what` (`waiting` is true meanwhile), then reads
  // (for wait_read) and pumps.
  void Await(tcp::socket& socket, tcp::socket::wait_type what, bool& waiting);
  void ReadAvailable();
  void ReadBuffered();
  void SpliceIn();
  // Moves the relay's bytes to the front of the (empty) queue.
  void RelayToQueue();
  bool DrainRelay();
  // Bytes at the front of the queue that latency lets pass at `now` (all of them
  // when there is no latency).
  size_t Ready(SteadyTime now, const Plan& plan) const;
  void Count(size_t n);
  // Writes up to `limit` bytes from the queue; returns bytes written (0: socket full,
  // a wait for writability is pending, or the connection closed).
  size_t TryWrite(size_t limit);
  void Consumed(size_t n, const Plan& plan, SteadyTime now);
  void ArmTimer(SteadyTime at);
  SteadyTime ReadyAt(const ByteQueue::Mark& mark, const Plan& plan) const;
  float DrawJitter();

  Connection& connection_;
  tcp::socket& source_;
  tcp::socket& sink_;
  const ToxicStream stream_;
  asio::steady_timer timer_;
  SteadyTime timer_at_ = SteadyTime::max();
  std::mt19937_64 rng_;

  ToxicSnapshot snapshot_;
  std::vector<State> states_;
  bool toxic_ = false;  // some toxic applies to this stream

  SpliceRelay relay_;
  bool splice_off_ = false;  // splice unsupported here: always buffered
  bool relay_full_ = false;  // the relay refused more: drain it before reading again

  ByteQueue queue_;
  bool waiting_read_ = false;
  bool waiting_write_ = false;
  bool eof_ = false;
  bool shutdown_sent_ = false;
  SteadyTime eof_at_;
  SteadyTime slice_gate_;     // slicer: the next slice not before this
  SteadyTime rate_gate_;      // bandwidth: the reserved bytes not before this
  size_t rate_reserved_ = 0;  // bandwidth: bytes already paid for
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(asio::io_context& io, Hub& hub, uint64_t id, tcp::socket client);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Connects to the upstream, then starts both pipes.
  void Start(const tcp::endpoint& upstream);
  // The toxics changed (hub.toxics): both pipes take them and pump.
  void ToxicsChanged();
  // Closes both sockets (idempotent) and leaves the hub.
  void Close(CloseMode mode, const char* why);
  // A pipe passed its EOF on; when both have, the connection ends.
  void PipeFinished();

  bool closed() const { return closed_; }
  uint64_t id() const { return id_; }
  Hub& hub() { return hub_; }

 private:
  void Connected();

  Hub& hub_;
  const uint64_t id_;
  tcp::socket client_;
  tcp::socket server_;
  Pipe up_;    // client -> server
  Pipe down_;  // server -> client
  bool connected_ = false;
  bool closed_ = false;
};

}  // namespace cpcsync::proxy
