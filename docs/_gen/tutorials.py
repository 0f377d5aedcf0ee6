"""Execute a percent-cell tutorial (``# %%`` code cells, ``# %% [markdown]`` text cells) and render
it as a Markdown page with each cell's printed output and figures.

The file is plain Python: ``python docs/tutorials/vae.py`` runs it too. Every code cell runs in
one namespace, in order; an exception fails the build with the tutorial, cell and line named.
Each matplotlib figure a cell leaves open becomes a PNG beside the page (then is closed).
"""

from __future__ import annotations

import contextlib
import io
import re
import time
import traceback
from pathlib import Path

MARKER = re.compile(r"^# %%(.*)$")


class TutorialError(RuntimeError):
    """A tutorial cell raised: the message names the file, the cell and the traceback."""


def parse_cells(source: str) -> list[tuple[str, str, int]]:
    """``(kind, text, first_line)`` per cell, ``kind`` "code" or "markdown"; text before the first
    marker is a code cell; markdown cells lose their leading ``# ``."""
    cells: list[tuple[str, list[str], int]] = [("code", [], 1)]
    for lineno, line in enumerate(source.splitlines(), start=1):
        m = MARKER.match(line)
        if m:
            cells.append(("markdown" if "[markdown]" in m.group(1) else "code", [], lineno + 1))
            continue
        cells[-1][1].append(line)
    out = []
    for kind, lines, start in cells:
        if kind == "markdown":
            text = "\n".join(ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines)
        else:
            text = "\n".join(lines)
        if text.strip():
            out.append((kind, text.strip("\n"), start))
    return out


def _figures(stem: str, counter: list[int]) -> list[tuple[str, bytes]]:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    for num in plt.get_fignums():
        fig = plt.figure(num)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        counter[0] += 1
        out.append((f"{stem}-{counter[0]}.png", buf.getvalue()))
    return out


def render(path: Path) -> tuple[str, dict[str, bytes], float]:
    """Run the tutorial at ``path``; return (Markdown page, {figure file name: PNG bytes}, seconds)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        pass
    import torch

    import ember

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ember.clear_param_store()
    ember.set_rng_seed(0)
    namespace: dict = {"__name__": "__main__", "__file__": str(path)}
    parts: list[str] = []
    figures: dict[str, bytes] = {}
    counter = [0]
    t0 = time.perf_counter()
    try:
        for kind, text, start in parse_cells(path.read_text()):
            if kind == "markdown":
                parts.append(text + "\n")
                continue
            parts.append("```python\n" + text + "\n```\n")
            code = compile("\n" * (start - 1) + text, str(path), "exec")
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                    exec(code, namespace)
            except Exception as e:
                tb = "".join(traceback.format_exception(e))
                raise TutorialError(f"tutorial {path.name}: the cell at line {start} raised:\n{tb}") from e
            printed = out.getvalue().rstrip()
            if printed:
                parts.append("```text\n" + printed + "\n```\n")
            for name, data in _figures(path.stem, counter):
                figures[name] = data
                parts.append(f"![figure {counter[0]} of this tutorial]({name})\n")
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    note = (f"\n---\n*This page is `docs/tutorials/{path.name}`, executed when the site was built "
            f"({seconds:.1f} s); run it yourself with `python docs/tutorials/{path.name}`.*\n")
    return "\n".join(parts) + note, figures, seconds
