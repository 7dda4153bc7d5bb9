// "mem:" chunk backend: everything in process memory, for unit tests of logic
// and dry runs. "mem:" makes a new, empty backend each time; "mem:NAME" returns
// the one backend of that name in this process (made on first use), so that
// reopening a store sees the same objects.
//
// Thread safety: objects are guarded by a shared mutex (readers in parallel,
// writers exclusive); records by a separate mutex, which makes compare-and-swap
// atomic within the process (the only place a mem backend is visible).
#pragma once

#include <map>
#include <memory>
#include <string>

#include "blockstore/chunk_backend.h"
#include "blockstore/mutex.h"

namespace imgfs {

class MemChunkBackend : public ChunkBackend {
 public:
  explicit MemChunkBackend(std::string name = {}) : name_(std::move(name)) {}

  // A new backend for "", else the process-wide backend named `name`.
  static std::shared_ptr<MemChunkBackend> Get(const std::string& name);

  std::string Describe() const override { return "mem:" + name_; }
  Status PutIfAbsent(ObjectKind kind, std::string_view id, ByteView data) override;
  Status Get(ObjectKind kind, std::string_view id, Bytes* out) override;
  Result<size_t> Read(ObjectKind kind, std::string_view id, MutableByteView buf) override;
  Result<bool> Exists(ObjectKind kind, std::string_view id) override;
  Status Remove(ObjectKind kind, std::string_view id) override;
  Result<uint64_t> Size(ObjectKind kind, std::string_view id) override;
  Status List(ObjectKind kind, const std::function<Status(std::string_view id)>& fn) override;
  Status GetRecord(std::string_view key, std::string* value) override;
  Status PutRecord(std::string_view key, std::string_view value,
                   const RecordCondition& cond) override;
  Status RemoveRecord(std::string_view key, const RecordCondition& cond) override;
  Status ListRecords(std::string_view prefix,
                     const std::function<Status(std::string_view key)>& fn) override;
  // capacity/available: the machine's RAM; used: the bytes of stored objects.
  Result<SpaceInfo> Space() override;

  // Tests only: replaces the stored bytes of an existing or new object without
  // any check, to simulate damage.
  void OverwriteForTest(ObjectKind kind, std::string_view id, ByteView data);

 private:
  using ObjectMap = std::map<std::string, std::shared_ptr<const Bytes>, std::less<>>;
  ObjectMap& Objects(ObjectKind kind) REQUIRES_SHARED(mu_) {
    return objects_[static_cast<int>(kind)];
  }

  const std::string name_;
  SharedMutex mu_;
  ObjectMap objects_[2] GUARDED_BY(mu_);
  uint64_t used_bytes_ GUARDED_BY(mu_) = 0;
  Mutex records_mu_;
  std::map<std::string, std::string, std::less<>> records_ GUARDED_BY(records_mu_);
};

}  // namespace imgfs
