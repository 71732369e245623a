#include "proxy/link.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <span>

#include "cpcsync/errors.h"
#include "cpcsync/log.h"

namespace cpcsync::proxy {
namespace {

// Memory held per direction (ByteQueue::memory() plus the splice relay's bytes) at
// which the pipe stops reading.
constexpr size_t kPipeCap = 16 * BufferPool::kSize;
// At most this much is handed to one write.
constexpr size_t kMaxWrite = ByteQueue::kMaxGather * BufferPool::kSize;

std::chrono::nanoseconds Ms(int64_t ms) { return std::chrono::milliseconds(ms); }

}  // namespace

// ---------------------------------------------------------------------------- Pipe

Pipe::Pipe(Connection& connection, tcp::socket& source, tcp::socket& sink, ToxicStream stream)
    : connection_(connection),
      source_(source),
      sink_(sink),
      stream_(stream),
      timer_(source.get_executor()),
      rng_(Mix(Mix(connection.hub().seed, connection.id()), 2 + static_cast<int>(stream))),
      queue_(connection.hub().pool, connection.hub().held) {}

bool Pipe::Sync(const ToxicSnapshot& snapshot, SteadyTime now) {
  const Hub& hub = connection_.hub();
  std::vector<State> next;
  for (const Toxic& t : *snapshot) {
    if (t.spec.stream != stream_) continue;
    State s{&t, Applies(hub.seed, connection_.id(), t), now, 0, std::nullopt};
    for (const State& old : states_) {
      // Kept only while it applies throughout: a toxic that starts to apply (drawn
      // again on an update) takes effect now. An updated timeout starts its clock
      // again, as Toxiproxy restarts an updated toxic.
      if (old.toxic->serial != t.serial || !old.applies || !s.applies) continue;
      const bool restart = t.type == ToxicType::kTimeout && old.toxic->version != t.version;
      s.start = restart ? now : old.start;
      s.bytes = old.bytes;
      s.reset_at = old.reset_at;
    }
    next.push_back(s);
  }
  // Removing a timeout toxic ends the connections it applied to, as in Toxiproxy.
  const bool timeout_removed = std::any_of(states_.begin(), states_.end(), [&](const State& old) {
    return old.applies && old.toxic->type == ToxicType::kTimeout &&
           std::none_of(next.begin(), next.end(),
                        [&](const State& s) { return s.toxic->serial == old.toxic->serial; });
  });
  snapshot_ = snapshot;  // keeps the toxics `next` points to alive
  states_ = std::move(next);
  toxic_ = std::any_of(states_.begin(), states_.end(), [](const State& s) { return s.applies; });
  if (toxic_) RelayToQueue();
  return !timeout_removed;
}

bool Pipe::MakePlan(SteadyTime now, Plan& plan) {
  bool slicer = false, rate = false;
  for (State& s : states_) {
    if (!s.applies) continue;
    const Toxic& t = *s.toxic;
    switch (t.type) {
      case ToxicType::kLatency:
        plan.latency_ms += t.Attr("latency");
        plan.jitter_ms += t.Attr("jitter");
        break;
      case ToxicType::kBandwidth: {
        const int64_t r = t.Attr("rate");
        plan.rate = rate ? std::min(plan.rate, r) : r;
        plan.stall = plan.rate == 0;
        rate = true;
        break;
      }
      case ToxicType::kTimeout: {
        plan.drop = true;
        if (const int64_t ms = t.Attr("timeout"); ms > 0) {
          const SteadyTime at = s.start + Ms(ms);
          if (now >= at) {
            connection_.Close(CloseMode::kGraceful, "timeout toxic");
            return false;
          }
          plan.wake = std::min(plan.wake, at);
        }
        break;
      }
      case ToxicType::kResetPeer:
        if (!s.reset_at && (!queue_.empty() || eof_)) s.reset_at = now + Ms(t.Attr("timeout"));
        if (s.reset_at) {
          plan.hold = true;
          if (now >= *s.reset_at) {
            connection_.Close(CloseMode::kReset, "reset_peer toxic");
            return false;
          }
          plan.wake = std::min(plan.wake, *s.reset_at);
        }
        break;
      case ToxicType::kSlowClose:
        plan.slow_close_ms += t.Attr("delay");
        break;
      case ToxicType::kSlicer: {
        const int64_t avg = t.Attr("average_size"), var = t.Attr("size_variation");
        if (!slicer || avg - var < plan.slice_min) {
          plan.slice_min = avg - var;
          plan.slice_var = 2 * var;
        }
        plan.slice_delay_us = std::max(plan.slice_delay_us, t.Attr("delay"));
        slicer = true;
        break;
      }
      case ToxicType::kLimitData: {
        const int64_t left = std::max<int64_t>(0, t.Attr("bytes") - static_cast<int64_t>(s.bytes));
        plan.limit_left = plan.limit_left < 0 ? left : std::min(plan.limit_left, left);
        break;
      }
    }
  }
  if (!rate || plan.stall) rate_reserved_ = 0;
  return true;
}

SteadyTime Pipe::ReadyAt(const ByteQueue::Mark& mark, const Plan& plan) const {
  if (plan.latency_ms == 0 && plan.jitter_ms == 0) return mark.read_at;
  const double offset = (2.0 * mark.jitter_u - 1.0) * static_cast<double>(plan.jitter_ms);
  const int64_t ms = std::max<int64_t>(0, plan.latency_ms + static_cast<int64_t>(offset));
  return mark.read_at + Ms(ms);
}

size_t Pipe::Ready(SteadyTime now, const Plan& plan) const {
  if (plan.latency_ms == 0 && plan.jitter_ms == 0) return std::min(queue_.bytes(), kMaxWrite);
  return queue_.ReadyBytes([&](const ByteQueue::Mark& m) { return ReadyAt(m, plan) <= now; },
                           kMaxWrite);
}

bool Pipe::Step(SteadyTime now, Plan& plan) {
  if (plan.drop) {  // a timeout toxic: data is lost; the stream's end ends the connection
    queue_.Clear();
    if (eof_) connection_.Close(CloseMode::kGraceful, "timeout toxic: the stream ended");
    return false;
  }
  if (waiting_write_ || plan.hold) return false;
  if (relay_.pending() > 0) return DrainRelay();  // the queue is empty then
  if (queue_.empty()) {
    if (!eof_ || shutdown_sent_) return false;
    const SteadyTime at = eof_at_ + Ms(plan.slow_close_ms);
    if (now < at) {
      plan.wake = std::min(plan.wake, at);
      return false;
    }
    asio::error_code ignored;
    sink_.shutdown(tcp::socket::shutdown_send, ignored);
    shutdown_sent_ = true;
    connection_.PipeFinished();
    return false;
  }
  if (plan.stall) return false;  // until the rate changes or the toxic goes
  SteadyTime ready = std::max(ReadyAt(queue_.front(), plan), slice_gate_);
  if (plan.rate > 0 && rate_reserved_ > 0) ready = std::max(ready, rate_gate_);
  if (now < ready) {
    plan.wake = std::min(plan.wake, ready);
    return false;
  }
  size_t limit = Ready(now, plan);  // > 0: the front is ready
  if (plan.limit_left == 0) {
    connection_.Close(CloseMode::kGraceful, "limit_data toxic");
    return false;
  }
  if (plan.limit_left > 0) limit = std::min(limit, static_cast<size_t>(plan.limit_left));
  if (plan.slice_min > 0) {
    std::uniform_int_distribution<int64_t> size(0, plan.slice_var);
    limit = std::min(limit, static_cast<size_t>(std::max<int64_t>(1, plan.slice_min + size(rng_))));
  }
  if (plan.rate > 0) {
    if (rate_reserved_ == 0) {
      // Pay for the next piece (at most 100 ms worth) before sending it.
      const size_t piece = std::min(limit, static_cast<size_t>(plan.rate) * 100);
      rate_reserved_ = piece;
      rate_gate_ = std::max(rate_gate_, now) +
                   std::chrono::nanoseconds(static_cast<int64_t>(piece) * 1'000'000 / plan.rate);
      plan.wake = std::min(plan.wake, rate_gate_);
      if (now < rate_gate_) return false;
    }
    limit = std::min(limit, rate_reserved_);
  }
  const size_t n = TryWrite(limit);
  if (n == 0) return false;
  Consumed(n, plan, now);
  return !connection_.closed();
}

size_t Pipe::TryWrite(size_t limit) {
  ByteQueue::Buffers buffers;
  const size_t count = queue_.Gather(buffers, limit);
  asio::error_code ec;
  const size_t n = sink_.write_some(std::span<const asio::const_buffer>(buffers.data(), count), ec);
  if (ec == asio::error::would_block || ec == asio::error::try_again) {
    WaitWritable();
    return 0;
  }
  if (ec) {
    Log().debug("FaultProxy connection {}: write failed: {}", connection_.id(), ec.message());
    connection_.Close(
        ec == asio::error::connection_reset ? CloseMode::kReset : CloseMode::kGraceful,
        "write failed");
    return 0;
  }
  return n;
}

void Pipe::Consumed(size_t n, const Plan& plan, SteadyTime now) {
  Count(n);
  queue_.Consume(n);
  if (plan.rate > 0) rate_reserved_ -= std::min(rate_reserved_, n);
  if (plan.slice_min > 0) slice_gate_ = now + std::chrono::microseconds(plan.slice_delay_us);
  bool limit_reached = false;
  for (State& s : states_) {
    if (s.applies && s.toxic->type == ToxicType::kLimitData) {
      s.bytes += n;
      limit_reached |= s.bytes >= static_cast<uint64_t>(s.toxic->Attr("bytes"));
    }
  }
  if (limit_reached) connection_.Close(CloseMode::kGraceful, "limit_data toxic");
}

void Pipe::Pump() {
  if (connection_.closed()) return;
  Plan plan;
  for (;;) {
    const SteadyTime now = SteadyClock::now();
    plan = Plan{};
    if (!MakePlan(now, plan)) return;
    if (!Step(now, plan)) break;
  }
  if (connection_.closed()) return;
  WaitReadable();
  ArmTimer(plan.wake);
}

void Pipe::WaitReadable() {
  if (waiting_read_ || eof_ || relay_full_ || queue_.memory() + relay_.pending() >= kPipeCap) {
    return;
  }
  Await(source_, tcp::socket::wait_read, waiting_read_);
}

void Pipe::WaitWritable() { Await(sink_, tcp::socket::wait_write, waiting_write_); }

void Pipe::Await(tcp::socket& socket, tcp::socket::wait_type what, bool& waiting) {
  waiting = true;
  socket.async_wait(what, [self = connection_.shared_from_this(), this, what,
                           &waiting](const asio::error_code& e) {
    waiting = false;
    if (e || self->closed()) return;
    if (what == tcp::socket::wait_read) ReadAvailable();
    Pump();
  });
}

void Pipe::ReadAvailable() {
  if (!splice_off_ && !toxic_ && queue_.empty()) {
    SpliceIn();
  } else {
    ReadBuffered();
  }
}

void Pipe::SpliceIn() {
  while (relay_.pending() < kPipeCap) {
    const size_t want = kPipeCap - relay_.pending();
    const SpliceRelay::Result r = relay_.Fill(source_.native_handle(), want);
    switch (r.status) {
      case SpliceRelay::Status::kMoved:
        if (r.bytes < want) return;  // most likely drained: let the reactor say
        break;
      case SpliceRelay::Status::kWouldBlock:
        relay_full_ = relay_.pending() > 0;  // empty source or full pipe: drain first
        return;
      case SpliceRelay::Status::kEof:
        eof_ = true;
        eof_at_ = SteadyClock::now();
        return;
      case SpliceRelay::Status::kError:
        Log().debug("FaultProxy connection {}: read failed: {}", connection_.id(),
                    ErrnoMessage(r.error));
        connection_.Close(r.error == ECONNRESET ? CloseMode::kReset : CloseMode::kGraceful,
                          "read failed");
        return;
      case SpliceRelay::Status::kUnsupported:
        Log().debug("FaultProxy: splice unsupported ({}); copying instead", ErrnoMessage(r.error));
        RelayToQueue();
        splice_off_ = true;
        ReadBuffered();
        return;
    }
  }
}

bool Pipe::DrainRelay() {
  const SpliceRelay::Result r = relay_.Drain(sink_.native_handle());
  switch (r.status) {
    case SpliceRelay::Status::kMoved:
      relay_full_ = false;
      Count(r.bytes);
      return true;
    case SpliceRelay::Status::kWouldBlock:
      WaitWritable();
      return false;
    default:
      Log().debug("FaultProxy connection {}: write failed: {}", connection_.id(),
                  ErrnoMessage(r.error));
      connection_.Close(r.error == ECONNRESET ? CloseMode::kReset : CloseMode::kGraceful,
                        "write failed");
      return false;
  }
}

void Pipe::RelayToQueue() {
  if (relay_.pending() == 0) return;
  const SteadyTime now = SteadyClock::now();
  const float jitter = DrawJitter();
  while (relay_.pending() > 0) {
    const std::span<char> tail = queue_.Tail();
    const SpliceRelay::Result r = relay_.ReadOut(tail.data(), tail.size());
    if (r.status != SpliceRelay::Status::kMoved) {
      queue_.TrimTail();
      connection_.Close(CloseMode::kGraceful, "cannot read the splice pipe");
      return;
    }
    queue_.Commit(r.bytes, now, jitter);  // one read: one mark
  }
  relay_full_ = false;
}

float Pipe::DrawJitter() {
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  return unit(rng_);
}

void Pipe::Count(size_t n) {
  Hub& hub = connection_.hub();
  (stream_ == ToxicStream::kUpstream ? hub.bytes_upstream : hub.bytes_downstream)
      .fetch_add(n, std::memory_order_relaxed);
}

void Pipe::ReadBuffered() {
  const SteadyTime now = SteadyClock::now();
  std::optional<float> jitter;  // drawn for the first byte read: one mark per call
  while (queue_.memory() < kPipeCap) {
    const std::span<char> tail = queue_.Tail();
    asio::error_code ec;
    const size_t n = source_.read_some(asio::buffer(tail.data(), tail.size()), ec);
    if (ec) {
      queue_.TrimTail();
      if (ec == asio::error::would_block || ec == asio::error::try_again) return;
      if (ec == asio::error::eof) {
        eof_ = true;
        eof_at_ = SteadyClock::now();
        return;
      }
      Log().debug("FaultProxy connection {}: read failed: {}", connection_.id(), ec.message());
      connection_.Close(
          ec == asio::error::connection_reset ? CloseMode::kReset : CloseMode::kGraceful,
          "read failed");
      return;
    }
    if (!jitter) jitter = DrawJitter();
    queue_.Commit(n, now, *jitter);
    if (n < tail.size()) return;  // most likely drained: let the reactor say
  }
}

void Pipe::ArmTimer(SteadyTime at) {
  if (at == SteadyTime::max() || at >= timer_at_) return;
  timer_at_ = at;
  timer_.expires_at(at);
  timer_.async_wait([self = connection_.shared_from_this(), this](const asio::error_code& e) {
    if (e == asio::error::operation_aborted || self->closed()) return;
    timer_at_ = SteadyTime::max();
    Pump();
  });
}

void Pipe::Cancel() {
  timer_.cancel();
  timer_at_ = SteadyTime::max();
  queue_.Clear();
}

// ---------------------------------------------------------------------------- Connection

Connection::Connection(asio::io_context& io, Hub& hub, uint64_t id, tcp::socket client)
    : hub_(hub),
      id_(id),
      client_(std::move(client)),
      server_(io),
      up_(*this, client_, server_, ToxicStream::kUpstream),
      down_(*this, server_, client_, ToxicStream::kDownstream) {}

void Connection::Start(const tcp::endpoint& upstream) {
  server_.async_connect(upstream, [self = shared_from_this(), this](const asio::error_code& e) {
    if (closed_) return;
    if (e) {
      hub_.upstream_failures.fetch_add(1, std::memory_order_relaxed);
      Log().debug("FaultProxy connection {}: upstream connect failed: {}", id_, e.message());
      Close(CloseMode::kGraceful, "upstream connect failed");
      return;
    }
    Connected();
  });
}

void Connection::Connected() {
  connected_ = true;
  asio::error_code ec;
  for (tcp::socket* s : {&client_, &server_}) {
    s->set_option(tcp::no_delay(true), ec);
    s->non_blocking(true, ec);
    if (ec) {
      Log().warn("FaultProxy connection {}: socket setup failed: {}", id_, ec.message());
      Close(CloseMode::kGraceful, "socket setup failed");
      return;
    }
  }
  ToxicsChanged();
}

void Connection::ToxicsChanged() {
  if (closed_ || !connected_) return;
  const SteadyTime now = SteadyClock::now();
  const bool keep = up_.Sync(hub_.toxics, now) && !closed_ && down_.Sync(hub_.toxics, now);
  if (closed_) return;
  if (!keep) {
    Close(CloseMode::kGraceful, "timeout toxic removed");
    return;
  }
  up_.Pump();
  down_.Pump();
}

void Connection::PipeFinished() {
  if (up_.finished() && down_.finished()) Close(CloseMode::kGraceful, "both sides closed");
}

void Connection::Close(CloseMode mode, const char* why) {
  if (closed_) return;
  closed_ = true;
  Log().debug("FaultProxy connection {}: closing ({})", id_, why);
  asio::error_code ignored;
  if (mode != CloseMode::kGraceful) client_.set_option(asio::socket_base::linger(true, 0), ignored);
  if (mode == CloseMode::kReset) server_.set_option(asio::socket_base::linger(true, 0), ignored);
  client_.close(ignored);
  server_.close(ignored);
  up_.Cancel();
  down_.Cancel();
  hub_.active.fetch_sub(1, std::memory_order_relaxed);
  hub_.connections.erase(id_);  // handlers still running hold their own reference
}

}  // namespace cpcsync::proxy
