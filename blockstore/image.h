// Reading the bytes of a stored (read-only) image.
//
// ImageReader maps offsets to chunks through a manifest and reads them from the
// chunk store, verified. Holes and anything beyond the image's end read as
// zeros. A chunk that is missing or damaged makes Read fail with Corruption or
// NotFound-turned-IOError; it never yields wrong bytes.
//
// Thread safety: immutable after construction; Read and ReadAsync may be called from any
// number of threads at once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "blockstore/chunk_store.h"
#include "blockstore/manifest.h"

namespace imgfs {

class ImageReader {
 public:
  ImageReader(std::shared_ptr<ChunkStore> chunks, ImageId id, Manifest manifest);

  const ImageId& id() const { return id_; }
  uint64_t size() const { return manifest_.size; }
  const Manifest& manifest() const { return manifest_; }
  ChunkStore& chunks() { return *chunks_; }

  // Fills `buf` with the image's bytes at `offset`; zeros past the end.
  // Waits for ReadAsync.
  Status Read(uint64_t offset, MutableByteView buf);
  // The same without waiting: asks the chunk store for every chunk the range
  // touches at once and calls `done` exactly once, when the last is in, on
  // the thread that brought it (a remote backend's completion thread), or
  // before returning when every chunk was cached or local. `buf` must stay
  // valid until then; this reader need not (docs/architecture.md, "The read
  // path").
  void ReadAsync(uint64_t offset, MutableByteView buf, std::function<void(Status)> done);

  // Whether the chunk holding byte `offset` is a hole (or past the end).
  bool IsHoleAt(uint64_t offset) const;

 private:
  std::shared_ptr<ChunkStore> chunks_;
  ImageId id_;
  Manifest manifest_;
};

struct ImageGeometry {
  uint64_t size = 0;
  uint32_t chunk_size = 0;
};

// Where disk backends get parent images from. Implemented by the cache layer.
// Thread safety: both methods may be called from many threads at once.
class ImageSource {
 public:
  virtual ~ImageSource() = default;
  // Opens image `id` (loads its manifest). NotFound if no such image exists.
  virtual Result<std::shared_ptr<ImageReader>> OpenImage(const ImageId& id) = 0;
  // The size and chunk size of image `id`, without loading its manifest where
  // the source can: creating a disk must be O(1) in the image's size.
  // NotFound if no such image exists. The default opens the image.
  virtual Result<ImageGeometry> GetGeometry(const ImageId& id);
  // Whether reading images costs no network round trip (chunks on local disk
  // or in memory). A remote disk backend may then read the bytes of a parent
  // image from here instead of from its own copy of them.
  virtual bool ReadsAreLocal() const { return false; }
};

}  // namespace imgfs
