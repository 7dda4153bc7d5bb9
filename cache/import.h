// Importing base images into the store by content.
//
// Raw files are read chunk by chunk, skipping holes with SEEK_DATA/SEEK_HOLE;
// other formats are first checked with `qemu-img info` (images with a backing
// file or an external data file are refused before anything is converted) and
// converted with `qemu-img convert -O raw` into a sparse file in the store's
// temp area, which is removed whatever happens. The image becomes visible only
// after all its chunks and its manifest are stored, so an interrupted import
// leaves nothing visible (gc removes its leftovers).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "blockstore/status.h"
#include "cache/store.h"

namespace imgfs {

struct ImportOptions {
  std::string format = "auto";  // auto, raw, qcow2, vmdk, vdi, vhdx
  std::vector<std::string> names;
  bool force_names = false;
  // Called with (bytes done, bytes total) as the import advances.
  std::function<void(uint64_t, uint64_t)> progress;
  // Set (e.g. from a signal handler) to stop the import early with an error.
  const std::atomic<bool>* cancel = nullptr;
};

struct ImportResult {
  ImageId id;
  uint64_t size = 0;          // image size in bytes
  uint64_t stored_bytes = 0;  // bytes of non-hole chunks the image references
  uint64_t new_bytes = 0;     // bytes this import wrote that were not stored before
  std::string format;         // detected (or given) source format
};

// The formats `--format` accepts.
const std::vector<std::string>& SupportedFormats();

// Imports SOURCE (a path, or "-" for a raw stream on stdin).
Result<ImportResult> ImportImage(Store& store, const std::string& source,
                                 const ImportOptions& options);

// Imports raw bytes from an open file descriptor. When `seekable`, holes are
// skipped with SEEK_DATA/SEEK_HOLE and `size` is the file's size; otherwise
// the descriptor is read to its end.
Result<ImportResult> ImportRawFd(Store& store, int fd, bool seekable, uint64_t size,
                                 const ImportOptions& options);

}  // namespace imgfs
