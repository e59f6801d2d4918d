// Tokenizers: the byte tokenizer's round trip, a SentencePiece model trained here (round trip, stable
// fingerprint), and the errors for bad model files.
#include "dla/data/tokenizer.h"

#include <fmt/format.h>

#include "catch.h"
#include "test_util.h"

namespace dla::test {

TEST_CASE("the byte tokenizer round-trips any bytes and has EOS and PAD", "[data]") {
  const data::ByteTokenizer tokenizer;
  const std::string text = "Grüße, 世界!\n\x01\xff";
  const auto ids = tokenizer.encode(text);
  CHECK(ids.size() == text.size());
  CHECK(tokenizer.decode(ids) == text);
  CHECK(tokenizer.vocab_size() == 258);
  CHECK(tokenizer.eos_id() == 256);
  CHECK(tokenizer.decode({104, 256, 105, 257}) == "hi");
  CHECK(data::load_tokenizer("byte")->fingerprint() == tokenizer.fingerprint());
}

TEST_CASE("a SentencePiece model trained here round-trips text", "[data]") {
  TempDir dir;
  std::string corpus;
  for (int i = 0; i < 400; ++i) {
    corpus += fmt::format("The {} quick brown foxes jump over {} lazy dogs near river number {}.\n", i % 7,
                          i % 11, i);
  }
  write_text(dir / "corpus.txt", corpus);
  const std::string model = (dir / "sp.model").string();
  for (const std::string type : {"bpe", "unigram"}) {
    CAPTURE(type);
    data::train_sentencepiece(
        {.inputs = {(dir / "corpus.txt").string()}, .vocab_size = 360, .type = type, .out = model});
    const auto tokenizer = data::load_tokenizer(model);
    CHECK(tokenizer->vocab_size() == 360);
    CHECK(tokenizer->eos_id() == 2);
    const std::string text = "The quick brown foxes jump over 3 lazy dogs.";
    const auto ids = tokenizer->encode(text);
    CHECK(ids.size() < text.size());
    CHECK(tokenizer->decode(ids) == text);
    CHECK(data::load_tokenizer(model)->fingerprint() == tokenizer->fingerprint());
    CHECK(tokenizer->fingerprint() != data::ByteTokenizer().fingerprint());
  }
}

TEST_CASE("bad tokenizer files are errors naming the file", "[data]") {
  TempDir dir;
  CHECK_THROWS_WITH(data::load_tokenizer((dir / "missing.model").string()),
                    has_substr("missing.model: the tokenizer model cannot be read"));
  write_text(dir / "garbage.model", "not a protobuf at all");
  CHECK_THROWS_WITH(data::load_tokenizer((dir / "garbage.model").string()),
                    has_substr("garbage.model: not a SentencePiece model"));
  CHECK_THROWS_WITH(data::train_sentencepiece({.inputs = {(dir / "none.txt").string()}, .out = "x.model"}),
                    has_substr("none.txt: no such file"));
}

}  // namespace dla::test
