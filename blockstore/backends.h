// The backend registry: every chunk backend and every disk backend is a type
// registered here, with its factory, the rule for its spec's argument, and
// its properties. A store's configuration names its backends by spec ("dir",
// "rados:POOL[/NAMESPACE]", "local", "rbd:POOL[/NAMESPACE]"); a spec is parsed
// once into a BackendSpec, which points at its type, and code outside
// blockstore/ asks the type's properties instead of comparing strings
// (docs/architecture.md, "Backends").
//
// The built-in types are defined beside their backends (DirChunkBackendType
// in dir_backend.cc, ...) and registered on first use. A test registers a type
// of its own with RegisterChunkBackendType / RegisterDiskBackendType; a store
// whose configuration names it then uses it like a built-in one.
//
// Thread safety: lookups and registrations may run from many threads.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "blockstore/chunk_backend.h"
#include "blockstore/disk.h"
#include "blockstore/status.h"

namespace imgfs {

// What a backend's factory gets besides its spec's argument.
struct BackendContext {
  std::string store_path;             // the store's directory; "" outside a store
  const CephOptions* ceph = nullptr;  // cluster options (null: librados defaults)
  ImageSource* images = nullptr;      // disk backends: opens parent images (may be null)
};

// Whether a spec in a store's configuration takes an argument after a colon
// ("rados:POOL" does, "dir" does not).
enum class SpecArgument : uint8_t { kNone, kRequired };

struct ChunkBackendType {
  std::string name;   // the spec's kind: "dir"
  std::string usage;  // how a store names it: "rados:POOL[/NAMESPACE]"
  SpecArgument argument = SpecArgument::kNone;
  // A read costs no network round trip (the chunk cache and read-ahead are
  // sized for a remote store otherwise).
  bool reads_are_local = false;
  // Builds the backend. `arg` is the spec's argument: empty for kNone types
  // in a store (dir then keeps its chunks under STORE/chunks).
  std::function<Result<std::shared_ptr<ChunkBackend>>(const BackendContext&, std::string_view arg)>
      create;
  // `imgfs init`, before the store's configuration is written: checks the
  // target and makes what the backend keeps in the store directory. Optional.
  std::function<Status(const BackendContext&, std::string_view arg)> prepare;
};

struct DiskBackendType {
  std::string name;   // "rbd"
  std::string usage;  // "rbd:POOL[/NAMESPACE]"
  SpecArgument argument = SpecArgument::kNone;
  // Stores on other hosts may keep their disks in the same place, and every
  // store there lists all of them (rbd: one pool); a store's records of its
  // disks then add nothing to what the others list themselves.
  bool shared_between_stores = false;
  std::function<Result<std::unique_ptr<DiskBackend>>(const BackendContext&, std::string_view arg)>
      create;
  // As ChunkBackendType::prepare; rbd checks that the pool can hold disks,
  // local makes STORE/disks. Runs before anything is created.
  std::function<Status(const BackendContext&, std::string_view arg)> prepare;
};

// A parsed spec: its type and its argument.
template <typename Type>
struct BackendSpec {
  const Type* type = nullptr;
  std::string arg;

  // The spec as a store's configuration writes it: "rbd:pool", "local".
  std::string ToString() const {
    if (type == nullptr) return "";
    return arg.empty() ? type->name : type->name + ":" + arg;
  }
};
using ChunkBackendSpec = BackendSpec<ChunkBackendType>;
using DiskBackendSpec = BackendSpec<DiskBackendType>;

// Parses a store configuration's spec: "KIND" or "KIND:ARG", as the type's
// SpecArgument says ("KIND:" is "KIND" for a type without an argument).
// InvalidArgument naming the accepted specs otherwise.
Result<ChunkBackendSpec> ParseChunkBackendSpec(std::string_view text);
Result<DiskBackendSpec> ParseDiskBackendSpec(std::string_view text);

Result<std::shared_ptr<ChunkBackend>> CreateChunkBackend(const ChunkBackendSpec& spec,
                                                         const BackendContext& ctx);
Result<std::unique_ptr<DiskBackend>> CreateDiskBackend(const DiskBackendSpec& spec,
                                                       const BackendContext& ctx);

// Adds a type. AlreadyExists when its name is taken; InvalidArgument when it
// has no name or no factory. Types are never removed.
Status RegisterChunkBackendType(ChunkBackendType type);
Status RegisterDiskBackendType(DiskBackendType type);

// The built-in types, each defined beside its backend.
ChunkBackendType DirChunkBackendType();
ChunkBackendType MemChunkBackendType();
ChunkBackendType RadosChunkBackendType();
DiskBackendType LocalDiskBackendType();
DiskBackendType MemDiskBackendType();
DiskBackendType RbdDiskBackendType();

}  // namespace imgfs
