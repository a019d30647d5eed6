"""What every benchmark does with its figures: write them as JSON and say where."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: str | Path, result: dict[str, Any]) -> Path:
    """Write ``result`` as indented JSON to ``out`` (folders created) and print the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {path}")
    return path
