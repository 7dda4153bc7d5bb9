// Validation of user-supplied names (docs/design.md §10).
//
// Every name: 1 to 128 bytes, no '/', not "." and no "..", no control bytes
// (0x00-0x1f, 0x7f). Instance names also may not contain '_' (RBD disks are
// named <instance>_<disk>) nor start with '.'. Failures are InvalidArgument
// with a message that names the rule that was broken.
#pragma once

#include <string>
#include <string_view>

#include "blockstore/status.h"

namespace imgfs {

inline constexpr size_t kMaxNameLength = 128;

Status ValidateInstanceName(std::string_view name);
Status ValidateDiskName(std::string_view name);
Status ValidateImageName(std::string_view name);

// A disk reference "INSTANCE/DISK", split and validated.
struct DiskRef {
  std::string instance;
  std::string disk;
  std::string ToString() const { return instance + "/" + disk; }
};
Result<DiskRef> ParseDiskRef(std::string_view text);

}  // namespace imgfs
