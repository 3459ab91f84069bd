"""Write the target config of this machine's GPU, once, for `lepjax compile` on any machine.

    python scripts/gpu_target_config.py h100.txtpb        # on a machine with the GPU (jax[cuda12])
    JAX_PLATFORMS=cpu lepjax compile --config=configs/train/llama3_8b_cpt.py --target=gpu-8 \
        --gpu_target_config=h100.txtpb                     # anywhere, with the compile-gpu extra

The file is XLA's `GpuTargetConfigProto` text for the first GPU, as XLA's GPU compiler dumps it
when it compiles a probe for that GPU (`lepjax.compile.gpu_target_config`).
"""

from __future__ import annotations

import argparse
import re

from lepjax import compile as aot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", help="the target config file to write, e.g. h100.txtpb")
    args = p.parse_args()
    text = aot.gpu_target_config()
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    kind = re.search(r'device_description_str:\s*"([^"]*)"', text)
    memory = re.search(r"\bdevice_memory_size:\s*(\d+)", text)
    print(f"wrote {args.output}: {kind.group(1) if kind else 'a GPU'}, "
          f"{int(memory.group(1)) / aot.GIB:.1f} GiB" if memory else f"wrote {args.output}")


if __name__ == "__main__":
    main()
