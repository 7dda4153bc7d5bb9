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

// The most chunks a manifest may hold (holes included): 4 TiB at 64 KiB chunks.
// A decoded manifest holds one 16-byte id per chunk in memory, so this bounds
// what a (possibly hostile) manifest can make Decode allocate (1 GiB).
inline constexpr uint64_t kMaxManifestChunks = uint64_t{1} << 26;

// TooLarge, saying so, when an image of `size` bytes needs more chunks of
// `chunk_size` than a manifest may hold; else OK.
Status CheckImageSize(uint64_t size, uint32_t chunk_size);

struct Manifest {
  uint64_t size = 0;            // image size in bytes
  uint32_t chunk_size = 0;      // bytes per chunk; the last chunk may be short
  std::vector<ChunkId> chunks;  // ceil(size / chunk_size) ids, holes included

  // OK when chunk_size is valid, chunks.size() == ceil(size / chunk_size) and
  // that is at most kMaxManifestChunks; else InvalidArgument (TooLarge for
  // the chunk count).
  Status Validate() const;
  // The canonical encoding. Only meaningful for a manifest that validates.
  Bytes Encode() const;
  static Result<Manifest> Decode(ByteView data);
  ImageId Id() const;  // Hash128(Encode())

  // Bytes of non-hole chunks (what the image occupies before dedup).
  uint64_t DataBytes() const;
};

// Stores `m` through the chunk store's backend (as ObjectKind::kManifest under
// its id). Storing an existing manifest again is OK (idempotent). Calls
// backend.Sync() before storing it (so its chunks are durable before anything
// refers to them) and after (so the manifest is durable when this returns).
Result<ImageId> PutManifest(ChunkBackend& backend, const Manifest& m);
// Loads and decodes manifest `id`, verifying that its hash matches `id`.
Result<Manifest> GetManifest(ChunkBackend& backend, const ImageId& id);

}  // namespace imgfs
