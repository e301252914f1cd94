"""``selfkd export RUN_DIR --format safetensors|torchscript|onnx``: the module a run evaluated, checked."""
from __future__ import annotations

import argparse

from ..runfolder import EXPORT_FORMATS


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export the module a run evaluated (logits only) and check it",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", metavar="RUN_DIR", help="finished run folder (or its model.safetensors)")
    p.add_argument("--format", required=True, choices=list(EXPORT_FORMATS))
    p.add_argument("--out", help="output file, or an existing folder to write model<ext> in (default RUN_DIR/export/)")
    p.add_argument("--image-size", type=int, help="input size used for tracing and the check "
                                                  "(default: the run's data.image_size, else 32)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..export import export

    result = export(args.run, args.format, args.out, args.image_size)
    _, channels, size, _ = result["input_shape"]
    print(f"Exported {result['model']} ({result['num_classes']} classes, N×{channels}×{size}×{size} images in, logits "
          f"out) as {result['format']}: {result['path']}")
    print(f"Checked against the original on 5×{channels}×{size}×{size} inputs: max abs diff "
          f"{result['max_abs_diff']:.3g} (tolerance {result['tolerance']:.3g}).")
    return 0
