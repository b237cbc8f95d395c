// examples/tinyllm/tour_models.hpp — models more than one tour chapter runs.
#pragma once

#include <tinyllm/model.hpp>

namespace tinyllm_cli {

// A Llama-shaped model with vocabulary 256 (one token per byte), D = 32, 2 layers,
// 4 query heads sharing 2 key/value heads; random weights from Philox
// (tinyllm::random_model_weights: uniform in +-1/sqrt(fan_in), like nn.Linear's init).
// Defined in tour_model.cpp.
tinyllm::cpu::model tour_tiny_llama();

}  // namespace tinyllm_cli
