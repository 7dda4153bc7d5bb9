#include "blockstore/names.h"

#include <cstdio>

namespace imgfs {
namespace {

std::string Printable(std::string_view name) {
  std::string out;
  for (char c : name.substr(0, 64)) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  if (name.size() > 64) out += "...";
  return out;
}

Status ValidateCommon(std::string_view kind, std::string_view name) {
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument("invalid " + std::string(kind) + " name '" + Printable(name) +
                                   "': " + std::string(why));
  };
  if (name.empty()) return Status::InvalidArgument(std::string(kind) + " name is empty");
  if (name.size() > kMaxNameLength) return bad("longer than 128 bytes");
  if (name == ".") return bad("'.' is not a name");
  if (name.find("..") != std::string_view::npos) return bad("must not contain '..'");
  if (name.find('/') != std::string_view::npos) return bad("must not contain '/'");
  for (char c : name) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) return bad("must not contain control characters");
  }
  return Status::OK();
}

}  // namespace

Status ValidateInstanceName(std::string_view name) {
  RETURN_IF_ERROR(ValidateCommon("instance", name));
  if (name.find('_') != std::string_view::npos) {
    return Status::InvalidArgument("invalid instance name '" + Printable(name) +
                                   "': must not contain '_' (RBD names disks <instance>_<disk>)");
  }
  if (name[0] == '.') {
    return Status::InvalidArgument("invalid instance name '" + Printable(name) +
                                   "': must not start with '.'");
  }
  return Status::OK();
}

Status ValidateDiskName(std::string_view name) { return ValidateCommon("disk", name); }

Status ValidateImageName(std::string_view name) { return ValidateCommon("image", name); }

Result<DiskRef> ParseDiskRef(std::string_view text) {
  size_t slash = text.find('/');
  if (slash == std::string_view::npos) {
    return Status::InvalidArgument("invalid disk '" + Printable(text) +
                                   "': expected INSTANCE/DISK, e.g. 6f1c0a2e/disk");
  }
  DiskRef ref{std::string(text.substr(0, slash)), std::string(text.substr(slash + 1))};
  RETURN_IF_ERROR(ValidateInstanceName(ref.instance));
  RETURN_IF_ERROR(ValidateDiskName(ref.disk));
  return ref;
}

}  // namespace imgfs
