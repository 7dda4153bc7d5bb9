// Garbage collection of the _base cache: unused images age out, and chunks
// and manifests that nothing references are swept.
//
// Safety: gc holds the store's GC lock exclusively for its whole run, while
// imports and disk creation hold it shared (Store::LockShared). So a sweep
// never runs while an import is between storing its chunks and publishing its
// image, and an image that gains a disk is either seen with that disk or
// created after gc has finished. The live set is computed by mark and sweep
// over every remaining manifest; there are no reference counts to drift. If
// any live manifest cannot be read, gc stops before sweeping anything.
//
// On an rbd store, an image whose published base has clones (disks of any
// host, or clones made with other tools) is in use. The bases of removed
// images go with them; bases whose image is gone from the store (orphans) and
// half-done publications go too, unless a clone uses them (rechecked under
// the publication's RADOS lock, DiskBackend::Unpublish).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "blockstore/status.h"
#include "cache/store.h"

namespace imgfs {

inline constexpr int64_t kDefaultGcMinAgeSeconds = 24 * 3600;  // as nova's image cache

struct GcOptions {
  int64_t min_age_seconds = kDefaultGcMinAgeSeconds;
  bool dry_run = false;     // report what would go; change nothing
  bool keep_named = false;  // never remove images that have a name
  std::function<void(const std::string& phase, uint64_t done, uint64_t total)> progress;
  // Called once if gc has to wait for the GC lock (imports or disk creations
  // running here or, on a rados store, on other hosts).
  std::function<void()> waiting;
};

struct GcReport {
  std::vector<ImageRecord> images_removed;  // (or that would be, in a dry run)
  uint64_t manifests_removed = 0;
  uint64_t chunks_removed = 0;
  uint64_t bytes_freed = 0;  // bytes of removed chunks and manifests
  uint64_t temp_files_removed = 0;
  // Images published into the disk backend (rbd: imgfs.base.<id>) that went:
  // those of removed images, orphans (their image is gone from the store),
  // and half-done publications; never one that a clone uses.
  struct Publication {
    std::string location;     // "rbd:pool/imgfs.base.<id>"
    uint64_t used_bytes = 0;  // allocated, in whole RBD objects (as `rbd du`)
  };
  std::vector<Publication> publications_removed;
  uint64_t publication_bytes_freed = 0;  // in the Ceph pool, not in the chunk store
};

Result<GcReport> CollectGarbage(Store& store, const GcOptions& options);

}  // namespace imgfs
