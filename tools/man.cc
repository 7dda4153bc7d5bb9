// imgfs __man: the manual page imgfs(1), in roff, made from the command
// line's own definition (every subcommand, option and description that
// --help shows), so the page cannot drift from the program. tools/package.sh
// installs its output as /usr/share/man/man1/imgfs.1.gz.
#include <cstdio>
#include <string>
#include <vector>

#include "tools/cli.h"

namespace imgfs::cli {

namespace {

// Text for roff: backslashes and hyphens escaped, no line starting with a
// control character.
std::string Roff(const std::string& s) {
  std::string out;
  bool line_start = true;
  for (char c : s) {
    if (line_start && (c == '.' || c == '\'')) out += "\\&";
    if (c == '\\') {
      out += "\\e";
    } else if (c == '-') {
      out += "\\-";
    } else {
      out += c;
    }
    line_start = c == '\n';
  }
  return out;
}

bool Hidden(const CLI::App* app) { return app->get_group().empty(); }

std::vector<const CLI::App*> Visible(const CLI::App& app) {
  std::vector<const CLI::App*> out;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    if (!Hidden(sub)) out.push_back(sub);
  }
  return out;
}

std::string OptionName(const CLI::Option* o) {
  std::string name = o->get_positional() ? o->get_name(true) : o->get_name(false, true);
  std::string type = o->get_type_name();
  if (!o->get_positional() && o->get_type_size() != 0 && !type.empty()) name += " " + type;
  return name;
}

void PrintOptions(const CLI::App& app) {
  for (const CLI::Option* o : app.get_options()) {
    if (o->get_group().empty()) continue;  // hidden
    if (o->get_name() == "--help" || o->get_name() == "-h") continue;
    std::printf(".TP\n.B %s\n%s\n", Roff(OptionName(o)).c_str(),
                Roff(o->get_description()).c_str());
  }
}

void PrintCommand(const CLI::App& app, const std::string& path) {
  std::string usage = path;
  for (const CLI::Option* o : app.get_options()) {
    if (o->get_positional()) {
      usage += o->get_required() ? " " + o->get_name(true) : " [" + o->get_name(true) + "]";
    }
  }
  auto subs = Visible(app);
  if (!subs.empty()) usage += " COMMAND";
  bool has_options = false;
  for (const CLI::Option* o : app.get_options()) {
    if (!o->get_positional() && !o->get_group().empty() && o->get_name() != "--help") {
      has_options = true;
    }
  }
  if (has_options) usage += " [OPTIONS]";
  std::printf(".SS \"%s\"\n%s\n", Roff(usage).c_str(), Roff(app.get_description()).c_str());
  PrintOptions(app);
  for (const CLI::App* sub : subs) PrintCommand(*sub, path + " " + sub->get_name());
}

}  // namespace

void PrintManPage(const CLI::App& app, const std::string& version) {
  std::printf(".\\\" Made by 'imgfs __man' from the command line's definition; do not edit.\n");
  std::printf(".TH IMGFS 1 \"\" \"%s\" \"User Commands\"\n", Roff(version).c_str());
  std::string what = app.get_description();
  if (what.starts_with("imgfs: ")) what = what.substr(7);
  std::printf(".SH NAME\nimgfs \\- %s\n", Roff(what).c_str());
  std::printf(
      ".SH SYNOPSIS\n.B imgfs\n[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]\n.br\n"
      ".B imgfs\n\\fISTORE MOUNTPOINT\\fR [\\fB\\-o\\fR \\fIOPTIONS\\fR]\n");
  std::printf(
      ".SH DESCRIPTION\n"
      "imgfs keeps content\\-addressed images and the disks of virtual machines, thin clones "
      "of those images, and mounts them as files: \\fIMOUNTPOINT\\fR/_base/\\fIIMAGE\\fR and "
      "\\fIMOUNTPOINT\\fR/\\fIINSTANCE\\fR/\\fIDISK\\fR.\n"
      ".PP\n"
      "The second form is what mount.fuse3(8) runs for an /etc/fstab line of type "
      "\\fBfuse.imgfs\\fR; it is \\fBimgfs \\-\\-store\\fR \\fISTORE\\fR \\fBmount\\fR "
      "\\fIMOUNTPOINT\\fR.\n"
      ".PP\n"
      "Exit status 0 on success; otherwise non\\-zero with one line on standard error.\n");
  std::printf(".SH GLOBAL OPTIONS\n");
  PrintOptions(app);
  std::printf(".SH COMMANDS\n");
  for (const CLI::App* sub : Visible(app)) PrintCommand(*sub, "imgfs " + sub->get_name());
  std::printf(
      ".SH ENVIRONMENT\n.TP\n.B IMGFS_STORE\nThe store directory when \\fB\\-\\-store\\fR is "
      "not given (default /var/lib/imgfs).\n"
      ".SH FILES\n.TP\n.B /lib/systemd/system/imgfs\\-mount@.service\n"
      "A mount as a systemd service; the instance is the mount point "
      "(\\fBsystemd\\-escape \\-\\-path\\fR).\n"
      ".TP\n.B /etc/default/imgfs\\fR, \\fB/etc/default/imgfs\\-\\fIINSTANCE\n"
      "IMGFS_STORE and IMGFS_OPTIONS of the service's mounts.\n"
      ".TP\n.B /etc/logrotate.d/imgfs\nRotates /var/log/imgfs/*.log; the mounts reopen their "
      "log on SIGUSR1.\n"
      ".SH SEE ALSO\nmount.fuse3(8), fusermount3(1), /usr/share/doc/imgfs/operations.md.gz\n");
}

}  // namespace imgfs::cli
