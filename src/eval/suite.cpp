// Reading evaluation suites.
#include "dla/eval/suite.h"

#include <yaml-cpp/yaml.h>

#include <set>

#include "dla/util/error.h"

namespace dla::eval {
namespace {

const std::set<std::string> kTaskTypes = {"perplexity", "cloze", "multiple_choice", "generate",
                                          "mqar",       "niah",  "passkey"};

nlohmann::json to_json(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& item : node)
        out.push_back(to_json(item));
      return out;
    }
    case YAML::NodeType::Map: {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& item : node)
        out[item.first.as<std::string>()] = to_json(item.second);
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string text = node.Scalar();
      if (node.Tag() == "!") return text;  // quoted: always a string
      if (text == "true" || text == "false") return text == "true";
      try {
        size_t used = 0;
        const long long integer = std::stoll(text, &used);
        if (used == text.size()) return integer;
        const double number = std::stod(text, &used);
        if (used == text.size()) return number;
      } catch (const std::exception&) {
      }
      return text;
    }
    default:
      return nullptr;
  }
}

// Reads the keys of one YAML map into fields, complaining about unknown keys and wrong types.
class Reader {
 public:
  Reader(const nlohmann::json& map, std::string where) : map_(map), where_(std::move(where)) {
    if (!map_.is_object()) throw UserError(fmt::format("{}: a map of keys is expected", where_));
  }
  template <class T>
  void read(const std::string& key, T& value) {
    seen_.insert(key);
    if (!map_.contains(key)) return;
    const auto& node = map_.at(key);
    try {
      if constexpr (std::is_same_v<T, std::vector<std::string>>) {
        value.clear();
        if (node.is_array()) {
          for (const auto& item : node)
            value.push_back(item.is_string() ? item.get<std::string>() : item.dump());
        } else {
          value.push_back(node.is_string() ? node.get<std::string>() : node.dump());
        }
      } else if constexpr (std::is_same_v<T, std::string>) {
        if (node.is_object() || node.is_array()) throw std::invalid_argument("a text value");
        value = node.is_string() ? node.get<std::string>() : node.dump();
      } else if constexpr (std::is_same_v<T, nlohmann::json>) {
        value = node;
      } else {
        value = node.get<T>();
      }
    } catch (const std::exception&) {
      throw UserError(fmt::format("{}: key '{}' has the wrong type (found {})", where_, key, node.dump()));
    }
  }
  void finish() const {
    for (const auto& item : map_.items()) {
      if (seen_.count(item.key()) == 0) {
        throw UserError(
            fmt::format("{}: unknown key '{}'; known keys: {}", where_, item.key(), fmt::join(seen_, ", ")));
      }
    }
  }

 private:
  const nlohmann::json& map_;
  std::string where_;
  std::set<std::string> seen_;
};

TaskSpec read_task(const nlohmann::json& node, const std::string& where) {
  TaskSpec task;
  Reader r(node, where);
  r.read("name", task.name);
  r.read("type", task.type);
  r.read("optional", task.optional);
  r.read("version", task.version);
  nlohmann::json data = nlohmann::json::object();
  r.read("data", data);
  r.read("text", task.text);
  r.read("detokenize", task.detokenize);
  r.read("context", task.context);
  r.read("target", task.target);
  r.read("choices", task.choices);
  r.read("choices_from", task.choices_from);
  r.read("contexts_from", task.contexts_from);
  r.read("continuation", task.continuation);
  r.read("gold", task.gold);
  r.read("gold_labels_from", task.gold_labels_from);
  r.read("answers", task.answers);
  r.read("answers_from", task.answers_from);
  r.read("target_delimiter", task.target_delimiter);
  r.read("fewshot_delimiter", task.fewshot_delimiter);
  r.read("num_fewshot", task.num_fewshot);
  r.read("max_length", task.max_length);
  r.read("max_new_tokens", task.max_new_tokens);
  r.read("until", task.until);
  r.read("metrics", task.metrics);
  r.read("generator", task.generator);
  r.finish();
  const std::string at = task.name.empty() ? where : fmt::format("{} ('{}')", where, task.name);
  if (task.name.empty()) throw UserError(fmt::format("{}: the task needs a 'name'", where));
  if (kTaskTypes.count(task.type) == 0) {
    throw UserError(
        fmt::format("{}: type '{}' is not one of {}", at, task.type, fmt::join(kTaskTypes, ", ")));
  }
  if (task.max_length < 2 || task.num_fewshot < 0 || task.max_new_tokens < 1) {
    throw UserError(
        fmt::format("{}: max_length ≥ 2, num_fewshot ≥ 0 and max_new_tokens ≥ 1 are expected", at));
  }
  if (!data.empty()) {
    Reader d(data, at + ": data");
    std::string file;
    d.read("file", file);
    d.read("files", task.data.files);
    if (!file.empty()) task.data.files.insert(task.data.files.begin(), file);
    d.read("format", task.data.format);
    d.read("fields", task.data.fields);
    d.read("split", task.data.split);
    d.read("labels_file", task.data.labels_file);
    d.read("labels_field", task.data.labels_field);
    d.finish();
  }
  const bool generated = task.type == "mqar" || task.type == "niah" || task.type == "passkey";
  if (!generated && task.data.files.empty()) throw UserError(fmt::format("{}: 'data.file' is required", at));
  if (task.type == "multiple_choice" && task.choices.empty() && task.choices_from.empty() &&
      task.contexts_from.empty()) {
    throw UserError(
        fmt::format("{}: a multiple_choice task needs 'choices', 'choices_from' or 'contexts_from'", at));
  }
  if (task.metrics.empty()) task.metrics = default_metrics(task.type);
  return task;
}

}  // namespace

bool needs_tokenizer(const SuiteSpec& suite) {
  return std::any_of(suite.tasks.begin(), suite.tasks.end(),
                     [](const TaskSpec& t) { return t.type != "mqar"; });
}

std::vector<std::string> default_metrics(const std::string& type) {
  if (type == "perplexity")
    return {"word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity"};
  if (type == "cloze") return {"acc", "perplexity"};
  if (type == "multiple_choice") return {"acc", "acc_norm"};
  if (type == "generate") return {"exact_match", "contains"};
  if (type == "mqar") return {"accuracy"};
  return {"accuracy"};  // niah, passkey
}

SuiteSpec load_suite(const std::filesystem::path& file) {
  if (!std::filesystem::is_regular_file(file)) {
    throw UserError(fmt::format("evaluation suite '{}' does not exist", file.string()));
  }
  nlohmann::json root;
  try {
    root = to_json(YAML::LoadFile(file.string()));
  } catch (const YAML::Exception& e) {
    throw UserError(fmt::format("{}:{}: not valid YAML: {}", file.string(), e.mark.line + 1, e.msg));
  }
  SuiteSpec suite;
  suite.file = file;
  nlohmann::json tasks = nlohmann::json::array();
  Reader r(root, file.string());
  r.read("suite", suite.name);
  r.read("data_root", suite.data_root);
  r.read("seed", suite.seed);
  r.read("batch_size", suite.batch_size);
  r.read("tasks", tasks);
  r.finish();
  if (suite.name.empty()) suite.name = file.stem().string();
  if (!tasks.is_array() || tasks.empty())
    throw UserError(fmt::format("{}: 'tasks' must list at least one task", file.string()));
  std::set<std::string> names;
  for (size_t i = 0; i < tasks.size(); ++i) {
    suite.tasks.push_back(read_task(tasks[i], fmt::format("{}: tasks[{}]", file.string(), i)));
    if (!names.insert(suite.tasks.back().name).second) {
      throw UserError(fmt::format("{}: two tasks are named '{}'", file.string(), suite.tasks.back().name));
    }
  }
  return suite;
}

}  // namespace dla::eval
