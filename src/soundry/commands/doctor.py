"""`soundry doctor RUN_DIR`: the training-health findings of a run, re-checked offline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="re-check a run's health (exit 1 when an error-level finding stands)",
        description="Re-run the training-health monitors on what a run directory holds "
        "(metrics.jsonl, validation audio, the monitors' persisted state, health.jsonl) and "
        "print every finding. Works on finished and running runs. Exit status: 0 healthy or "
        "warnings only, 1 when any error-level finding stands, 2 when RUN_DIR is not a run.",
    )
    p.add_argument("run_dir", type=Path, help="a folder written by `soundry train`")
    p.add_argument("--json", action="store_true", help="print the findings as JSON lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from soundry.health.doctor import diagnose, doctor_text

    findings = diagnose(args.run_dir)
    if args.json:
        for f in findings:
            print(json.dumps(f.to_dict()))
    else:
        print(doctor_text(args.run_dir, findings))
    return 1 if any(f.severity == "error" for f in findings) else 0
