#include "blockstore/image.h"

#include <cstring>
#include <mutex>
#include <vector>

#include "blockstore/countdown.h"

namespace imgfs {

ImageReader::ImageReader(std::shared_ptr<ChunkStore> chunks, ImageId id, Manifest manifest)
    : chunks_(std::move(chunks)), id_(id), manifest_(std::move(manifest)) {}

Result<ImageGeometry> ImageSource::GetGeometry(const ImageId& id) {
  ASSIGN_OR_RETURN(auto reader, OpenImage(id));
  return ImageGeometry{reader->size(), reader->manifest().chunk_size};
}

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
  // The chunks the range touches; holes and the tail past the end are zeroed
  // here. A whole chunk is read straight into `buf`; of a partial one, only
  // the wanted bytes are copied out of the (cached, shared) verified chunk.
  struct Piece {
    uint64_t index;
    ChunkId id;
    uint64_t in_chunk;
    size_t n;
    uint8_t* out;
    uint64_t chunk_len;
    bool whole;
    SharedChunk shared;  // the partial chunk's bytes, once read
    Result<size_t> got = size_t{0};
  };
  std::vector<Piece> pieces;
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
    } else {
      bool whole = in_chunk == 0 && n == cs;
      pieces.push_back(Piece{index, id, in_chunk, n, out.data(), chunk_len, whole, nullptr});
    }
    done += n;
  }
  auto settle = [](Piece& p, Result<SharedChunk> r) {
    if (!r.ok()) {
      p.got = r.status();
      return;
    }
    p.got = (*r)->size();
    p.shared = std::move(r).value();
  };
  if (pieces.size() == 1) {
    Piece& p = pieces[0];
    if (p.whole) {
      p.got = chunks_->Read(p.id, MutableByteView(p.out, cs));
    } else {
      settle(p, chunks_->ReadShared(p.id));
    }
  } else if (pieces.size() > 1) {
    // All chunks at once: a remote backend fetches them in parallel.
    Countdown left(pieces.size());
    for (auto& p : pieces) {
      if (p.whole) {
        chunks_->ReadAsync(p.id, MutableByteView(p.out, cs), [&p, &left](Result<size_t> r) {
          p.got = std::move(r);
          left.CountDown();
        });
      } else {
        chunks_->ReadSharedAsync(p.id, [&p, &left, &settle](Result<SharedChunk> r) {
          settle(p, std::move(r));
          left.CountDown();
        });
      }
    }
    left.Wait();
  }
  for (auto& p : pieces) {
    if (!p.got.ok()) {
      const Status& s = p.got.status();
      std::string where = "image " + id_.Hex() + " chunk #" + std::to_string(p.index);
      if (s.IsNotFound()) return Status::IOError(where + ": " + s.message());
      return s.WithContext(where);
    }
    if (*p.got != p.chunk_len) {
      return Status::Corruption("image " + id_.Hex() + " chunk #" + std::to_string(p.index) + " (" +
                                p.id.Hex() + ") holds " + std::to_string(*p.got) +
                                " bytes, expected " + std::to_string(p.chunk_len));
    }
    if (!p.whole) {
      // Bytes of the chunk past its stored length (a short last chunk) read as zeros.
      size_t have =
          p.in_chunk < p.shared->size() ? std::min<size_t>(p.n, p.shared->size() - p.in_chunk) : 0;
      if (have > 0) std::memcpy(p.out, p.shared->data() + p.in_chunk, have);
      std::memset(p.out + have, 0, p.n - have);
    }
  }
  return Status::OK();
}

}  // namespace imgfs
