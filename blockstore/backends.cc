#include "blockstore/backends.h"

#include <deque>

#include "blockstore/mutex.h"

namespace imgfs {
namespace {

// The registered types of one family. Types live in a deque, so a pointer
// to one (held by every parsed spec) stays valid while others are added.
template <typename Type>
class Registry {
 public:
  Registry(std::string family, std::vector<Type> builtins) : family_(std::move(family)) {
    for (Type& t : builtins) types_.push_back(std::move(t));
  }

  Status Add(Type type) {
    if (type.name.empty() || type.name.find(':') != std::string::npos || !type.create) {
      return Status::InvalidArgument(family_ + " type needs a name without ':' and a factory");
    }
    MutexLock lock(mu_);
    if (FindLocked(type.name) != nullptr) {
      return Status::AlreadyExists(family_ + " '" + type.name + "' is registered already");
    }
    types_.push_back(std::move(type));
    return Status::OK();
  }

  Result<BackendSpec<Type>> Parse(std::string_view text) {
    size_t colon = text.find(':');
    std::string_view kind = text.substr(0, colon);
    std::string_view arg = colon == std::string_view::npos ? "" : text.substr(colon + 1);
    const Type* type = Find(kind);
    bool ok =
        type != nullptr && (type->argument == SpecArgument::kRequired ? !arg.empty() : arg.empty());
    if (!ok) {
      return Status::InvalidArgument("invalid " + family_ + " '" +
                                     std::string(text.substr(0, 200)) + "': use " + Usage());
    }
    return BackendSpec<Type>{type, std::string(arg)};
  }

  const Type* Find(std::string_view name) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return FindLocked(name);
  }

 private:
  const Type* FindLocked(std::string_view name) REQUIRES(mu_) {
    for (const Type& t : types_) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }

  // "dir or rados:POOL[/NAMESPACE]": the types a user picks (those with a usage).
  std::string Usage() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    std::vector<std::string> listed;
    for (const Type& t : types_) {
      if (!t.usage.empty()) listed.push_back(t.usage);
    }
    std::string out;
    for (size_t i = 0; i < listed.size(); ++i) {
      if (i > 0) out += i + 1 == listed.size() ? " or " : ", ";
      out += listed[i];
    }
    return out;
  }

  const std::string family_;
  Mutex mu_;
  std::deque<Type> types_ GUARDED_BY(mu_);
};

Registry<ChunkBackendType>& Chunks() {
  static Registry<ChunkBackendType> r(
      "chunk backend", {DirChunkBackendType(), MemChunkBackendType(), RadosChunkBackendType()});
  return r;
}

Registry<DiskBackendType>& Disks() {
  static Registry<DiskBackendType> r(
      "disk backend", {LocalDiskBackendType(), MemDiskBackendType(), RbdDiskBackendType()});
  return r;
}

}  // namespace

Result<ChunkBackendSpec> ParseChunkBackendSpec(std::string_view text) {
  return Chunks().Parse(text);
}

Result<DiskBackendSpec> ParseDiskBackendSpec(std::string_view text) { return Disks().Parse(text); }

Status RegisterChunkBackendType(ChunkBackendType type) { return Chunks().Add(std::move(type)); }

Status RegisterDiskBackendType(DiskBackendType type) { return Disks().Add(std::move(type)); }

Result<std::shared_ptr<ChunkBackend>> CreateChunkBackend(const ChunkBackendSpec& spec,
                                                         const BackendContext& ctx) {
  if (spec.type == nullptr) return Status::InvalidArgument("no chunk backend given");
  return spec.type->create(ctx, spec.arg);
}

Result<std::unique_ptr<DiskBackend>> CreateDiskBackend(const DiskBackendSpec& spec,
                                                       const BackendContext& ctx) {
  if (spec.type == nullptr) return Status::InvalidArgument("no disk backend given");
  return spec.type->create(ctx, spec.arg);
}

// The forms that name a backend outside a store (tests, benchmarks): a chunk
// backend always as "KIND:ARG" ("dir:PATH", "mem:", "mem:NAME",
// "rados:POOL"), whose factory checks the argument; a disk backend as a store
// names it ("local" keeps its disks under `store_path`/disks).
Result<std::shared_ptr<ChunkBackend>> CreateChunkBackend(std::string_view spec,
                                                         const CephOptions* ceph) {
  size_t colon = spec.find(':');
  const ChunkBackendType* type =
      colon == std::string_view::npos ? nullptr : Chunks().Find(spec.substr(0, colon));
  if (type == nullptr) {
    return Status::InvalidArgument("unknown chunk backend '" + std::string(spec.substr(0, 200)) +
                                   "': expected dir:PATH, mem: or rados:POOL[/NS]");
  }
  BackendContext ctx;
  ctx.ceph = ceph;
  return type->create(ctx, spec.substr(colon + 1));
}

Result<std::unique_ptr<DiskBackend>> CreateDiskBackend(std::string_view spec,
                                                       const std::string& store_path,
                                                       ImageSource* images,
                                                       const CephOptions* ceph) {
  ASSIGN_OR_RETURN(DiskBackendSpec parsed, ParseDiskBackendSpec(spec));
  return CreateDiskBackend(parsed, BackendContext{store_path, ceph, images});
}

}  // namespace imgfs
