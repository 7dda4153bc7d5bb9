// imgfs mount MOUNTPOINT [-f] [-o OPTIONS]
#include "tools/cli.h"

namespace imgfs::cli {

void RegisterMountCommand(Cli& cli) {
  auto* mount = cli.app.add_subcommand("mount", "Mount the store: images and disks as files");
  mount->allow_extras();
  mount->callback([&cli] {
    cli.action = [] { return Outcome{Status::NotSupported("'mount' is not built yet")}; };
  });
}

}  // namespace imgfs::cli
