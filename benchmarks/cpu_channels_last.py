"""A PyTorch-only reproduction of the CPU crash behind selfkd's contiguous-batches rule (for an upstream report).

oneDNN's AVX2 kernel for the weight gradient of a 1×1 stride-2 convolution crashes ("Segmentation fault",
"double free or corruption", "Bus error") or hangs on channels_last activations with few channels. Processors with
AVX-512 take other kernels and do not crash; ``ONEDNN_MAX_CPU_ISA=AVX2`` makes them take the AVX2 ones.

The second case needs no channels_last at all: a single-channel batch whose strides are ``(HW, 1, W, 1)`` (what
indexing and element-wise ops on uint8 images easily give) counts as contiguous *and* channels_last, so PyTorch
runs the whole network channels_last and reaches the same kernel.

    python benchmarks/cpu_channels_last.py [--tries 5]

Each case runs ``--tries`` times in a fresh process (20 forward/backward passes each, one thread), with the
processor's own kernels and with the AVX2 kernels forced; the table gives the exit codes (0 = finished,
-6 abort, -7 bus error, -11 segmentation fault, 'hang' = killed after 60 s).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

CASE = r"""
import sys, torch
torch.manual_seed(0)
torch.set_num_threads(1)
case = sys.argv[1]
if case == "conv1x1_channels_last":      # one 1x1 stride-2 convolution, 4 -> 8 channels, channels_last
    net = torch.nn.Conv2d(4, 8, 1, stride=2, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(8, 4, 28, 28).contiguous(memory_format=torch.channels_last)
elif case == "one_channel_ambiguous":    # contiguous model; a (8, 1, 28, 28) batch with strides (784, 1, 28, 1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, bias=False),
                              torch.nn.Conv2d(4, 8, 1, stride=2, bias=False))
    x = torch.randn(8, 28, 28, 1).permute(0, 3, 1, 2)
    assert x.is_contiguous() and x.stride() == (784, 1, 28, 1)
else:                                    # the same batch with canonical strides: the fix
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, bias=False),
                              torch.nn.Conv2d(4, 8, 1, stride=2, bias=False))
    x = torch.randn(8, 28, 28, 1).permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
    assert x.stride() == (784, 784, 28, 1)
for _ in range(20):
    net(x).sum().backward()
"""
CASES = ["conv1x1_channels_last", "one_channel_ambiguous", "one_channel_canonical"]


def outcome(case: str, isa: str | None) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    try:
        return str(subprocess.run([sys.executable, "-c", CASE, case], env=env, capture_output=True,
                                  timeout=60).returncode)
    except subprocess.TimeoutExpired:
        return "hang"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5)
    tries = parser.parse_args().tries
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    onednn = next((w for w in torch.__config__.show().split() if w.startswith("v3") or w.startswith("v2")), "?")
    print(f"torch {torch.__version__}, oneDNN {onednn}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{cpu}\n")
    print("| case | own kernels | AVX2 kernels forced |\n|---|---|---|")
    for case in CASES:
        own = " ".join(outcome(case, None) for _ in range(tries))
        avx2 = " ".join(outcome(case, "AVX2") for _ in range(tries))
        print(f"| {case} | {own} | {avx2} |")


if __name__ == "__main__":
    main()
