// examples/tinyllm/train_plot.hpp — the loss curve `tinyllm train` draws at the
// end of a run, as a PNG, with no library: the training loss of every step (and
// its moving average) and the validation loss of every evaluation, read back
// from log.jsonl, drawn on an RGB canvas with a 5 x 7 pixel font, and written as
// a PNG whose zlib stream holds "stored" (uncompressed) deflate blocks — a
// valid PNG every viewer opens, a few hundred kilobytes larger than a
// compressed one.
#pragma once

#include <tinyllm/detail/files.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace tinyllm_cli {

namespace plot_detail {

struct rgb {
    std::uint8_t r, g, b;
};

class canvas {
public:
    canvas(int w, int h) : w_(w), h_(h), px_(static_cast<std::size_t>(w * h), rgb{255, 255, 255}) {}
    int width() const { return w_; }
    int height() const { return h_; }
    void set(int x, int y, rgb c) {
        if (x >= 0 && y >= 0 && x < w_ && y < h_) px_[static_cast<std::size_t>(y * w_ + x)] = c;
    }
    void rect(int x0, int y0, int x1, int y1, rgb c) {
        for (int y = y0; y <= y1; ++y)
            for (int x = x0; x <= x1; ++x) set(x, y, c);
    }
    // A line from (x0, y0) to (x1, y1), `thick` pixels wide (Bresenham's).
    void line(int x0, int y0, int x1, int y1, rgb c, int thick = 1) {
        const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
        int err = dx + dy;
        for (;;) {
            rect(x0 - thick / 2, y0 - thick / 2, x0 + (thick - 1) / 2, y0 + (thick - 1) / 2, c);
            if (x0 == x1 && y0 == y1) break;
            const int e2 = 2 * err;
            if (e2 >= dy) err += dy, x0 += sx;
            if (e2 <= dx) err += dx, y0 += sy;
        }
    }
    // Text in the 5 x 7 font, each font pixel `scale` pixels square, from (x, y) its top left.
    void text(int x, int y, const std::string& s, rgb c, int scale = 2) {
        for (const char ch : s) {
            const auto& g = glyph(ch);
            for (int row = 0; row < 7; ++row)
                for (int col = 0; col < 5; ++col)
                    if (g[static_cast<std::size_t>(row)] >> (4 - col) & 1)
                        rect(x + col * scale, y + row * scale, x + col * scale + scale - 1, y + row * scale + scale - 1, c);
            x += 6 * scale;
        }
    }
    static int text_width(const std::string& s, int scale = 2) { return static_cast<int>(s.size()) * 6 * scale; }
    const std::vector<rgb>& pixels() const { return px_; }

private:
    // Rows top to bottom, 5 bits each (the leftmost pixel the highest bit); the
    // characters a loss plot needs.
    static const std::array<std::uint8_t, 7>& glyph(char c) {
        static const std::string chars = "0123456789.-adeilnoprstvx ";
        static const std::array<std::uint8_t, 7> glyphs[] = {
            {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}, {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},  // 0 1
            {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}, {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},  // 2 3
            {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}, {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},  // 4 5
            {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}, {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},  // 6 7
            {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}, {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},  // 8 9
            {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}, {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00},  // . -
            {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F}, {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F},  // a d
            {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E}, {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E},  // e i
            {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}, {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11},  // l n
            {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E}, {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10},  // o p
            {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}, {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E},  // r s
            {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}, {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04},  // t v
            {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11}, {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // x space
        };
        const auto at = chars.find(c);
        return glyphs[at == std::string::npos ? chars.size() - 1 : at];
    }

    int w_, h_;
    std::vector<rgb> px_;
};

inline std::uint32_t crc32(const std::uint8_t* p, std::size_t n, std::uint32_t crc = 0) {
    static const auto table = [] {
        std::array<std::uint32_t, 256> t{};
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    crc = ~crc;
    for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

inline void put_be32(std::string& out, std::uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out += static_cast<char>(v >> s & 0xff);
}

// The canvas as a PNG file's bytes: 8-bit RGB, no interlacing, filter 0 on every
// row, the rows in stored deflate blocks of at most 65535 bytes.
inline std::string png_bytes(const canvas& c) {
    std::string raw;
    for (int y = 0; y < c.height(); ++y) {
        raw += '\0';  // filter type 0 (none)
        for (int x = 0; x < c.width(); ++x) {
            const rgb p = c.pixels()[static_cast<std::size_t>(y * c.width() + x)];
            raw += static_cast<char>(p.r), raw += static_cast<char>(p.g), raw += static_cast<char>(p.b);
        }
    }
    std::string z = "\x78\x01";  // zlib: deflate, 32 KiB window, no dictionary
    for (std::size_t at = 0; at < raw.size() || at == 0;) {
        const std::size_t n = std::min<std::size_t>(65535, raw.size() - at);
        z += static_cast<char>(at + n == raw.size() ? 1 : 0);  // BFINAL, BTYPE = 00 (stored)
        z += static_cast<char>(n & 0xff), z += static_cast<char>(n >> 8);
        z += static_cast<char>(~n & 0xff), z += static_cast<char>((~n >> 8) & 0xff);
        z.append(raw, at, n);
        at += n;
        if (n == 0) break;
    }
    std::uint32_t a = 1, b = 0;  // Adler-32 of the uncompressed bytes
    for (const char ch : raw) {
        a = (a + static_cast<unsigned char>(ch)) % 65521;
        b = (b + a) % 65521;
    }
    put_be32(z, b << 16 | a);

    std::string png = "\x89PNG\r\n\x1a\n";
    const auto chunk = [&](const char* type, const std::string& data) {
        put_be32(png, static_cast<std::uint32_t>(data.size()));
        const std::string body = std::string(type, 4) + data;
        png += body;
        put_be32(png, crc32(reinterpret_cast<const std::uint8_t*>(body.data()), body.size()));
    };
    std::string ihdr;
    put_be32(ihdr, static_cast<std::uint32_t>(c.width()));
    put_be32(ihdr, static_cast<std::uint32_t>(c.height()));
    ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8 bits, RGB, deflate, filter 0, no interlace
    chunk("IHDR", ihdr);
    chunk("IDAT", z);
    chunk("IEND", "");
    return png;
}

inline std::string tick_label(double v, double step) {
    char buf[32];
    std::snprintf(buf, sizeof buf, step >= 1 ? "%.0f" : step >= 0.1 ? "%.1f" : "%.2f", v);
    return buf;
}

// A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about `want` ticks over `span`.
inline double tick_step(double span, int want) {
    const double raw = span / want, p = std::pow(10.0, std::floor(std::log10(raw)));
    for (const double m : {1.0, 2.0, 5.0, 10.0})
        if (m * p >= raw) return m * p;
    return 10 * p;
}

}  // namespace plot_detail

// Draw the losses of `log_path` (tinyllm train's log.jsonl) into a PNG at `png_path`.
inline void write_loss_plot(const std::string& png_path, const std::string& log_path) {
    using namespace plot_detail;
    std::vector<std::pair<double, double>> train, val;  // (step, loss)
    {
        std::ifstream in(log_path);
        if (!in) throw tinyllm::error("cannot read " + log_path);
        std::string line;
        while (std::getline(in, line)) {
            const auto v = tinyllm::json::parse(line, log_path);
            const double step = v.at("step").as_double();
            if (v.find("loss")) train.emplace_back(step + 1, v.at("loss").as_double());  // after step s: s + 1 done
            if (v.find("val_loss")) val.emplace_back(step, v.at("val_loss").as_double());
        }
    }
    if (train.empty()) throw tinyllm::error("no training steps in " + log_path);
    const int W = 900, H = 520, left = 80, right = 20, top = 40, bottom = 60;
    canvas c(W, H);
    double x_max = 1, y_min = 1e30, y_max = -1e30;
    for (const auto& [s, l] : train) x_max = std::max(x_max, s), y_min = std::min(y_min, l), y_max = std::max(y_max, l);
    for (const auto& [s, l] : val) x_max = std::max(x_max, s), y_min = std::min(y_min, l), y_max = std::max(y_max, l);
    const double y_step = tick_step(std::max(y_max - y_min, 1e-3), 6);
    y_min = std::floor(y_min / y_step) * y_step;
    y_max = std::ceil(y_max / y_step) * y_step;
    const auto px = [&](double s) { return left + static_cast<int>(std::lround((W - left - right) * s / x_max)); };
    const auto py = [&](double l) {
        return top + static_cast<int>(std::lround((H - top - bottom) * (y_max - l) / (y_max - y_min)));
    };
    const rgb grid{225, 225, 225}, axis{60, 60, 60}, raw{170, 200, 235}, smooth{31, 119, 180}, orange{230, 110, 10};
    for (double y = y_min; y <= y_max + y_step / 2; y += y_step) {
        c.line(left, py(y), W - right, py(y), grid);
        const std::string label = tick_label(y, y_step);
        c.text(left - 8 - canvas::text_width(label), py(y) - 7, label, axis);
    }
    const double x_step = tick_step(x_max, 8);
    for (double x = 0; x <= x_max + x_step / 2; x += x_step) {
        c.line(px(x), top, px(x), H - bottom, grid);
        const std::string label = tick_label(x, 1);
        c.text(px(x) - canvas::text_width(label) / 2, H - bottom + 8, label, axis);
    }
    c.line(left, top, left, H - bottom, axis, 2);
    c.line(left, H - bottom, W - right, H - bottom, axis, 2);
    c.text((W - canvas::text_width("step")) / 2, H - 24, "step", axis);
    c.text(8, top - 30, "loss", axis);

    // The raw training loss, its exponential moving average (0.9), and validation.
    for (std::size_t i = 1; i < train.size(); ++i)
        c.line(px(train[i - 1].first), py(train[i - 1].second), px(train[i].first), py(train[i].second), raw);
    double ema = train.front().second;
    for (std::size_t i = 1; i < train.size(); ++i) {
        const double next = 0.9 * ema + 0.1 * train[i].second;
        c.line(px(train[i - 1].first), py(ema), px(train[i].first), py(next), smooth, 2);
        ema = next;
    }
    for (std::size_t i = 0; i < val.size(); ++i) {
        if (i > 0) c.line(px(val[i - 1].first), py(val[i - 1].second), px(val[i].first), py(val[i].second), orange, 2);
        c.rect(px(val[i].first) - 3, py(val[i].second) - 3, px(val[i].first) + 3, py(val[i].second) + 3, orange);
    }
    // The legend, top right.
    const int lx = W - right - 330, ly = top - 30;
    c.line(lx, ly + 7, lx + 30, ly + 7, smooth, 2);
    c.text(lx + 38, ly, "train", axis);
    c.line(lx + 120, ly + 7, lx + 150, ly + 7, orange, 2);
    c.text(lx + 158, ly, "validation", axis);
    tinyllm::detail::write_file_replacing(png_path, png_bytes(c), "tinyllm train: the loss plot");
}

}  // namespace tinyllm_cli
