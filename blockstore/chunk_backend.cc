#include "blockstore/chunk_backend.h"

#include <map>

#include "blockstore/backend_util.h"
#include "blockstore/mutex.h"
#include "blockstore/names.h"

namespace imgfs {

std::string_view ObjectKindName(ObjectKind kind) {
  switch (kind) {
    case ObjectKind::kChunk:
      return "chunk";
    case ObjectKind::kManifest:
      return "manifest";
  }
  return "unknown";
}

Status ValidateObjectId(std::string_view id) {
  bool ok = id.size() >= 2 && id.size() <= 64;
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) ok = false;
  }
  if (!ok) {
    return Status::InvalidArgument("invalid object id '" + std::string(id.substr(0, 70)) +
                                   "': expected 2 to 64 lowercase hex digits");
  }
  return Status::OK();
}

Status ValidateRecordKey(std::string_view key) {
  if (key.empty()) return Status::InvalidArgument("record key is empty");
  int components = 0;
  size_t start = 0;
  while (true) {
    size_t slash = key.find('/', start);
    std::string_view part =
        key.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    Status s = ValidateImageName(part);
    if (!s.ok()) {
      return Status::InvalidArgument("invalid record key '" + std::string(key.substr(0, 300)) +
                                     "': " + s.message());
    }
    if (++components > 8) {
      return Status::InvalidArgument("invalid record key: more than 8 components");
    }
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return Status::OK();
}

Status CheckPutCondition(std::string_view key, const std::string* current,
                         const RecordCondition& cond) {
  switch (cond.mode) {
    case RecordCondition::kAny:
      return Status::OK();
    case RecordCondition::kAbsent:
      if (current != nullptr) {
        return Status::AlreadyExists("record '" + std::string(key) + "' already exists");
      }
      return Status::OK();
    case RecordCondition::kEquals:
      if (current == nullptr) {
        return Status::Busy("record '" + std::string(key) + "' does not exist (changed meanwhile)");
      }
      if (*current != cond.expected) {
        return Status::Busy("record '" + std::string(key) + "' changed meanwhile");
      }
      return Status::OK();
  }
  return Status::InvalidArgument("unknown record condition");
}

Status CheckRemoveCondition(std::string_view key, const std::string* current,
                            const RecordCondition& cond) {
  if (cond.mode == RecordCondition::kAbsent) {
    return Status::InvalidArgument("removing record '" + std::string(key) +
                                   "' on condition 'absent' makes no sense");
  }
  if (current == nullptr) return Status::NotFound("no record '" + std::string(key) + "'");
  if (cond.mode == RecordCondition::kEquals && *current != cond.expected) {
    return Status::Busy("record '" + std::string(key) + "' changed meanwhile");
  }
  return Status::OK();
}

namespace {

// In-process locks of the default ChunkBackend::Lock, keyed by backend and name.
struct ProcessLocks {
  Mutex mu;
  CondVar cv;
  struct State {
    int shared = 0;
    bool exclusive = false;
  };
  std::map<std::pair<const void*, std::string>, State> held GUARDED_BY(mu);
};

// Whether `key` can be taken in `mode` now.
bool IsFree(const ProcessLocks& l, const std::pair<const void*, std::string>& key, LockMode mode)
    REQUIRES(l.mu) {
  auto it = l.held.find(key);
  if (it == l.held.end()) return true;
  return mode == LockMode::kShared ? !it->second.exclusive
                                   : !it->second.exclusive && it->second.shared == 0;
}

ProcessLocks& Locks() {
  static ProcessLocks* locks = new ProcessLocks;  // never destroyed: used until exit
  return *locks;
}

class ProcessLock : public BackendLock {
 public:
  ProcessLock(std::pair<const void*, std::string> key, LockMode mode)
      : key_(std::move(key)), mode_(mode) {}
  ~ProcessLock() override {
    ProcessLocks& l = Locks();
    {
      MutexLock lock(l.mu);
      auto it = l.held.find(key_);
      if (mode_ == LockMode::kShared) {
        --it->second.shared;
      } else {
        it->second.exclusive = false;
      }
      if (it->second.shared == 0 && !it->second.exclusive) l.held.erase(it);
    }
    l.cv.NotifyAll();
  }
  Status Check() const override { return Status::OK(); }

 private:
  const std::pair<const void*, std::string> key_;
  const LockMode mode_;
};

}  // namespace

Result<std::unique_ptr<BackendLock>> ChunkBackend::Lock(std::string_view name, LockMode mode,
                                                        const std::function<void()>& waiting) {
  ProcessLocks& l = Locks();
  std::pair<const void*, std::string> key{this, std::string(name)};
  MutexLock lock(l.mu);
  if (!IsFree(l, key, mode)) {
    if (waiting) {
      lock.Unlock();
      waiting();
      lock.Lock();
    }
    while (!IsFree(l, key, mode)) l.cv.Wait(l.mu);
  }
  auto& st = l.held[key];
  if (mode == LockMode::kShared) {
    ++st.shared;
  } else {
    st.exclusive = true;
  }
  return std::unique_ptr<BackendLock>(std::make_unique<ProcessLock>(std::move(key), mode));
}

Status ChunkBackend::Sync() { return Status::OK(); }

void ChunkBackend::ReadAsync(ObjectKind kind, std::string_view id, MutableByteView buf,
                             std::function<void(Result<size_t>)> done) {
  done(Read(kind, id, buf));
}

void ChunkBackend::PutIfAbsentAsync(ObjectKind kind, std::string_view id, ByteView data,
                                    std::function<void(Status)> done) {
  done(PutIfAbsent(kind, id, data));
}

}  // namespace imgfs
