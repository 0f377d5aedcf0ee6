"""The performance page from the benchmarks' own output: each ``benchmarks/results/<name>.jsonl``
holds the JSON lines a benchmark printed (its last run last); every line becomes tables.

A line's scalar fields (settings, versions) become a list; its dicts of numbers that share the
same keys (``{"us_per_step": {...}, "ratio_...": {...}}``) become one table, a row per key and a
column per dict. Nothing here is typed by hand: to refresh, run the benchmark and append its line
(``python benchmarks/scale_svi.py >> benchmarks/results/scale_svi.jsonl``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x) for x in v)
    return str(v).replace("|", "\\|")


def _is_number_dict(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and all(isinstance(x, (int, float)) or x is None for x in v.values())


def record_tables(rec: dict[str, Any]) -> str:
    """One JSON line as Markdown: its settings, then one table per group of number dicts."""
    scalars = {k: v for k, v in rec.items() if not isinstance(v, dict)}
    groups: dict[tuple[str, ...], list[str]] = {}
    nested_other = {}
    for k, v in rec.items():
        if _is_number_dict(v):
            groups.setdefault(tuple(v), []).append(k)
        elif isinstance(v, dict):
            nested_other[k] = v
    out = []
    if scalars:
        out.append("Settings: " + "; ".join(f"`{k}` = {_cell(v)}" for k, v in scalars.items()) + "\n")
    for keys, cols in groups.items():
        out.append("| | " + " | ".join(f"`{c}`" for c in cols) + " |")
        out.append("|---|" + "---:|" * len(cols))
        for key in keys:
            out.append(f"| {key} | " + " | ".join(_cell(rec[c].get(key)) for c in cols) + " |")
        out.append("")
    for k, v in nested_other.items():
        out.append(f"**{k}**\n")
        out.append(record_tables(v))
    return "\n".join(out)


def read_results(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file (blank lines and ``#`` comments skipped); a line that
    is not a JSON object raises ValueError naming the file and line."""
    recs = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON line ({e}); each line must be one benchmark's output") from e
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{i}: a JSON {type(rec).__name__}, expected an object")
        recs.append(rec)
    return recs


def _docline(script: Path) -> str:
    import ast

    try:
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    except SyntaxError:
        return ""
    return doc.split("\n\n")[0].replace("\n", " ")


def page(bench_dir: Path) -> str:
    """The whole performance page."""
    results = bench_dir / "results"
    out = ["# Performance\n",
           "Every table on this page is generated, when the site is built, from the JSON line each script in "
           "`benchmarks/` prints, kept in `benchmarks/results/<script>.jsonl` (the last run is shown first). "
           "Ratios come from alternating rounds in one process and are steadier than absolute times, which "
           "depend on the machine and its load.\n"]
    recorded = sorted(results.glob("*.jsonl")) if results.is_dir() else []
    have = {p.stem for p in recorded}
    for path in recorded:
        recs = read_results(path)
        if not recs:
            continue
        script = bench_dir / f"{path.stem}.py"
        out.append(f"## `{path.stem}`\n")
        if script.exists():
            out.append(_docline(script).replace("``", "`") + "\n")
        notes = [ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.lstrip().startswith("#")]
        if notes:
            out.append("Notes kept with the results: " + " ".join(notes) + "\n")
        out.append(f"Last run ({len(recs)} recorded in `benchmarks/results/{path.name}`):\n")
        out.append(record_tables(recs[-1]))
        if len(recs) > 1:
            out.append("??? note \"Earlier runs\"\n")
            for rec in reversed(recs[:-1]):
                out.append("    " + record_tables(rec).replace("\n", "\n    ") + "\n")
    missing = sorted(p.stem for p in bench_dir.glob("*.py") if not p.stem.startswith("_") and p.stem not in have)
    if missing:
        out.append("## Not yet recorded as JSON\n")
        out.append("These benchmarks have no `benchmarks/results/*.jsonl` yet; until they are rerun, their last "
                   "numbers are the ones written down by hand in `benchmarks/README.md` (reproduced below, "
                   "unedited, as a fallback):\n")
        out.extend(f"- `benchmarks/{m}.py`: {_docline(bench_dir / (m + '.py')).replace('``', '`')}" for m in missing)
        readme = bench_dir / "README.md"
        if readme.exists():
            text = readme.read_text()
            # one heading level down, so the page keeps one title
            text = "\n".join(("#" + ln) if ln.startswith("#") else ln for ln in text.splitlines())
            out.append("\n??? info \"benchmarks/README.md (recorded by hand)\"\n")
            out.append("\n".join(("    " + ln) if ln else "" for ln in text.splitlines()))
    return "\n".join(out) + "\n"
