#include "cache/verify.h"

#include <unordered_set>

namespace imgfs {

Result<VerifyReport> VerifyImage(Store& store, const ImageId& id,
                                 const std::function<void(uint64_t, uint64_t)>& progress) {
  VerifyReport report;
  report.image = id;
  auto manifest = GetManifest(store.backend(), id);
  if (!manifest.ok()) {
    if (manifest.status().IsRetryable()) return manifest.status();
    report.manifest_status = manifest.status();
    return report;
  }
  std::unordered_set<ChunkId> seen;
  Bytes buf;
  const uint64_t total = manifest->chunks.size();
  for (uint64_t i = 0; i < total; ++i) {
    const ChunkId& c = manifest->chunks[i];
    if (c.IsHole() || !seen.insert(c).second) continue;
    ++report.chunks_checked;
    store.chunks().DropFromCache(c);
    Status s = store.chunks().Get(c, &buf);
    if (s.IsNotFound()) {
      report.problems.push_back({c, i * manifest->chunk_size, "missing"});
    } else if (s.IsCorruption()) {
      report.problems.push_back({c, i * manifest->chunk_size, "corrupt: " + s.message()});
    } else if (!s.ok()) {
      return s;
    }
    if (progress) progress(i + 1, total);
  }
  if (progress) progress(total, total);
  return report;
}

}  // namespace imgfs
