"""The ``ember`` command: ``ember scale``, ``ember vae``, ... (``ember <example> --help`` for options),
and ``ember docs`` (serve or build the documentation site).

Errors the user can fix (a bad flag value, unusable data, a damaged checkpoint, no GPU) are
printed as one line, ``ember <example>: error: ...``, with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import inspect
import sys

from ember.examples._main import run_main

# the examples after the seeds' three: (module in ember.examples, one line for `ember --help`)
_MORE_EXAMPLES = (
    ("flows", "normalizing flows: 2-D density estimation with a spline-coupling flow (SVI/MLE), density figure"),
    ("regression", "Bayesian linear regression (PyroModule, PyroSample, autoguide, Predictive) on the diabetes data"),
    ("mixture", "a Gaussian mixture with its assignments summed out (TraceEnum_ELBO), MAP assignments, NUTS"),
    ("hmm", "a hidden Markov model with its states summed out (markov + TraceEnum_ELBO), Viterbi decoding"),
)


def build_parser() -> argparse.ArgumentParser:
    from ember.examples import scale, vae

    parser = argparse.ArgumentParser(prog="ember", description="Ember: deep probabilistic programming on PyTorch. Run its examples, or serve its documentation.")
    sub = parser.add_subparsers(dest="command", metavar="<example>")
    p = sub.add_parser("scale", help="the introductory scale model: infer an object's weight from a noisy reading with SVI", description=scale.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    scale.add_arguments(p)
    p.set_defaults(run=scale.main)
    p = sub.add_parser("vae", help="the variational autoencoder of Kingma & Welling on MNIST (train, evaluate, plot)", description=vae.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    vae.add_arguments(p)
    p.set_defaults(run=vae.main)
    from ember.examples import air

    p = sub.add_parser("air", help="Attend-Infer-Repeat (Eslami et al.) on multi-MNIST (train; 'ember air reconstruct' draws a checkpoint)",
                       description=air.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    air.add_arguments(p)
    p.set_defaults(run=air.main)
    import importlib

    for name, help_text in _MORE_EXAMPLES:
        module = importlib.import_module(f"ember.examples.{name}")
        p = sub.add_parser(name, help=help_text, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(run=module.main)
    p = sub.add_parser("docs", help="serve the documentation site locally (mkdocs serve), or build it with --build",
                       description=inspect.cleandoc(docs.__doc__ or ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", action="store_true", help="build the site into site/ (mkdocs build --strict) instead of serving it")
    p.add_argument("--dev-addr", default="127.0.0.1:8000", metavar="HOST:PORT", help="where to serve (default 127.0.0.1:8000)")
    p.set_defaults(run=docs)
    return parser


def docs(args: argparse.Namespace) -> int:
    """Serve the documentation site at http://127.0.0.1:8000 (rebuilt on every change), or with
    ``--build`` build it into ``site/``. Needs a source checkout (``mkdocs.yml`` beside ``ember/``)
    and the docs extra: ``pip install -e ".[docs]"``."""
    import importlib.util
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    config = root / "mkdocs.yml"
    if not config.is_file():
        print(f"ember docs: error: no mkdocs.yml at {config}: the site builds from a source checkout of Ember", file=sys.stderr)
        return 2
    if importlib.util.find_spec("mkdocs") is None:
        print('ember docs: error: MkDocs is not installed; install the docs extra: pip install -e ".[docs]"', file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "mkdocs"]
    cmd += ["build", "--strict"] if args.build else ["serve", "--dev-addr", args.dev_addr]
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}
    try:
        return subprocess.call([*cmd, "-f", str(config)], cwd=root, env=env)
    except KeyboardInterrupt:
        return 130


def main(argv: list | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    return run_main(args.run, args, args.command)


if __name__ == "__main__":
    sys.exit(main())
