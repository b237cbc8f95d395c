"""PyTorch baseline for `tinyllm bench model_moe`: transformers' MixtralForCausalLM (eager
attention, its own expert loop) on mixtral_1b, the Mixtral-style shape of tinyllm's
model_moe rows: Llama-3.2-1B's shape with each MLP made 8 experts of 4096, top 2, so a token
multiplies with as many weights as in llama_1b (1.24B of 3.6B).

    python3 bench/baselines/model_moe.py --json out/model_moe_pytorch.json

Rows "model/pytorch_eager/mixtral_1b_<dtype>_<phase>_b<batch>", timed and counted as
model.py's rows are (its docstring has the details): this script is model.py run on that
one model, kept apart so that tools/gpu-check gives it its own time limit.
"""
import os
import runpy
import sys

sys.argv[1:1] = ["--models", "mixtral_1b"]
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.py"), run_name="__main__")
