// Tests for tinyllm's JSON reader and number writer (tinyllm/detail/json.hpp):
// a key given twice keeps its last value, as Python's json and Hugging Face's
// tokenizers read it; numbers convert the same way in every locale, with values
// beyond a double's range going to +-inf or +-0 as strtod's would; format_number
// writes the shortest text that reads back; an error shows a byte that is not
// printable ASCII as 0xNN, so that the message is valid UTF-8.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/fixtures.hpp"

#include <tinyllm/detail/json.hpp>
#include <tinyllm/random.hpp>

#include <clocale>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace json = tinyllm::json;
using tinyllm_test::contains;

TEST_CASE("json: a repeated key keeps its last value, in its first place", "[json]") {
    const json::value v = json::parse(R"({"a": 1, "b": {"x": [1]}, "a": 3, "b": {"y": 2}, "c": 4})");
    const auto& members = v.as_object();
    REQUIRE(members.size() == 3);
    CHECK(members[0].first == "a");
    CHECK(members[0].second.as_int64() == 3);
    CHECK(members[1].first == "b");
    CHECK(members[1].second.find("x") == nullptr);  // the whole value replaced, not merged
    CHECK(members[1].second.at("y").as_int64() == 2);
    CHECK(members[2].first == "c");
    CHECK(v.at("a").as_int64() == 3);
    // For a reader that refuses such files (the safetensors header), both members stay.
    const json::value both = json::parse(R"({"a": 1, "a": 3})", "<test>", json::duplicate_keys::keep);
    REQUIRE(both.as_object().size() == 2);
    CHECK(both.as_object()[1].second.as_int64() == 3);
}

TEST_CASE("json: numbers beyond a double's range go to +-inf or +-0, as strtod's", "[json]") {
    const auto number = [](const char* text) { return json::parse(text).as_double(); };
    const double inf = std::numeric_limits<double>::infinity();
    CHECK(number("1e400") == inf);
    CHECK(number("-1e400") == -inf);
    CHECK(number("123456789e305") == inf);
    CHECK(number("1e99999999999999999999") == inf);
    CHECK(number("0.00001e-330") == 0.0);
    CHECK(number("1e-400") == 0.0);
    CHECK(std::signbit(number("-1e-400")));
    CHECK(number("-1e-400") == 0.0);
    CHECK(number("1e-99999999999999999999") == 0.0);
    CHECK(number("0.000e999") == 0.0);
    CHECK(number("4e-320") == 4e-320);  // a denormal is a value, not out of range
    CHECK(number("1.7976931348623157e308") == std::numeric_limits<double>::max());
    CHECK(number("123e-2") == 1.23);
    CHECK(number("-0") == 0.0);
    CHECK(std::signbit(number("-0")));
}

TEST_CASE("json: format_number writes the shortest text that reads back, with a point or an exponent", "[json]") {
    CHECK(json::format_number(1e-5f) == "1e-05");
    CHECK(json::format_number(2.0) == "2.0");
    CHECK(json::format_number(0.1) == "0.1");
    CHECK(json::format_number(0.1f) == "0.1");
    CHECK(json::format_number(double(0.1f)) == "0.10000000149011612");
    CHECK(json::format_number(-3.0f) == "-3.0");
    CHECK(json::format_number(500000.0) == "500000.0");
    CHECK(json::format_number(1e20) == "1e+20");
    CHECK_THROWS_WITH(json::format_number(std::numeric_limits<double>::quiet_NaN()), contains("has no JSON form"));
    CHECK_THROWS_WITH(json::format_number(-std::numeric_limits<float>::infinity()), contains("has no JSON form"));
    tinyllm::philox_generator g(tinyllm_test::test_seed(), 3);
    int checked = 0;
    for (int i = 0; i < 2000; ++i) {
        std::uint64_t bits = g.next_bits() | (std::uint64_t(g.next_bits()) << 32);
        double d;
        std::memcpy(&d, &bits, sizeof d);
        const float f = static_cast<float>(d);
        if (std::isfinite(d)) {
            INFO(json::format_number(d));
            CHECK(json::parse(json::format_number(d)).as_double() == d);
            ++checked;
        }
        if (std::isfinite(f)) {
            INFO(json::format_number(f));
            CHECK(static_cast<float>(json::parse(json::format_number(f)).as_double()) == f);
        }
    }
    CHECK(checked > 1000);
}

TEST_CASE("json: numbers read and written the same in a locale whose decimal point is a comma", "[json]") {
    const std::string before = std::setlocale(LC_ALL, nullptr);
    const char* comma = nullptr;
    for (const char* name : {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8", "nl_NL.UTF-8", "ru_RU.UTF-8"})
        if (std::setlocale(LC_ALL, name) && std::strcmp(std::localeconv()->decimal_point, ",") == 0) {
            comma = name;
            break;
        }
    if (!comma) {
        std::setlocale(LC_ALL, before.c_str());
        WARN("no locale with a decimal comma on this machine: the locale check is skipped");
        return;
    }
    INFO("locale " << comma);
    const double read = json::parse("0.001").as_double(), big = json::parse("2.5e3").as_double();
    const std::string written = json::format_number(0.125);
    std::setlocale(LC_ALL, before.c_str());
    CHECK(read == 0.001);
    CHECK(big == 2500.0);
    CHECK(written == "0.125");
}

TEST_CASE("json: a byte that is not printable ASCII is named 0xNN in the error", "[json]") {
    CHECK_THROWS_WITH(json::parse(std::string("\xff{}")), contains("unexpected character 0xFF, expected a value"));
    CHECK_THROWS_WITH(json::parse(std::string("[\"a\\\xc3\xa9\"]")),
                      contains("unknown escape: a backslash before 0xC3"));
    CHECK_THROWS_WITH(json::parse("[\"a\\q\"]"), contains("unknown escape: a backslash before 'q'"));
    CHECK_THROWS_WITH(json::parse("[x]"), contains("unexpected character 'x', expected a value"));
}
