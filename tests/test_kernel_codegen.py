"""The Triton kernel compiled for an H100 (sm_90) without a GPU: Triton's own compiler and the
ptxas it ships build the cubin ahead of time, and the PTX shows how memory is accessed.

A full block of a tensor whose arrays are 16-byte aligned must use 128-bit loads and stores:
BLOCK elements over NUM_WARPS * 32 threads is 16 elements per thread, four ``ld.global.v4`` per
fp32 array and eight ``ld.global.v2`` per fp64 array. For centered + momentum that is 5 arrays
read (param, grad, square_avg, grad_avg, momentum_buffer) and 4 written. The other blocks (a
tensor's last, views at odd offsets) take the masked path, which must have no vector access at
all: on a misaligned view one would fault. Square root and division must be the correctly
rounded ones (``sqrt.rn``, ``div.rn``), in fp64 for fp64 params.

The compile runs in a subprocess because ``tests/conftest.py`` turns on Triton's interpreter,
under which ``@triton.jit`` yields no compilable kernel.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
PRELUDE = """
import json, re, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from optimizers.triton_kernel import BLOCK_SIZE, NUM_WARPS, rmsprop_kernel

signature = {"tensor_table": "*i64", "grad_table": "*i64", "block_table": "*i64",
             "arrivals": "*i32", "lr_pointer": "*fp32",
             **dict.fromkeys(["lr_value", "alpha", "one_minus_alpha", "log2_alpha", "eps",
                              "weight_decay", "momentum"], "fp64")}
base = dict(PARAM_DTYPE=tl.float32, STATE_DTYPE=tl.float32, MATH=tl.float32, LR_IS_TENSOR=False,
            CENTERED=False, HAS_MOMENTUM=False, NESTEROV=False, LR_IN_MOMENTUM=False,
            EPS_IN_SQRT=False, WEIGHT_DECAY=0, BIAS_CORRECTION=False, MAXIMIZE=False,
            BLOCK=BLOCK_SIZE)
signature.update(dict.fromkeys(base, "constexpr"))

def compile_for_h100(**constants):
    return triton.compile(
        ASTSource(fn=rmsprop_kernel, signature=signature, constexprs={**base, **constants}),
        target=GPUTarget("cuda", 90, 32), options={"num_warps": NUM_WARPS})
"""
COMPILE = PRELUDE + """
dtype = getattr(tl, sys.argv[1])
kernel = compile_for_h100(PARAM_DTYPE=dtype, STATE_DTYPE=dtype, MATH=dtype, LR_IS_TENSOR=True,
                          CENTERED=True, HAS_MOMENTUM=True)
ptx = kernel.asm["ptx"]
width = {"float32": "v4", "float64": "v2"}[sys.argv[1]]
print(json.dumps({"cubin": len(kernel.asm["cubin"]),
                  "vector_loads": len(re.findall(r"ld\\.global[^\\n]*\\." + width, ptx)),
                  "vector_stores": len(re.findall(r"st\\.global[^\\n]*\\." + width, ptx)),
                  "sqrt": sorted(set(re.findall(r"sqrt\\.[a-z0-9.]+", ptx))),
                  "div": sorted(set(re.findall(r"div\\.[a-z0-9.]+", ptx)))}))
"""


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("dtype, per_128_bits", [("float32", 4), ("float64", 2)])
def test_aligned_full_blocks_and_only_they_use_128_bit_accesses_on_sm90(dtype, per_128_bits):
    counts = json.loads(run_script(COMPILE, dtype).stdout.strip().splitlines()[-1])
    assert counts["cubin"] > 0
    from optimizers.triton_kernel import BLOCK_SIZE, NUM_WARPS

    per_thread_vectors = BLOCK_SIZE // (NUM_WARPS * 32) // per_128_bits
    assert counts["vector_loads"] == 5 * per_thread_vectors
    assert counts["vector_stores"] == 4 * per_thread_vectors
    suffix = {"float32": "f32", "float64": "f64"}[dtype]
    assert counts["sqrt"] == [f"sqrt.rn.{suffix}"] and counts["div"] == [f"div.rn.{suffix}"]


SPECIALISATIONS = PRELUDE + """
variants = [  # together they set every flag and every dtype pairing the optimizer launches
    dict(PARAM_DTYPE=tl.bfloat16, STATE_DTYPE=tl.float32, CENTERED=True, HAS_MOMENTUM=True,
         NESTEROV=True, LR_IS_TENSOR=True),
    dict(PARAM_DTYPE=tl.float16, STATE_DTYPE=tl.float16, EPS_IN_SQRT=True, WEIGHT_DECAY=1,
         MAXIMIZE=True),
    dict(PARAM_DTYPE=tl.bfloat16, STATE_DTYPE=tl.bfloat16, HAS_MOMENTUM=True,
         LR_IN_MOMENTUM=True, WEIGHT_DECAY=2, BIAS_CORRECTION=True, CENTERED=True),
    dict(PARAM_DTYPE=tl.float64, STATE_DTYPE=tl.float64, MATH=tl.float64, EPS_IN_SQRT=True,
         WEIGHT_DECAY=1, BIAS_CORRECTION=True, CENTERED=True, NESTEROV=True, HAS_MOMENTUM=True),
    dict(PARAM_DTYPE=tl.float64, STATE_DTYPE=tl.float32, MATH=tl.float64, LR_IS_TENSOR=True,
         MAXIMIZE=True, WEIGHT_DECAY=2),
]
for variant in variants:
    compile_for_h100(**variant)
print("compiled", len(variants))
"""


def test_every_flag_and_dtype_specialisation_compiles_for_sm90():
    assert run_script(SPECIALISATIONS).stdout.strip().endswith("compiled 5")
