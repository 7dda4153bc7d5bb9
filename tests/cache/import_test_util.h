// Imports test bytes into a store, shared by the cache unit tests.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "cache/import.h"
#include "cache/store.h"

namespace imgfs::testing {

// Imports `data` through a memfd, as a seekable raw file.
inline Result<ImportResult> ImportBytes(Store& store, const Bytes& data,
                                        std::vector<std::string> names = {}) {
  int fd = ::memfd_create("img", MFD_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
  ImportOptions o;
  o.names = std::move(names);
  auto r = ImportRawFd(store, fd, true, data.size(), o);
  ::close(fd);
  return r;
}

}  // namespace imgfs::testing
