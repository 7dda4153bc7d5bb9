// The imgfs command line: shared pieces of the subcommand files.
//
// Each cmd_*.cc registers its subcommands on the CLI11 app. A subcommand's
// callback stores an Action in Cli::action; main runs it after parsing, prints
// a non-OK status as one line on stderr ("imgfs: error: ...") and exits with
// its exit code. Results go to stdout (JSON with --json); logs go to stderr.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "blockstore/status.h"
#include "cache/store.h"

namespace imgfs::cli {

struct GlobalOptions {
  std::string store;  // --store, else $IMGFS_STORE, else /var/lib/imgfs
  bool json = false;
  int verbose = 0;
  bool quiet = false;
};

// What a command returns: OK (exit 0), or an error (exit `exit_code`,
// default 1) printed as one line.
struct Outcome {
  Status status;
  int exit_code = 0;  // used when status is OK but the command wants non-zero (fsck)
};

struct Cli {
  CLI::App app{"imgfs: virtual machine disks as files, thin clones of content-addressed images"};
  GlobalOptions global;
  std::function<Outcome()> action;
};

void RegisterStoreCommands(Cli& cli);  // init, stats, fsck, gc
void RegisterImageCommands(Cli& cli);  // image ...
void RegisterDiskCommands(Cli& cli);   // disk ...
void RegisterMountCommand(Cli& cli);   // mount
void RegisterServeCommands(Cli& cli);  // __serve, __supervise (hidden: run by mount)

// imgfs(1) in roff, from `app`'s subcommands and options (tools/man.cc).
void PrintManPage(const CLI::App& app, const std::string& version);

// The store directory the options name.
std::string StorePath(const GlobalOptions& g);
// Opens the store the options name (with the clear "run imgfs init" error).
Result<std::unique_ptr<Store>> OpenStore(const GlobalOptions& g);

// Prints `j` on stdout, one document per line.
void PrintJson(const nlohmann::json& j);

// True when stderr is a terminal and not --quiet: show progress bars.
bool ShowProgress(const GlobalOptions& g);

// A progress bar on stderr: bytes done, rate and time left. Does nothing when
// disabled. Update may be called often; it redraws at most ~10 times a second.
class Progress {
 public:
  enum class Unit { kBytes, kCount };  // what `done` and `total` count
  Progress(bool enabled, std::string label, uint64_t total, Unit unit = Unit::kBytes);
  ~Progress();
  void Update(uint64_t done);
  // Sets the total (0: unknown, then no bar and no time left are shown).
  void SetTotal(uint64_t total) { total_ = total; }
  void Finish();

 private:
  bool enabled_;
  std::string label_;
  uint64_t total_;
  Unit unit_;
  int64_t start_ns_;
  int64_t last_draw_ns_ = 0;
  bool finished_ = false;
};

}  // namespace imgfs::cli
