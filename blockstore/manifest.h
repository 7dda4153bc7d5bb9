// Manifests: the ordered list of chunk ids and the byte size of one image.
//
// The canonical binary encoding is documented in docs/formats.md. The image
// id is Hash128 of that encoding. Decode rejects truncated, corrupted and
// unknown-version input with Corruption (never crashes, never over-allocates).
#pragma once

#include <cstdint>
#include <vector>

#include "blockstore/chunk_store.h"
#include "blockstore/hash.h"
#include "blockstore/status.h"

namespace imgfs {

struct Manifest {
  uint64_t size = 0;         // image size in bytes
  uint32_t chunk_size = 0;   // bytes per chunk; the last chunk may be short
  std::vector<ChunkId> chunks;  // ceil(size / chunk_size) ids, holes included

  Bytes Encode() const;
  static Result<Manifest> Decode(ByteView data);
  ImageId Id() const;  // Hash128(Encode())

  // Bytes of non-hole chunks (what the image occupies before dedup).
  uint64_t DataBytes() const;
};

// Stores `m` through the chunk store's backend (as ObjectKind::kManifest under
// its id). Storing an existing manifest again is OK (idempotent).
Result<ImageId> PutManifest(ChunkBackend& backend, const Manifest& m);
// Loads and decodes manifest `id`, verifying that its hash matches `id`.
Result<Manifest> GetManifest(ChunkBackend& backend, const ImageId& id);

}  // namespace imgfs
