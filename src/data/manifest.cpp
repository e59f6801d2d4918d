// Reading and writing manifest.json.
#include "dla/data/manifest.h"

#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dla/io/atomic_file.h"
#include "dla/util/error.h"

namespace dla::data {

std::string fingerprint_hex(uint64_t fingerprint) {
  return fmt::format("{:016x}", fingerprint);
}

Manifest Manifest::read(const std::filesystem::path& dir) {
  const auto path = dir / kManifestFile;
  std::ifstream in(path);
  if (!in) {
    throw UserError(fmt::format("{}: no manifest; is '{}' a directory written by `dla data prepare`?",
                                path.string(), dir.string()));
  }
  try {
    const auto json = nlohmann::json::parse(in);
    if (json.at("format") != "dla-tokens" || json.at("version") != kManifestVersion) {
      throw UserError(
          fmt::format("{}: not a dla token manifest of version {}", path.string(), kManifestVersion));
    }
    Manifest m;
    const auto& tokenizer = json.at("tokenizer");
    m.tokenizer = tokenizer.at("spec");
    m.tokenizer_fingerprint = std::stoull(tokenizer.at("fingerprint").get<std::string>(), nullptr, 16);
    m.vocab_size = tokenizer.at("vocab_size");
    m.eos_id = tokenizer.at("eos_id");
    m.documents_train = json.at("documents").at("train");
    m.documents_val = json.at("documents").at("val");
    m.tokens_train = json.at("tokens").at("train");
    m.tokens_val = json.at("tokens").at("val");
    m.invalid_utf8_replaced = json.at("invalid_utf8_replaced");
    for (const auto& shard : json.at("shards")) {
      m.shards.push_back({shard.at("file"), shard.at("split"), shard.at("tokens"),
                          std::stoull(shard.at("checksum").get<std::string>(), nullptr, 16)});
    }
    return m;
  } catch (const nlohmann::json::exception& e) {
    throw UserError(fmt::format("{}: malformed manifest: {}", path.string(), e.what()));
  } catch (const std::logic_error& e) {
    throw UserError(fmt::format("{}: malformed manifest: {}", path.string(), e.what()));
  }
}

void Manifest::write(const std::filesystem::path& dir) const {
  nlohmann::json shards_json = nlohmann::json::array();
  for (const auto& shard : shards) {
    shards_json.push_back({{"file", shard.file},
                           {"split", shard.split},
                           {"tokens", shard.tokens},
                           {"checksum", fingerprint_hex(shard.checksum)}});
  }
  const nlohmann::json json = {{"format", "dla-tokens"},
                               {"version", kManifestVersion},
                               {"tokenizer",
                                {{"spec", tokenizer},
                                 {"fingerprint", fingerprint_hex(tokenizer_fingerprint)},
                                 {"vocab_size", vocab_size},
                                 {"eos_id", eos_id}}},
                               {"documents", {{"train", documents_train}, {"val", documents_val}}},
                               {"tokens", {{"train", tokens_train}, {"val", tokens_val}}},
                               {"invalid_utf8_replaced", invalid_utf8_replaced},
                               {"shards", shards_json}};
  const std::string text = json.dump(2) + "\n";
  io::write_file_atomic(dir / kManifestFile, std::as_bytes(std::span(text.data(), text.size())));
}

}  // namespace dla::data
