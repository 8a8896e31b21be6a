"""Which way do a T2V model's objects move, given the motion word? (docs/video.md, session 33)

Reads ``gentron eval shapes --video`` reports (their ``per_prompt`` rows keep each clip's tracked ``moves``) and
prints, for the one-object prompts, the confusion of captioned against drawn direction, pooled over the reports.
Next to the observed diagonal it prints the diagonal that independence predicts (row total × column total / all):
a model that reads the word beats it; a model that ignores the word matches it; one that reads the word with the
wrong sign (say, "right" drawn as a position on the right, from which an object can only move left) falls below it
on the horizontal rows.

    python experiments/video_mfg/direction_confusion.py REPORT.json [REPORT.json ...]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Optional

from gentron.data.shapes import MOTION_PHRASES

DIRECTIONS = tuple(MOTION_PHRASES)  # right, left, up, down
STILL = "still"


def captioned_direction(prompt: str) -> Optional[str]:
    """The motion word of a one-object moving-shapes caption ("a red circle moving to the right" → "right")."""
    return next((direction for direction, phrase in MOTION_PHRASES.items() if phrase in prompt), None)


def confusion(reports: list[dict]) -> Counter:
    """(captioned, drawn) counts over the one-object rows of the reports; an object that does not move is STILL."""
    counts: Counter = Counter()
    for report in reports:
        for row in report["per_prompt"]:
            word = captioned_direction(row["prompt"])
            if row["kind"] != "single" or word is None:
                continue
            counts[(word, row["moves"][0] if row["moves"] and row["moves"][0] else STILL)] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+")
    args = ap.parse_args()
    counts = confusion([json.load(open(path)) for path in args.reports])
    drawn = DIRECTIONS + (STILL,)
    total = sum(counts.values())
    rows = {w: sum(counts[(w, d)] for d in drawn) for w in DIRECTIONS}
    cols = {d: sum(counts[(w, d)] for w in DIRECTIONS) for d in drawn}
    print(f"{len(args.reports)} reports, {total} one-object clips; rows: caption, columns: drawn motion")
    print("| caption | " + " | ".join(drawn) + " | right / expected if independent |")
    print("|---" * (len(drawn) + 2) + "|")
    observed = expected = 0.0
    for w in DIRECTIONS:
        e = rows[w] * cols[w] / total if total else 0.0
        observed, expected = observed + counts[(w, w)], expected + e
        cells = " | ".join(str(counts[(w, d)]) for d in drawn)
        print(f"| {w} | {cells} | {counts[(w, w)]} / {e:.1f} |")
    print(f"| all | " + " | ".join(str(cols[d]) for d in drawn) + f" | {observed:.0f} / {expected:.1f} |")


if __name__ == "__main__":
    main()
