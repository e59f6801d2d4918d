// Errors the user can fix. main() turns them into a message and exit status 1; anything else that
// escapes is a bug in dla.
#pragma once

#include <stdexcept>
#include <string>

namespace dla {

/// Bad input from the user (config, data, checkpoint, command line). The message names the file, key or
/// line, what was found and what is expected.
class UserError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace dla
