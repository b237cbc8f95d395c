// tinyllm/train.hpp — the training loop: a model learns from a token file, and
// its checkpoints resume bit for bit.
//
// One optimizer step s (0, 1, ... steps - 1) is
//
//     tokens, targets = draw_batch(train split, seed, s)          (B, T), (B, T)   data.hpp
//     loss, g         = forward_backward(w, tokens, targets)        g = dL/dw         model.hpp
//     g              *= min(1, clip / (||g|| + 1e-6))              global-norm clipping
//     lr              = learning_rate_at(schedule, s)               warmup, then cosine to lr/10
//     w               = adamw_step(w, m, v, g, lr)                  decoupled weight decay
//
// with every piece the reference or blocked kernel defined elsewhere; the loop
// adds only the order and the bookkeeping. The validation loss is the mean
// loss over `eval_batches` windows of the held-out split, drawn with the same
// seed at batch numbers 0, 1, ...: the same windows at every evaluation, so
// successive values are comparable.
//
// What a run's future depends on is the weights, AdamW's two moments and step
// count, and where the batches come from. The batches are a pure function of
// (seed, step) — Philox is counter-based — so the random state of a run is its
// seed and the next step number; there is no generator state to save. A
// checkpoint (save_training_checkpoint) therefore holds, beside the model in
// Hugging Face's layout (config.json, model.safetensors, tokenizer.json,
// generation_config.json):
//
//     optimizer.safetensors   m and v of every parameter, as "<name>.exp_avg" and
//                             "<name>.exp_avg_sq" (PyTorch's names), float32
//     training_state.json     the step, the options, the data's fingerprint and
//                             split, the seed and stream of the batches, and an
//                             FNV-1a hash of the two .safetensors files
//
// Each file is written beside its name and renamed into place; training_state.json
// goes last, so a crash while saving leaves either the older checkpoint or a
// set whose hashes do not match — which trainer::restore reports instead of
// resuming from a mixture of two steps. Restoring a checkpoint and taking the
// remaining steps gives the same weights, bit for bit, as taking all the steps
// in one run (tests/test_train.cpp).
#pragma once

#include <tinyllm/data.hpp>
#include <tinyllm/detail/files.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/optimizer.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/safetensors.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace tinyllm {

// What a run is: everything that decides the weights it ends with (given the
// model's initial weights and the token file).
struct train_options {
    index_t batch = 16;               // B: windows per step
    index_t context = 128;            // T: tokens per window
    std::int64_t steps = 1000;        // optimizer steps in the whole run
    double lr = 1e-3;                 // the schedule's peak; it decays toward lr / 10, reached at step `steps`
    std::int64_t warmup = 100;        // steps of linear warmup
    double weight_decay = 0.1;        // AdamW's, on matrices only (default_weight_decay)
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
    double clip = 1.0;                // the gradients' global norm is clipped to this (0: no clipping)
    std::uint64_t seed = 0;           // the batches' Philox seed (and the initial weights', see init_weights)
    index_t eval_batches = 8;         // validation windows per evaluation (batch numbers 0 .. eval_batches - 1)
    double aux_weight = 0.0;          // Mixtral: the load-balancing loss's weight (config.router_aux_loss_coef)
    // Distillation (trainer::set_teacher): the loss is (1 - alpha) CE + alpha tau^2 KL(teacher || student)
    // at temperature tau (cpu::distillation_loss). alpha = 0: no teacher.
    double distill_weight = 0.0;      // alpha, in [0, 1]
    double distill_temperature = 1.0; // tau > 0
};

// The schedule of a run: linear warmup to lr, cosine decay to lr / 10 at step
// `steps`, one past the last (nanoGPT's, <tinyllm/optimizer.hpp>).
inline lr_schedule schedule_of(const train_options& o) {
    return {.max_lr = o.lr, .min_lr = o.lr / 10, .warmup_steps = o.warmup,
            .decay_steps = std::max<std::int64_t>(o.steps, o.warmup + 1)};
}

// The largest step count and warmup a run may have (2^40: far past any run, and
// the schedule's step + 1 stays exact), and the most tokens a step may draw (2^31).
inline constexpr std::int64_t train_max_steps = std::int64_t{1} << 40;
inline constexpr std::int64_t train_max_step_tokens = std::int64_t{1} << 31;

inline void expect_train_options(const train_options& o) {
    TINYLLM_EXPECT(o.batch >= 1, "train: batch = ", o.batch, " must be at least 1");
    TINYLLM_EXPECT(o.context >= 1, "train: context = ", o.context, " must be at least 1");
    TINYLLM_EXPECT(o.batch <= train_max_step_tokens / o.context, "train: batch = ", o.batch, " of context ", o.context,
                   " is more than 2^31 tokens a step");
    TINYLLM_EXPECT(o.steps >= 1 && o.steps <= train_max_steps, "train: steps = ", o.steps, " must be in [1, 2^40]");
    TINYLLM_EXPECT(o.warmup <= train_max_steps, "train: warmup = ", o.warmup, " must be at most 2^40");
    TINYLLM_EXPECT(std::isfinite(o.lr) && o.lr > 0, "train: lr = ", o.lr, " must be positive");
    TINYLLM_EXPECT(o.warmup >= 0, "train: warmup = ", o.warmup, " must not be negative");
    TINYLLM_EXPECT(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "train: weight_decay = ", o.weight_decay,
                   " must not be negative");
    TINYLLM_EXPECT(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1, "train: betas (", o.beta1, ", ", o.beta2,
                   ") must be in [0, 1)");
    TINYLLM_EXPECT(std::isfinite(o.eps) && o.eps > 0, "train: eps = ", o.eps, " must be positive and finite");
    // The optimizer's own checks (each setting a float, as its CUDA kernels take them), before the run.
    detail::expect_adamw_config(
        {.lr = o.lr, .beta1 = o.beta1, .beta2 = o.beta2, .eps = o.eps, .weight_decay = o.weight_decay});
    TINYLLM_EXPECT(std::isfinite(o.clip) && o.clip >= 0, "train: clip = ", o.clip, " must be >= 0 (0: no clipping)");
    TINYLLM_EXPECT(o.eval_batches >= 1 && o.eval_batches <= train_max_steps, "train: eval_batches = ", o.eval_batches,
                   " must be at least 1 and at most 2^40");
    TINYLLM_EXPECT(std::isfinite(o.aux_weight) && o.aux_weight >= 0, "train: aux_weight = ", o.aux_weight,
                   " must be finite and not negative");
    TINYLLM_EXPECT(o.distill_weight >= 0 && o.distill_weight <= 1, "train: distill_weight = ", o.distill_weight,
                   " must be in [0, 1]");
    TINYLLM_EXPECT(o.distill_temperature >= detail::distillation_temperature_min &&
                       o.distill_temperature <= detail::distillation_temperature_max,
                   "train: distill_temperature = ", o.distill_temperature, " must be positive, in [1e-3, 1e3]");
}

// Initial weights for training `c` from scratch, GPT-2's recipe (as nanoGPT
// and llm.c use it): every matrix and embedding normal with standard deviation
// 0.02, the matrices that write into the residual stream (attention's output
// projection and the FFN's last matrix) 0.02 / sqrt(2 * layers) so that the
// stream's variance does not grow with depth; norm weights 1, biases 0.
// Tensor k of the weights is drawn from Philox with seed fnv1a64(its name) ^ seed.
inline model_weights init_weights(const model_config& c, std::uint64_t seed) {
    model_weights w = random_model_weights(c, seed);  // the shapes, the ones and the zeros
    const float base = 0.02f, residual = base / std::sqrt(2.0f * static_cast<float>(std::max<index_t>(c.num_layers, 1)));
    detail::for_each_weight(w, w, [&](const std::string& name, auto& t, auto&) {
        if (t.size() == 0 || t.shape().rank() < 2) return;  // norms and biases keep random_model_weights' ones and zeros
        const bool into_stream = name.ends_with(".wo") || name.ends_with(".proj") || name.ends_with(".down") ||
                                 name.ends_with("experts.w2");
        cpu::fill_normal(t.view(), fnv1a64(name) ^ seed, 0.0f, into_stream ? residual : base);
    });
    return w;
}

// What one step did.
struct step_stats {
    std::int64_t step = 0;      // the step taken (0-based); steps_done() is now step + 1
    double loss = 0;            // the batch's mean next-token cross-entropy (before the update)
    double aux = 0;             // Mixtral: the load-balancing loss
    double distill = 0;         // with a teacher: tau^2 KL(teacher || student), the batch's mean
    double grad_norm = 0;       // the gradients' global norm before clipping
    double lr = 0;              // the learning rate used
    double seconds = 0;         // wall time of the step
};

// Computes the loss and the gradients of one batch: model.forward_backward on
// the CPU (the default), or the CUDA model's (tinyllm train --device cuda).
using gradient_function = std::function<loss_terms(const cpu::model&, model_weights& grads,
                                                   tensor_view<const token_id, 2> tokens,
                                                   tensor_view<const token_id, 2> targets, const backward_options&)>;

namespace cpu {

// A run in progress: the model, its gradients, AdamW's state, the data. It
// holds views into the model's weights, so it is neither copied nor moved.
class trainer {
public:
    trainer(cpu::model m, const token_file& data, data_splits splits, train_options options,
            gradient_function gradients = {})
        : model_(std::move(m)), data_(data), splits_(splits), options_(options), gradients_(std::move(gradients)) {
        expect_train_options(options_);
        TINYLLM_EXPECT(model_.weights_dtype() == cpu::model::weight_dtype::float32,
                       "trainer: the model must hold float32 weights (training updates them in place)");
        TINYLLM_EXPECT(data_.vocab_size() <= model_.config().vocab_size, "trainer: the token file's vocabulary (",
                       data_.vocab_size(), " ids) is larger than the model's (", model_.config().vocab_size,
                       "): the tokenizer does not belong to this model");
        const auto window = static_cast<std::uint64_t>(options_.context) + 1;
        TINYLLM_EXPECT(splits_.train_end - splits_.train_begin >= window && splits_.val_end - splits_.val_begin >= window,
                       "trainer: the training split (", splits_.train_end - splits_.train_begin,
                       " tokens) and the validation split (", splits_.val_end - splits_.val_begin,
                       " tokens) must each hold a window of context + 1 = ", window, " tokens");
        TINYLLM_EXPECT(model_.config().arch != model_arch::gpt2 || options_.context <= model_.config().max_positions,
                       "trainer: context ", options_.context, " is longer than GPT-2's position table (",
                       model_.config().max_positions, ")");
        grads_ = zeros_like(model_.weights());
        params_ = model_parameters(model_.weights(), grads_);
        state_ = make_adamw_state(params_);
        tokens_ = tensor<token_id, 2>(extents<2>{options_.batch, options_.context});
        targets_ = tensor<token_id, 2>(extents<2>{options_.batch, options_.context});
    }
    trainer(const trainer&) = delete;
    trainer& operator=(const trainer&) = delete;

    // Take the next step. A non-finite loss or gradient stops the run with an
    // error naming the step and the first non-finite value; the weights are
    // then those before the step.
    step_stats step() {
        TINYLLM_EXPECT(step_ < options_.steps, "trainer::step: the run's ", options_.steps, " steps are done");
        const auto start = std::chrono::steady_clock::now();
        step_stats s;
        s.step = step_;
        draw_batch(tokens_.view(), targets_.view(), data_, splits_.train_begin, splits_.train_end, options_.seed,
                   static_cast<std::uint64_t>(step_));
        backward_options bo;
        bo.aux_weight = model_.config().arch == model_arch::mixtral ? options_.aux_weight : 0.0;
        tensor<float, 2> teacher_logits;  // (B * T, V)
        if (options_.distill_weight > 0) {
            TINYLLM_EXPECT(teacher_, "trainer::step: distill_weight = ", options_.distill_weight,
                           " needs a teacher (set_teacher)");
            teacher_logits = teacher_forward(tokens_.view());
            bo.teacher_logits = teacher_logits.view();
            bo.lm_weight = 1.0 - options_.distill_weight;
            bo.distill_weight = options_.distill_weight;
            bo.distill_temperature = options_.distill_temperature;
        }
        loss_terms loss;
        try {
            if (gradients_) {
                // The function may give its gradients new tensors (the CUDA model downloads
                // into fresh ones); the optimizer's views point into grads_, so they are copied there.
                model_weights fresh;
                loss = gradients_(model_, fresh, tokens_.view(), targets_.view(), bo);
                tinyllm::detail::for_each_weight(grads_, fresh, [](const std::string& name, auto& to, const auto& from) {
                    TINYLLM_EXPECT(to.shape() == from.shape(), "the gradient of '", name, "' came back with shape ",
                                   to_string(from.shape()), ", not ", to_string(to.shape()));
                    std::copy(from.values().begin(), from.values().end(), to.values().begin());
                });
            } else {
                loss = model_.forward_backward(grads_, tokens_.view(), targets_.view(), bo);
            }
        } catch (const error& e) {
            TINYLLM_FAIL("training stopped at step ", step_, ": ", e.what());
        }
        if (!std::isfinite(loss.total)) {
            const std::string bad = cpu::detail::first_non_finite(grads_);
            TINYLLM_FAIL("training stopped at step ", step_, ": the loss is ", loss.total,
                         bad.empty() ? std::string() : "; first non-finite gradient: " + bad);
        }
        s.loss = loss.lm;
        s.aux = loss.aux;
        s.distill = loss.distill;
        s.grad_norm = options_.clip > 0 ? clip_grad_norm(params_, options_.clip, step_) : grad_norm(params_);
        s.lr = learning_rate_at(schedule_of(options_), step_);
        adamw_config config{.lr = s.lr, .beta1 = options_.beta1, .beta2 = options_.beta2, .eps = options_.eps,
                            .weight_decay = options_.weight_decay};
        adamw_step(params_, state_, config);
        ++step_;
        s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        return s;
    }

    // The mean next-token loss over the validation windows (batch numbers
    // 0 .. eval_batches - 1 of the validation split): forward passes only, one
    // window at a time.
    double evaluate() const {
        const index_t T = options_.context;
        tensor<token_id, 2> tokens(extents<2>{1, T}), targets(extents<2>{1, T});
        double sum = 0;
        for (index_t b = 0; b < options_.eval_batches; ++b) {
            draw_batch(tokens.view(), targets.view(), data_, splits_.val_begin, splits_.val_end, options_.seed,
                       static_cast<std::uint64_t>(b));
            auto session = model_.new_session(T);
            const auto logits = model_.forward(session, std::span<const token_id>(tokens.data(), static_cast<std::size_t>(T)));
            sum += cross_entropy(tensor_view<float, 2>(), logits.view(),
                                 tensor_view<const token_id, 1>(targets.data(), {T}));
        }
        return sum / static_cast<double>(options_.eval_batches);
    }

    // Distill from `teacher` (it must outlive the trainer): a model over the same
    // vocabulary whose logits for each batch are the soft targets. Needs
    // options.distill_weight > 0, and the CPU's forward_backward (no gradient function).
    void set_teacher(const cpu::model& teacher) {
        TINYLLM_EXPECT(options_.distill_weight > 0, "trainer::set_teacher: distill_weight is 0, so a teacher would "
                                                    "not be used");
        TINYLLM_EXPECT(!gradients_, "trainer::set_teacher: distillation runs on the CPU model's forward_backward, "
                                    "not a gradient function (tinyllm train --device cuda)");
        TINYLLM_EXPECT(teacher.config().vocab_size == model_.config().vocab_size, "trainer::set_teacher: the teacher's "
                       "vocabulary has ", teacher.config().vocab_size, " tokens and the student's ",
                       model_.config().vocab_size, "; they must share the tokenizer");
        TINYLLM_EXPECT(teacher.config().arch != model_arch::gpt2 || options_.context <= teacher.config().max_positions,
                       "trainer::set_teacher: context ", options_.context, " is longer than the teacher's GPT-2 "
                       "position table (", teacher.config().max_positions, ")");
        teacher_ = &teacher;
    }

    std::int64_t steps_done() const { return step_; }
    const train_options& options() const { return options_; }
    const data_splits& splits() const { return splits_; }
    const token_file& data() const { return data_; }
    const cpu::model& model() const { return model_; }
    const std::vector<adamw_state>& optimizer_state() const { return state_; }

    // Continue the run saved in `dir` (save_training_checkpoint): the weights
    // from model.safetensors, AdamW's state from optimizer.safetensors, the step
    // from training_state.json. The checkpoint must be of this model's config,
    // these options (steps aside: a run may be lengthened or shortened, which
    // changes the schedule from there on) and this token file; anything else
    // is an error that names the difference.
    void restore(const std::string& dir);

private:
    // The teacher's logits for every window of the batch, (B * T, V) in row order.
    tensor<float, 2> teacher_forward(tensor_view<const token_id, 2> tokens) const {
        const index_t B = tokens.extent(0), T = tokens.extent(1), V = model_.config().vocab_size;
        tensor<float, 2> out(extents<2>{B * T, V});
        for (index_t b = 0; b < B; ++b) {
            auto session = teacher_->new_session(T);
            const auto logits = teacher_->forward(session, std::span<const token_id>(&tokens(b, 0), static_cast<std::size_t>(T)));
            std::copy(logits.values().begin(), logits.values().end(), out.data() + b * T * V);
        }
        return out;
    }

    const cpu::model* teacher_ = nullptr;
    cpu::model model_;
    const token_file& data_;
    data_splits splits_;
    train_options options_;
    gradient_function gradients_;
    model_weights grads_;
    std::vector<named_parameter<float>> params_;
    std::vector<adamw_state> state_;
    tensor<token_id, 2> tokens_, targets_;
    std::int64_t step_ = 0;
};

}  // namespace cpu

namespace detail {

// x as 16 hex digits.
inline std::string hex64(std::uint64_t x) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(x));
    return buf;
}

// The FNV-1a hash of a whole file, as 16 hex digits.
inline std::string file_fingerprint(const std::string& path) {
    const mapped_file f(path);
    return hex64(fnv1a64(std::string_view(reinterpret_cast<const char*>(f.data()), f.size())));
}

// The options as JSON fields (one per line), in a fixed order; doubles as the
// shortest text that reads back to the same value.
inline std::vector<std::pair<std::string, std::string>> train_option_fields(const train_options& o) {
    const auto n = [](auto v) { return std::to_string(v); };
    const auto f = [](double v) { return json_number(v); };
    std::vector<std::pair<std::string, std::string>> fields = {{"batch", n(o.batch)},       {"context", n(o.context)}, {"steps", n(o.steps)},
            {"lr", f(o.lr)},             {"warmup", n(o.warmup)},   {"weight_decay", f(o.weight_decay)},
            {"beta1", f(o.beta1)},       {"beta2", f(o.beta2)},     {"eps", f(o.eps)},
            {"clip", f(o.clip)},         {"seed", n(o.seed)},       {"eval_batches", n(o.eval_batches)},
            {"aux_weight", f(o.aux_weight)}};
    if (o.distill_weight > 0) {  // only a distilled run has them (earlier checkpoints read as alpha = 0)
        fields.emplace_back("distill_weight", f(o.distill_weight));
        fields.emplace_back("distill_temperature", f(o.distill_temperature));
    }
    return fields;
}

}  // namespace detail

// generation_config.json: what transformers' generate() reads for the end of text
// (the model's eos_token_ids: the tokenizer's <|endoftext|>, when it has one).
inline std::string generation_config_json(const model_config& c) {
    std::string j = "{\n  \"_from_model_config\": true";
    if (!c.eos_token_ids.empty()) {
        j += ",\n  \"bos_token_id\": " + std::to_string(c.eos_token_ids.front());
        j += ",\n  \"eos_token_id\": " + std::to_string(c.eos_token_ids.front());
    }
    return j + "\n}\n";
}

// tokenizer_config.json: AutoTokenizer is to build the tokenizer from tokenizer.json
// exactly as written (PreTrainedTokenizerFast). Without it, transformers picks the
// architecture's own class, which for GPT-2 replaces the pre-tokenizer with GPT-2's
// pattern and splits text differently from the tokenizer the model was trained with.
inline std::string tokenizer_config_json(const model_config& c, const tokenizer& tok) {
    std::string j = "{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n  \"model_max_length\": " +
                    std::to_string(c.max_positions);
    if (!c.eos_token_ids.empty() && static_cast<std::size_t>(c.eos_token_ids.front()) < tok.vocab_size()) {
        const std::string eos(tok.token_bytes(c.eos_token_ids.front()));
        if (detail::is_valid_utf8(eos) && eos.find_first_of("\"\\") == std::string::npos)
            j += ",\n  \"bos_token\": \"" + eos + "\",\n  \"eos_token\": \"" + eos + "\"";
    }
    return j + "\n}\n";
}

// Write the run's checkpoint to `dir` (created if needed): the model as Hugging
// Face reads it (config.json, model.safetensors, generation_config.json, and
// tokenizer.json and tokenizer_config.json from `tok`), optimizer.safetensors and
// training_state.json.
// Every file is first written in full beside its name (NAME.tmp); only when all
// are written are they renamed into place, training_state.json last. A full
// disk or a crash while writing leaves the previous checkpoint untouched; one
// between the renames leaves hashes that do not match, which restore reports.
inline void save_training_checkpoint(const std::string& dir, const cpu::trainer& t, const tokenizer& tok) {
    namespace fs = std::filesystem;
    const model_config& c = t.model().config();
    TINYLLM_EXPECT(tok.vocab_size() <= static_cast<std::size_t>(c.vocab_size), "save_training_checkpoint: the tokenizer has ",
                   tok.vocab_size(), " tokens but the model's vocabulary ", c.vocab_size);
    std::error_code ec;
    fs::create_directories(dir, ec);
    TINYLLM_EXPECT(!ec, "save_training_checkpoint: cannot create the directory '", dir, "': ", ec.message());
    const auto path = [&](const std::string& name) { return (fs::path(dir) / name).string(); };
    std::vector<std::string> written;  // the files, in the order they are renamed into place
    const auto write_tmp = [&](const std::string& name, std::string_view bytes) {
        std::ofstream out(path(name) + ".tmp", std::ios::binary);
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        out.close();
        TINYLLM_EXPECT(out.good(), "save_training_checkpoint: cannot write '", path(name),
                       ".tmp' (disk full, or no permission?); the previous checkpoint is unchanged");
        written.push_back(name);
    };
    try {
        save_checkpoint_tensors(path("model.safetensors") + ".tmp", checkpoint_tensors(c, t.model().weights()));
        written.push_back("model.safetensors");
        std::vector<safetensors_entry> moments;
        for (const cpu::adamw_state& s : t.optimizer_state()) {
            moments.emplace_back(s.name + ".exp_avg", s.m.view());
            moments.emplace_back(s.name + ".exp_avg_sq", s.v.view());
        }
        save_safetensors(path("optimizer.safetensors") + ".tmp", moments,
                         {{"format", "tinyllm AdamW state"}, {"step", std::to_string(t.steps_done())}});
        written.push_back("optimizer.safetensors");
        write_tmp("config.json", model_config_json(c));
        write_tmp("generation_config.json", generation_config_json(c));
        write_tmp("tokenizer.json", hf_tokenizer_json(tok));
        write_tmp("tokenizer_config.json", tokenizer_config_json(c, tok));

        std::string j = "{\n  \"format\": \"tinyllm training state\",\n  \"version\": 1,\n";
        j += "  \"step\": " + std::to_string(t.steps_done()) + ",\n  \"options\": {\n";
        const auto fields = detail::train_option_fields(t.options());
        for (std::size_t i = 0; i < fields.size(); ++i)
            j += "    \"" + fields[i].first + "\": " + fields[i].second + (i + 1 < fields.size() ? ",\n" : "\n");
        const data_splits& s = t.splits();
        j += "  },\n  \"data\": {\"fingerprint\": \"" + detail::hex64(t.data().fingerprint()) +
             "\", \"tokens\": " + std::to_string(t.data().size()) + ", \"train\": [" + std::to_string(s.train_begin) +
             ", " + std::to_string(s.train_end) + "], \"validation\": [" + std::to_string(s.val_begin) + ", " +
             std::to_string(s.val_end) + "]},\n";
        j += "  \"batches\": {\"generator\": \"philox4x32-10\", \"seed\": " + std::to_string(t.options().seed) +
             ", \"stream\": " + std::to_string(data_stream) + ", \"next_step\": " + std::to_string(t.steps_done()) +
             "},\n";
        j += "  \"files\": {\"model.safetensors\": \"" + detail::file_fingerprint(path("model.safetensors") + ".tmp") +
             "\", \"optimizer.safetensors\": \"" + detail::file_fingerprint(path("optimizer.safetensors") + ".tmp") +
             "\"}\n}\n";
        write_tmp("training_state.json", j);
    } catch (...) {
        for (const std::string& name : {std::string("model.safetensors"), std::string("optimizer.safetensors"),
                                        std::string("config.json"), std::string("generation_config.json"),
                                        std::string("tokenizer.json"), std::string("tokenizer_config.json"),
                                        std::string("training_state.json")})
            fs::remove(path(name) + ".tmp", ec);
        throw;
    }
    for (const std::string& name : written)
        detail::rename_into_place(path(name) + ".tmp", path(name), "save_training_checkpoint");
}

// The parsed and validated training_state.json of a checkpoint (its step,
// options, data split, ...), for callers that need it before building a trainer.
inline json::value read_training_state(const std::string& dir) {
    const std::string path = (std::filesystem::path(dir) / "training_state.json").string();
    TINYLLM_EXPECT(std::filesystem::exists(path), "'", dir, "' holds no training_state.json: not a checkpoint that ",
                   "tinyllm train wrote (or written by an interrupted save)");
    json::value state = json::parse(detail::read_text_file(path), path);
    TINYLLM_EXPECT(state.is_object() && state.find("format") && state.at("format").is_string() &&
                       state.at("format").as_string() == "tinyllm training state",
                   path, ": not a tinyllm training state");
    const json::value* version = state.find("version");
    TINYLLM_EXPECT(version && version->is_number() && version->to_int64() == 1, path, ": version ",
                   !version               ? "missing"
                   : version->is_number() ? version->number_text()
                                          : "not a number",
                   " (this reader knows 1)");
    return state;
}

// The options a checkpoint was trained with.
inline train_options read_train_options(const json::value& state, const std::string& where) {
    const json::value* o = state.find("options");
    TINYLLM_EXPECT(o && o->is_object(), where, ": no \"options\" object");
    const auto num = [&](const char* key) -> const json::value& {
        const json::value* v = o->find(key);
        TINYLLM_EXPECT(v && v->is_number(), where, ": options.", key, " is missing or not a number");
        return *v;
    };
    const auto integer = [&](const char* key) {
        const std::optional<std::int64_t> v = num(key).to_int64();
        TINYLLM_EXPECT(v.has_value(), where, ": options.", key, " = ", num(key).number_text(),
                       " is not a 64-bit integer");
        return *v;
    };
    train_options t;
    t.batch = integer("batch");
    t.context = integer("context");
    t.steps = integer("steps");
    t.lr = num("lr").as_double();
    t.warmup = integer("warmup");
    t.weight_decay = num("weight_decay").as_double();
    t.beta1 = num("beta1").as_double();
    t.beta2 = num("beta2").as_double();
    t.eps = num("eps").as_double();
    t.clip = num("clip").as_double();
    {  // the seed is any 64-bit unsigned number, beyond as_int64's range
        const std::string& text = num("seed").number_text();
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), t.seed);
        TINYLLM_EXPECT(ec == std::errc() && end == text.data() + text.size(), where, ": options.seed ", text,
                       " is not an unsigned 64-bit integer");
    }
    t.eval_batches = integer("eval_batches");
    t.aux_weight = num("aux_weight").as_double();
    if (o->find("distill_weight")) {
        t.distill_weight = num("distill_weight").as_double();
        t.distill_temperature = num("distill_temperature").as_double();
    }
    return t;
}

inline void cpu::trainer::restore(const std::string& dir) {
    namespace fs = std::filesystem;
    const std::string state_path = (fs::path(dir) / "training_state.json").string();
    const json::value state = read_training_state(dir);
    const auto fail = [&](const auto&... why) { TINYLLM_FAIL("cannot resume from '", dir, "': ", why...); };

    // The options: the same as this run's, but for the number of steps.
    const train_options saved = read_train_options(state, state_path);
    // (A distilled run has two more fields than one that is not: the lists may differ in length.)
    const auto mine = tinyllm::detail::train_option_fields(options_), theirs = tinyllm::detail::train_option_fields(saved);
    const auto value_in = [](const auto& fields, const std::string& name) -> std::string {
        for (const auto& [n, v] : fields)
            if (n == name) return v;
        return "(not set)";
    };
    for (const auto* list : {&mine, &theirs})
        for (const auto& [name, value] : *list)
            if (name != "steps" && value_in(mine, name) != value_in(theirs, name))
                fail("it was trained with ", name, " = ", value_in(theirs, name), ", this run has ",
                     value_in(mine, name));

    // The model: the same config (its config.json text), weights of the saved step.
    const std::string config_text = tinyllm::detail::read_text_file((fs::path(dir) / "config.json").string());
    if (config_text != model_config_json(model_.config()))
        fail("its config.json describes another model than this run's (", dir, "/config.json against:\n",
             model_config_json(model_.config()), ")");
    const json::value* files = state.find("files");
    if (!files || !files->is_object()) fail("training_state.json has no \"files\" hashes");
    for (const char* name : {"model.safetensors", "optimizer.safetensors"}) {
        const std::string p = (fs::path(dir) / name).string();
        if (!fs::exists(p)) fail(name, " is missing");
        const json::value* h = files->find(name);
        if (!h || !h->is_string() || h->as_string() != tinyllm::detail::file_fingerprint(p))
            fail(name, " is not the file training_state.json was saved with (an interrupted save, or a file "
                 "replaced by hand): its hash differs");
    }

    // The data: the same token file and split.
    const json::value* data = state.find("data");
    if (!data || !data->is_object() || !data->find("fingerprint") || !data->find("train") || !data->find("validation"))
        fail("training_state.json has no \"data\" section");
    if (!data->at("fingerprint").is_string()) fail("training_state.json: data.fingerprint is not a string");
    if (data->at("fingerprint").as_string() != tinyllm::detail::hex64(data_.fingerprint()))
        fail("it was trained on other data (token-file fingerprint ", data->at("fingerprint").as_string(),
             ", this run's ", tinyllm::detail::hex64(data_.fingerprint()), ")");
    // A split is [begin, end): two whole numbers of tokens.
    const auto split = [&](const char* key) {
        const json::value& v = data->at(key);
        std::optional<std::int64_t> begin, end;
        if (v.is_array() && v.size() == 2 && v.at(0).is_number() && v.at(1).is_number())
            begin = v.at(0).to_int64(), end = v.at(1).to_int64();
        if (!begin || !end || *begin < 0 || *end < 0)
            fail("training_state.json: data.", key, " is not [begin, end], two token offsets");
        return std::pair<std::uint64_t, std::uint64_t>(static_cast<std::uint64_t>(*begin),
                                                       static_cast<std::uint64_t>(*end));
    };
    const auto tr = split("train"), va = split("validation");
    if (tr.first != splits_.train_begin || tr.second != splits_.train_end || va.first != splits_.val_begin ||
        va.second != splits_.val_end)
        fail("its train/validation split differs from this run's (another --validation fraction?)");

    const json::value* saved_step = state.find("step");
    const std::optional<std::int64_t> at_step =
        saved_step && saved_step->is_number() ? saved_step->to_int64() : std::nullopt;
    if (!at_step) fail("training_state.json: \"step\" is missing or not an integer");
    const std::int64_t step = *at_step;
    if (step < 0 || step > options_.steps) fail("it was saved at step ", step, ", beyond this run's ", options_.steps, " steps");

    // Everything checked: load the weights and the moments into place (the
    // optimizer's parameter views keep pointing at the same tensors).
    const cpu::model saved_model = cpu::model::load(dir);
    tinyllm::detail::for_each_weight(model_.weights(), saved_model.weights(), [&](const std::string& name, auto& mine_t, const auto& from) {
        if (mine_t.shape() != from.shape()) fail("'", name, "' has shape ", to_string(from.shape()), ", not ", to_string(mine_t.shape()));
        std::copy(from.values().begin(), from.values().end(), mine_t.values().begin());
    });
    const safetensors_file moments((fs::path(dir) / "optimizer.safetensors").string());
    for (adamw_state& s : state_) {
        for (auto [suffix, dst] : {std::pair<const char*, tensor<float, 1>*>{".exp_avg", &s.m}, {".exp_avg_sq", &s.v}}) {
            const safetensors_tensor* t = moments.find(s.name + suffix);
            if (!t) fail("optimizer.safetensors has no '", s.name, suffix, "'");
            if (t->dtype != st_dtype::f32 || t->numel() != dst->size())
                fail("optimizer.safetensors: '", s.name, suffix, "' is not ", dst->size(), " float32 values");
            std::memcpy(dst->data(), t->data, static_cast<std::size_t>(t->bytes));
        }
        s.step = step;
    }
    step_ = step;
}

}  // namespace tinyllm
