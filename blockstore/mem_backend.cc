#include "blockstore/mem_backend.h"

#include <unistd.h>

#include <cstring>

#include "blockstore/backend_util.h"
#include "blockstore/backends.h"

namespace imgfs {

std::shared_ptr<MemChunkBackend> MemChunkBackend::Get(const std::string& name) {
  if (name.empty()) return std::make_shared<MemChunkBackend>();
  static Mutex mu;
  static std::map<std::string, std::shared_ptr<MemChunkBackend>> named;
  MutexLock lock(mu);
  auto& slot = named[name];
  if (!slot) slot = std::make_shared<MemChunkBackend>(name);
  return slot;
}

namespace {
Status Missing(ObjectKind kind, std::string_view id) {
  return Status::NotFound(std::string(ObjectKindName(kind)) + " " + std::string(id) + " not found");
}
}  // namespace

Status MemChunkBackend::PutIfAbsent(ObjectKind kind, std::string_view id, ByteView data) {
  RETURN_IF_ERROR(ValidateObjectId(id));
  auto copy = std::make_shared<const Bytes>(data.begin(), data.end());
  WriterLock lock(mu_);
  auto [it, inserted] = Objects(kind).try_emplace(std::string(id), std::move(copy));
  if (!inserted) {
    return Status::AlreadyExists(std::string(ObjectKindName(kind)) + " " + std::string(id) +
                                 " already exists");
  }
  used_bytes_ += data.size();
  return Status::OK();
}

Status MemChunkBackend::Get(ObjectKind kind, std::string_view id, Bytes* out) {
  RETURN_IF_ERROR(ValidateObjectId(id));
  ReaderLock lock(mu_);
  auto it = Objects(kind).find(id);
  if (it == Objects(kind).end()) return Missing(kind, id);
  out->assign(it->second->begin(), it->second->end());
  return Status::OK();
}

Result<size_t> MemChunkBackend::Read(ObjectKind kind, std::string_view id, MutableByteView buf) {
  RETURN_IF_ERROR(ValidateObjectId(id));
  ReaderLock lock(mu_);
  auto it = Objects(kind).find(id);
  if (it == Objects(kind).end()) return Missing(kind, id);
  const Bytes& data = *it->second;
  if (data.size() > buf.size()) {
    return Status::InvalidArgument(std::string(ObjectKindName(kind)) + " " + std::string(id) +
                                   " is " + std::to_string(data.size()) +
                                   " bytes, more than the buffer's " + std::to_string(buf.size()));
  }
  if (!data.empty()) std::memcpy(buf.data(), data.data(), data.size());
  return data.size();
}

Result<bool> MemChunkBackend::Exists(ObjectKind kind, std::string_view id) {
  RETURN_IF_ERROR(ValidateObjectId(id));
  ReaderLock lock(mu_);
  return Objects(kind).find(id) != Objects(kind).end();
}

Status MemChunkBackend::Remove(ObjectKind kind, std::string_view id) {
  RETURN_IF_ERROR(ValidateObjectId(id));
  WriterLock lock(mu_);
  auto it = Objects(kind).find(id);
  if (it == Objects(kind).end()) return Missing(kind, id);
  used_bytes_ -= it->second->size();
  Objects(kind).erase(it);
  return Status::OK();
}

Result<uint64_t> MemChunkBackend::Size(ObjectKind kind, std::string_view id) {
  RETURN_IF_ERROR(ValidateObjectId(id));
  ReaderLock lock(mu_);
  auto it = Objects(kind).find(id);
  if (it == Objects(kind).end()) return Missing(kind, id);
  return static_cast<uint64_t>(it->second->size());
}

Status MemChunkBackend::List(ObjectKind kind,
                             const std::function<Status(std::string_view id)>& fn) {
  std::vector<std::string> ids;
  {
    ReaderLock lock(mu_);
    ids.reserve(Objects(kind).size());
    for (const auto& [id, data] : Objects(kind)) ids.push_back(id);
  }
  for (const auto& id : ids) RETURN_IF_ERROR(fn(id));
  return Status::OK();
}

Status MemChunkBackend::GetRecord(std::string_view key, std::string* value) {
  RETURN_IF_ERROR(ValidateRecordKey(key));
  MutexLock lock(records_mu_);
  auto it = records_.find(key);
  if (it == records_.end()) return Status::NotFound("no record '" + std::string(key) + "'");
  *value = it->second;
  return Status::OK();
}

Status MemChunkBackend::PutRecord(std::string_view key, std::string_view value,
                                  const RecordCondition& cond) {
  RETURN_IF_ERROR(ValidateRecordKey(key));
  MutexLock lock(records_mu_);
  auto it = records_.find(key);
  RETURN_IF_ERROR(CheckPutCondition(key, it == records_.end() ? nullptr : &it->second, cond));
  records_[std::string(key)] = std::string(value);
  return Status::OK();
}

Status MemChunkBackend::RemoveRecord(std::string_view key, const RecordCondition& cond) {
  RETURN_IF_ERROR(ValidateRecordKey(key));
  MutexLock lock(records_mu_);
  auto it = records_.find(key);
  RETURN_IF_ERROR(CheckRemoveCondition(key, it == records_.end() ? nullptr : &it->second, cond));
  records_.erase(it);
  return Status::OK();
}

Status MemChunkBackend::ListRecords(std::string_view prefix,
                                    const std::function<Status(std::string_view key)>& fn) {
  std::vector<std::string> keys;
  {
    MutexLock lock(records_mu_);
    for (auto it = records_.lower_bound(prefix);
         it != records_.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
      keys.push_back(it->first);
    }
  }
  for (const auto& key : keys) RETURN_IF_ERROR(fn(key));
  return Status::OK();
}

Result<SpaceInfo> MemChunkBackend::Space() {
  SpaceInfo info;
  long page = sysconf(_SC_PAGESIZE);
  long pages = sysconf(_SC_PHYS_PAGES);
  long avail = sysconf(_SC_AVPHYS_PAGES);
  if (page > 0 && pages > 0) info.capacity_bytes = uint64_t(page) * uint64_t(pages);
  if (page > 0 && avail > 0) info.available_bytes = uint64_t(page) * uint64_t(avail);
  ReaderLock lock(mu_);
  info.used_bytes = used_bytes_;
  return info;
}

void MemChunkBackend::OverwriteForTest(ObjectKind kind, std::string_view id, ByteView data) {
  auto copy = std::make_shared<const Bytes>(data.begin(), data.end());
  WriterLock lock(mu_);
  auto& slot = Objects(kind)[std::string(id)];
  if (slot) used_bytes_ -= slot->size();
  used_bytes_ += data.size();
  slot = std::move(copy);
}

ChunkBackendType MemChunkBackendType() {
  ChunkBackendType t;
  t.name = "mem";  // no usage: for tests only
  t.reads_are_local = true;
  // "mem:NAME" shares one backend per name within the process; "mem" and
  // "mem:" make a new one.
  t.create = [](const BackendContext&,
                std::string_view arg) -> Result<std::shared_ptr<ChunkBackend>> {
    return std::shared_ptr<ChunkBackend>(MemChunkBackend::Get(std::string(arg)));
  };
  return t;
}

}  // namespace imgfs
