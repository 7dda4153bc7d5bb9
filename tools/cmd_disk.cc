// imgfs disk create | ls | info | resize | rm
#include "tools/cli.h"

namespace imgfs::cli {

void RegisterDiskCommands(Cli& cli) {
  auto* disk = cli.app.add_subcommand("disk", "Instance disks: thin copy-on-write clones");
  disk->require_subcommand(1);
  for (const char* name : {"create", "ls", "info", "resize", "rm"}) {
    auto* sub = disk->add_subcommand(name, std::string("disk ") + name);
    sub->allow_extras();
    sub->callback([&cli, sub] {
      cli.action = [sub] {
        return Outcome{Status::NotSupported("'disk " + sub->get_name() + "' is not built yet")};
      };
    });
  }
}

}  // namespace imgfs::cli
