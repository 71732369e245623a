// The queue file's schema: identification, creation and forward migrations.
//
// A cpcsync queue is an SQLite file whose header carries application_id
// kApplicationId and whose user_version is its schema version. A file is examined
// by reading its header bytes before SQLite opens it for writing, so a foreign
// file is refused without being touched.
#pragma once

#include <string>

#include "sqlite/db.h"

namespace cpcsync::sqlite {

inline constexpr int kApplicationId = 0x63706373;  // "cpcs"
inline constexpr int kSchemaVersion = 4;

enum class FileKind { kMissing, kEmpty, kQueue };

// Looks at `path` without modifying it. Throws SyncError: kStorage (with an OS
// cause) for a directory or unreadable path, kNotAQueue for a foreign file.
FileKind Examine(const std::string& path);

// Creates an empty regular file with mode 0600 if none exists (race-safe).
void CreateFile0600(const std::string& path);

// Creates the schema at `version` in an empty database (rollback-journal mode, so
// the header is in the main file before WAL is switched on).
void CreateSchema(Db& db, int version = kSchemaVersion);

// Brings an existing queue up to kSchemaVersion, in one transaction. Throws
// kNotAQueue for a file of a newer schema (unchanged).
void Migrate(Db& db);

int UserVersion(Db& db);

}  // namespace cpcsync::sqlite
