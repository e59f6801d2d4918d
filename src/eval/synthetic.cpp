// Haystack prompts for long-context probes.
#include "dla/eval/synthetic.h"

#include <algorithm>
#include <random>

#include "dla/util/error.h"

namespace dla::eval {
namespace {

constexpr const char* kFiller =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";

constexpr const char* kAdjectives[] = {"amber",  "brisk",  "calm",  "dusty", "eager", "faint",
                                       "gentle", "hollow", "icy",   "jolly", "keen",  "lucid",
                                       "mellow", "noble",  "odd",   "proud", "quiet", "rustic",
                                       "silent", "tidy",   "vivid", "wild",  "young", "zesty"};
constexpr const char* kNouns[] = {"anchor", "badger", "candle", "dune",   "ember",  "falcon",
                                  "garden", "harbor", "island", "jacket", "kettle", "lantern",
                                  "meadow", "needle", "orchid", "pebble", "quarry", "river",
                                  "saddle", "tunnel", "valley", "walnut", "yarrow", "zephyr"};

uint64_t pick(std::mt19937_64& rng, uint64_t n) {
  return rng() % n;
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}

// Sentence boundaries of a haystack: the offsets just after ". ".
std::vector<size_t> sentence_starts(const std::string& haystack) {
  std::vector<size_t> starts{0};
  for (size_t at = haystack.find(". "); at != std::string::npos; at = haystack.find(". ", at + 2))
    starts.push_back(at + 2);
  return starts;
}

// Repeats `unit` (whole, then cut at a sentence end) until prefix + haystack + suffix with the needle fits
// `length` tokens, and puts the needle at the sentence boundary nearest `depth`.
std::string build(const std::string& prefix, const std::string& unit, const std::string& needle,
                  const std::string& suffix, int64_t length, double depth, const data::Tokenizer& tokenizer) {
  if (unit.empty()) throw UserError("the haystack text is empty");
  const auto tokens = [&](const std::string& text) {
    return static_cast<int64_t>(tokenizer.encode(text).size());
  };
  const int64_t fixed = tokens(prefix + needle + suffix);
  if (fixed >= length) {
    throw UserError(fmt::format("a probe of {} tokens cannot hold its instructions and needle ({} tokens)",
                                length, fixed));
  }
  // Estimate the haystack from the unit's tokens per character, then shrink until it fits.
  const double tokens_per_char = static_cast<double>(tokens(unit)) / static_cast<double>(unit.size());
  auto chars = static_cast<size_t>(static_cast<double>(length - fixed) / std::max(tokens_per_char, 1e-6));
  std::string haystack;
  while (haystack.size() < chars)
    haystack += unit;
  while (true) {
    std::string cut = haystack.substr(0, std::min(chars, haystack.size()));
    const auto last = cut.rfind(". ");
    if (last != std::string::npos) cut.resize(last + 2);
    const auto starts = sentence_starts(cut);
    const size_t target = static_cast<size_t>(depth * static_cast<double>(cut.size()));
    const size_t at = *std::min_element(starts.begin(), starts.end(), [&](size_t a, size_t b) {
      return (a > target ? a - target : target - a) < (b > target ? b - target : target - b);
    });
    std::string prompt = prefix + cut.substr(0, at) + needle + cut.substr(at) + suffix;
    if (tokens(prompt) <= length || chars == 0) return prompt;
    chars = chars * 95 / 100;
  }
}

}  // namespace

ProbePrompt niah_prompt(int variant, const std::string& essay, int64_t length, double depth, uint64_t seed,
                        const data::Tokenizer& tokenizer) {
  if (variant < 1 || variant > 3) throw UserError(fmt::format("niah variant {} is not 1, 2 or 3", variant));
  std::mt19937_64 rng(seed);
  const std::string key = fmt::format("{}-{}", kAdjectives[pick(rng, std::size(kAdjectives))],
                                      kNouns[pick(rng, std::size(kNouns))]);
  std::string value;
  std::string kind = "number";
  if (variant == 3) {
    kind = "uuid";
    // A version-4 UUID: 32 hex digits with the version and variant nibbles set.
    std::string hex;
    for (int i = 0; i < 32; ++i)
      hex += "0123456789abcdef"[pick(rng, 16)];
    hex[12] = '4';
    hex[16] = "89ab"[pick(rng, 4)];
    value = fmt::format("{}-{}-{}-{}-{}", hex.substr(0, 8), hex.substr(8, 4), hex.substr(12, 4),
                        hex.substr(16, 4), hex.substr(20));
  } else {
    value = std::to_string(1000000 + pick(rng, 9000000));
  }
  const std::string prefix = fmt::format(
      "Some special magic {0}s are hidden within the following text. Make sure to memorize it. I will quiz "
      "you "
      "about the {0}s afterwards.\n",
      kind);
  const std::string needle = fmt::format("One of the special magic {}s for {} is: {}. ", kind, key, value);
  const std::string suffix = fmt::format(
      "\nWhat is the special magic {0} for {1} mentioned in the provided text? The special magic {0} for {1} "
      "mentioned in the provided text is",
      kind, key);
  const std::string& unit = variant == 1 ? std::string(kFiller) : essay;
  return {build(prefix, unit, needle, suffix, length, depth, tokenizer), {value}, length, depth};
}

ProbePrompt passkey_prompt(int64_t length, double depth, uint64_t seed, const data::Tokenizer& tokenizer) {
  std::mt19937_64 rng(seed);
  const std::string key = std::to_string(1 + pick(rng, 50000));
  const std::string prefix =
      "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will "
      "quiz "
      "you about the important information there.\n";
  const std::string needle = fmt::format("The pass key is {0}. Remember it. {0} is the pass key. ", key);
  const std::string suffix = "\nWhat is the pass key? The pass key is";
  return {build(prefix, kFiller, needle, suffix, length, depth, tokenizer), {key}, length, depth};
}

double string_match_all(const std::string& output, const std::vector<std::string>& answers) {
  if (answers.empty()) return 0;
  const std::string haystack = lower(output);
  double found = 0;
  for (const auto& answer : answers)
    if (haystack.find(lower(answer)) != std::string::npos) found += 1;
  return found / static_cast<double>(answers.size());
}

}  // namespace dla::eval
