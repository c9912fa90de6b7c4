"""``nnunet_semicl benchmark {step,samplers,accuracy,gradients}``.

    nnunet_semicl benchmark step        s/iteration and peak memory of every trainer (phantoms, real 2d plan)
    nnunet_semicl benchmark samplers    time of uniform / SG / SAG sampling, their variance on real images
    nnunet_semicl benchmark accuracy    CPU-scale training of every trainer on ACDC or LA (--dataset), Dice table
    nnunet_semicl benchmark gradients   each loss term's gradient norm at a trained checkpoint (why a term costs)

Each writes JSON + markdown into its work folder, and with ``--update-docs PATH`` replaces its own
section of that file (docs/performance.md gives the exact commands, their durations and the results).
Heavy imports happen inside the commands.
"""
import argparse

from nnunet_semicl.benchmarking import accuracy, gradients, samplers, step

COMMANDS = (
    ("step", step, "seconds per training iteration and peak memory of every trainer"),
    ("samplers", samplers, "time and variance of uniform, SG and SAG pixel sampling"),
    ("accuracy", accuracy, "CPU-scale training of every trainer on the real ACDC or LA data (Dice table)"),
    ("gradients", gradients, "gradient norm of each loss term of a trained model (encoder, decoder, heads)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name, module, help_text in COMMANDS:
        s = sub.add_parser(name, help=help_text, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(s)
        s.set_defaults(benchmark_run=module.run)


def run(args):
    return args.benchmark_run(args)


def main(argv=None):
    p = argparse.ArgumentParser(prog="nnunet_semicl benchmark")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
