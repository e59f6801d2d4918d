// Token ids given on the command line or in a file, as `dla score` and `dla generate` read them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dla::cli {

/// One sequence of token ids and where it came from, for messages ("--ids" or "FILE:LINE").
struct TokenSequence {
  std::string origin;
  std::vector<int64_t> ids;
};

/// Token ids separated by white space or commas, each a non-negative integer, at least `min_tokens` of them.
/// Throws dla::UserError naming the origin, the token and its position.
TokenSequence parse_token_ids(const std::string& text, std::string origin, std::size_t min_tokens);

/// One sequence per non-empty line of `file`; throws dla::UserError when it cannot be read or holds none.
std::vector<TokenSequence> read_token_ids_file(const std::string& file, std::size_t min_tokens);

/// Throws dla::UserError naming the origin and position of the first id >= vocab_size.
void check_vocabulary(const TokenSequence& sequence, int64_t vocab_size);

}  // namespace dla::cli
