// What one server of a mount leaves for the next (docs/operations.md,
// "Crashes and upgrades").
//
// The supervisor holds a memory file (memfd) for the mount's whole life and
// hands it to each server it starts; it never reads it. A server appends one
// JSON object per line as the state changes (StateLog, a StateSink), always
// before the reply that lets the kernel see the change, so a server killed at
// any moment leaves a log that covers everything the kernel holds. The next
// server reads it back (LoadState), writes a compacted copy into a new memory
// file (WriteState) and hands that to the supervisor in its place.
//
// Lines:
//   {"init":HEX,"reply":HEX}        the kernel's FUSE_INIT and libfuse's reply
//   {"client":"client.4123"}        a storage client id a server used
//   {"bind":KEY,"ino":N}            a name's inode number
//   {"unbind":KEY}                  a name removed (its number is not reused)
//   {"open":FH,"ino":N,"flags":F}   an open file handle
//   {"release":FH}
//   {"opendir":DH,"ino":N}          an open directory handle
//   {"releasedir":DH}
//   {"next_ino":N,"next_fh":M}      high-water marks (in compacted copies)
// A last line cut short by a kill is ignored; any other bad line is an error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "blockstore/mutex.h"
#include "blockstore/status.h"
#include "fusefs/fs.h"

namespace imgfs::fusefs {

// The kernel's FUSE_INIT request and the reply the first server sent, both
// as raw bytes: a later server replays the request into its own libfuse
// session and checks that it answers the same (FuseServer::Negotiate).
struct InitRecord {
  std::string request;
  std::string reply;
};

struct TakeoverState {
  std::optional<InitRecord> init;
  std::vector<std::string> clients;  // storage client ids of this and earlier servers
  FsState fs;
};

// Reads a state file from offset 0. An empty file is an empty state.
Result<TakeoverState> LoadState(int fd);

// Writes `state` as a compacted log into the empty file `fd`.
Status WriteState(int fd, const TakeoverState& state);

// Appends to a state file. Thread safety: any thread; every method takes a
// leaf lock, so it may be called with the file system's locks held.
class StateLog : public StateSink {
 public:
  explicit StateLog(int fd) : fd_(fd) {}  // `fd` must outlive the log

  Status AppendInit(const InitRecord& init);
  Status AppendClient(const std::string& id);

  void Bind(const std::string& key, uint64_t ino) override;
  void Unbind(const std::string& key) override;
  void Opened(uint64_t fh, const FsState::Open& open) override;
  void Released(uint64_t fh) override;
  void DirOpened(uint64_t dh, uint64_t ino) override;
  void DirReleased(uint64_t dh) override;

  // The first append that failed (a full memory file), or OK.
  Status status();

 private:
  Status Append(const std::string& line);
  Mutex mu_;
  const int fd_;
  Status status_ GUARDED_BY(mu_);
};

}  // namespace imgfs::fusefs
