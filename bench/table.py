"""The bench scripts' output: a plain-text table on stdout and the full figures as JSON."""

import json
from pathlib import Path


def report(header: list[str], rows: list[list], out: Path, figures: dict) -> None:
    """Print the table, then write `figures` to `out` (its folder created) and say where."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    print()
    for line in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    print(f"\nwritten to {out}")
