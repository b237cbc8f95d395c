# tests/cli/train_resume.cmake — `tinyllm train` stopped half-way and resumed ends
# with the same model, byte for byte, as the run taken straight through; and a
# resume with another option is refused with its reason. Run by CTest as
#   cmake -DTINYLLM=<binary> -DDATA=<text file> -DWORK=<scratch dir> -P train_resume.cmake
file(REMOVE_RECURSE "${WORK}")
set(common --data "${DATA}" --vocab-size 300 --layers 2 --d-model 32 --heads 4 --kv-heads 2 --context 32
           --batch 4 --steps 8 --warmup 2 --eval-every 4 --eval-batches 2 --sample-tokens 4 --threads 1)

function(run expect_ok)
  execute_process(COMMAND "${TINYLLM}" train ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(last_output "${out}${err}" PARENT_SCOPE)
  if(expect_ok AND NOT rc EQUAL 0)
    message(FATAL_ERROR "tinyllm train ${ARGN} failed (${rc}):\n${out}${err}")
  endif()
  if(NOT expect_ok AND rc EQUAL 0)
    message(FATAL_ERROR "tinyllm train ${ARGN} should have failed:\n${out}${err}")
  endif()
endfunction()

run(TRUE ${common} --out "${WORK}/straight")
run(TRUE ${common} --out "${WORK}/halves" --stop-after 4)
if(NOT last_output MATCHES "stopped after step 4 of 8")
  message(FATAL_ERROR "--stop-after 4 did not stop after step 4:\n${last_output}")
endif()
run(TRUE --resume "${WORK}/halves" --eval-every 4 --sample-tokens 4 --threads 1)
if(NOT last_output MATCHES "resuming .* at step 4 of 8")
  message(FATAL_ERROR "--resume did not continue from step 4:\n${last_output}")
endif()
foreach(f model.safetensors optimizer.safetensors)
  execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${WORK}/straight/${f}" "${WORK}/halves/${f}"
                  RESULT_VARIABLE differ)
  if(differ)
    message(FATAL_ERROR "${f}: 8 steps straight and 4 + resume + 4 differ")
  endif()
endforeach()
# The log holds each step once, whichever way the run went.
file(STRINGS "${WORK}/halves/log.jsonl" lines REGEX "\"loss\"")
list(LENGTH lines n)
if(NOT n EQUAL 8)
  message(FATAL_ERROR "log.jsonl of the resumed run holds ${n} training steps, not 8")
endif()

# The evaluations and their samples too (the same prompt, the text's first words, before and
# after the resume; the evaluation at the checkpoint's step kept once).
file(STRINGS "${WORK}/straight/log.jsonl" straight_samples REGEX "\"sample\"")
file(STRINGS "${WORK}/halves/log.jsonl" halves_samples REGEX "\"sample\"")
if(NOT straight_samples STREQUAL halves_samples)
  message(FATAL_ERROR "the resumed run's samples differ from the straight run's:\n${straight_samples}\n---\n${halves_samples}")
endif()

# Resuming with another learning rate, or training afresh over a run, is refused.
run(FALSE --resume "${WORK}/halves" --lr 0.5)
if(NOT last_output MATCHES "--lr 0.5: the run in .* was trained with 0.002")
  message(FATAL_ERROR "resume with another --lr: unexpected message:\n${last_output}")
endif()
run(FALSE ${common} --out "${WORK}/halves")
if(NOT last_output MATCHES "already holds a training run")
  message(FATAL_ERROR "training over an existing run: unexpected message:\n${last_output}")
endif()
file(REMOVE_RECURSE "${WORK}")
message(STATUS "train_resume: 8 steps straight = 4 + resume + 4, byte for byte")
