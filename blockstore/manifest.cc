#include "blockstore/manifest.h"

#include <spdlog/spdlog.h>
#include <xxhash.h>

#include <cstring>

#include "blockstore/units.h"

namespace imgfs {
namespace {

constexpr uint8_t kMagic[4] = {'I', 'M', 'G', 'M'};
constexpr uint8_t kVersion = 1;
constexpr size_t kHeaderSize = 16;
constexpr size_t kTrailerSize = 8;

void PutU64(Bytes* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}

uint64_t GetU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

void PutVarint(Bytes* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<uint8_t>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<uint8_t>(v));
}

class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  size_t left() const { return static_cast<size_t>(end_ - p_); }
  // Canonical LEB128: at most 10 bytes, no redundant trailing zero group.
  bool Varint(uint64_t* v) {
    uint64_t result = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ == end_) return false;
      uint8_t b = *p_++;
      if (shift == 63 && b > 1) return false;
      result |= uint64_t(b & 0x7f) << shift;
      if ((b & 0x80) == 0) {
        if (b == 0 && shift > 0) return false;
        *v = result;
        return true;
      }
    }
    return false;
  }
  const uint8_t* Take(size_t n) {
    if (left() < n) return nullptr;
    const uint8_t* p = p_;
    p_ += n;
    return p;
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

uint64_t ChunkCount(uint64_t size, uint32_t chunk_size) {
  return size / chunk_size + (size % chunk_size != 0 ? 1 : 0);
}

Status Bad(const std::string& why) { return Status::Corruption("bad manifest: " + why); }

}  // namespace

Status CheckImageSize(uint64_t size, uint32_t chunk_size) {
  RETURN_IF_ERROR(ValidateChunkSize(chunk_size));
  uint64_t count = ChunkCount(size, chunk_size);
  if (count <= kMaxManifestChunks) return Status::OK();
  uint64_t max = kMaxManifestChunks * chunk_size;
  return Status::TooLarge("an image of " + FormatSizeExact(size) + " (" + std::to_string(size) +
                          " bytes) is more than a store with " + FormatSize(chunk_size) +
                          " chunks can hold: at most " + FormatSizeExact(max) + " (2^26 chunks " +
                          "in a manifest; a store made with a larger --chunk-size holds more)");
}

Status Manifest::Validate() const {
  RETURN_IF_ERROR(ValidateChunkSize(chunk_size));
  uint64_t count = ChunkCount(size, chunk_size);
  RETURN_IF_ERROR(CheckImageSize(size, chunk_size));
  if (chunks.size() != count) {
    return Status::InvalidArgument("manifest lists " + std::to_string(chunks.size()) +
                                   " chunks for " + std::to_string(size) + " bytes, expected " +
                                   std::to_string(count));
  }
  return Status::OK();
}

Bytes Manifest::Encode() const {
  Bytes out;
  out.reserve(kHeaderSize + kTrailerSize + 16 * chunks.size() / 2 + 16);
  out.insert(out.end(), std::begin(kMagic), std::end(kMagic));
  out.push_back(kVersion);
  out.push_back(static_cast<uint8_t>(chunk_size == 0 ? 0 : __builtin_ctz(chunk_size)));
  out.push_back(0);
  out.push_back(0);
  PutU64(&out, size);
  size_t i = 0;
  while (i < chunks.size()) {
    size_t holes = 0;
    while (i + holes < chunks.size() && chunks[i + holes].IsHole()) ++holes;
    size_t data = 0;
    while (i + holes + data < chunks.size() && !chunks[i + holes + data].IsHole()) ++data;
    PutVarint(&out, holes);
    PutVarint(&out, data);
    for (size_t k = i + holes; k < i + holes + data; ++k) {
      out.insert(out.end(), chunks[k].bytes.begin(), chunks[k].bytes.end());
    }
    i += holes + data;
  }
  PutU64(&out, XXH3_64bits(out.data(), out.size()));
  return out;
}

Result<Manifest> Manifest::Decode(ByteView data) {
  if (data.size() < kHeaderSize + kTrailerSize) {
    return Bad("truncated (" + std::to_string(data.size()) + " bytes)");
  }
  if (std::memcmp(data.data(), kMagic, sizeof kMagic) != 0)
    return Bad("not a manifest (bad magic)");
  if (data[4] != kVersion) {
    return Bad("unsupported version " + std::to_string(data[4]) + " (this imgfs reads version " +
               std::to_string(kVersion) + ")");
  }
  size_t body_end = data.size() - kTrailerSize;
  if (GetU64(data.data() + body_end) != XXH3_64bits(data.data(), body_end)) {
    return Bad("checksum mismatch (truncated or corrupted)");
  }
  uint8_t shift = data[5];
  if (shift < 12 || shift > 22) return Bad("invalid chunk size 2^" + std::to_string(shift));
  if (data[6] != 0 || data[7] != 0) return Bad("unknown flags");
  Manifest m;
  m.chunk_size = uint32_t{1} << shift;
  m.size = GetU64(data.data() + 8);
  uint64_t count = ChunkCount(m.size, m.chunk_size);
  if (count > kMaxManifestChunks) return Bad("too many chunks (" + std::to_string(count) + ")");
  Reader r(data.data() + kHeaderSize, body_end - kHeaderSize);
  m.chunks.reserve(std::min<uint64_t>(count, r.left()));
  bool first = true;
  while (m.chunks.size() < count) {
    uint64_t holes, ids;
    if (!r.Varint(&holes) || !r.Varint(&ids)) return Bad("truncated or malformed run");
    uint64_t left = count - m.chunks.size();
    if (holes > left || ids > left - holes) return Bad("runs exceed the chunk count");
    if (holes + ids == 0) return Bad("empty run");
    if (!first && holes == 0) return Bad("non-canonical runs (no holes between data runs)");
    if (ids == 0 && holes != left) return Bad("non-canonical runs (empty data run)");
    if (ids > r.left() / 16) return Bad("truncated chunk ids");
    m.chunks.resize(m.chunks.size() + holes);
    for (uint64_t k = 0; k < ids; ++k) {
      ChunkId id;
      std::memcpy(id.bytes.data(), r.Take(16), 16);
      if (id.IsHole()) return Bad("hole id in a data run");
      m.chunks.push_back(id);
    }
    first = false;
  }
  if (r.left() != 0) return Bad("trailing bytes after the chunk list");
  return m;
}

ImageId Manifest::Id() const { return Hash128(Encode()); }

uint64_t Manifest::DataBytes() const {
  uint64_t total = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (chunks[i].IsHole()) continue;
    uint64_t start = uint64_t(i) * chunk_size;
    total += std::min<uint64_t>(chunk_size, size > start ? size - start : 0);
  }
  return total;
}

Result<ImageId> PutManifest(ChunkBackend& backend, const Manifest& m) {
  RETURN_IF_ERROR(m.Validate());
  Bytes encoded = m.Encode();
  ImageId id = Hash128(encoded);
  std::string hex = id.Hex();
  RETURN_IF_ERROR(backend.Sync().WithContext("sync chunks of image " + hex));
  Status s = backend.PutIfAbsent(ObjectKind::kManifest, hex, encoded);
  if (s.ok()) {
    RETURN_IF_ERROR(backend.Sync().WithContext("sync manifest " + hex));
    return id;
  }
  if (!s.IsAlreadyExists()) return s.WithContext("store manifest " + hex);
  Bytes stored;
  RETURN_IF_ERROR(
      backend.Get(ObjectKind::kManifest, hex, &stored).WithContext("read manifest " + hex));
  if (stored != encoded && Hash128(stored) != id) {
    // Damaged (a crash before the sync that would have made it durable):
    // no image can use it, so it is replaced, as a damaged chunk is.
    spdlog::warn("manifest {} was damaged (its bytes do not match its id); replacing it", hex);
    s = backend.Remove(ObjectKind::kManifest, hex);
    if (!s.ok() && !s.IsNotFound()) return s.WithContext("remove damaged manifest " + hex);
    s = backend.PutIfAbsent(ObjectKind::kManifest, hex, encoded);
    if (!s.ok() && !s.IsAlreadyExists()) return s.WithContext("store manifest " + hex);
    RETURN_IF_ERROR(
        backend.Get(ObjectKind::kManifest, hex, &stored).WithContext("read manifest " + hex));
  }
  if (stored != encoded) {
    return Status::Corruption("manifest " + hex +
                              ": the stored manifest differs from the new one with the same id");
  }
  RETURN_IF_ERROR(backend.Sync().WithContext("sync manifest " + hex));
  return id;
}

Result<Manifest> GetManifest(ChunkBackend& backend, const ImageId& id) {
  std::string hex = id.Hex();
  Bytes data;
  Status s = backend.Get(ObjectKind::kManifest, hex, &data);
  if (s.IsNotFound()) return Status::NotFound("manifest of image " + hex + " not found");
  RETURN_IF_ERROR(s);
  if (Hash128(data) != id) {
    return Status::Corruption("manifest of image " + hex +
                              " is damaged: its bytes do not match its id");
  }
  auto m = Manifest::Decode(data);
  if (!m.ok()) return m.status().WithContext("image " + hex);
  return m;
}

}  // namespace imgfs
