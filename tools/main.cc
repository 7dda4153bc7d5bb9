#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "blockstore/log.h"
#include "blockstore/units.h"
#include "tools/cli.h"

namespace imgfs::cli {

std::string StorePath(const GlobalOptions& g) {
  if (!g.store.empty()) return g.store;
  if (const char* env = std::getenv("IMGFS_STORE"); env && *env) return env;
  return "/var/lib/imgfs";
}

void PrintJson(const nlohmann::json& j) { std::cout << j.dump() << std::endl; }

bool ShowProgress(const GlobalOptions& g) { return !g.quiet && isatty(STDERR_FILENO); }

namespace {
bool IsSubcommand(const CLI::App& app, const std::string& name) {
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    if (sub->check_name(name)) return true;
  }
  return false;
}

bool IsDirectory(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

Progress::Progress(bool enabled, std::string label, uint64_t total, Unit unit)
    : enabled_(enabled), label_(std::move(label)), total_(total), unit_(unit), start_ns_(NowNs()) {}

Progress::~Progress() { Finish(); }

void Progress::Update(uint64_t done) {
  if (!enabled_ || finished_) return;
  int64_t now = NowNs();
  bool last = total_ > 0 && done >= total_;
  if (now - last_draw_ns_ < 100'000'000 && !last) return;
  last_draw_ns_ = now;
  double secs = static_cast<double>(now - start_ns_) / 1e9;
  double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
  auto fmt = [&](uint64_t v) {
    return unit_ == Unit::kBytes ? FormatSizeHuman(v) : std::to_string(v);
  };
  std::string rate_s = fmt(static_cast<uint64_t>(rate)) + "/s";
  if (total_ == 0) {  // a stream: no bar, no time left
    std::fprintf(stderr, "\r%s %s  %s   ", label_.c_str(), fmt(done).c_str(), rate_s.c_str());
    std::fflush(stderr);
    return;
  }
  int width = 30;
  int filled = static_cast<int>(width * std::min<double>(1.0, double(done) / total_));
  std::string bar(filled, '#');
  bar.resize(width, '.');
  std::string eta = "--";
  if (rate > 0 && total_ >= done) {
    int64_t left = static_cast<int64_t>(static_cast<double>(total_ - done) / rate);
    eta = std::to_string(left / 60) + "m" + std::to_string(left % 60) + "s";
  }
  std::fprintf(stderr, "\r%s [%s] %s / %s  %s  %s left   ", label_.c_str(), bar.c_str(),
               fmt(done).c_str(), fmt(total_).c_str(), rate_s.c_str(), eta.c_str());
  std::fflush(stderr);
}

void Progress::Finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  std::fprintf(stderr, "\n");
}

}  // namespace imgfs::cli

int main(int argc, char** argv) {
  using namespace imgfs::cli;
  Cli cli;
  cli.app.require_subcommand(1);
  cli.app.option_defaults()->always_capture_default();
  cli.app.add_option("--store", cli.global.store,
                     "Store directory (default: $IMGFS_STORE, else /var/lib/imgfs)");
  cli.app.add_flag("--json", cli.global.json, "Machine-readable output on stdout");
  cli.app.add_flag("-v,--verbose", cli.global.verbose, "More logging on stderr (repeat for debug)");
  cli.app.add_flag("-q,--quiet", cli.global.quiet, "Only errors on stderr");
  cli.app.set_version_flag("--version", "imgfs " IMGFS_VERSION);

  RegisterStoreCommands(cli);
  RegisterImageCommands(cli);
  RegisterDiskCommands(cli);
  RegisterMountCommand(cli);
  RegisterServeCommands(cli);
  // The manual page (tools/package.sh), from everything registered above.
  cli.app.add_subcommand("__man", "Print imgfs(1) in roff")->group("")->callback([&cli] {
    cli.action = [&cli] {
      PrintManPage(cli.app, "imgfs " IMGFS_VERSION);
      return Outcome{};
    };
  });

  // mount(8) with an /etc/fstab line "STORE MOUNTPOINT fuse.imgfs OPTIONS"
  // runs mount.fuse3, which runs "imgfs STORE MOUNTPOINT -o OPTIONS": that is
  // "imgfs --store STORE mount MOUNTPOINT -o OPTIONS".
  std::vector<std::string> args(argv, argv + argc);
  if (args.size() >= 3 && args[1][0] != '-' && args[2][0] != '-' &&
      !IsSubcommand(cli.app, args[1]) && IsDirectory(args[1])) {
    args = [&] {
      std::vector<std::string> a = {args[0], "--store", args[1], "mount", args[2]};
      a.insert(a.end(), args.begin() + 3, args.end());
      return a;
    }();
  }
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());

  try {
    cli.app.parse(static_cast<int>(cargs.size()), cargs.data());
  } catch (const CLI::CallForHelp& e) {
    return cli.app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return cli.app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return cli.app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    std::fprintf(stderr, "imgfs: error: %s (see imgfs --help)\n", what.c_str());
    return 2;
  }
  imgfs::InitLogging(cli.global.quiet ? -1 : cli.global.verbose);
  if (!cli.action) {
    std::fprintf(stderr, "imgfs: error: no command given (see imgfs --help)\n");
    return 2;
  }
  Outcome out;
  try {
    out = cli.action();
  } catch (const std::bad_alloc&) {
    out.status = imgfs::Status::NoSpace("out of memory");
  } catch (const std::exception& e) {
    out.status = imgfs::Status::IOError(std::string("internal error: ") + e.what());
  }
  if (!out.status.ok()) {
    std::fprintf(stderr, "imgfs: error: %s\n", out.status.message().c_str());
    return out.exit_code ? out.exit_code : 1;
  }
  return out.exit_code;
}
