// ConflictResolver: what to do when the server rejects an operation because the
// entity changed remotely (a ConflictError carrying the remote value).
//
// Resolve(local, remote) compares the operation that was refused with the server's
// current value and returns a Resolution:
//   kUseLocal   resend the local operation as it is (against the remote version);
//   kUseRemote  the remote value stands: the local operation is superseded;
//   kMerge      resend the operation with `payload` (bytes) in place of its own.
//
// Built-ins (docs/conflicts.md has the full semantics):
//   LastWriteWins  the newer of local.hlc and remote.hlc wins. Tie -> local (as the
//                  seed's TimestampConflictResolver). A remote without an hlc cannot
//                  be ordered and counts as older: local wins.
//   ServerWins     always kUseRemote.
//   ClientWins     always kUseLocal.
//   FieldMerge     both payloads JSON objects: kMerge of the two, field by field.
//                  Fields present on one side only are kept. A field on both sides:
//                  both values objects -> merged recursively by the same rules;
//                  otherwise (scalars, arrays, null, or an object against a
//                  non-object) the value of the side LastWriteWins picks (operations
//                  carry one timestamp, not one per field). Field order: the local
//                  object's fields first, in their order, then remote-only fields in
//                  theirs. Output is compact UTF-8 JSON. If either payload is not a
//                  JSON object (invalid JSON, invalid UTF-8, an array, a scalar, or
//                  nesting deeper than kMaxMergeDepth), FieldMerge falls back to
//                  LastWriteWins and returns kUseLocal or kUseRemote.
//
// Thread-safety: the built-ins are stateless; Resolve may be called from any number
// of threads at once. Custom resolvers (Python subclasses and callables, see
// cpp/bindings/conflict_bindings.cc) take the GIL for the call only. Callers must not
// hold any lock of their own while calling Resolve: it may run user code, which may
// block or take the GIL. Resolve may throw (user code's exceptions, SyncError); the
// caller decides what a throwing resolver means for the operation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "cpcsync/operation.h"

namespace cpcsync {

// The server's side of a conflict.
struct Remote {
  std::string value;               // bytes: the remote value (JSON for FieldMerge)
  std::optional<uint64_t> hlc;     // the remote write's HLC timestamp, if the server has one
  std::optional<int64_t> version;  // the remote version, if the server has one
};

// A resolver's decision.
struct Resolution {
  enum Kind { kUseLocal, kUseRemote, kMerge };
  Kind kind = kUseLocal;
  std::string payload;  // bytes: the payload to resend; kMerge only (empty otherwise)

  static Resolution UseLocal() { return {kUseLocal, {}}; }
  static Resolution UseRemote() { return {kUseRemote, {}}; }
  static Resolution Merge(std::string payload) { return {kMerge, std::move(payload)}; }

  friend bool operator==(const Resolution&, const Resolution&) = default;
};

// "use_local", "use_remote" or "merge".
const char* ResolutionKindName(Resolution::Kind kind);

class ConflictResolver {
 public:
  virtual ~ConflictResolver() = default;
  // Decides between the refused local operation and the remote value. May throw.
  virtual Resolution Resolve(const Operation& local, const Remote& remote) = 0;
};

// True when the local side wins on timestamps: remote.hlc is absent or
// local.hlc >= *remote.hlc (tie -> local).
bool LocalIsNewer(const Operation& local, const Remote& remote);

class LastWriteWins final : public ConflictResolver {
 public:
  Resolution Resolve(const Operation& local, const Remote& remote) override;
};

class ServerWins final : public ConflictResolver {
 public:
  Resolution Resolve(const Operation& local, const Remote& remote) override;
};

class ClientWins final : public ConflictResolver {
 public:
  Resolution Resolve(const Operation& local, const Remote& remote) override;
};

class FieldMerge final : public ConflictResolver {
 public:
  // Payloads nested deeper than this (objects and arrays) are not merged.
  static constexpr int kMaxMergeDepth = 256;

  Resolution Resolve(const Operation& local, const Remote& remote) override;

  // The merge itself: the merged object as compact JSON, or nullopt when either
  // side is not a JSON object (within kMaxMergeDepth). `local_wins` settles fields
  // present on both sides whose values are not both objects.
  static std::optional<std::string> MergeObjects(const std::string& local,
                                                 const std::string& remote, bool local_wins);
};

}  // namespace cpcsync
