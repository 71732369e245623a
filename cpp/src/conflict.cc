#include "cpcsync/conflict.h"

#include <nlohmann/json.hpp>

namespace cpcsync {
namespace {

// ordered_json keeps fields in their order of appearance (std::map would sort them).
using Json = nlohmann::ordered_json;

// The payload as a JSON object, or nullopt: invalid JSON or UTF-8, not an object, or
// nested deeper than FieldMerge::kMaxMergeDepth (the serializer recurses, so depth is
// bounded before anything is built).
std::optional<Json> ParseObject(const std::string& text) {
  bool too_deep = false;
  Json::parser_callback_t limit = [&too_deep](int depth, Json::parse_event_t event, Json&) {
    if (depth > FieldMerge::kMaxMergeDepth) too_deep = true;
    return !too_deep;  // once too deep, discard the rest
  };
  Json parsed = Json::parse(text, limit, /*allow_exceptions=*/false);
  if (too_deep || !parsed.is_object()) return std::nullopt;  // invalid JSON is "discarded"
  return parsed;
}

// Merges `remote` into `local`, in place: see conflict.h.
void MergeInto(Json& local, const Json& remote, bool local_wins) {
  for (const auto& [name, remote_value] : remote.items()) {
    auto it = local.find(name);
    if (it == local.end()) {
      local[name] = remote_value;  // remote-only field: appended, kept
    } else if (it->is_object() && remote_value.is_object()) {
      MergeInto(*it, remote_value, local_wins);  // depth bounded by ParseObject
    } else if (!local_wins) {
      *it = remote_value;
    }
  }
}

}  // namespace

const char* ResolutionKindName(Resolution::Kind kind) {
  switch (kind) {
    case Resolution::kUseLocal:
      return "use_local";
    case Resolution::kUseRemote:
      return "use_remote";
    case Resolution::kMerge:
      return "merge";
  }
  return "?";
}

bool LocalIsNewer(const Operation& local, const Remote& remote) {
  return !remote.hlc || local.hlc >= *remote.hlc;
}

Resolution LastWriteWins::Resolve(const Operation& local, const Remote& remote) {
  return LocalIsNewer(local, remote) ? Resolution::UseLocal() : Resolution::UseRemote();
}

Resolution ServerWins::Resolve(const Operation&, const Remote&) { return Resolution::UseRemote(); }

Resolution ClientWins::Resolve(const Operation&, const Remote&) { return Resolution::UseLocal(); }

std::optional<std::string> FieldMerge::MergeObjects(const std::string& local,
                                                    const std::string& remote, bool local_wins) {
  std::optional<Json> l = ParseObject(local);
  if (!l) return std::nullopt;
  std::optional<Json> r = ParseObject(remote);
  if (!r) return std::nullopt;
  MergeInto(*l, *r, local_wins);
  // Parsing validated the UTF-8; `replace` only guards against surprises.
  return l->dump(-1, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace);
}

Resolution FieldMerge::Resolve(const Operation& local, const Remote& remote) {
  const bool local_wins = LocalIsNewer(local, remote);
  std::optional<std::string> merged = MergeObjects(local.payload, remote.value, local_wins);
  if (!merged) return local_wins ? Resolution::UseLocal() : Resolution::UseRemote();
  return Resolution::Merge(std::move(*merged));
}

}  // namespace cpcsync
