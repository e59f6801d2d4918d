// The `dla` binary: everything happens in a subcommand (src/cli/).
#include "dla/cli/command.h"

int main(int argc, char** argv) {
  return dla::cli::run(argc, argv);
}
