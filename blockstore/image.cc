#include "blockstore/image.h"

#include <cstring>

namespace imgfs {

ImageReader::ImageReader(std::shared_ptr<ChunkStore> chunks, ImageId id, Manifest manifest)
    : chunks_(std::move(chunks)), id_(id), manifest_(std::move(manifest)) {}

bool ImageReader::IsHoleAt(uint64_t offset) const {
  if (offset >= manifest_.size || manifest_.chunk_size == 0) return true;
  uint64_t index = offset / manifest_.chunk_size;
  return index >= manifest_.chunks.size() || manifest_.chunks[index].IsHole();
}

Status ImageReader::Read(uint64_t offset, MutableByteView buf) {
  const uint64_t cs = manifest_.chunk_size;
  if (cs != chunks_->chunk_size()) {
    return Status::InvalidArgument("image " + id_.Hex() + " has chunk size " + std::to_string(cs) +
                                   ", the chunk store " + std::to_string(chunks_->chunk_size()));
  }
  thread_local Bytes scratch;
  size_t done = 0;
  while (done < buf.size()) {
    uint64_t pos = offset + done;
    MutableByteView out = buf.subspan(done);
    if (pos >= manifest_.size || pos < offset) {
      std::memset(out.data(), 0, out.size());
      break;
    }
    uint64_t index = pos / cs;
    uint64_t in_chunk = pos % cs;
    uint64_t chunk_start = index * cs;
    uint64_t chunk_len = std::min<uint64_t>(cs, manifest_.size - chunk_start);
    size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), cs - in_chunk));
    const ChunkId& id = index < manifest_.chunks.size() ? manifest_.chunks[index] : ChunkId{};
    if (id.IsHole()) {
      std::memset(out.data(), 0, n);
      done += n;
      continue;
    }
    Result<size_t> got = size_t{0};
    if (in_chunk == 0 && n == cs) {
      got = chunks_->Read(id, out.first(n));
    } else {
      scratch.resize(cs);
      got = chunks_->Read(id, MutableByteView(scratch));
      if (got.ok()) std::memcpy(out.data(), scratch.data() + in_chunk, n);
    }
    if (!got.ok()) {
      const Status& s = got.status();
      std::string where = "image " + id_.Hex() + " chunk #" + std::to_string(index);
      if (s.IsNotFound()) return Status::IOError(where + ": " + s.message());
      return s.WithContext(where);
    }
    if (*got != chunk_len) {
      return Status::Corruption("image " + id_.Hex() + " chunk #" + std::to_string(index) + " (" +
                                id.Hex() + ") holds " + std::to_string(*got) + " bytes, expected " +
                                std::to_string(chunk_len));
    }
    done += n;
  }
  return Status::OK();
}

}  // namespace imgfs
