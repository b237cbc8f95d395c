# tests/cli/train_bad_options.cmake — `tinyllm train` refuses a bad option with a
# usage error (exit 2) naming the flag, before it trains a tokenizer, tokenizes the
# corpus or writes anything: its --out folder is not even made. Run by CTest as
#   cmake -DTINYLLM=<binary> -DDATA=<text file> -DWORK=<scratch dir> -P train_bad_options.cmake
file(REMOVE_RECURSE "${WORK}")

# refuse(NAME MESSAGE-REGEX OPTION...)
function(refuse name expected)
  set(out_dir "${WORK}/${name}")
  string(JOIN " " options ${ARGN})
  execute_process(COMMAND "${TINYLLM}" train --data "${DATA}" --out "${out_dir}" ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 2)
    message(FATAL_ERROR "tinyllm train ${options}: exit ${rc}, not 2 (a usage error):\n${out}${err}")
  endif()
  if(NOT "${err}" MATCHES "${expected}")
    message(FATAL_ERROR "tinyllm train ${options}: the error does not match '${expected}':\n${err}")
  endif()
  if(EXISTS "${out_dir}" OR "${out}" MATCHES "tokenizer: trained|data: ")
    message(FATAL_ERROR "tinyllm train ${options}: work was done before the option was refused:\n${out}${err}")
  endif()
endfunction()

refuse(lr "--lr must be a positive number, got -1" --lr -1)
refuse(steps "--steps must be at least 1, got 0" --steps 0)
refuse(context "--context must be at least 1, got 0" --context 0)
refuse(batch "--batch must be at least 1, got 0" --batch 0)
refuse(warmup "--warmup must not be negative, got -5" --warmup -5)
refuse(warmup_huge "--warmup must be at most 2\\^40, got 9223372036854775807" --warmup 9223372036854775807)
refuse(batch_huge "--batch 1000000000 x --context 128 is more than 2\\^31 tokens a step" --batch 1000000000)
refuse(clip "--clip must be a number >= 0 \\(0: no clipping\\), got nan" --clip nan)
refuse(weight_decay "--weight-decay must be a number >= 0, got -0.1" --weight-decay -0.1)
refuse(eval_batches "--eval-batches must be at least 1, got 0" --eval-batches 0)
refuse(eval_batches_huge "--eval-batches must be at most 2\\^40, got 9223372036854775807" --eval-batches 9223372036854775807)
refuse(layers "--d-model, --layers, --heads and --kv-heads must be positive" --layers 0)
refuse(heads "--d-model 100 is not a multiple of --heads 3" --d-model 100 --heads 3)
refuse(arch "--arch must be gpt2, llama or mixtral, got 'bogus'" --arch bogus)
refuse(vocab "--vocab-size must be at least 257" --vocab-size 10)
message(STATUS "15 bad options refused before any work")
