#include "blockstore/image.h"

#include <atomic>
#include <cstring>
#include <functional>
#include <utility>
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

namespace {

// One chunk a read touches. A whole chunk is read straight into the caller's
// buffer; of a partial one, only the wanted bytes are copied out of the
// (cached, shared) verified chunk once it is there.
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

// A read in flight: its pieces, and what to call when the last one is in.
struct ReadOp {
  std::shared_ptr<ChunkStore> chunks;  // kept alive until the last piece is in
  ImageId image;
  std::vector<Piece> pieces;
  std::atomic<size_t> left{0};
  std::function<void(Status)> done;

  void PieceDone() {
    if (left.fetch_sub(1, std::memory_order_acq_rel) == 1) std::exchange(done, nullptr)(Settle());
  }
  // Every piece is in: errors become the read's, partial chunks are copied out.
  Status Settle() {
    for (auto& p : pieces) {
      if (!p.got.ok()) {
        const Status& s = p.got.status();
        std::string where = "image " + image.Hex() + " chunk #" + std::to_string(p.index);
        if (s.IsNotFound()) return Status::IOError(where + ": " + s.message());
        return s.WithContext(where);
      }
      if (*p.got != p.chunk_len) {
        return Status::Corruption("image " + image.Hex() + " chunk #" + std::to_string(p.index) +
                                  " (" + p.id.Hex() + ") holds " + std::to_string(*p.got) +
                                  " bytes, expected " + std::to_string(p.chunk_len));
      }
      if (!p.whole) {
        // Bytes of the chunk past its stored length (a short last chunk) read as zeros.
        size_t have = p.in_chunk < p.shared->size()
                          ? std::min<size_t>(p.n, p.shared->size() - p.in_chunk)
                          : 0;
        if (have > 0) std::memcpy(p.out, p.shared->data() + p.in_chunk, have);
        std::memset(p.out + have, 0, p.n - have);
      }
    }
    return Status::OK();
  }
};

}  // namespace

Status ImageReader::Read(uint64_t offset, MutableByteView buf) {
  Status result;
  Countdown wait(1);
  ReadAsync(offset, buf, [&](Status s) {
    result = std::move(s);
    wait.CountDown();
  });
  wait.Wait();
  return result;
}

void ImageReader::ReadAsync(uint64_t offset, MutableByteView buf,
                            std::function<void(Status)> done) {
  const uint64_t cs = manifest_.chunk_size;
  if (cs != chunks_->chunk_size()) {
    return done(Status::InvalidArgument("image " + id_.Hex() + " has chunk size " +
                                        std::to_string(cs) + ", the chunk store " +
                                        std::to_string(chunks_->chunk_size())));
  }
  // The chunks the range touches; holes and the tail past the end are zeroed
  // here.
  auto op = std::make_shared<ReadOp>();
  op->chunks = chunks_;
  op->image = id_;
  size_t filled = 0;
  while (filled < buf.size()) {
    uint64_t pos = offset + filled;
    MutableByteView out = buf.subspan(filled);
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
      op->pieces.push_back(Piece{index, id, in_chunk, n, out.data(), chunk_len, whole, nullptr});
    }
    filled += n;
  }
  if (op->pieces.empty()) return done(Status::OK());
  op->done = std::move(done);
  // Every chunk at once: a remote backend fetches them in parallel, and this
  // thread waits for none of them. Chunks in the cache or on local disk are
  // read here and now.
  op->left.store(op->pieces.size(), std::memory_order_relaxed);
  for (auto& p : op->pieces) {
    if (p.whole) {
      chunks_->ReadAsync(p.id, MutableByteView(p.out, cs), [op, &p](Result<size_t> r) {
        p.got = std::move(r);
        op->PieceDone();
      });
    } else {
      chunks_->ReadSharedAsync(p.id, [op, &p](Result<SharedChunk> r) {
        if (r.ok()) {
          p.got = (*r)->size();
          p.shared = std::move(r).value();
        } else {
          p.got = r.status();
        }
        op->PieceDone();
      });
    }
  }
}

}  // namespace imgfs
