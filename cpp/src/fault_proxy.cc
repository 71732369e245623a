#include "cpcsync/fault_proxy.h"

#include <algorithm>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "cpcsync/errors.h"
#include "cpcsync/log.h"
#include "proxy/link.h"

namespace cpcsync {

using proxy::CloseMode;
using proxy::tcp;

// Locking: control_mu_ serialises the control calls (held for a whole call, including
// the wait for the I/O thread); mu_ guards the fields below it and is never held
// while waiting. The members after `thread_` belong to the I/O thread while it runs,
// and to the control call holding control_mu_ otherwise.
class FaultProxy::Impl {
 public:
  explicit Impl(FaultProxyOptions options)
      : options_(std::move(options)),
        seed_(options_.seed ? *options_.seed
                            : (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}()),
        port_(options_.listen_port) {
    if (options_.upstream_host.empty()) ThrowInvalid("FaultProxy: upstream host must not be empty");
    if (options_.upstream_port == 0) ThrowInvalid("FaultProxy: upstream port must be in 1..65535");
    if (options_.listen_host.empty()) ThrowInvalid("FaultProxy: listen host must not be empty");
    hub_.seed = seed_;
  }

  ~Impl() {
    try {
      Stop();
    } catch (const std::exception& e) {
      Log().error("FaultProxy: stopping in the destructor failed: {}", e.what());
    }
  }

  void Start();
  void Stop();
  void SetEnabled(bool enabled);
  std::string AddToxic(ToxicSpec spec);
  void UpdateToxic(const std::string& name, const std::map<std::string, int64_t>& attributes,
                   std::optional<double> toxicity);
  void RemoveToxic(const std::string& name);

  std::vector<ToxicSpec> Toxics() const {
    std::lock_guard lock(mu_);
    std::vector<ToxicSpec> out;
    for (const proxy::Toxic& t : toxics_) out.push_back(t.spec);
    return out;
  }
  FaultProxyStats Stats() const {
    constexpr auto r = std::memory_order_relaxed;
    auto held = [&](const std::atomic<int64_t>& v) {
      return static_cast<uint64_t>(std::max<int64_t>(0, v.load(r)));
    };
    return {hub_.accepted.load(r),          hub_.active.load(r),
            hub_.bytes_upstream.load(r),    hub_.bytes_downstream.load(r),
            hub_.upstream_failures.load(r), held(hub_.held.bytes),
            held(hub_.held.memory)};
  }
  bool running() const {
    std::lock_guard lock(mu_);
    return running_;
  }
  bool enabled() const {
    std::lock_guard lock(mu_);
    return enabled_;
  }
  uint16_t port() const {
    std::lock_guard lock(mu_);
    return port_;
  }
  const FaultProxyOptions& options() const { return options_; }
  uint64_t seed() const { return seed_; }

 private:
  // Runs `fn` on the I/O thread and waits for it (rethrowing what it threw); runs it
  // here when the thread is not running. Needs control_mu_.
  template <typename Fn>
  void RunOnIo(Fn fn);
  // Publishes toxics_ to the I/O side. Needs control_mu_.
  void Publish();
  tcp::endpoint Resolve(const std::string& host, uint16_t port, const char* what);
  void OpenAcceptor();
  void CloseAcceptor();
  void Accept();
  void Accepted(tcp::socket socket);
  void CloseAll(CloseMode mode);
  void RunIo();

  const FaultProxyOptions options_;
  const uint64_t seed_;

  std::mutex control_mu_;
  mutable std::mutex mu_;
  proxy::ToxicList toxics_;
  uint64_t next_serial_ = 1;
  bool running_ = false;
  bool enabled_ = true;
  uint16_t port_;

  std::thread thread_;
  std::unique_ptr<asio::io_context> io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::optional<tcp::acceptor> acceptor_;
  std::optional<asio::steady_timer> retry_;
  uint64_t accept_generation_ = 0;
  tcp::endpoint upstream_;
  tcp::endpoint listen_;
  proxy::Hub hub_;
};

template <typename Fn>
void FaultProxy::Impl::RunOnIo(Fn fn) {
  if (!thread_.joinable()) {
    fn();
    return;
  }
  // The handler owns the promise: set_value() may still be running when get() returns.
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> result = done->get_future();
  asio::post(*io_, [&fn, done] {
    try {
      fn();
      done->set_value();
    } catch (...) {
      done->set_exception(std::current_exception());
    }
  });
  result.get();
}

void FaultProxy::Impl::Publish() {
  proxy::ToxicSnapshot snapshot;
  {
    std::lock_guard lock(mu_);
    snapshot = std::make_shared<const proxy::ToxicList>(toxics_);
  }
  RunOnIo([&] {
    hub_.toxics = snapshot;
    std::vector<std::shared_ptr<proxy::Connection>> open;
    for (const auto& [id, c] : hub_.connections) open.push_back(c);
    for (const auto& c : open) c->ToxicsChanged();
  });
}

tcp::endpoint FaultProxy::Impl::Resolve(const std::string& host, uint16_t port, const char* what) {
  asio::io_context io;
  tcp::resolver resolver(io);
  asio::error_code ec;
  const auto results = resolver.resolve(host, std::to_string(port), ec);
  if (ec || results.empty()) {
    ThrowInvalid(std::string("FaultProxy: cannot resolve the ") + what + " host '" + host +
                 "': " + (ec ? ec.message() : "no address"));
  }
  return results.begin()->endpoint();
}

void FaultProxy::Impl::OpenAcceptor() {
  asio::error_code ec;
  tcp::endpoint at(listen_.address(), port());
  acceptor_->open(at.protocol(), ec);
  if (!ec) acceptor_->set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_->bind(at, ec);
  if (!ec) acceptor_->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    asio::error_code ignored;
    acceptor_->close(ignored);
    throw SyncError(ErrorCode::kOs,
                    "FaultProxy: cannot listen on " + options_.listen_host + ":" +
                        std::to_string(at.port()) + ": " + ec.message(),
                    ec.value());
  }
  const uint16_t bound = acceptor_->local_endpoint(ec).port();
  std::lock_guard lock(mu_);
  if (!ec) port_ = bound;
}

void FaultProxy::Impl::CloseAcceptor() {
  ++accept_generation_;
  asio::error_code ignored;
  if (acceptor_) acceptor_->close(ignored);
  if (retry_) retry_->cancel();
}

void FaultProxy::Impl::Accept() {
  acceptor_->async_accept(
      [this, generation = accept_generation_](const asio::error_code& ec, tcp::socket socket) {
        if (generation != accept_generation_ || ec == asio::error::operation_aborted) return;
        if (!ec) {
          Accepted(std::move(socket));
          Accept();
          return;
        }
        // Out of descriptors or similar: try again shortly rather than spin.
        Log().warn("FaultProxy: accept failed: {}", ec.message());
        retry_->expires_after(std::chrono::milliseconds(50));
        retry_->async_wait([this, generation](const asio::error_code& e) {
          if (!e && generation == accept_generation_) Accept();
        });
      });
}

void FaultProxy::Impl::Accepted(tcp::socket socket) {
  const uint64_t id = hub_.accepted.fetch_add(1, std::memory_order_relaxed) + 1;
  hub_.active.fetch_add(1, std::memory_order_relaxed);
  auto connection = std::make_shared<proxy::Connection>(*io_, hub_, id, std::move(socket));
  hub_.connections.emplace(id, connection);
  connection->Start(upstream_);
}

void FaultProxy::Impl::CloseAll(CloseMode mode) {
  auto open = std::move(hub_.connections);
  hub_.connections.clear();
  for (auto& [id, c] : open) c->Close(mode, "proxy disabled or stopped");
}

void FaultProxy::Impl::RunIo() {
  for (;;) {
    try {
      io_->run();
      return;
    } catch (const std::exception& e) {
      Log().error("FaultProxy I/O thread: unexpected error: {}", e.what());
    } catch (...) {
      Log().error("FaultProxy I/O thread: unexpected error");
    }
  }
}

void FaultProxy::Impl::Start() {
  std::lock_guard control(control_mu_);
  if (thread_.joinable()) return;
  upstream_ = Resolve(options_.upstream_host, options_.upstream_port, "upstream");
  listen_ = Resolve(options_.listen_host, port(), "listen");
  io_ = std::make_unique<asio::io_context>(1);
  acceptor_.emplace(*io_);
  retry_.emplace(*io_);
  try {
    OpenAcceptor();  // also when disabled: a port 0 is chosen now, and stays
  } catch (...) {
    retry_.reset();  // before the io_context they use
    acceptor_.reset();
    io_.reset();
    throw;
  }
  if (enabled()) {
    Accept();
  } else {
    CloseAcceptor();
  }
  work_.emplace(io_->get_executor());
  thread_ = std::thread([this] { RunIo(); });
  std::lock_guard lock(mu_);
  running_ = true;
}

void FaultProxy::Impl::Stop() {
  std::lock_guard control(control_mu_);
  if (!thread_.joinable()) return;
  RunOnIo([&] {
    CloseAcceptor();
    CloseAll(CloseMode::kGraceful);
  });
  work_.reset();
  thread_.join();  // returns once the aborted handlers have run
  hub_.connections.clear();
  retry_.reset();
  acceptor_.reset();
  io_.reset();
  std::lock_guard lock(mu_);
  running_ = false;
}

void FaultProxy::Impl::SetEnabled(bool enabled) {
  std::lock_guard control(control_mu_);
  if (this->enabled() == enabled) return;
  if (thread_.joinable()) {
    RunOnIo([&] {
      if (enabled) {
        OpenAcceptor();
        Accept();
      } else {
        CloseAcceptor();
        CloseAll(CloseMode::kResetClient);
      }
    });
  }
  std::lock_guard lock(mu_);
  enabled_ = enabled;
}

std::string FaultProxy::Impl::AddToxic(ToxicSpec spec) {
  std::lock_guard control(control_mu_);
  std::string name;
  {
    std::lock_guard lock(mu_);
    proxy::Toxic toxic = proxy::MakeToxic(std::move(spec), next_serial_);
    for (const proxy::Toxic& t : toxics_) {
      if (t.spec.name == toxic.spec.name) {
        ThrowInvalid("FaultProxy: a toxic named '" + t.spec.name + "' already exists");
      }
    }
    ++next_serial_;
    name = toxic.spec.name;
    toxics_.push_back(std::move(toxic));
  }
  Publish();
  return name;
}

void FaultProxy::Impl::UpdateToxic(const std::string& name,
                                   const std::map<std::string, int64_t>& attributes,
                                   std::optional<double> toxicity) {
  std::lock_guard control(control_mu_);
  {
    std::lock_guard lock(mu_);
    auto it = std::find_if(toxics_.begin(), toxics_.end(),
                           [&](const proxy::Toxic& t) { return t.spec.name == name; });
    if (it == toxics_.end()) ThrowInvalid("FaultProxy: no toxic named '" + name + "'");
    *it = proxy::UpdatedToxic(*it, attributes, toxicity);
  }
  Publish();
}

void FaultProxy::Impl::RemoveToxic(const std::string& name) {
  std::lock_guard control(control_mu_);
  {
    std::lock_guard lock(mu_);
    auto it = std::find_if(toxics_.begin(), toxics_.end(),
                           [&](const proxy::Toxic& t) { return t.spec.name == name; });
    if (it == toxics_.end()) ThrowInvalid("FaultProxy: no toxic named '" + name + "'");
    toxics_.erase(it);
  }
  Publish();
}

// ---------------------------------------------------------------------------- FaultProxy

FaultProxy::FaultProxy(FaultProxyOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
FaultProxy::~FaultProxy() = default;
void FaultProxy::Start() { impl_->Start(); }
void FaultProxy::Stop() { impl_->Stop(); }
void FaultProxy::Disable() { impl_->SetEnabled(false); }
void FaultProxy::Enable() { impl_->SetEnabled(true); }
std::string FaultProxy::AddToxic(ToxicSpec spec) { return impl_->AddToxic(std::move(spec)); }
void FaultProxy::UpdateToxic(const std::string& name,
                             const std::map<std::string, int64_t>& attributes,
                             std::optional<double> toxicity) {
  impl_->UpdateToxic(name, attributes, toxicity);
}
void FaultProxy::RemoveToxic(const std::string& name) { impl_->RemoveToxic(name); }
std::vector<ToxicSpec> FaultProxy::Toxics() const { return impl_->Toxics(); }
FaultProxyStats FaultProxy::Stats() const { return impl_->Stats(); }
bool FaultProxy::running() const { return impl_->running(); }
bool FaultProxy::enabled() const { return impl_->enabled(); }
const std::string& FaultProxy::listen_host() const { return impl_->options().listen_host; }
uint16_t FaultProxy::port() const { return impl_->port(); }
const std::string& FaultProxy::upstream_host() const { return impl_->options().upstream_host; }
uint16_t FaultProxy::upstream_port() const { return impl_->options().upstream_port; }
uint64_t FaultProxy::seed() const { return impl_->seed(); }

}  // namespace cpcsync
