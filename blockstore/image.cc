#include "blockstore/image.h"

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <vector>

namespace imgfs {

ImageReader::ImageReader(std::shared_ptr<ChunkStore> chunks, ImageId id, Manifest manifest)
    : chunks_(std::move(chunks)), id_(id), manifest_(std::move(manifest)) {}

bool ImageReader::IsHoleAt(uint64_t offset) const {
  if (offset >= manifest_.size || manifest_.chunk_size == 0) return true;
  uint64_t index = offset / manifest_.chunk_size;
  return index >= manifest_.chunks.size() || manifest_.chunks[index].IsHole();
}

namespace {

// Waits until `CountDown` was called `n` times. Notifies under the lock, so
// the waiter may destroy it as soon as Wait returns.
class Countdown {
 public:
  explicit Countdown(size_t n) : n_(n) {}
  void CountDown() {
    std::lock_guard lock(mu_);
    if (--n_ == 0) cv_.notify_all();
  }
  void Wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return n_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  size_t n_;  // GUARDED_BY(mu_)
};

}  // namespace

Status ImageReader::Read(uint64_t offset, MutableByteView buf) {
  const uint64_t cs = manifest_.chunk_size;
  if (cs != chunks_->chunk_size()) {
    return Status::InvalidArgument("image " + id_.Hex() + " has chunk size " + std::to_string(cs) +
                                   ", the chunk store " + std::to_string(chunks_->chunk_size()));
  }
  // The chunks the range touches; holes and the tail past the end are zeroed here.
  struct Piece {
    uint64_t index;
    ChunkId id;
    uint64_t in_chunk;
    size_t n;
    uint8_t* out;
    uint64_t chunk_len;
    Bytes scratch;  // the whole chunk, when only part of it is wanted
    Result<size_t> got = size_t{0};
    bool whole() const { return scratch.empty(); }
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
      pieces.push_back(Piece{index, id, in_chunk, n, out.data(), chunk_len, {}});
      if (!(in_chunk == 0 && n == cs)) pieces.back().scratch.resize(cs);
    }
    done += n;
  }
  auto target = [cs](Piece& p) {
    return p.whole() ? MutableByteView(p.out, cs) : MutableByteView(p.scratch);
  };
  if (pieces.size() == 1) {
    pieces[0].got = chunks_->Read(pieces[0].id, target(pieces[0]));
  } else if (pieces.size() > 1) {
    // All chunks at once: a remote backend fetches them in parallel.
    Countdown left(pieces.size());
    for (auto& p : pieces) {
      chunks_->ReadAsync(p.id, target(p), [&p, &left](Result<size_t> r) {
        p.got = std::move(r);
        left.CountDown();
      });
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
    if (!p.whole()) std::memcpy(p.out, p.scratch.data() + p.in_chunk, p.n);
  }
  return Status::OK();
}

}  // namespace imgfs
