// Documents to token shards.
#include "dla/data/prepare.h"

#include <glob.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "dla/data/shard.h"
#include "dla/data/tokenizer.h"
#include "dla/util/error.h"

namespace dla::data {
namespace fs = std::filesystem;

std::string sanitize_utf8(std::string_view text, uint64_t& replaced) {
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    std::size_t length = 0;
    uint32_t min_code = 0;
    if (c < 0x80) {
      length = 1;
    } else if ((c & 0xE0) == 0xC0) {
      length = 2, min_code = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3, min_code = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4, min_code = 0x10000;
    }
    bool valid = length > 0 && i + length <= text.size();
    uint32_t code = length == 1 ? c : c & (0x7F >> length);
    for (std::size_t k = 1; valid && k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      valid = (next & 0xC0) == 0x80;
      code = (code << 6) | (next & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are invalid too.
    valid = valid && code >= min_code && code <= 0x10FFFF && !(code >= 0xD800 && code <= 0xDFFF);
    if (valid) {
      out.append(text.substr(i, length));
      i += length;
    } else {
      out.append("\xEF\xBF\xBD");
      ++replaced;
      ++i;
    }
  }
  return out;
}

std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const auto& input : inputs) {
    if (fs::is_directory(input)) {
      std::vector<std::string> found;
      for (const auto& entry : fs::recursive_directory_iterator(input)) {
        if (entry.is_regular_file()) found.push_back(entry.path().string());
      }
      if (found.empty()) throw UserError(fmt::format("{}: the directory holds no files", input));
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(input)) {
      files.push_back(input);
    } else {
      glob_t matches{};
      const int status = ::glob(input.c_str(), 0, nullptr, &matches);
      std::vector<std::string> found;
      for (std::size_t i = 0; status == 0 && i < matches.gl_pathc; ++i) {
        if (fs::is_regular_file(matches.gl_pathv[i])) found.emplace_back(matches.gl_pathv[i]);
      }
      globfree(&matches);
      if (found.empty()) throw UserError(fmt::format("{}: no such file, directory or matching files", input));
      files.insert(files.end(), found.begin(), found.end());
    }
  }
  return files;
}

namespace {

/// Collects one split's tokens and writes a shard each time shard_tokens are buffered.
class SplitWriter {
 public:
  SplitWriter(fs::path dir, std::string split, const Tokenizer& tokenizer, uint64_t shard_tokens,
              Manifest& manifest)
      : dir_(std::move(dir)),
        split_(std::move(split)),
        tokenizer_(tokenizer),
        shard_tokens_(shard_tokens),
        manifest_(manifest) {}

  void append(const std::vector<int64_t>& ids) {
    for (const int64_t id : ids) {
      buffer_.push_back(static_cast<uint32_t>(id));
      if (buffer_.size() >= shard_tokens_) flush();
    }
  }

  void flush() {
    if (buffer_.empty()) return;
    const std::string file = fmt::format("{}-{:05d}.bin", split_, next_index_++);
    const ShardInfo info = write_shard(dir_ / file, buffer_, static_cast<uint64_t>(tokenizer_.vocab_size()),
                                       tokenizer_.fingerprint());
    manifest_.shards.push_back({file, split_, info.num_tokens, info.checksum});
    buffer_.clear();
  }

 private:
  fs::path dir_;
  std::string split_;
  const Tokenizer& tokenizer_;
  uint64_t shard_tokens_;
  Manifest& manifest_;
  std::vector<uint32_t> buffer_;
  int next_index_ = 0;
};

/// Calls `document(text_piece)` for each piece of each document of `file`, and `end()` after each document.
template <class Piece, class End>
void read_documents(const std::string& file, const PrepareOptions& options, Piece&& piece, End&& end) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw UserError(fmt::format("{}: cannot be read", file));
  if (fs::file_size(file) == 0) throw UserError(fmt::format("{}: the input file is empty", file));
  std::string line;
  if (options.format == "text") {
    while (std::getline(in, line)) {
      if (!in.eof()) line.push_back('\n');
      piece(line);
    }
    end();
    return;
  }
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw UserError(fmt::format("{}:{}: not a JSON object: {}", file, number, e.what()));
    }
    if (!json.is_object() || !json.contains(options.field) || !json[options.field].is_string()) {
      throw UserError(fmt::format("{}:{}: expected an object with a string field \"{}\" (--field)", file,
                                  number, options.field));
    }
    piece(json[options.field].get<std::string>());
    end();
  }
}

}  // namespace

Manifest prepare_dataset(const PrepareOptions& options) {
  if (options.format != "text" && options.format != "jsonl")
    throw UserError(fmt::format("--format must be text or jsonl, got '{}'", options.format));
  if (!(options.val_fraction >= 0 && options.val_fraction < 1))
    throw UserError(fmt::format("--val-fraction must be in [0, 1), got {}", options.val_fraction));
  if (options.out.empty()) throw UserError("--out: the dataset directory is required");
  const std::vector<std::string> files = expand_inputs(options.inputs);
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(options.tokenizer);

  const fs::path out = fs::path(options.out).lexically_normal();
  const fs::path temp = fs::path(out.string() + fmt::format(".tmp.{}", ::getpid()));
  std::error_code ec;
  fs::remove_all(temp, ec);
  fs::create_directories(temp, ec);
  if (ec) throw UserError(fmt::format("{}: cannot create the directory: {}", temp.string(), ec.message()));

  Manifest manifest;
  manifest.tokenizer = tokenizer->describe();
  manifest.tokenizer_fingerprint = tokenizer->fingerprint();
  manifest.vocab_size = tokenizer->vocab_size();
  manifest.eos_id = tokenizer->eos_id();
  try {
    SplitWriter train(temp, "train", *tokenizer, options.shard_tokens, manifest);
    SplitWriter val(temp, "val", *tokenizer, options.shard_tokens, manifest);
    const auto start = std::chrono::steady_clock::now();
    auto last_report = start;
    uint64_t documents = 0, bytes = 0;
    const auto is_val = [&](uint64_t i) {
      const double f = options.val_fraction;
      return std::floor(static_cast<double>(i + 1) * f) > std::floor(static_cast<double>(i) * f);
    };
    const auto report = [&](bool final) {
      const auto now = std::chrono::steady_clock::now();
      if (!final && std::chrono::duration<double>(now - last_report).count() < options.progress_seconds)
        return;
      last_report = now;
      const double seconds = std::max(1e-9, std::chrono::duration<double>(now - start).count());
      spdlog::info("prepare: {} documents, {} tokens ({} train, {} val), {:.1f} MB/s", documents,
                   manifest.tokens_train + manifest.tokens_val, manifest.tokens_train, manifest.tokens_val,
                   static_cast<double>(bytes) / 1e6 / seconds);
    };
    for (const auto& file : files) {
      read_documents(
          file, options,
          [&](const std::string& text) {
            bytes += text.size();
            const std::vector<int64_t> ids =
                tokenizer->encode(sanitize_utf8(text, manifest.invalid_utf8_replaced));
            (is_val(documents) ? val : train).append(ids);
            (is_val(documents) ? manifest.tokens_val : manifest.tokens_train) += ids.size();
            report(false);
          },
          [&] {
            (is_val(documents) ? val : train).append({tokenizer->eos_id()});
            (is_val(documents) ? manifest.tokens_val : manifest.tokens_train) += 1;
            (is_val(documents) ? manifest.documents_val : manifest.documents_train) += 1;
            ++documents;
          });
    }
    train.flush();
    val.flush();
    if (manifest.documents_train == 0) throw UserError("the inputs hold no training documents");
    report(true);
    if (manifest.invalid_utf8_replaced > 0) {
      spdlog::warn("prepare: replaced {} invalid UTF-8 sequences with U+FFFD",
                   manifest.invalid_utf8_replaced);
    }
    manifest.write(temp);
    // A directory cannot be renamed over a non-empty one: move the old dataset aside first.
    const fs::path old = fs::path(out.string() + fmt::format(".old.{}", ::getpid()));
    if (fs::exists(out)) fs::rename(out, old);
    fs::rename(temp, out);
    fs::remove_all(old, ec);
  } catch (...) {
    fs::remove_all(temp, ec);
    throw;
  }
  return manifest;
}

}  // namespace dla::data
