// Private to blockstore/: helpers shared by the disk backends.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "blockstore/disk.h"
#include "blockstore/image.h"
#include "blockstore/units.h"

namespace imgfs::disk_util {

// Whether the parent shows any non-hole data in [start, end), given that only
// [0, overlap) of it is visible. `parent` may be null.
inline bool ParentHasData(const ImageReader* parent, uint64_t overlap, uint64_t start,
                          uint64_t end) {
  if (!parent || start >= overlap) return false;
  end = std::min(end, overlap);
  uint64_t pchunk = parent->manifest().chunk_size;
  if (pchunk == 0) return true;
  for (uint64_t off = start; off < end; off = (off / pchunk + 1) * pchunk) {
    if (!parent->IsHoleAt(off)) return true;
  }
  return false;
}

// Fills `buf` with the parent's bytes at `offset`, zeros at and beyond
// `overlap` (and everywhere when `parent` is null).
inline Status ReadParent(ImageReader* parent, uint64_t overlap, uint64_t offset,
                         MutableByteView buf, const DiskRef& ref) {
  uint64_t visible = 0;
  if (parent && offset < overlap) visible = std::min<uint64_t>(buf.size(), overlap - offset);
  if (visible > 0) {
    Status s = parent->Read(offset, buf.first(static_cast<size_t>(visible)));
    if (!s.ok()) return s.WithContext("disk " + ref.ToString() + ": parent image");
  }
  std::memset(buf.data() + visible, 0, buf.size() - visible);
  return Status::OK();
}

// ReadParent without waiting for the parent's chunks (ImageReader::ReadAsync):
// `done` is called exactly once, perhaps on another thread. The parent is
// kept alive until then; `buf` must be.
inline void ReadParentAsync(const std::shared_ptr<ImageReader>& parent, uint64_t overlap,
                            uint64_t offset, MutableByteView buf, const DiskRef& ref,
                            Disk::Callback done) {
  uint64_t visible = 0;
  if (parent && offset < overlap) visible = std::min<uint64_t>(buf.size(), overlap - offset);
  std::memset(buf.data() + visible, 0, buf.size() - visible);
  if (visible == 0) return done(Status::OK());
  parent->ReadAsync(offset, buf.first(static_cast<size_t>(visible)),
                    [parent, ref, done = std::move(done)](Status s) {
                      if (!s.ok()) s = s.WithContext("disk " + ref.ToString() + ": parent image");
                      done(std::move(s));
                    });
}

// Appends [a, b) clipped to [lo, hi) to `out`, merging with the last extent.
inline void AddExtent(std::vector<Extent>* out, uint64_t a, uint64_t b, uint64_t lo, uint64_t hi) {
  a = std::max(a, lo);
  b = std::min(b, hi);
  if (a >= b) return;
  if (!out->empty() && out->back().offset + out->back().length >= a) {
    Extent& e = out->back();
    e.length = std::max(e.offset + e.length, b) - e.offset;
  } else {
    out->push_back({a, b - a});
  }
}

inline Status RangeError(const char* op, uint64_t offset, uint64_t length, const DiskRef& ref,
                         uint64_t size) {
  return Status::InvalidArgument(std::string(op) + " of " + std::to_string(length) + " bytes at " +
                                 std::to_string(offset) + " is beyond the end of disk " +
                                 ref.ToString() + " (" + std::to_string(size) + " bytes)");
}

// The TooLarge error of a size beyond `limit`, for `what` ("disk i1/d").
inline Status SizeError(const std::string& what, uint64_t size, const DiskSizeLimit& limit) {
  return Status::TooLarge(what + ": size " + FormatSizeExact(size) + " (" + std::to_string(size) +
                          " bytes) is more than this store's disks can hold: at most " +
                          FormatSizeExact(limit.max_bytes) + " (" +
                          std::to_string(limit.max_bytes) + " bytes, " + limit.reason + ")");
}

}  // namespace imgfs::disk_util
