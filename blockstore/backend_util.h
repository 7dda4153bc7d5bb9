// Helpers shared by the chunk backend implementations (private to blockstore).
#pragma once

#include <string_view>

#include "blockstore/chunk_backend.h"
#include "blockstore/status.h"

namespace imgfs {

// "chunk" or "manifest": used in paths, object names and messages.
std::string_view ObjectKindName(ObjectKind kind);

// Object ids are 2 to 64 lowercase hex digits (chunk and image ids are 32).
// InvalidArgument otherwise, so no id can escape a backend's namespace.
Status ValidateObjectId(std::string_view id);

// Record keys are '/'-separated components, each a valid name per names.h
// (1..128 bytes, no control bytes, no "..", not "."), at most 8 components.
Status ValidateRecordKey(std::string_view key);

// Checks `cond` against the current value (nullptr when absent) for PutRecord:
// OK to write, AlreadyExists (kAbsent, present) or Busy (kEquals, differs or
// absent).
Status CheckPutCondition(std::string_view key, const std::string* current,
                         const RecordCondition& cond);
// The same for RemoveRecord: NotFound when absent (any mode), Busy when kEquals
// and the value differs, InvalidArgument for kAbsent.
Status CheckRemoveCondition(std::string_view key, const std::string* current,
                            const RecordCondition& cond);

}  // namespace imgfs
