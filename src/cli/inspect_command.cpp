// `dla inspect FILE.safetensors`: the metadata and tensors of a safetensors file, optionally with values.
#include <iostream>

#include <ATen/ops/_to_copy.h>
#include <c10/core/ScalarType.h>
#include <fmt/format.h>

#include "dla/cli/command.h"
#include "dla/io/safetensors.h"

namespace dla::cli {
namespace {

struct InspectArgs {
  std::string file;
  bool stats = false;
};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i)
    out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

int inspect(const InspectArgs& args) {
  const io::SafetensorsReader reader(args.file);
  std::cout << args.file << "\n";
  if (!reader.metadata().empty()) {
    std::cout << "metadata:\n";
    for (const auto& [key, value] : reader.metadata())
      std::cout << "  " << key << ": " << value << "\n";
  }
  uint64_t total_bytes = 0;
  int64_t total_numel = 0;
  std::cout << fmt::format("{:<48} {:<6} {:<20} {:>12}", "tensor", "dtype", "shape", "bytes");
  std::cout << (args.stats ? fmt::format(" {:>12} {:>12} {:>12} {:>12}", "min", "max", "mean", "std") : "")
            << "\n";
  for (const auto& entry : reader.entries()) {
    std::cout << fmt::format("{:<48} {:<6} {:<20} {:>12}", entry.name, c10::toString(entry.dtype),
                             shape_text(entry.shape), entry.end - entry.begin);
    const at::Tensor tensor = reader.tensor(entry.name);
    if (args.stats && tensor.numel() > 0 && entry.dtype != at::kBool) {
      const at::Tensor values = tensor.to(at::kDouble);
      std::cout << fmt::format(" {:>12.5g} {:>12.5g} {:>12.5g} {:>12.5g}", values.min().item<double>(),
                               values.max().item<double>(), values.mean().item<double>(),
                               values.numel() > 1 ? values.std().item<double>() : 0.0);
    }
    std::cout << "\n";
    total_bytes += entry.end - entry.begin;
    total_numel += tensor.numel();
  }
  std::cout << fmt::format("{} tensors, {} values, {} bytes\n", reader.entries().size(), total_numel,
                           total_bytes);
  return kExitOk;
}

}  // namespace

void add_inspect_command(CLI::App& root, CommandList& commands) {
  auto* app = root.add_subcommand("inspect", "Show the metadata and tensors of a safetensors file");
  auto args = std::make_shared<InspectArgs>();
  app->add_option("file", args->file, "A .safetensors file")->required()->check(CLI::ExistingFile);
  app->add_flag("--stats", args->stats, "Also print min, max, mean and standard deviation of each tensor");
  commands.push_back({app, [args] { return inspect(*args); }});
}

}  // namespace dla::cli
