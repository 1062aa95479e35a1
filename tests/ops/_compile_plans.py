"""Compile recorded SE kernel launches for real GPUs: ``python _compile_plans.py PLANS.json ARCH...``.

Run without ``TRITON_INTERPRET`` (the kernels must be Triton's JIT functions, not the interpreter's).
Each launch is specialised by Triton's own binder for the target, exactly as a launch on that GPU would
be (argument dtypes, integers equal to 1 as constants, divisibility by 16), then every distinct
specialisation is compiled to a cubin. Prints one JSON line: distinct plans, compiled count, failures,
and the scale kernel's flag sets.
"""

import json
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import MockTensor, create_function_from_signature

from senet.ops import _triton_se


def main(plans_path: str, *archs: str) -> None:
    plans = json.loads(open(plans_path).read())
    failures, compiled, distinct = [], 0, 0
    scale_flags = set()
    for arch in map(int, archs):
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        seen = set()
        for plan in plans:
            kernel = getattr(_triton_se, plan["kernel"])
            args = [
                MockTensor(getattr(torch, a["dtype"][6:])) if isinstance(a, dict) else a for a in plan["args"]
            ]
            binder = create_function_from_signature(kernel.signature, kernel.params, backend)
            bound, specialization, options = binder(*args, **plan["constexprs"])
            key = (plan["kernel"], repr(specialization))
            if key in seen:
                continue
            seen.add(key)
            if plan["kernel"] == "_scale_kernel":
                c = plan["constexprs"]
                scale_flags.add((c["HAS_RESIDUAL"], c["HAS_SHIFT"], c["RELU"]))
            options, signature, constexprs, attrs = kernel._pack_args(
                backend, plan["constexprs"], bound, specialization, options
            )
            try:
                binary = triton.compile(
                    ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__
                )
                assert binary.asm["cubin"], "no cubin"
                compiled += 1
            except Exception as error:  # noqa: BLE001 (reported with its plan)
                failures.append(f"sm_{arch} {plan['kernel']} {specialization}: {str(error)[-400:]}")
        distinct = len(seen)
    report = {
        "distinct": distinct,
        "compiled": compiled,
        "failures": failures,
        "scale_flags": sorted(scale_flags),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
