// `data prepare` and the loader: text -> shards -> loader -> text, the validation split, determinism, exact
// resume from a cursor with any world size, and every bad input named.
#include "dla/data/prepare.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "catch.h"
#include "dla/data/token_dataset.h"
#include "dla/data/tokenizer.h"
#include "test_util.h"

namespace dla::test {
namespace {

namespace fs = std::filesystem;

/// Ten small documents doc0.txt .. doc9.txt under dir/docs; returns their texts.
std::vector<std::string> write_documents(const TempDir& dir) {
  std::vector<std::string> texts;
  fs::create_directories(dir / "docs");
  for (int i = 0; i < 10; ++i) {
    texts.push_back(fmt::format("Document {} says hello.\nIts second line has {} words or so.\n", i, 7 + i));
    write_text(dir / "docs" / fmt::format("doc{}.txt", i), texts.back());
  }
  return texts;
}

data::PrepareOptions options_for(const TempDir& dir) {
  data::PrepareOptions options;
  options.inputs = {(dir / "docs").string()};
  options.out = (dir / "data").string();
  options.val_fraction = 0.2;
  options.shard_tokens = 64;  // several shards, and windows that cross them
  return options;
}

/// Every token of a split, in order.
std::vector<int64_t> split_tokens(const fs::path& dir, const std::string& split) {
  const data::TokenDataset dataset(dir, split, /*seq_len=*/1, /*model_vocab=*/258);
  std::vector<int64_t> tokens(dataset.num_tokens());
  dataset.window(0, tokens);
  return tokens;
}

}  // namespace

TEST_CASE("text -> shards -> loader -> text, with a validation split by document", "[data]") {
  TempDir dir;
  const auto texts = write_documents(dir);
  const data::Manifest manifest = data::prepare_dataset(options_for(dir));
  // floor((i+1)·0.2) > floor(i·0.2) for documents 4 and 9.
  CHECK(manifest.documents_train == 8);
  CHECK(manifest.documents_val == 2);
  CHECK(manifest.shards.size() > 4);
  std::string train_text, val_text;
  for (int i = 0; i < 10; ++i)
    ((i == 4 || i == 9) ? val_text : train_text) += texts[static_cast<std::size_t>(i)] + "\x01";
  const auto decode_with_eos = [](const std::vector<int64_t>& tokens) {
    std::string text;
    for (const int64_t t : tokens)
      text += t == data::ByteTokenizer::kEos ? '\x01' : static_cast<char>(t);
    return text;
  };
  CHECK(decode_with_eos(split_tokens(dir / "data", "train")) == train_text);
  CHECK(decode_with_eos(split_tokens(dir / "data", "val")) == val_text);

  // Rerunning replaces the dataset and writes the same bytes.
  const std::string first = read_text(dir / "data" / "train-00000.bin");
  data::prepare_dataset(options_for(dir));
  CHECK(read_text(dir / "data" / "train-00000.bin") == first);
  for (const auto& entry : fs::directory_iterator(dir.path()))
    CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);
}

TEST_CASE("batches follow the global sample order for any world size and resume exactly", "[data]") {
  TempDir dir;
  write_documents(dir);
  data::prepare_dataset(options_for(dir));
  auto dataset = std::make_shared<const data::TokenDataset>(dir / "data", "train", 16, 258);
  REQUIRE(dataset->num_windows() > 8);

  // Each epoch visits every window once, in an order fixed by the seed.
  data::SampleOrder order(dataset->num_windows(), 5);
  std::vector<int64_t> epoch0, epoch1;
  for (int64_t g = 0; g < dataset->num_windows(); ++g)
    epoch0.push_back(order.window_of(g));
  for (int64_t g = 0; g < dataset->num_windows(); ++g)
    epoch1.push_back(order.window_of(dataset->num_windows() + g));
  auto sorted = epoch0;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t w = 0; w < dataset->num_windows(); ++w)
    CHECK(sorted[static_cast<std::size_t>(w)] == w);
  CHECK(epoch0 != epoch1);

  // A global batch of 6 samples at step 3, split over 1, 2 and 3 ranks, is the same rows.
  data::BatchLoader single(dataset, 5);
  const data::TokenBatch whole = single.batch(18, 6);
  CHECK(at::equal(whole.labels_BT.narrow(1, 0, 15), whole.ids_BT.narrow(1, 1, 15)));
  for (const int64_t world : {2, 3}) {
    std::vector<at::Tensor> parts;
    for (int64_t rank = 0; rank < world; ++rank) {
      data::BatchLoader loader(dataset, 5);
      parts.push_back(loader.batch(18 + rank * (6 / world), 6 / world).ids_BT);
    }
    CHECK(at::equal(at::cat(parts), whole.ids_BT));
  }
  // Resuming at a cursor in a later epoch gives the same batch as running through, with or without prefetch.
  data::BatchLoader through(dataset, 5), resumed(dataset, 5);
  for (int64_t step = 0; step < 8; ++step) {
    through.prefetch((step + 1) * 6, 6);
    through.batch(step * 6, 6);
  }
  CHECK(at::equal(through.batch(8 * 6, 6).ids_BT, resumed.batch(8 * 6, 6).ids_BT));
}

TEST_CASE("jsonl documents, invalid UTF-8 and bad inputs", "[data]") {
  TempDir dir;
  write_text(dir / "a.jsonl", "{\"text\": \"first\"}\n\n{\"text\": \"second\", \"id\": 2}\n");
  data::PrepareOptions options;
  options.inputs = {(dir / "a.jsonl").string()};
  options.format = "jsonl";
  options.out = (dir / "j").string();
  options.val_fraction = 0;
  const auto manifest = data::prepare_dataset(options);
  CHECK(manifest.documents_train == 2);
  CHECK(manifest.tokens_train == 5 + 1 + 6 + 1);

  write_text(dir / "b.jsonl", "{\"text\": \"ok\"}\n{\"body\": \"no text field\"}\n");
  options.inputs = {(dir / "b.jsonl").string()};
  CHECK_THROWS_WITH(data::prepare_dataset(options),
                    has_substr("b.jsonl:2: expected an object with a string field \"text\""));
  write_text(dir / "c.jsonl", "{\"text\": \"ok\"}\n{not json\n");
  options.inputs = {(dir / "c.jsonl").string()};
  CHECK_THROWS_WITH(data::prepare_dataset(options), has_substr("c.jsonl:2: not a JSON object"));
  // A failed run leaves the earlier dataset as it was.
  CHECK(data::Manifest::read(dir / "j").documents_train == 2);

  options.format = "text";
  write_text(dir / "bad.txt", "caf\xC3 ok \xFF\xFE end");
  options.inputs = {(dir / "bad.txt").string()};
  const auto replaced = data::prepare_dataset(options);
  CHECK(replaced.invalid_utf8_replaced == 3);
  write_text(dir / "empty.txt", "");
  options.inputs = {(dir / "empty.txt").string()};
  CHECK_THROWS_WITH(data::prepare_dataset(options), has_substr("empty.txt: the input file is empty"));
  options.inputs = {(dir / "nothing*.txt").string()};
  CHECK_THROWS_WITH(data::prepare_dataset(options), has_substr("nothing*.txt: no such file"));
}

TEST_CASE("the loader refuses data that does not fit the model or the tokenizer", "[data]") {
  TempDir dir;
  write_documents(dir);
  data::prepare_dataset(options_for(dir));
  CHECK_THROWS_WITH(
      data::TokenDataset(dir / "data", "train", 16, 200),
      has_substr("the tokens come from a vocabulary of 258 (byte), but model.vocab_size is 200"));
  CHECK_THROWS_WITH(data::TokenDataset(dir / "data", "train", 16, 258, uint64_t{12345}),
                    has_substr("the shards were made with tokenizer byte"));
  CHECK_THROWS_WITH(data::TokenDataset(dir / "data", "train", 100000, 258),
                    has_substr("fewer than one sequence"));
  // A damaged shard or manifest is found when the dataset is opened.
  {
    std::fstream file(dir / "data" / "train-00001.bin", std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(70);
    file.put('Z');
  }
  CHECK_THROWS_WITH(data::TokenDataset(dir / "data", "train", 16, 258),
                    has_substr("train-00001.bin: checksum mismatch"));
  write_text(dir / "data" / "manifest.json", "{");
  CHECK_THROWS_WITH(data::TokenDataset(dir / "data", "train", 16, 258),
                    has_substr("manifest.json: malformed manifest"));
  CHECK_THROWS_WITH(data::TokenDataset(dir / "nowhere", "train", 16, 258), has_substr("no manifest"));
}

}  // namespace dla::test
