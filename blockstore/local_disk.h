// Private to blockstore/: the "local" disk backend (docs/design.md §4), copy-on-write
// overlays in a directory. Its on-disk format is documented in docs/formats.md
// ("Local disks").
#pragma once

#include <memory>
#include <string>

#include "blockstore/disk.h"

namespace imgfs {

// Disks live under `dir` (STORE/disks), created if missing. `images` opens
// parent images (may be null: then only blank disks can be created or opened).
Result<std::unique_ptr<DiskBackend>> CreateLocalDiskBackend(const std::string& dir,
                                                            ImageSource* images);

// kBlankDiskChunkSize and kMaxDiskSize are in disk.h.
// The most chunks a local disk may have (2^34): its in-memory allocation map
// keeps a page pointer per 32768 chunks, at most 4 MiB, and its bitmap file
// at most 2 GiB. With 4 KiB chunks this caps a disk at 64 TiB; from 64 KiB
// chunks up kMaxDiskSize comes first. The file system's largest file is the
// third limit (docs/operations.md, "Disk sizes").
inline constexpr unsigned kMaxDiskChunksLog2 = 34;

}  // namespace imgfs
