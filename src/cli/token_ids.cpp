// Parsing of token ids for the commands that take them.
#include "dla/cli/token_ids.h"

#include <charconv>
#include <fstream>

#include <fmt/format.h>

#include "dla/util/error.h"

namespace dla::cli {

TokenSequence parse_token_ids(const std::string& text, std::string origin, std::size_t min_tokens) {
  TokenSequence sequence{std::move(origin), {}};
  std::size_t pos = 0;
  while (true) {
    pos = text.find_first_not_of(" \t\r\n,", pos);
    if (pos == std::string::npos) break;
    const std::size_t end = std::min(text.find_first_of(" \t\r\n,", pos), text.size());
    const std::string_view token(text.data() + pos, end - pos);
    const std::size_t position = sequence.ids.size();
    int64_t id = 0;
    const auto [ptr, ec] = std::from_chars(token.data(), token.data() + token.size(), id);
    if (ec != std::errc() || ptr != token.data() + token.size()) {
      throw UserError(fmt::format("{}: token '{}' at position {} is not an integer token id", sequence.origin,
                                  token, position));
    }
    if (id < 0) {
      throw UserError(fmt::format("{}: token {} at position {} is negative; token ids are >= 0",
                                  sequence.origin, id, position));
    }
    sequence.ids.push_back(id);
    pos = end;
  }
  if (sequence.ids.size() < min_tokens) {
    throw UserError(fmt::format("{}: {} token{}; at least {} needed", sequence.origin, sequence.ids.size(),
                                sequence.ids.size() == 1 ? "" : "s", min_tokens));
  }
  return sequence;
}

std::vector<TokenSequence> read_token_ids_file(const std::string& file, std::size_t min_tokens) {
  std::ifstream in(file);
  if (!in) throw UserError(fmt::format("{}: cannot be read", file));
  std::vector<TokenSequence> sequences;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r,") == std::string::npos) continue;
    sequences.push_back(parse_token_ids(line, fmt::format("{}:{}", file, number), min_tokens));
  }
  if (sequences.empty())
    throw UserError(fmt::format("{}: no token ids (expected one sequence per line)", file));
  return sequences;
}

void check_vocabulary(const TokenSequence& sequence, int64_t vocab_size) {
  for (std::size_t i = 0; i < sequence.ids.size(); ++i) {
    if (sequence.ids[i] >= vocab_size) {
      throw UserError(fmt::format("{}: token {} at position {} is outside the model's vocabulary [0, {})",
                                  sequence.origin, sequence.ids[i], i, vocab_size));
    }
  }
}

}  // namespace dla::cli
