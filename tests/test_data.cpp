// Tests for tinyllm/data.hpp: token files (round trip, both widths, every kind
// of damage named), the train/validation split, and Philox batches
// (reproducible from the seed, every window inside its split, targets = the
// next tokens, the windows spread over the split).
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/data.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

using namespace tinyllm;
using tinyllm_test::contains;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
    fs::path path;
    temp_dir() {
        path = fs::temp_directory_path() / ("tinyllm_data_test_" + std::to_string(tinyllm_test::test_seed()));
        fs::create_directories(path);
    }
    ~temp_dir() { fs::remove_all(path); }
    std::string file(const std::string& name) const { return (path / name).string(); }
};

std::vector<token_id> random_ids(std::size_t n, token_id vocab, std::uint64_t which) {
    std::vector<token_id> ids(n);
    philox_generator g(tinyllm_test::test_seed() + which, 0);
    for (auto& id : ids) id = static_cast<token_id>(g.next_bits() % static_cast<std::uint32_t>(vocab));
    return ids;
}

}  // namespace

TEST_CASE("token files: written and read back, 2 or 4 bytes per id, with their fingerprint", "[data]") {
    temp_dir dir;
    for (const token_id vocab : {300, 65536, 100277}) {
        INFO("vocabulary " << vocab);
        const auto ids = random_ids(10007, vocab, static_cast<std::uint64_t>(vocab));
        const std::uint64_t fp = fnv1a64("some text") ^ static_cast<std::uint64_t>(vocab);
        write_token_file(dir.file("t.bin"), ids, fp, vocab);
        REQUIRE_FALSE(fs::exists(dir.file("t.bin.tmp")));
        CHECK(fs::file_size(dir.file("t.bin")) == 64 + ids.size() * (vocab <= 65536 ? 2 : 4));
        const token_file f(dir.file("t.bin"));
        REQUIRE(f.size() == ids.size());
        CHECK(f.fingerprint() == fp);
        CHECK(f.vocab_size() == vocab);
        for (std::size_t i = 0; i < ids.size(); ++i) REQUIRE(f[i] == ids[i]);
    }
    CHECK(fnv1a64("") == 0xcbf29ce484222325ull);
    CHECK(fnv1a64("a") == 0xaf63dc4c8601ec8cull);  // the FNV-1a 64 test vector
    CHECK(fnv1a64("b", fnv1a64("a")) == fnv1a64("ab"));
}

TEST_CASE("token files: bad ids, damaged and foreign files are clear errors", "[data][errors]") {
    temp_dir dir;
    const std::vector<token_id> ids = {1, 2, 3, 4, 5};
    CHECK_THROWS_WITH(write_token_file(dir.file("x"), ids, 0, 5), contains("id 5 at position 4 is outside [0, 5)"));
    write_token_file(dir.file("ok"), ids, 7, 6);
    std::string bytes;
    {
        std::ifstream in(dir.file("ok"), std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    const auto write = [&](const std::string& name, const std::string& b) {
        std::ofstream(dir.file(name), std::ios::binary) << b;
        return dir.file(name);
    };
    CHECK_THROWS_WITH(token_file(write("short", bytes.substr(0, 20))), contains("shorter than its 64-byte header"));
    std::string magic = bytes;
    magic[0] = 'X';
    CHECK_THROWS_WITH(token_file(write("magic", magic)), contains("not a token file"));
    CHECK_THROWS_WITH(token_file(write("cut", bytes.substr(0, bytes.size() - 1))),
                      contains("5 tokens of 2 bytes announced but 9 bytes follow the header"));
    std::string version = bytes;
    version[8] = 2;
    CHECK_THROWS_WITH(token_file(write("version", version)), contains("version 2"));
    std::string big = bytes;
    big[64] = 9;  // id 9 in a vocabulary of 6
    const token_file f(write("big", big));
    CHECK_THROWS_WITH(f[0], contains("id 9 at position 0 is outside its vocabulary of 6"));
    CHECK_THROWS_WITH(token_file(dir.file("missing")), contains("cannot open"));
}

TEST_CASE("token files: a count whose size wraps, and a position past the end, are errors", "[data][errors]") {
    temp_dir dir;
    const std::vector<token_id> ids = {1, 2, 3, 4, 5};
    write_token_file(dir.file("ok"), ids, 7, 6);
    const token_file ok(dir.file("ok"));
    CHECK(ok[4] == 5);
    CHECK_THROWS_WITH(ok[5], contains("position 5 is past its 5 tokens"));
    CHECK_THROWS_WITH(ok[~std::uint64_t{0}], contains("is past its 5 tokens"));
    // The header alone announcing 2^63 tokens of 2 bytes: 2^63 * 2 wraps to 0,
    // the number of bytes that follow, and must not pass for a match.
    std::string header;
    {
        std::ifstream in(dir.file("ok"), std::ios::binary);
        header.assign(std::istreambuf_iterator<char>(in), {});
    }
    header.resize(64);
    for (int i = 0; i < 8; ++i) header[static_cast<std::size_t>(16 + i)] = i == 7 ? '\x80' : '\0';
    std::ofstream(dir.file("wraps"), std::ios::binary) << header;
    CHECK_THROWS_WITH(token_file(dir.file("wraps")),
                      contains("9223372036854775808 tokens of 2 bytes announced but 0 bytes follow the header"));
}

TEST_CASE("split_tokens: the last fraction is validation, each split holds a window", "[data]") {
    const data_splits s = split_tokens(1000, 63, 0.1);
    CHECK(s.train_begin == 0);
    CHECK(s.train_end == 900);
    CHECK(s.val_begin == 900);
    CHECK(s.val_end == 1000);
    const data_splits small = split_tokens(200, 63, 0.01);  // 2 tokens would hold no window: 64 instead
    CHECK(small.val_end - small.val_begin == 64);
    const data_splits none = split_tokens(100, 10, 0.0);
    CHECK(none.train_end == 100);
    CHECK(none.val_begin == none.val_end);
    CHECK_THROWS_WITH(split_tokens(100, 63, 0.1), contains("the corpus has 100 tokens: too few for a context of 63"));
    CHECK_THROWS_WITH(split_tokens(100, 8, 1.0), contains("validation_fraction = 1 must be in [0, 1)"));
}

TEST_CASE("draw_batch: reproducible from the seed, windows inside the split, targets shifted by one", "[data]") {
    temp_dir dir;
    const std::size_t n = 5000;
    std::vector<token_id> ids(n);
    for (std::size_t i = 0; i < n; ++i) ids[i] = static_cast<token_id>(i);  // each id is its position
    write_token_file(dir.file("t.bin"), ids, 0, 65536);
    const token_file f(dir.file("t.bin"));
    const index_t B = 8, T = 32;
    const data_splits s = split_tokens(n, T, 0.1);
    tensor<token_id, 2> x(extents<2>{B, T}), y(extents<2>{B, T}), x2(extents<2>{B, T}), y2(extents<2>{B, T});
    const std::uint64_t seed = tinyllm_test::test_seed();
    // Every window of a split starts in [begin, end - T - 1] and is T + 1 consecutive tokens.
    const auto check_windows = [&](std::uint64_t begin, std::uint64_t end, std::set<std::uint64_t>& starts) {
        for (index_t b = 0; b < B; ++b) {
            const auto start = static_cast<std::uint64_t>(x(b, 0));
            REQUIRE(start >= begin);
            REQUIRE(start + static_cast<std::uint64_t>(T) + 1 <= end);
            for (index_t t = 0; t < T; ++t) {
                REQUIRE(x(b, t) == static_cast<token_id>(start) + t);
                REQUIRE(y(b, t) == x(b, t) + 1);
            }
            starts.insert(start);
        }
    };
    std::set<std::uint64_t> train_starts, val_starts;
    for (std::uint64_t step = 0; step < 50; ++step) {
        draw_batch(x.view(), y.view(), f, s.train_begin, s.train_end, seed, step);
        draw_batch(x2.view(), y2.view(), f, s.train_begin, s.train_end, seed, step);
        REQUIRE(x.values() == x2.values());  // the same step of the same seed: the same batch
        REQUIRE(y.values() == y2.values());
        check_windows(s.train_begin, s.train_end, train_starts);
        draw_batch(x.view(), y.view(), f, s.val_begin, s.val_end, seed, step);
        check_windows(s.val_begin, s.val_end, val_starts);
    }
    CHECK(train_starts.size() > 350);  // 400 windows from 4468 starts: nearly all different
    CHECK(val_starts.size() > 200);    // 400 windows from 468 starts: most of them seen
    draw_batch(x2.view(), y2.view(), f, s.train_begin, s.train_end, seed + 1, 0);
    draw_batch(x.view(), y.view(), f, s.train_begin, s.train_end, seed, 0);
    CHECK(x2.values() != x.values());  // another seed, another batch
    CHECK_THROWS_WITH(draw_batch(x.view(), y.view(), f, 0, 20, seed, 0), contains("20 tokens hold no window of 33"));
    CHECK_THROWS_WITH(draw_batch(x.view(), y.view(), f, 0, n + 1, seed, 0), contains("is not inside the file's 5000 tokens"));
    // The targets written over the tokens would leave neither (the same memory passed twice).
    CHECK_THROWS_WITH(draw_batch(x.view(), x.view(), f, s.train_begin, s.train_end, seed, 0),
                      contains("draw_batch: targets must not share memory with tokens"));
}
