// Generated long-context probes: RULER's single-needle haystacks (S-NIAH-1/2/3) and passkey retrieval. Each
// prompt hides a value at a relative depth of a haystack sized to a token length; the model must repeat it.
// Deterministic for a seed and a tokenizer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dla/data/tokenizer.h"

namespace dla::eval {

struct ProbePrompt {
  std::string prompt;
  std::vector<std::string> answers;  ///< every one must appear in the output (string_match_all)
  int64_t length = 0;                ///< the target length in tokens
  double depth = 0;                  ///< where the needle sits, 0 (start) … 1 (end) of the haystack
};

/// S-NIAH-`variant`: 1 hides a 7-digit number in repeated filler sentences, 2 a 7-digit number in `essay`
/// text, 3 a UUID in `essay` text. The key is an adjective-noun word pair.
ProbePrompt niah_prompt(int variant, const std::string& essay, int64_t length, double depth, uint64_t seed,
                        const data::Tokenizer& tokenizer);

/// Passkey retrieval: a number in 1..50000 hidden in repeated filler ("The grass is green. …").
ProbePrompt passkey_prompt(int64_t length, double depth, uint64_t seed, const data::Tokenizer& tokenizer);

/// RULER's string_match_all for one output: the fraction of answers found in it, ignoring case.
double string_match_all(const std::string& output, const std::vector<std::string>& answers);

}  // namespace dla::eval
