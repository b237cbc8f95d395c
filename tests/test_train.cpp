// Tests for tinyllm/train.hpp: the loop learns (the loss falls on a corpus with
// structure), a run saved at step N/2 and resumed ends with the same weights
// and AdamW moments, bit for bit, as the run taken straight through (GPT-2,
// Llama, Mixtral), the checkpoint is a model and a tokenizer that load, and
// every way of resuming the wrong run is refused with its reason.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/fixtures.hpp"

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/train.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

using namespace tinyllm;
using tinyllm_test::contains;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
    fs::path path;
    explicit temp_dir(const std::string& tag) {
        path = fs::temp_directory_path() / ("tinyllm_train_test_" + tag + "_" + std::to_string(tinyllm_test::test_seed()));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~temp_dir() { fs::remove_all(path); }
    std::string file(const std::string& name) const { return (path / name).string(); }
};

// A corpus with something to learn: sentences made of a few words, in an order
// drawn from the test's seed, so the next token is often predictable.
std::string corpus_text() {
    const char* words[] = {"the ", "tiger ", "jumped ", "out ", "of ", "a ", "tree ", "to ", "drink. "};
    philox_generator g(tinyllm_test::test_seed(), 0);
    std::string s;
    while (s.size() < 6000) {
        const std::uint32_t start = g.next_bits() % 3;
        for (std::uint32_t w = start; w < 9; ++w) s += words[w];
        s += "\n";
    }
    return s;
}

bpe_train_options train_options_300() {
    bpe_train_options o;
    o.vocab_size = 300;
    o.special_tokens = {"<|endoftext|>"};
    return o;
}

struct corpus {
    tokenizer tok;
    std::string token_path;
    explicit corpus(const temp_dir& dir)
        : tok(train_bpe({corpus_text()}, train_options_300())) {
        const auto ids = tok.encode_ordinary(corpus_text());
        token_path = dir.file("data.tokens");
        write_token_file(token_path, ids, fnv1a64(corpus_text()), static_cast<index_t>(tok.vocab_size()));
    }
};

model_config config_of(model_arch arch) {
    model_config c = tinyllm_test::small_model_config(arch, 300, 32, 8, 64, 64, arch != model_arch::llama);
    c.architecture = arch == model_arch::gpt2 ? "GPT2LMHeadModel" : arch == model_arch::llama ? "LlamaForCausalLM"
                                                                                              : "MixtralForCausalLM";
    c.eos_token_ids = {299};
    return c;
}

train_options small_options(std::int64_t steps) {
    train_options o;
    o.batch = 4;
    o.context = 24;
    o.steps = steps;
    o.lr = 3e-3;
    o.warmup = 2;
    o.seed = tinyllm_test::test_seed();
    o.eval_batches = 3;
    o.aux_weight = 0.01;
    return o;
}

cpu::model fresh_model(model_arch arch) {
    const model_config c = config_of(arch);
    return cpu::model(c, init_weights(c, tinyllm_test::test_seed()));
}

// Every weight and both moments of every parameter, compared bit for bit.
void require_same_run(const cpu::trainer& a, const cpu::trainer& b) {
    REQUIRE(a.steps_done() == b.steps_done());
    std::size_t tensors = 0;
    detail::for_each_weight(a.model().weights(), b.model().weights(), [&](const std::string& name, const auto& x, const auto& y) {
        INFO(name);
        REQUIRE(x.size() == y.size());
        CHECK(std::memcmp(x.data(), y.data(), static_cast<std::size_t>(x.size()) * sizeof(float)) == 0);
        ++tensors;
    });
    CHECK(tensors > 10);
    REQUIRE(a.optimizer_state().size() == b.optimizer_state().size());
    for (std::size_t i = 0; i < a.optimizer_state().size(); ++i) {
        const auto& s = a.optimizer_state()[i];
        const auto& t = b.optimizer_state()[i];
        INFO(s.name);
        CHECK(s.step == t.step);
        CHECK(std::memcmp(s.m.data(), t.m.data(), static_cast<std::size_t>(s.m.size()) * sizeof(float)) == 0);
        CHECK(std::memcmp(s.v.data(), t.v.data(), static_cast<std::size_t>(s.v.size()) * sizeof(float)) == 0);
    }
}

}  // namespace

TEST_CASE("train: the loss falls on a corpus with structure", "[train]") {
    temp_dir dir("falls");
    const corpus data(dir);
    const token_file file(data.token_path);
    cpu::trainer t(fresh_model(model_arch::llama), file, split_tokens(file.size(), 24, 0.1), small_options(40));
    const double before = t.evaluate();
    // GPT-2's initialisation: near-uniform predictions, a loss near ln V.
    CHECK(before == Approx(std::log(300.0)).margin(0.3));
    double first = 0, last = 0;
    for (int s = 0; s < 40; ++s) {
        const step_stats st = t.step();
        CHECK(st.step == s);
        CHECK(std::isfinite(st.loss));
        CHECK(st.grad_norm > 0);
        if (s == 0) first = st.loss;
        last = st.loss;
    }
    const double after = t.evaluate();
    INFO("validation loss " << before << " -> " << after << ", training loss " << first << " -> " << last);
    CHECK(after < 0.6 * before);
    CHECK(last < 0.6 * first);
    CHECK(t.evaluate() == after);  // the same validation windows every time
}

TEST_CASE("train: the learning rate follows the warmup and cosine schedule", "[train]") {
    temp_dir dir("schedule");
    const corpus data(dir);
    const token_file file(data.token_path);
    train_options o = small_options(6);
    o.warmup = 2;
    cpu::trainer t(fresh_model(model_arch::llama), file, split_tokens(file.size(), 24, 0.1), o);
    for (std::int64_t s = 0; s < 6; ++s) CHECK(t.step().lr == learning_rate_at(schedule_of(o), s));
    CHECK(learning_rate_at(schedule_of(o), 0) == Approx(o.lr / 3));
    CHECK(learning_rate_at(schedule_of(o), 2) == Approx(o.lr));
    CHECK(learning_rate_at(schedule_of(o), 6) == Approx(o.lr / 10));
    CHECK_THROWS_WITH(t.step(), contains("steps are done"));
}

TEST_CASE("train: N steps straight = N/2 steps, a checkpoint, a resume and N/2 more, bit for bit", "[train]") {
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama, model_arch::mixtral}) {
        const char* name = arch == model_arch::gpt2 ? "gpt2" : arch == model_arch::llama ? "llama" : "mixtral";
        INFO(name);
        temp_dir dir(name);
        const corpus data(dir);
        const token_file file(data.token_path);
        const data_splits splits = split_tokens(file.size(), 24, 0.1);
        const std::int64_t N = 6;

        cpu::trainer straight(fresh_model(arch), file, splits, small_options(N));
        for (int s = 0; s < N; ++s) straight.step();

        const std::string ck = dir.file("checkpoint");
        {
            cpu::trainer first(fresh_model(arch), file, splits, small_options(N));
            for (int s = 0; s < N / 2; ++s) first.step();
            save_training_checkpoint(ck, first, data.tok);
        }
        for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
                              "optimizer.safetensors", "training_state.json"})
            CHECK(fs::exists(fs::path(ck) / f));
        for (const auto& entry : fs::directory_iterator(ck)) CHECK(entry.path().extension() != ".tmp");

        // The resumed run starts from other weights: restore must replace them.
        const model_config c = config_of(arch);
        cpu::trainer resumed(cpu::model(c, init_weights(c, 12345)), file, splits, small_options(N));
        resumed.restore(ck);
        CHECK(resumed.steps_done() == N / 2);
        for (int s = N / 2; s < N; ++s) resumed.step();
        require_same_run(straight, resumed);
        CHECK(resumed.evaluate() == straight.evaluate());
    }
}

TEST_CASE("train: a given gradient function (fresh tensors, as the CUDA model's) takes the same steps", "[train]") {
    temp_dir dir("function");
    const corpus data(dir);
    const token_file file(data.token_path);
    const data_splits splits = split_tokens(file.size(), 24, 0.1);
    cpu::trainer plain(fresh_model(model_arch::llama), file, splits, small_options(4));
    int calls = 0;
    cpu::trainer given(fresh_model(model_arch::llama), file, splits, small_options(4),
                       [&](const cpu::model& m, model_weights& grads, auto tokens, auto targets, const backward_options& o) {
                           ++calls;
                           grads = zeros_like(m.weights());  // new tensors, not the ones the trainer made
                           return m.forward_backward(grads, tokens, targets, o);
                       });
    for (int s = 0; s < 4; ++s) CHECK(plain.step().loss == given.step().loss);
    CHECK(calls == 4);
    require_same_run(plain, given);
}

TEST_CASE("train: a checkpoint is a model and a tokenizer that load", "[train]") {
    temp_dir dir("loads");
    const corpus data(dir);
    const token_file file(data.token_path);
    cpu::trainer t(fresh_model(model_arch::llama), file, split_tokens(file.size(), 24, 0.1), small_options(2));
    t.step();
    const std::string ck = dir.file("ck");
    save_training_checkpoint(ck, t, data.tok);
    const cpu::model m = cpu::model::load(ck);
    CHECK(model_config_json(m.config()) == model_config_json(t.model().config()));
    detail::for_each_weight(m.weights(), t.model().weights(), [&](const std::string& name, const auto& x, const auto& y) {
        INFO(name);
        CHECK(std::memcmp(x.data(), y.data(), static_cast<std::size_t>(x.size()) * sizeof(float)) == 0);
    });
    const tokenizer back = load_tokenizer(dir.file("ck/tokenizer.json"));
    CHECK(back.encode_ordinary(corpus_text()) == data.tok.encode_ordinary(corpus_text()));
    const json::value gen = json::parse(detail::read_text_file(dir.file("ck/generation_config.json")));
    CHECK(gen.at("eos_token_id").as_int64() == 299);
    const json::value state = read_training_state(ck);
    CHECK(state.at("step").as_int64() == 1);
    CHECK(read_train_options(state, "state").lr == small_options(2).lr);
}

TEST_CASE("train: resuming the wrong run is refused with its reason", "[train][errors]") {
    temp_dir dir("wrong");
    const corpus data(dir);
    const token_file file(data.token_path);
    const data_splits splits = split_tokens(file.size(), 24, 0.1);
    const std::string ck = dir.file("ck");
    {
        cpu::trainer t(fresh_model(model_arch::llama), file, splits, small_options(4));
        t.step();
        save_training_checkpoint(ck, t, data.tok);
    }
    SECTION("other options") {
        train_options o = small_options(4);
        o.lr = 1e-2;
        cpu::trainer t(fresh_model(model_arch::llama), file, splits, o);
        CHECK_THROWS_WITH(t.restore(ck), contains("trained with lr = 0.003, this run has 0.01"));
    }
    SECTION("a distilled run against one that was not, either way") {
        // The two runs' option lists differ in length: compared by name, not read past the end.
        train_options o = small_options(4);
        o.distill_weight = 0.5;
        o.distill_temperature = 2.0;
        cpu::trainer t(fresh_model(model_arch::llama), file, splits, o);
        CHECK_THROWS_WITH(t.restore(ck), contains("trained with distill_weight = (not set), this run has 0.5"));
        const std::string distilled = dir.file("distilled");
        const cpu::model teacher = fresh_model(model_arch::llama);
        t.set_teacher(teacher);
        t.step();
        save_training_checkpoint(distilled, t, data.tok);
        cpu::trainer plain(fresh_model(model_arch::llama), file, splits, small_options(4));
        CHECK_THROWS_WITH(plain.restore(distilled),
                          contains("trained with distill_weight = 0.5, this run has (not set)"));
    }
    SECTION("more steps are allowed") {
        cpu::trainer t(fresh_model(model_arch::llama), file, splits, small_options(8));
        t.restore(ck);
        CHECK(t.steps_done() == 1);
    }
    SECTION("another model") {
        model_config c = config_of(model_arch::llama);
        c.num_layers = 3;
        cpu::trainer t(cpu::model(c, init_weights(c, 1)), file, splits, small_options(4));
        CHECK_THROWS_WITH(t.restore(ck), contains("describes another model"));
    }
    SECTION("other data") {
        write_token_file(dir.file("other.tokens"), std::vector<token_id>(2000, 7), 42, 300);
        const token_file other(dir.file("other.tokens"));
        cpu::trainer t(fresh_model(model_arch::llama), other, split_tokens(other.size(), 24, 0.1), small_options(4));
        CHECK_THROWS_WITH(t.restore(ck), contains("trained on other data"));
    }
    SECTION("a file of another save (an interrupted checkpoint)") {
        std::fstream f(dir.file("ck/optimizer.safetensors"), std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(-1, std::ios::end);
        f.put('\x7f');
        f.close();
        cpu::trainer t(fresh_model(model_arch::llama), file, splits, small_options(4));
        CHECK_THROWS_WITH(t.restore(ck), contains("optimizer.safetensors is not the file training_state.json was saved with"));
    }
    SECTION("a save that fails leaves the previous checkpoint whole") {
        // A directory where the optimizer's temporary file would go: its write fails,
        // as on a full disk, after the model's temporary file was written.
        fs::create_directories(dir.file("ck/optimizer.safetensors.tmp"));
        cpu::trainer t(fresh_model(model_arch::llama), file, splits, small_options(4));
        t.restore(ck);
        t.step();
        CHECK_THROWS_WITH(save_training_checkpoint(ck, t, data.tok), contains("optimizer.safetensors.tmp"));
        CHECK_FALSE(fs::exists(dir.file("ck/model.safetensors.tmp")));
        cpu::trainer again(fresh_model(model_arch::llama), file, splits, small_options(4));
        again.restore(ck);
        CHECK(again.steps_done() == 1);
    }
    SECTION("no checkpoint") {
        cpu::trainer t(fresh_model(model_arch::llama), file, splits, small_options(4));
        CHECK_THROWS_WITH(t.restore(dir.file("nothing")), contains("holds no training_state.json"));
    }
    SECTION("a training_state.json edited by hand: each field of the wrong kind is named") {
        const std::string path = dir.file("ck/training_state.json");
        const std::string original = tinyllm::detail::read_text_file(path);
        // Replace the first occurrence of `from` (which must be there) and try to resume.
        const auto resume_with = [&](const std::string& from, const std::string& to) {
            std::string text = original;
            const std::size_t at = text.find(from);
            REQUIRE(at != std::string::npos);
            text.replace(at, from.size(), to);
            std::ofstream(path, std::ios::binary) << text;
            cpu::trainer t(fresh_model(model_arch::llama), file, splits, small_options(4));
            t.restore(ck);
        };
        CHECK_THROWS_WITH(resume_with("\"version\": 1", "\"version\": \"1\""),
                          contains("training_state.json: version not a number (this reader knows 1)"));
        CHECK_THROWS_WITH(resume_with("\"batch\": 4", "\"batch\": 4.5"),
                          contains("training_state.json: options.batch = 4.5 is not a 64-bit integer"));
        CHECK_THROWS_WITH(resume_with("\"step\": 1", "\"step\": 1e300"),
                          contains("cannot resume from '") && contains("\"step\" is missing or not an integer"));
        CHECK_THROWS_WITH(resume_with("\"train\": [", "\"train\": [\"0\", "),
                          contains("data.train is not [begin, end], two token offsets"));
        const std::string fingerprint = "\"fingerprint\": \"";
        CHECK_THROWS_WITH(resume_with(fingerprint, "\"fingerprint\": 7, \"unused\": \""),
                          contains("data.fingerprint is not a string"));
    }
}

TEST_CASE("train: bad input is an error that says what was wrong", "[train][errors]") {
    temp_dir dir("bad");
    const corpus data(dir);
    const token_file file(data.token_path);
    const data_splits splits = split_tokens(file.size(), 24, 0.1);
    train_options o = small_options(4);
    o.batch = 0;
    CHECK_THROWS_WITH(cpu::trainer(fresh_model(model_arch::llama), file, splits, o), contains("batch = 0"));
    o = small_options(4);
    o.lr = -1;
    CHECK_THROWS_WITH(cpu::trainer(fresh_model(model_arch::llama), file, splits, o), contains("lr = -1"));
    o = small_options(4);
    o.context = 5000;
    CHECK_THROWS_WITH(cpu::trainer(fresh_model(model_arch::llama), file, splits, o), contains("must each hold a window"));
    // Sizes past what a run can count or allocate, and non-finite optimizer settings.
    const auto refused = [&](auto set, const char* message) {
        train_options bad = small_options(4);
        set(bad);
        CHECK_THROWS_WITH(tinyllm::expect_train_options(bad), contains(message));
    };
    refused([](train_options& b) { b.warmup = std::numeric_limits<std::int64_t>::max(); },
            "warmup = 9223372036854775807 must be at most 2^40");
    refused([](train_options& b) { b.eval_batches = std::int64_t{1} << 41; }, "eval_batches = 2199023255552 must be at least 1 and at most 2^40");
    refused([](train_options& b) { b.steps = std::int64_t{1} << 41; }, "steps = 2199023255552 must be in [1, 2^40]");
    refused([](train_options& b) { b.batch = 1000000000; }, "is more than 2^31 tokens a step");
    refused([](train_options& b) { b.eps = std::numeric_limits<double>::infinity(); },
            "eps = inf must be positive and finite");
    refused([](train_options& b) { b.aux_weight = std::numeric_limits<double>::infinity(); },
            "aux_weight = inf must be finite");
    // split_tokens: a context near index_t's top must not wrap the window check.
    CHECK_THROWS_WITH(split_tokens(100, std::numeric_limits<index_t>::max(), 0.5),
                      contains("the corpus has 100 tokens"));

    // A tokenizer with more tokens than the model has rows of embedding.
    model_config small = config_of(model_arch::llama);
    small.vocab_size = 100;
    CHECK_THROWS_WITH(cpu::trainer(cpu::model(small, init_weights(small, 1)), file, splits, small_options(4)),
                      contains("the tokenizer does not belong to this model"));

    // Weights gone non-finite: the step that meets them stops the run and names it.
    cpu::model m = fresh_model(model_arch::llama);
    m.weights().final_norm_weight(0) = std::nanf("");
    cpu::trainer t(std::move(m), file, splits, small_options(4));
    CHECK_THROWS_WITH(t.step(), contains("training stopped at step 0") && contains("non-finite"));
}

// ---- distillation --------------------------------------------------------------

namespace {

// tau^2 KL(softmax(t / tau) || softmax(s / tau)) of one row in long double, from the definition.
long double kl_row(const std::vector<float>& s, const std::vector<float>& t, long double tau) {
    const auto log_softmax = [&](const std::vector<float>& z) {
        long double m = -INFINITY, sum = 0;
        for (float v : z) m = std::max(m, v / tau);
        for (float v : z) sum += std::exp(v / tau - m);
        std::vector<long double> out;
        for (float v : z) out.push_back(v / tau - m - std::log(sum));
        return out;
    };
    const auto ls = log_softmax(s), lt = log_softmax(t);
    long double kl = 0;
    for (std::size_t j = 0; j < s.size(); ++j) kl += std::exp(lt[j]) * (lt[j] - ls[j]);
    return tau * tau * kl;
}

}  // namespace

TEST_CASE("distillation_loss: tau^2 KL(teacher || student), its gradient by finite differences, bad input",
          "[train][distill]") {
    const index_t rows = 5, V = 23;
    for (const double tau : {0.7, 1.0, 2.0, 4.0}) {
        INFO("tau " << tau);
        tensor<float, 2> s(extents<2>{rows, V}), t(extents<2>{rows, V});
        cpu::fill_uniform(s, tinyllm_test::test_seed() + 1, -3.0f, 3.0f);
        cpu::fill_uniform(t, tinyllm_test::test_seed() + 2, -3.0f, 3.0f);
        // The loss from the definition, row by row.
        long double want = 0;
        for (index_t r = 0; r < rows; ++r) {
            std::vector<float> sr(&s(r, 0), &s(r, 0) + V), tr(&t(r, 0), &t(r, 0) + V);
            want += kl_row(sr, tr, tau);
        }
        want /= rows;
        // The gradient is added to what dlogits holds, times grad_scale.
        tensor<float, 2> d(extents<2>{rows, V}, 0.25f);
        const double got = cpu::distillation_loss(d.view(), s.view(), t.view(), tau, 3.0);
        CHECK(got == Approx(static_cast<double>(want)).epsilon(1e-12));
        CHECK(got > 0);
        CHECK(cpu::distillation_loss({}, s.view(), t.view(), tau) == got);  // the loss alone
        // Central differences of the loss (in long double) at a few elements.
        for (const auto& [r, j] : {std::pair<index_t, index_t>{0, 0}, {2, 7}, {4, 22}}) {
            const float h = 1e-2f;
            tensor<float, 2> plus = s, minus = s;
            plus(r, j) += h;
            minus(r, j) -= h;
            long double lp = 0, lm = 0;
            for (index_t q = 0; q < rows; ++q) {
                std::vector<float> tq(&t(q, 0), &t(q, 0) + V);
                lp += kl_row(std::vector<float>(&plus(q, 0), &plus(q, 0) + V), tq, tau);
                lm += kl_row(std::vector<float>(&minus(q, 0), &minus(q, 0) + V), tq, tau);
            }
            const double numeric = static_cast<double>((lp - lm) / rows / (2.0L * (plus(r, j) - s(r, j))));
            INFO("row " << r << ", index " << j);
            CHECK((d(r, j) - 0.25f) / 3.0 == Approx(numeric).margin(1e-4));
        }
        // Each row's gradient sums to zero (both distributions sum to one).
        for (index_t r = 0; r < rows; ++r) {
            double sum = 0;
            for (index_t j = 0; j < V; ++j) sum += d(r, j) - 0.25f;
            CHECK(std::fabs(sum) < 1e-5);
        }
        // A student equal to its teacher: loss and gradient zero.
        tensor<float, 2> z(extents<2>{rows, V}, 0.0f);
        CHECK(std::fabs(cpu::distillation_loss(z.view(), t.view(), t.view(), tau)) < 1e-12);
        for (float g : z.values()) CHECK(std::fabs(g) < 1e-7f);
    }
    tensor<float, 2> s(extents<2>{2, 4}, 0.0f), t(extents<2>{2, 4}, 0.0f), wrong(extents<2>{2, 5}, 0.0f);
    CHECK_THROWS_WITH(cpu::distillation_loss({}, s.view(), t.view(), 0.0), contains("temperature = 0 must be positive"));
    // Outside [1e-3, 1e3]: z / tau overflowed the GPU's float (1e-40), tau^2 gave NaN (1e300).
    CHECK_THROWS_WITH(cpu::distillation_loss({}, s.view(), t.view(), 1e-40), contains("must be positive, in [1e-3, 1e3]"));
    CHECK_THROWS_WITH(cpu::distillation_loss({}, s.view(), t.view(), 1e300), contains("must be positive, in [1e-3, 1e3]"));
    CHECK(cpu::distillation_loss({}, s.view(), t.view(), 1e-3) == 0.0);
    CHECK(cpu::distillation_loss({}, s.view(), t.view(), 1e3) == 0.0);
    CHECK_THROWS_WITH(cpu::distillation_loss({}, s.view(), wrong.view(), 1.0), contains("must have the same shape"));
    CHECK_THROWS_WITH(cpu::distillation_loss(wrong.view(), s.view(), t.view(), 1.0), contains("dlogits has shape"));
    CHECK_THROWS_WITH(cpu::distillation_loss(s.view(), s.view(), t.view(), 1.0), contains("must not be the logits"));
    tensor<float, 2> d(extents<2>{2, 4}, 0.0f);
    CHECK_THROWS_WITH(cpu::distillation_loss(d.view(), s.view(), t.view(), 1.0, NAN),
                      contains("grad_scale = nan must be finite"));
    t(1, 2) = NAN;
    CHECK_THROWS_WITH(cpu::distillation_loss({}, s.view(), t.view(), 1.0),
                      contains("the teacher logits of row 1 hold a non-finite value"));
}

TEST_CASE("distillation in forward_backward: the gradient is (1 - a) CE's + a KL's, the loss terms add up",
          "[train][distill]") {
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama}) {
        const cpu::model student = fresh_model(arch);
        const model_config c = config_of(arch);
        const cpu::model teacher(c, init_weights(c, tinyllm_test::test_seed() + 99));
        const index_t B = 2, T = 9, V = c.vocab_size;
        tensor<token_id, 2> tokens(extents<2>{B, T}), targets(extents<2>{B, T});
        for (index_t b = 0; b < B; ++b)
            for (index_t t = 0; t < T; ++t) {
                tokens(b, t) = static_cast<token_id>((7 * b + 13 * t + 5) % V);
                targets(b, t) = static_cast<token_id>((3 * b + 11 * t + 1) % V);
            }
        tensor<float, 2> teacher_logits(extents<2>{B * T, V}), student_logits(extents<2>{B * T, V});
        for (index_t b = 0; b < B; ++b) {
            auto st = teacher.new_session(T), ss = student.new_session(T);
            const auto lt = teacher.forward(st, std::span<const token_id>(&tokens(b, 0), static_cast<std::size_t>(T)));
            const auto ls = student.forward(ss, std::span<const token_id>(&tokens(b, 0), static_cast<std::size_t>(T)));
            std::copy(lt.values().begin(), lt.values().end(), teacher_logits.data() + b * T * V);
            std::copy(ls.values().begin(), ls.values().end(), student_logits.data() + b * T * V);
        }
        const double alpha = 0.3, tau = 2.0;
        model_weights g_ce = zeros_like(student.weights()), g_kl = zeros_like(student.weights()),
                      g_mix = zeros_like(student.weights());
        const loss_terms ce = student.forward_backward(g_ce, tokens.view(), targets.view());
        backward_options only_kl;
        only_kl.lm_weight = 0;
        only_kl.teacher_logits = teacher_logits.view();
        only_kl.distill_weight = 1;
        only_kl.distill_temperature = tau;
        const loss_terms kl = student.forward_backward(g_kl, tokens.view(), targets.view(), only_kl);
        backward_options mix = only_kl;
        mix.lm_weight = 1 - alpha;
        mix.distill_weight = alpha;
        const loss_terms both = student.forward_backward(g_mix, tokens.view(), targets.view(), mix);

        const double want_kl = cpu::distillation_loss({}, student_logits.view(), teacher_logits.view(), tau);
        CHECK(kl.distill == Approx(want_kl).epsilon(1e-5));
        CHECK(both.lm == Approx(ce.lm).epsilon(1e-12));
        CHECK(both.distill == Approx(kl.distill).epsilon(1e-12));
        CHECK(both.total == Approx((1 - alpha) * ce.lm + alpha * kl.distill).epsilon(1e-12));
        // The backward is linear in d loss / d logits: every gradient element mixes the same way.
        const auto flat = [](model_weights& g) {
            std::vector<float> all;
            detail::for_each_weight(g, g, [&](const std::string&, const auto& t, const auto&) {
                all.insert(all.end(), t.values().begin(), t.values().end());
            });
            return all;
        };
        const std::vector<float> m = flat(g_mix), a = flat(g_ce), k = flat(g_kl);
        REQUIRE(m.size() == a.size());
        REQUIRE(m.size() == k.size());
        for (std::size_t i = 0; i < m.size(); ++i) {
            const double want = (1 - alpha) * a[i] + alpha * k[i];
            INFO("gradient element " << i);
            REQUIRE(m[i] == Approx(want).margin(1e-6 + 1e-4 * std::fabs(want)));
        }
    }
}

TEST_CASE("train with a teacher: the student moves toward it; a distilled run resumes bit for bit; errors",
          "[train][distill]") {
    temp_dir dir("distill");
    const corpus data(dir);
    const token_file file(data.token_path);
    const data_splits splits = split_tokens(file.size(), 24, 0.1);
    // The teacher: a model trained briefly on the corpus.
    cpu::trainer teacher_run(fresh_model(model_arch::llama), file, splits, small_options(30));
    for (int s = 0; s < 30; ++s) teacher_run.step();
    const cpu::model& teacher = teacher_run.model();

    train_options o = small_options(8);
    o.distill_weight = 1.0;  // the teacher alone
    o.distill_temperature = 2.0;
    cpu::trainer student(fresh_model(model_arch::gpt2), file, splits, o);
    student.set_teacher(teacher);
    double first = 0, last = 0;
    for (int s = 0; s < 8; ++s) {
        const step_stats st = student.step();
        CHECK(std::isfinite(st.distill));
        if (s == 0) first = st.distill;
        last = st.distill;
    }
    INFO("distillation loss " << first << " -> " << last);
    CHECK(last < 0.8 * first);

    // Resume: 4 + 4 steps equal 8 straight, with the options saved and read back.
    o.distill_weight = 0.5;
    cpu::trainer straight(fresh_model(model_arch::llama), file, splits, o);
    straight.set_teacher(teacher);
    for (int s = 0; s < 8; ++s) straight.step();
    const std::string ck = dir.file("distilled");
    {
        cpu::trainer first_half(fresh_model(model_arch::llama), file, splits, o);
        first_half.set_teacher(teacher);
        for (int s = 0; s < 4; ++s) first_half.step();
        save_training_checkpoint(ck, first_half, data.tok);
    }
    const train_options saved = read_train_options(read_training_state(ck), "state");
    CHECK(saved.distill_weight == 0.5);
    CHECK(saved.distill_temperature == 2.0);
    cpu::trainer resumed(fresh_model(model_arch::llama), file, splits, o);
    resumed.set_teacher(teacher);
    resumed.restore(ck);
    for (int s = 4; s < 8; ++s) resumed.step();
    require_same_run(straight, resumed);

    // Errors: no teacher, a teacher not asked for, another vocabulary, bad weights.
    cpu::trainer orphan(fresh_model(model_arch::llama), file, splits, o);
    CHECK_THROWS_WITH(orphan.step(), contains("needs a teacher (set_teacher)"));
    cpu::trainer plain(fresh_model(model_arch::llama), file, splits, small_options(2));
    CHECK_THROWS_WITH(plain.set_teacher(teacher), contains("distill_weight is 0"));
    model_config other = config_of(model_arch::llama);
    other.vocab_size = 301;
    const cpu::model wide(other, init_weights(other, 1));
    CHECK_THROWS_WITH(orphan.set_teacher(wide), contains("the teacher's vocabulary has 301 tokens and the student's 300"));
    train_options bad = o;
    bad.distill_weight = 1.5;
    CHECK_THROWS_WITH(cpu::trainer(fresh_model(model_arch::llama), file, splits, bad), contains("distill_weight = 1.5"));
    bad = o;
    bad.distill_temperature = 0;
    CHECK_THROWS_WITH(cpu::trainer(fresh_model(model_arch::llama), file, splits, bad),
                      contains("distill_temperature = 0 must be positive"));
}
