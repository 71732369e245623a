// FaultProxy internals: validated toxics and the per-connection decisions about them.
// No sockets here; see link.h for how a stream applies them.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cpcsync/fault_proxy.h"

namespace cpcsync::proxy {

enum class ToxicType {
  kLatency,
  kBandwidth,
  kTimeout,
  kResetPeer,
  kSlowClose,
  kSlicer,
  kLimitData
};

// A validated toxic. `serial` is unique within a proxy and never reused, so a
// connection can tell a re-added toxic of the same name from the old one; `version`
// counts its updates (each one draws its toxicity again).
struct Toxic {
  ToxicSpec spec;  // name filled in; attributes complete (defaults added)
  ToxicType type = ToxicType::kLatency;
  uint64_t serial = 0;
  uint64_t version = 0;

  // The value of attribute `key` (every attribute of the type is present).
  int64_t Attr(const char* key) const;
};

using ToxicList = std::vector<Toxic>;
using ToxicSnapshot = std::shared_ptr<const ToxicList>;

// Validates `spec` and fills in its defaults. Throws SyncError(kInvalidArgument).
Toxic MakeToxic(ToxicSpec spec, uint64_t serial);
// `toxic` with some attributes and (optionally) the toxicity changed, validated, its
// version one higher.
Toxic UpdatedToxic(const Toxic& toxic, const std::map<std::string, int64_t>& attributes,
                   std::optional<double> toxicity);

// A well-mixed 64-bit hash of (a, b) (splitmix64 finaliser).
uint64_t Mix(uint64_t a, uint64_t b);
// Whether `toxic` applies to connection `connection`: a pure function of the seed,
// the connection number and the toxic's serial and version, compared with its
// toxicity (so each update draws again, as in Toxiproxy, and a seeded run replays).
bool Applies(uint64_t seed, uint64_t connection, const Toxic& toxic);

}  // namespace cpcsync::proxy
