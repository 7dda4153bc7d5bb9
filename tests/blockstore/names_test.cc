#include "blockstore/names.h"

#include <catch2/catch.hpp>
#include <string>

using namespace imgfs;

TEST_CASE("Names: valid instance, disk and image names", "[names]") {
  CHECK(ValidateInstanceName("6f1c0a2e-1b2c-4d5e-8f90-0123456789ab").ok());
  CHECK(ValidateDiskName("disk").ok());
  CHECK(ValidateDiskName("disk.eph0").ok());
  CHECK(ValidateDiskName("disk_config").ok());
  CHECK(ValidateImageName("ubuntu-24.04").ok());
  CHECK(ValidateImageName("a").ok());
  CHECK(ValidateImageName(std::string(128, 'x')).ok());
}

TEST_CASE("Names: every rule of docs/design.md §10 is enforced", "[names]") {
  for (auto* f : {&ValidateInstanceName, &ValidateDiskName, &ValidateImageName}) {
    CHECK((*f)("").IsInvalidArgument());
    CHECK((*f)("a/b").IsInvalidArgument());
    CHECK((*f)("..").IsInvalidArgument());
    CHECK((*f)(".").IsInvalidArgument());
    CHECK((*f)("a..b").IsInvalidArgument());
    CHECK((*f)(std::string("a\nb")).IsInvalidArgument());
    CHECK((*f)(std::string("a\0b", 3)).IsInvalidArgument());
    CHECK((*f)(std::string("a\x7f")).IsInvalidArgument());
    CHECK((*f)(std::string(129, 'x')).IsInvalidArgument());
  }
  Status s = ValidateInstanceName("my_vm");
  CHECK(s.IsInvalidArgument());
  CHECK(s.message().find("'_'") != std::string::npos);
  CHECK(ValidateInstanceName("_base").IsInvalidArgument());
  CHECK(ValidateInstanceName(".hidden").IsInvalidArgument());
  // Control bytes are shown escaped, not raw.
  CHECK(ValidateDiskName(std::string("a\x1b[2Jb")).message().find("\\x1b") != std::string::npos);
}

TEST_CASE("ParseDiskRef splits INSTANCE/DISK", "[names]") {
  auto r = ParseDiskRef("vm1/disk.eph0");
  REQUIRE(r.ok());
  CHECK(r->instance == "vm1");
  CHECK(r->disk == "disk.eph0");
  CHECK(r->ToString() == "vm1/disk.eph0");
  CHECK_FALSE(ParseDiskRef("vm1").ok());
  CHECK_FALSE(ParseDiskRef("vm_1/disk").ok());
  CHECK_FALSE(ParseDiskRef("vm1/").ok());
  CHECK_FALSE(ParseDiskRef("vm1/a/b").ok());
  CHECK_FALSE(ParseDiskRef("/disk").ok());
}
