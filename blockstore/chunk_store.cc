#include "blockstore/chunk_store.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "blockstore/manifest.h"
#include "blockstore/read_ahead.h"

namespace imgfs {

size_t DefaultChunkCacheBytes() {
  constexpr size_t kMin = size_t{64} << 20;
  constexpr size_t kMax = size_t{1} << 30;
  long pages = ::sysconf(_SC_PHYS_PAGES);
  long page_size = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return kMin;
  size_t ram = static_cast<size_t>(pages) * static_cast<size_t>(page_size);
  return std::clamp(ram / 32, kMin, kMax);
}

Status ValidateChunkSize(uint64_t chunk_size) {
  if (chunk_size < kMinChunkSize || chunk_size > kMaxChunkSize ||
      (chunk_size & (chunk_size - 1)) != 0) {
    return Status::InvalidArgument("invalid chunk size " + std::to_string(chunk_size) +
                                   ": must be a power of two from 4K to 4M");
  }
  return Status::OK();
}

ChunkStore::ChunkStore(std::shared_ptr<ChunkBackend> backend, uint32_t chunk_size,
                       size_t cache_bytes)
    : backend_(std::move(backend)), chunk_size_(chunk_size), cache_capacity_(cache_bytes) {}

Result<ChunkStore::PutResult> ChunkStore::Put(ByteView data) {
  if (data.size() > chunk_size_) {
    return Status::InvalidArgument("chunk of " + std::to_string(data.size()) +
                                   " bytes is larger than the chunk size " +
                                   std::to_string(chunk_size_));
  }
  if (IsAllZero(data)) return PutResult{ChunkId::Hole(), false};
  ChunkId id = Hash128(data);
  std::string hex = id.Hex();
  for (int attempt = 0;; ++attempt) {
    Status s = backend_->PutIfAbsent(ObjectKind::kChunk, hex, data);
    if (s.ok()) return PutResult{id, true};
    if (!s.IsAlreadyExists()) return s.WithContext("store chunk " + hex);
    Bytes stored;
    s = backend_->Get(ObjectKind::kChunk, hex, &stored);
    if (s.IsNotFound() && attempt == 0) continue;  // removed meanwhile (gc): put it again
    RETURN_IF_ERROR(s.WithContext("read chunk " + hex));
    if (stored.size() == data.size() && std::memcmp(stored.data(), data.data(), data.size()) == 0) {
      return PutResult{id, false};
    }
    bool damaged = stored.size() > chunk_size_ || Hash128(stored) != id;
    if (damaged && attempt == 0) {
      spdlog::warn(
          "chunk {} was damaged (its bytes do not match its id); replacing it with the new, "
          "verified bytes",
          hex);
      DropFromCache(id);
      s = backend_->Remove(ObjectKind::kChunk, hex);
      if (!s.ok() && !s.IsNotFound()) return s.WithContext("remove damaged chunk " + hex);
      continue;
    }
    spdlog::error(
        "chunk {}: the stored chunk differs from new data with the same id ({}); nothing was "
        "overwritten, the new data was not stored",
        hex, damaged ? "the stored chunk is damaged" : "an XXH3-128 collision");
    return Status::Corruption("chunk " + hex +
                              ": stored bytes differ from new bytes with the same id (" +
                              (damaged ? "stored chunk damaged" : "hash collision") + ")");
  }
}

Status ChunkStore::Get(const ChunkId& id, Bytes* out) {
  out->clear();
  if (id.IsHole()) return Status::OK();
  std::string hex = id.Hex();
  if (auto cached = CacheLookup(id)) {
    out->assign(cached->begin(), cached->end());
    return Status::OK();
  }
  Status s = backend_->Get(ObjectKind::kChunk, hex, out);
  if (!s.ok()) {
    out->clear();
    return s;
  }
  if (out->size() > chunk_size_ || Hash128(*out) != id) {
    out->clear();
    verify_failures_.fetch_add(1, std::memory_order_relaxed);
    spdlog::error("chunk {} is damaged: its bytes do not match its id", hex);
    return Status::Corruption("chunk " + hex + " is damaged: its bytes do not match its id");
  }
  return Status::OK();
}

Status ChunkStore::Verify(const ChunkId& id, const Result<size_t>& read, ByteView data) {
  if (!read.ok()) {
    if (!read.status().IsInvalidArgument()) return read.status();
    verify_failures_.fetch_add(1, std::memory_order_relaxed);
    std::string hex = id.Hex();
    spdlog::error("chunk {} is damaged: larger than the chunk size", hex);
    return Status::Corruption("chunk " + hex + " is damaged: larger than the chunk size");
  }
  if (Hash128(data.first(*read)) != id) {
    verify_failures_.fetch_add(1, std::memory_order_relaxed);
    std::string hex = id.Hex();
    spdlog::error("chunk {} is damaged: its bytes do not match its id", hex);
    return Status::Corruption("chunk " + hex + " is damaged: its bytes do not match its id");
  }
  return Status::OK();
}

Result<size_t> ChunkStore::Read(const ChunkId& id, MutableByteView buf) {
  if (buf.size() < chunk_size_) {
    return Status::InvalidArgument("read buffer of " + std::to_string(buf.size()) +
                                   " bytes is smaller than the chunk size");
  }
  if (id.IsHole()) {
    std::memset(buf.data(), 0, buf.size());
    return size_t{0};
  }
  size_t n;
  if (auto cached = CacheLookup(id)) {
    n = cached->size();
    std::memcpy(buf.data(), cached->data(), n);
  } else {
    auto r = backend_->Read(ObjectKind::kChunk, id.Hex(), buf.first(chunk_size_));
    if (Status s = Verify(id, r, buf); !s.ok()) {
      std::memset(buf.data(), 0, buf.size());
      return s;
    }
    n = *r;
    if (cache_capacity_ > 0) {
      CacheInsert(id, std::make_shared<const Bytes>(buf.begin(), buf.begin() + n));
    }
  }
  if (n < buf.size()) std::memset(buf.data() + n, 0, buf.size() - n);
  return n;
}

void ChunkStore::ReadAsync(const ChunkId& id, MutableByteView buf,
                           std::function<void(Result<size_t>)> done) {
  if (buf.size() < chunk_size_ || id.IsHole()) return done(Read(id, buf));
  if (auto cached = CacheLookup(id)) {
    size_t n = cached->size();
    std::memcpy(buf.data(), cached->data(), n);
    std::memset(buf.data() + n, 0, buf.size() - n);
    return done(n);
  }
  backend_->ReadAsync(ObjectKind::kChunk, id.Hex(), buf.first(chunk_size_),
                      [this, id, buf, done = std::move(done)](Result<size_t> r) {
                        if (Status s = Verify(id, r, buf); !s.ok()) {
                          std::memset(buf.data(), 0, buf.size());
                          return done(s);
                        }
                        size_t n = *r;
                        if (cache_capacity_ > 0) {
                          CacheInsert(id,
                                      std::make_shared<const Bytes>(buf.begin(), buf.begin() + n));
                        }
                        std::memset(buf.data() + n, 0, buf.size() - n);
                        done(n);
                      });
}

namespace {
const SharedChunk& EmptyChunk() {
  static const SharedChunk kEmpty = std::make_shared<const Bytes>();
  return kEmpty;
}
}  // namespace

Result<SharedChunk> ChunkStore::ReadShared(const ChunkId& id) {
  if (id.IsHole()) return EmptyChunk();
  if (auto cached = CacheLookup(id)) return cached;
  auto data = std::make_shared<Bytes>(chunk_size_);
  auto r = backend_->Read(ObjectKind::kChunk, id.Hex(), MutableByteView(*data));
  RETURN_IF_ERROR(Verify(id, r, *data));
  data->resize(*r);
  SharedChunk chunk = std::move(data);
  if (cache_capacity_ > 0) CacheInsert(id, chunk);
  return chunk;
}

void ChunkStore::ReadSharedAsync(const ChunkId& id, std::function<void(Result<SharedChunk>)> done) {
  if (id.IsHole()) return done(EmptyChunk());
  if (auto cached = CacheLookup(id)) return done(std::move(cached));
  auto data = std::make_shared<Bytes>(chunk_size_);
  MutableByteView buf(*data);
  backend_->ReadAsync(
      ObjectKind::kChunk, id.Hex(), buf,
      [this, id, data = std::move(data), done = std::move(done)](Result<size_t> r) mutable {
        if (Status s = Verify(id, r, *data); !s.ok()) return done(s);
        data->resize(*r);
        SharedChunk chunk = std::move(data);
        if (cache_capacity_ > 0) CacheInsert(id, chunk);
        done(std::move(chunk));
      });
}

void ChunkStore::PutAsync(ByteView data, std::function<void(Result<PutResult>)> done) {
  if (data.size() > chunk_size_ || IsAllZero(data)) return done(Put(data));
  ChunkId id = Hash128(data);
  backend_->PutIfAbsentAsync(
      ObjectKind::kChunk, id.Hex(), data, [this, id, data, done = std::move(done)](Status s) {
        if (s.ok()) return done(PutResult{id, true});
        if (!s.IsAlreadyExists()) {
          return done(s.WithContext("store chunk " + id.Hex()));
        }
        // A dedup hit: compare what is stored, without
        // blocking; anything unusual goes through Put.
        auto stored = std::make_shared<Bytes>(chunk_size_);
        backend_->ReadAsync(ObjectKind::kChunk, id.Hex(), *stored,
                            [this, id, data, stored, done](Result<size_t> r) {
                              if (r.ok() && *r == data.size() &&
                                  std::memcmp(stored->data(), data.data(), *r) == 0) {
                                return done(PutResult{id, false});
                              }
                              done(Put(data));
                            });
      });
}

Result<bool> ChunkStore::Exists(const ChunkId& id) {
  if (id.IsHole()) return true;
  return backend_->Exists(ObjectKind::kChunk, id.Hex());
}

Status ChunkStore::Remove(const ChunkId& id) {
  if (id.IsHole()) return Status::InvalidArgument("the hole chunk cannot be removed");
  DropFromCache(id);
  Status s = backend_->Remove(ObjectKind::kChunk, id.Hex());
  DropFromCache(id);
  return s;
}

Status ChunkStore::ListKind(ObjectKind kind, const std::function<Status(const Id128&)>& fn) {
  return backend_->List(kind, [&](std::string_view hex) -> Status {
    auto id = Id128::FromHex(hex);
    if (!id.ok()) {
      spdlog::warn("chunk store {}: ignoring object with a malformed id '{}'", backend_->Describe(),
                   hex);
      return Status::OK();
    }
    return fn(*id);
  });
}

Status ChunkStore::ListIds(const std::function<Status(const ChunkId&)>& fn) {
  return ListKind(ObjectKind::kChunk, fn);
}

Status ChunkStore::ListManifests(const std::function<Status(const ImageId&)>& fn) {
  return ListKind(ObjectKind::kManifest, fn);
}

Result<Manifest> ChunkStore::GetManifest(const ImageId& id) {
  return ::imgfs::GetManifest(*backend_, id);
}

Status ChunkStore::ForEachManifest(const std::vector<ImageId>& ids, size_t max_in_flight,
                                   const std::function<Status(size_t, Result<Manifest>)>& fn) {
  return ReadAhead<Result<Manifest>>(
      ids.size(), max_in_flight, [&](size_t i) { return GetManifest(ids[i]); }, fn);
}

Status ChunkStore::RecheckEach(const std::vector<ChunkId>& ids, size_t max_in_flight,
                               const std::function<Status(size_t, Status)>& fn) {
  return ReadAhead<Status>(
      ids.size(), max_in_flight, [&](size_t i) { return Recheck(ids[i]); }, fn);
}

Status ChunkStore::Recheck(const ChunkId& id) {
  if (id.IsHole()) return Status::OK();
  Bytes buf;
  RETURN_IF_ERROR(backend_->Get(ObjectKind::kChunk, id.Hex(), &buf));
  if (buf.size() > chunk_size_ || Hash128(buf) != id) {
    verify_failures_.fetch_add(1, std::memory_order_relaxed);
    DropFromCache(id);  // what the cache holds was verified, but is no longer what is stored
    std::string hex = id.Hex();
    spdlog::error("chunk {} is damaged: its bytes do not match its id", hex);
    return Status::Corruption("chunk " + hex + " is damaged: its bytes do not match its id");
  }
  return Status::OK();
}

Result<uint64_t> ChunkStore::StoredSize(ObjectKind kind, const Id128& id) {
  return backend_->Size(kind, id.Hex());
}

void ChunkStore::RemoveAsync(ObjectKind kind, const Id128& id,
                             std::function<void(Result<uint64_t>)> done) {
  if (kind == ObjectKind::kChunk) {
    if (id.IsHole()) return done(Status::InvalidArgument("the hole chunk cannot be removed"));
    DropFromCache(id);
  }
  backend_->RemoveAsync(kind, id.Hex(), std::move(done));
}

std::shared_ptr<const Bytes> ChunkStore::CacheLookup(const ChunkId& id) {
  MutexLock lock(cache_mu_);
  auto it = cache_index_.find(id);
  if (it == cache_index_.end()) {
    misses_.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  hits_.fetch_add(1, std::memory_order_relaxed);
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->second;
}

void ChunkStore::CacheInsert(const ChunkId& id, std::shared_ptr<const Bytes> data) {
  size_t size = data->size();
  if (size > cache_capacity_) return;
  MutexLock lock(cache_mu_);
  if (cache_index_.count(id) != 0) return;
  lru_.emplace_front(id, std::move(data));
  cache_index_[id] = lru_.begin();
  cache_used_ += size;
  while (cache_used_ > cache_capacity_ && !lru_.empty()) {
    auto& last = lru_.back();
    cache_used_ -= last.second->size();
    cache_index_.erase(last.first);
    lru_.pop_back();
    evictions_.fetch_add(1, std::memory_order_relaxed);
  }
}

ChunkStore::Counters ChunkStore::counters() const {
  Counters c;
  {
    MutexLock lock(cache_mu_);
    c.cache_used_bytes = cache_used_;
  }
  c.cache_hits = hits_.load(std::memory_order_relaxed);
  c.cache_misses = misses_.load(std::memory_order_relaxed);
  c.cache_evictions = evictions_.load(std::memory_order_relaxed);
  c.verify_failures = verify_failures_.load(std::memory_order_relaxed);
  return c;
}

void ChunkStore::DropFromCache(const ChunkId& id) {
  MutexLock lock(cache_mu_);
  auto it = cache_index_.find(id);
  if (it == cache_index_.end()) return;
  cache_used_ -= it->second->second->size();
  lru_.erase(it->second);
  cache_index_.erase(it);
}

}  // namespace imgfs
