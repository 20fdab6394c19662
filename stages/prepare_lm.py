"""prepare_lm stage: dequantise the packaged SmolLM2 GGUF once into a plain transformers folder."""

from edge_glass.cli import run_stage, stage_parser
from edge_glass.decoders.lm import PACKAGED_LMS, convert_gguf, packaged_gguf


def main(params, args):
    name = params.decode.lm.model if params.decode.lm.model in PACKAGED_LMS else "SmolLM2-135M-Instruct"
    info = convert_gguf(packaged_gguf(name), args.out)
    print(f"{name}: {info['parameters'] / 1e6:.1f}M parameters -> {args.out}")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="data/lm", help="output folder (default: data/lm)")
    run_stage("prepare_lm", parser, main)
