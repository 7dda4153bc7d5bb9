// Private to blockstore/: the "mem:" disk backend, in memory, for unit tests.
// It keeps the semantics of disk.h exactly (it is the model the conformance
// suite holds the other backends to); Flush does nothing, and a disk open for
// writing is locked against a second writer of the same backend object.
#pragma once

#include <memory>

#include "blockstore/disk.h"

namespace imgfs {

std::unique_ptr<DiskBackend> CreateMemDiskBackend(ImageSource* images);

}  // namespace imgfs
