// Reading the bytes of a stored (read-only) image.
//
// ImageReader maps offsets to chunks through a manifest and reads them from the
// chunk store, verified. Holes and anything beyond the image's end read as
// zeros. A chunk that is missing or damaged makes Read fail with Corruption or
// NotFound-turned-IOError; it never yields wrong bytes.
//
// Thread safety: immutable after construction; Read may be called from any
// number of threads at once.
#pragma once

#include <cstdint>
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
  Status Read(uint64_t offset, MutableByteView buf);

  // Whether the chunk holding byte `offset` is a hole (or past the end).
  bool IsHoleAt(uint64_t offset) const;

 private:
  std::shared_ptr<ChunkStore> chunks_;
  ImageId id_;
  Manifest manifest_;
};

// Where disk backends get parent images from. Implemented by the cache layer.
class ImageSource {
 public:
  virtual ~ImageSource() = default;
  // Opens image `id`. NotFound if no such image exists.
  virtual Result<std::shared_ptr<ImageReader>> OpenImage(const ImageId& id) = 0;
};

}  // namespace imgfs
