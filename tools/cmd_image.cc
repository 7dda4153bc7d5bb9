// imgfs image import | ls | info | rm | verify | name
#include "tools/cli.h"

namespace imgfs::cli {

void RegisterImageCommands(Cli& cli) {
  auto* image = cli.app.add_subcommand("image", "Base images in the _base cache");
  image->require_subcommand(1);
  for (const char* name : {"import", "ls", "info", "rm", "verify", "name"}) {
    auto* sub = image->add_subcommand(name, std::string("image ") + name);
    sub->allow_extras();
    sub->callback([&cli, sub] {
      cli.action = [sub] {
        return Outcome{Status::NotSupported("'image " + sub->get_name() + "' is not built yet")};
      };
    });
  }
}

}  // namespace imgfs::cli
