#include "proxy/toxics.h"

#include <fmt/format.h>

#include <array>
#include <cmath>
#include <string_view>

#include "cpcsync/errors.h"

namespace cpcsync::proxy {
namespace {

constexpr int64_t kMaxMs = 86'400'000;  // one day
constexpr int64_t kMaxBytes = int64_t{1} << 50;

struct AttrInfo {
  const char* name;
  int64_t min;
  int64_t max;
};

struct TypeInfo {
  const char* name;
  ToxicType type;
  std::vector<AttrInfo> attrs;
};

const std::array<TypeInfo, 7>& Types() {
  static const std::array<TypeInfo, 7> types = {{
      {"latency", ToxicType::kLatency, {{"latency", 0, kMaxMs}, {"jitter", 0, kMaxMs}}},
      {"bandwidth", ToxicType::kBandwidth, {{"rate", 0, int64_t{1} << 40}}},
      {"timeout", ToxicType::kTimeout, {{"timeout", 0, kMaxMs}}},
      {"reset_peer", ToxicType::kResetPeer, {{"timeout", 0, kMaxMs}}},
      {"slow_close", ToxicType::kSlowClose, {{"delay", 0, kMaxMs}}},
      {"slicer",
       ToxicType::kSlicer,
       {{"average_size", 1, 1 << 30}, {"size_variation", 0, 1 << 30}, {"delay", 0, kMaxMs * 1000}}},
      {"limit_data", ToxicType::kLimitData, {{"bytes", 0, kMaxBytes}}},
  }};
  return types;
}

const TypeInfo& TypeNamed(const std::string& name) {
  for (const TypeInfo& t : Types()) {
    if (name == t.name) return t;
  }
  std::string known;
  for (const TypeInfo& t : Types()) known += std::string(known.empty() ? "" : ", ") + t.name;
  ThrowInvalid("FaultProxy: unknown toxic type '" + name + "' (known: " + known + ")");
}

const TypeInfo& InfoOf(ToxicType type) {
  for (const TypeInfo& t : Types()) {
    if (t.type == type) return t;
  }
  ThrowInvalid("FaultProxy: unknown toxic type");
}

void CheckToxicity(double toxicity) {
  if (!std::isfinite(toxicity) || toxicity < 0.0 || toxicity > 1.0) {
    ThrowInvalid("FaultProxy: toxicity must be a number in 0..1");
  }
}

// Checks every given attribute against the type, and the cross-attribute rules.
void CheckAttributes(const TypeInfo& info, const std::map<std::string, int64_t>& attributes,
                     const std::string& toxic_name) {
  for (const auto& [key, value] : attributes) {
    const AttrInfo* attr = nullptr;
    for (const AttrInfo& a : info.attrs) {
      if (key == a.name) attr = &a;
    }
    if (attr == nullptr) {
      std::string known;
      for (const AttrInfo& a : info.attrs) {
        if (!known.empty()) known += ", ";
        known += a.name;
      }
      ThrowInvalid(fmt::format("FaultProxy: toxic '{}' ({}) has no attribute '{}' (it has: {})",
                               toxic_name, info.name, key, known));
    }
    if (value < attr->min || value > attr->max) {
      ThrowInvalid("FaultProxy: " + std::string(info.name) + " attribute '" + key +
                   "' must be in " + std::to_string(attr->min) + ".." + std::to_string(attr->max) +
                   ", not " + std::to_string(value));
    }
  }
}

void CheckCombination(ToxicType type, const Toxic& t) {
  if (type == ToxicType::kSlicer && t.Attr("size_variation") >= t.Attr("average_size")) {
    ThrowInvalid("FaultProxy: slicer size_variation must be smaller than average_size");
  }
}

}  // namespace

int64_t Toxic::Attr(const char* key) const {
  const auto it = spec.attributes.find(key);
  return it == spec.attributes.end() ? 0 : it->second;
}

Toxic MakeToxic(ToxicSpec spec, uint64_t serial) {
  const TypeInfo& info = TypeNamed(spec.type);
  CheckToxicity(spec.toxicity);
  if (spec.name.empty()) spec.name = spec.type + "_" + ToxicStreamName(spec.stream);
  if (spec.name.size() > 200) ThrowInvalid("FaultProxy: a toxic name has at most 200 characters");
  CheckAttributes(info, spec.attributes, spec.name);
  if (info.type == ToxicType::kSlicer && !spec.attributes.count("average_size")) {
    ThrowInvalid("FaultProxy: a slicer toxic needs average_size (bytes, >= 1)");
  }
  for (const AttrInfo& a : info.attrs) spec.attributes.emplace(a.name, 0);
  Toxic toxic{std::move(spec), info.type, serial};
  CheckCombination(info.type, toxic);
  return toxic;
}

Toxic UpdatedToxic(const Toxic& toxic, const std::map<std::string, int64_t>& attributes,
                   std::optional<double> toxicity) {
  CheckAttributes(InfoOf(toxic.type), attributes, toxic.spec.name);
  Toxic updated = toxic;
  ++updated.version;
  for (const auto& [key, value] : attributes) updated.spec.attributes[key] = value;
  if (toxicity) {
    CheckToxicity(*toxicity);
    updated.spec.toxicity = *toxicity;
  }
  CheckCombination(updated.type, updated);
  return updated;
}

uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t z = a + 0x9e3779b97f4a7c15ULL * (b + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

bool Applies(uint64_t seed, uint64_t connection, const Toxic& toxic) {
  const double toxicity = toxic.spec.toxicity;
  if (toxicity >= 1.0) return true;
  if (toxicity <= 0.0) return false;
  const uint64_t h = Mix(Mix(Mix(seed, connection), toxic.serial), toxic.version);
  const double u = static_cast<double>(h >> 11) * 0x1.0p-53;  // uniform in [0, 1)
  return u < toxicity;
}

}  // namespace cpcsync::proxy

namespace cpcsync {

const char* ToxicStreamName(ToxicStream stream) {
  return stream == ToxicStream::kUpstream ? "upstream" : "downstream";
}

}  // namespace cpcsync
