// Saving and loading a dla model checkpoint directory.
#include "dla/checkpoint/model_checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <charconv>
#include <span>
#include <system_error>

#include <fmt/format.h>

#include "dla/build_info.h"
#include "dla/checkpoint/state_dict.h"
#include "dla/io/atomic_file.h"
#include "dla/io/safetensors.h"
#include "dla/util/error.h"

namespace dla::checkpoint {
namespace fs = std::filesystem;
namespace {

// "ckpt/" and "ckpt" name the same directory; the sibling paths below need the second form.
fs::path without_trailing_slash(const fs::path& dir) {
  const fs::path normal = dir.lexically_normal();
  return normal.has_filename() ? normal : normal.parent_path();
}

fs::path sibling(const fs::path& dir, std::string_view tag) {
  fs::path out = dir;
  out += fmt::format(".{}.{}", tag, ::getpid());
  return out;
}

// Makes a rename inside `directory` durable; file systems that cannot fsync a directory are not an error.
void fsync_directory(const fs::path& directory) {
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void rename_or_throw(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec) {
    throw UserError(fmt::format("cannot rename '{}' to '{}': {}", from.string(), to.string(), ec.message()));
  }
}

// Only a previous checkpoint may be replaced: anything else at `dir` is someone's data.
void check_replaceable(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;
  if (!fs::is_directory(dir, ec)) {
    throw UserError(
        fmt::format("cannot write the checkpoint '{}': it exists and is not a directory", dir.string()));
  }
  const bool checkpoint = fs::exists(dir / kModelConfigFile, ec) && fs::exists(dir / kModelWeightsFile, ec);
  if (!checkpoint && !fs::is_empty(dir, ec)) {
    throw UserError(
        fmt::format("cannot write the checkpoint '{}': the directory exists, is not empty and does not hold "
                    "{} and {}, so it is not a dla checkpoint; choose another path",
                    dir.string(), kModelConfigFile, kModelWeightsFile));
  }
}

}  // namespace

void write_model_files(const fs::path& dir, const config::ResolvedConfig& config,
                       model::CausalLMImpl& model) {
  const std::string yaml = config.to_yaml();
  io::write_file_atomic(dir / kModelConfigFile, std::as_bytes(std::span(yaml.data(), yaml.size())));
  io::NamedTensors tensors;
  for (const auto& item : model.named_parameters(/*recurse=*/true))
    tensors.emplace_back(item.key(), item.value().detach().to(at::kCPU, at::kFloat).contiguous());
  io::save_safetensors(dir / kModelWeightsFile, tensors,
                       {{"format", kModelFormat},
                        {"format_version", std::to_string(kModelFormatVersion)},
                        {"dla_version", DLA_VERSION}});
}

namespace {

void check_format(const io::SafetensorsReader& reader) {
  const auto& metadata = reader.metadata();
  const auto format = metadata.find("format");
  if (format == metadata.end() || format->second != kModelFormat) {
    throw UserError(fmt::format(
        "{}: not a dla model file (metadata \"format\" is {}, expected '{}'); fla checkpoints are read with "
        "`dla import-fla`",
        reader.path().string(), format == metadata.end() ? "absent" : "'" + format->second + "'",
        kModelFormat));
  }
  const auto version = metadata.find("format_version");
  int number = 0;
  const bool parsed =
      version != metadata.end() &&
      std::from_chars(version->second.data(), version->second.data() + version->second.size(), number).ec ==
          std::errc();
  if (!parsed || number != kModelFormatVersion) {
    throw UserError(fmt::format("{}: dla model format version {} is not the one this dla reads ({}){}",
                                reader.path().string(),
                                version == metadata.end() ? "(absent)" : version->second, kModelFormatVersion,
                                parsed && number > kModelFormatVersion ? "; use a newer dla" : ""));
  }
}

}  // namespace

void save_model_checkpoint(const fs::path& dir, const config::ResolvedConfig& config,
                           model::CausalLMImpl& model) {
  const fs::path target = without_trailing_slash(dir);
  check_replaceable(target);
  const fs::path temp = sibling(target, "tmp");
  std::error_code ec;
  fs::remove_all(temp, ec);
  fs::create_directories(temp, ec);
  if (ec) {
    throw UserError(fmt::format("cannot write the checkpoint '{}': cannot create '{}': {}", target.string(),
                                temp.string(), ec.message()));
  }
  try {
    write_model_files(temp, config, model);
    if (fs::exists(target, ec)) {
      // A directory cannot be renamed over a non-empty one: move the old checkpoint aside first.
      const fs::path old = sibling(target, "old");
      rename_or_throw(target, old);
      rename_or_throw(temp, target);
      fs::remove_all(old, ec);
    } else {
      rename_or_throw(temp, target);
    }
  } catch (...) {
    fs::remove_all(temp, ec);
    throw;
  }
  fsync_directory(target.has_parent_path() ? target.parent_path() : fs::path("."));
}

LoadedModel load_model_checkpoint(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw UserError(fmt::format(
        "checkpoint '{}' {}", dir.string(),
        fs::exists(dir, ec) ? "is not a directory (a dla checkpoint is a directory)" : "does not exist"));
  }
  const fs::path config_file = dir / kModelConfigFile;
  const fs::path weights_file = dir / kModelWeightsFile;
  for (const auto& file : {config_file, weights_file}) {
    if (!fs::is_regular_file(file, ec)) {
      throw UserError(fmt::format("{}: missing; a dla checkpoint directory holds {} and {}", file.string(),
                                  kModelConfigFile, kModelWeightsFile));
    }
  }
  LoadedModel loaded;
  loaded.config = config::resolve_run_config(config_file.string(), {});
  const io::SafetensorsReader reader(weights_file);
  check_format(reader);
  loaded.model = model::CausalLM(loaded.config.config.model);
  load_parameters(*loaded.model, reader.load_all(), weights_file.string());
  return loaded;
}

}  // namespace dla::checkpoint
