"""The ``ember`` command: ``ember scale``, ``ember vae``, ... (``ember <example> --help`` for options).

Errors the user can fix (a bad flag value, unusable data, a damaged checkpoint, no GPU) are
printed as one line, ``ember <example>: error: ...``, with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import sys

from ember.examples._main import run_main


def build_parser() -> argparse.ArgumentParser:
    from ember.examples import scale, vae

    parser = argparse.ArgumentParser(prog="ember", description="Ember: deep probabilistic programming on PyTorch. Run the seeds' examples.")
    sub = parser.add_subparsers(dest="command", metavar="<example>")
    p = sub.add_parser("scale", help="seed 003: infer an object's weight from a noisy scale with SVI", description=scale.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    scale.add_arguments(p)
    p.set_defaults(run=scale.main)
    p = sub.add_parser("vae", help="seed 004: a variational autoencoder on MNIST (train, evaluate, plot)", description=vae.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    vae.add_arguments(p)
    p.set_defaults(run=vae.main)
    from ember.examples import air

    p = sub.add_parser("air", help="seed 002: Attend-Infer-Repeat on multi-MNIST (train; 'ember air reconstruct' draws a checkpoint)",
                       description=air.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    air.add_arguments(p)
    p.set_defaults(run=air.main)
    from ember.examples import flows

    p = sub.add_parser("flows", help="issue 15: 2-D density estimation with a spline-coupling flow (SVI/MLE), density figure",
                       description=flows.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flows.add_arguments(p)
    p.set_defaults(run=flows.main)
    return parser


def main(argv: list | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    return run_main(args.run, args, args.command)


if __name__ == "__main__":
    sys.exit(main())
