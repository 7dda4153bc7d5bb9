// imgfs init | stats | fsck | gc
#include "tools/cli.h"

namespace imgfs::cli {

void RegisterStoreCommands(Cli& cli) {
  auto* init = cli.app.add_subcommand("init", "Create a store (harmless if it exists)");
  auto* stats = cli.app.add_subcommand("stats", "Show what the store holds and saves");
  auto* fsck = cli.app.add_subcommand("fsck", "Check the whole store");
  auto* gc = cli.app.add_subcommand("gc", "Remove unused images and unreferenced chunks");
  (void)init;
  (void)stats;
  (void)fsck;
  (void)gc;
  for (auto* sub : {init, stats, fsck, gc}) {
    sub->callback([&cli, sub] {
      cli.action = [sub] {
        return Outcome{Status::NotSupported("'" + sub->get_name() + "' is not built yet")};
      };
    });
  }
}

}  // namespace imgfs::cli
