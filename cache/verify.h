// Re-reading and re-hashing the chunks of stored images.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "blockstore/status.h"
#include "cache/store.h"

namespace imgfs {

struct ChunkProblem {
  ChunkId chunk;
  uint64_t offset = 0;   // first image offset that uses it
  std::string problem;   // "missing" or "corrupt: ..."
};

struct VerifyReport {
  ImageId image;
  uint64_t chunks_checked = 0;
  std::vector<ChunkProblem> problems;  // each bad chunk once
  Status manifest_status;              // not OK when the manifest itself is bad
  bool ok() const { return manifest_status.ok() && problems.empty(); }
};

// Verifies every distinct chunk of `id`. The returned status is non-OK only
// when the check itself could not run (e.g. the backend is unreachable);
// damage is reported in the report. `progress(done, total)` is optional.
Result<VerifyReport> VerifyImage(Store& store, const ImageId& id,
                                 const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace imgfs
