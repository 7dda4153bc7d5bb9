// Checking a whole store: `imgfs fsck`.
#pragma once

#include <string>
#include <vector>

#include "blockstore/status.h"
#include "cache/store.h"

namespace imgfs {

struct FsckReport {
  uint64_t images = 0, manifests = 0, chunks = 0, disks = 0, names = 0;
  // Disks whose parent image this store does not hold, while its published
  // base, which is what they read, is present in the shared pool (rbd): made
  // by another store. Not a problem.
  uint64_t disks_parent_elsewhere = 0;
  std::vector<std::string> problems;  // damage: fsck fails
  std::vector<std::string> orphans;   // unreferenced objects: reported, gc removes them
  bool clean() const { return problems.empty(); }
};

// Checks that image records and manifests decode, every referenced chunk
// exists and matches its id (each is read and re-hashed), names point at
// images, disks' metadata is consistent and their parents exist (in this
// store; on rbd, as published bases in the pool, whichever store published
// them); lists orphans. Non-OK only when the check could not run.
Result<FsckReport> CheckStore(Store& store);

}  // namespace imgfs
