#!/bin/bash
# vLLM's SageMaker entrypoint, as vLLM's `vllm-sagemaker` image target runs it (vllm-project/vllm,
# examples/online_serving/sagemaker-entrypoint.sh, Apache-2.0): the server listens on 8080, as SageMaker requires, and
# every SM_VLLM_FOO_BAR=value in the environment becomes `--foo-bar value` of `vllm serve`; an empty value gives the
# bare flag `--foo-bar`. One change: SM_VLLM_MODEL becomes the positional model argument, not `--model` (which
# `vllm serve` has deprecated for removal). tuneplane sets these variables (tuneplane/logic/deploy/serving.py).
PREFIX="SM_VLLM_"
ARG_PREFIX="--"

ARGS=(--port 8080)
if [ -n "${SM_VLLM_MODEL:-}" ]; then
    ARGS=("${SM_VLLM_MODEL}" "${ARGS[@]}")
fi

while IFS='=' read -r key value; do
    [ "$key" = "${PREFIX}MODEL" ] && continue
    arg_name=$(echo "${key#"${PREFIX}"}" | tr '[:upper:]' '[:lower:]' | tr '_' '-')
    ARGS+=("${ARG_PREFIX}${arg_name}")
    if [ -n "$value" ]; then
        ARGS+=("$value")
    fi
done < <(env | grep "^${PREFIX}")

exec vllm serve "${ARGS[@]}"
