// Reading evaluation documents.
#include "dla/eval/documents.h"

#include <charconv>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

namespace dla::eval {
namespace {

namespace fs = std::filesystem;

fs::path resolve(const std::string& file, const fs::path& data_root) {
  const fs::path path = fs::path(file).is_absolute() || data_root.empty() ? fs::path(file) : data_root / file;
  if (!fs::is_regular_file(path)) {
    throw MissingDataFile(
        fmt::format("evaluation data file '{}' does not exist{}", path.string(),
                    data_root.empty() ? " (no data root given: --data-root or data_root:)" : ""));
  }
  return path;
}

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(fmt::format("cannot read '{}'", path.string()));
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  if (text.starts_with("\xEF\xBB\xBF")) text.erase(0, 3);  // a UTF-8 byte-order mark
  return text;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

nlohmann::json parse_json(const std::string& text, const fs::path& path, size_t line) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw UserError(fmt::format("{}:{}: not valid JSON: {}", path.string(), line, e.what()));
  }
}

// "Please choose the correct answer to the question: Q\n\nAnswer1: a Answer2: b\n\nAnswer format: ..." with
// "answer": "answer2" becomes {question: Q, choices: [a, b], label: 1}.
nlohmann::json from_llm_adapters(const nlohmann::json& record, const fs::path& path, size_t index) {
  const auto bad = [&](const char* what) {
    return UserError(fmt::format("{}: record {}: {} (LLM-Adapters multiple-choice format expected)",
                                 path.string(), index, what));
  };
  if (!record.is_object() || !record.contains("instruction") || !record.contains("answer")) {
    throw bad("no 'instruction' and 'answer'");
  }
  const std::string instruction = record.at("instruction").get<std::string>();
  const std::string answer = record.at("answer").get<std::string>();
  const auto first = instruction.find("\n\nAnswer1:");
  const auto format = instruction.find("\n\nAnswer format:");
  if (first == std::string::npos || format == std::string::npos || format < first)
    throw bad("no Answer1: … list");
  std::string question = instruction.substr(0, first);
  const std::string prefix = "Please choose the correct answer to the question: ";
  if (question.starts_with(prefix)) question.erase(0, prefix.size());
  const std::string list = instruction.substr(first + 2, format - first - 2);
  std::vector<std::string> choices;
  for (int k = 1;; ++k) {
    const std::string tag = fmt::format("Answer{}: ", k);
    const auto begin = list.find(tag);
    if (begin == std::string::npos) break;
    const auto next = list.find(fmt::format(" Answer{}: ", k + 1), begin);
    choices.push_back(list.substr(begin + tag.size(),
                                  next == std::string::npos ? std::string::npos : next - begin - tag.size()));
  }
  if (!answer.starts_with("answer")) throw bad("'answer' is not answerN");
  const int label = std::stoi(answer.substr(6)) - 1;
  if (choices.size() < 2 || label < 0 || label >= static_cast<int>(choices.size()))
    throw bad("bad choices or answer");
  return {{"question", question}, {"choices", choices}, {"label", label}};
}

void read_file(const DocumentSource& source, const fs::path& path, std::vector<nlohmann::json>& docs) {
  const std::string text = read_all(path);
  if (source.format == "jsonl") {
    const auto lines = split_lines(text);
    for (size_t i = 0; i < lines.size(); ++i)
      if (lines[i].find_first_not_of(" \t") != std::string::npos)
        docs.push_back(parse_json(lines[i], path, i + 1));
  } else if (source.format == "json" || source.format == "llm_adapters") {
    const nlohmann::json all = parse_json(text, path, 1);
    if (!all.is_array()) throw UserError(fmt::format("{}: a JSON array of records expected", path.string()));
    for (size_t i = 0; i < all.size(); ++i)
      docs.push_back(source.format == "json" ? all[i] : from_llm_adapters(all[i], path, i));
  } else if (source.format == "lines") {
    if (source.fields.empty())
      throw UserError("format 'lines' needs 'fields': the name of each line of a record");
    auto lines = split_lines(text);
    while (!lines.empty() && lines.back().empty())
      lines.pop_back();
    if (lines.size() % source.fields.size() != 0) {
      throw UserError(fmt::format("{}:{}: the file ends inside a record of {} lines", path.string(),
                                  lines.size(), source.fields.size()));
    }
    for (size_t i = 0; i < lines.size(); i += source.fields.size()) {
      nlohmann::json doc = nlohmann::json::object();
      for (size_t f = 0; f < source.fields.size(); ++f)
        doc[source.fields[f]] = lines[i + f];
      docs.push_back(std::move(doc));
    }
  } else if (source.format == "text") {
    if (source.split == "none") {
      docs.push_back({{"text", text}});
    } else if (source.split == "lines") {
      for (const auto& line : split_lines(text))
        if (line.find_first_not_of(" \t") != std::string::npos) docs.push_back({{"text", line}});
    } else if (source.split == "wikitext") {
      // A page starts at a level-1 heading " = Title = " (level-2 headings are " = = Section = = ").
      static const std::regex heading(R"(^ = [^=].* = $)");
      std::string page;
      for (const auto& line : split_lines(text)) {
        if (std::regex_match(line, heading) && page.find_first_not_of(" \n") != std::string::npos) {
          docs.push_back({{"text", page}});
          page.clear();
        }
        page += line + "\n";
      }
      if (page.find_first_not_of(" \n") != std::string::npos) docs.push_back({{"text", page}});
    } else {
      throw UserError(fmt::format("split '{}' is not one of none, lines, wikitext", source.split));
    }
  } else {
    throw UserError(
        fmt::format("data format '{}' is not one of jsonl, json, lines, text, llm_adapters", source.format));
  }
}

}  // namespace

std::vector<nlohmann::json> load_documents(const DocumentSource& source, const fs::path& data_root) {
  if (source.files.empty()) throw UserError("the task names no data file ('data.file' or 'data.files')");
  std::vector<nlohmann::json> docs;
  for (const auto& file : source.files)
    read_file(source, resolve(file, data_root), docs);
  if (!source.labels_file.empty()) {
    const fs::path path = resolve(source.labels_file, data_root);
    auto lines = split_lines(read_all(path));
    while (!lines.empty() && lines.back().empty())
      lines.pop_back();
    if (lines.size() != docs.size()) {
      throw UserError(
          fmt::format("{}: {} labels for {} documents", path.string(), lines.size(), docs.size()));
    }
    for (size_t i = 0; i < lines.size(); ++i) {
      int64_t number = 0;
      const auto [end, ec] = std::from_chars(lines[i].data(), lines[i].data() + lines[i].size(), number);
      if (ec == std::errc() && end == lines[i].data() + lines[i].size()) {
        docs[i][source.labels_field] = number;
      } else {
        docs[i][source.labels_field] = lines[i];
      }
    }
  }
  return docs;
}

std::string wikitext_detokenize(std::string text) {
  const std::pair<const char*, const char*> replacements[] = {
      {"s '", "s'"}, {" @-@ ", "-"}, {" @,@ ", ","}, {" @.@ ", "."}, {" : ", ": "},       {" ; ", "; "},
      {" . ", ". "}, {" ! ", "! "},  {" ? ", "? "},  {" , ", ", "},  {"= = = =", "===="}, {"= = =", "==="},
      {"= =", "=="}, {" \n", "\n"},  {"\n ", "\n"},  {" N ", " 1 "}, {" 's", "'s"}};
  for (const auto& [from, to] : replacements) {
    const std::string_view f(from);
    for (size_t at = text.find(f); at != std::string::npos; at = text.find(f, at + std::strlen(to)))
      text.replace(at, f.size(), to);
  }
  // Spaces inside brackets and quotes: "( a )" → "(a)", "\" a \"" → "\"a\"".
  static const std::regex parens(R"(\(\s*([^\)]*?)\s*\))"), brackets(R"(\[\s*([^\]]*?)\s*\])"),
      braces(R"(\{\s*([^}]*?)\s*\})"), quotes(R"(\"\s*([^\"]*?)\s*\")");
  text = std::regex_replace(text, parens, "($1)");
  text = std::regex_replace(text, brackets, "[$1]");
  text = std::regex_replace(text, braces, "{$1}");
  text = std::regex_replace(text, quotes, "\"$1\"");
  return text;
}

}  // namespace dla::eval
