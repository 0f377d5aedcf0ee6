"""The ``ember`` command: ``ember scale``, ... (``ember <example> --help`` for options)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from ember.examples import scale

    parser = argparse.ArgumentParser(prog="ember", description="Ember: deep probabilistic programming on PyTorch. Run the seeds' examples.")
    sub = parser.add_subparsers(dest="command", metavar="<example>")
    p = sub.add_parser("scale", help="seed 003: infer an object's weight from a noisy scale with SVI", description=scale.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    scale.add_arguments(p)
    p.set_defaults(run=scale.main)
    return parser


def main(argv: list | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
