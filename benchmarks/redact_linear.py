"""How redaction's time grows with its input: the time for 10x the text over the time for 1x,
per kind of hostile text (linear: about 10; quadratic: about 100).

    python benchmarks/redact_linear.py [--chars 100000] [--repeat 3]

Each kind is a run of one piece ('a', '7', 'a=', ...) around a text with a credential of every
form, given to redact, credential_forms and carries_credential; each time is the best of --repeat.
"""
from __future__ import annotations

import argparse
import time

from mitorch.files.secrets import carries_credential, credential_forms, redact

PIECES = {"letters": "a", "digits": "7", "key-value pairs": "a=", "equals": "=", "schemes": "a://", "hashes": "#",
          "key parts": "x_", "scheme runs": "a1.", "colons": "u:"}
CREDENTIALS = " https://u:S3CR3T@h/x?sv=1&sig=S3CR3T#S3CR3T AccountKey=S3CR3T "


def best_time(text: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        redact(text)
        credential_forms(text)
        carries_credential(text)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=100_000, help="length of the 1x text")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'text':<16} {'1x s':>8} {'10x s':>8} {'ratio':>6}")
    for name, piece in PIECES.items():
        times = []
        for chars in (args.chars, 10 * args.chars):
            filler = piece * (chars // 2 // len(piece))
            times.append(best_time(filler + CREDENTIALS + filler, args.repeat))
        print(f"{name:<16} {times[0]:>8.4f} {times[1]:>8.4f} {times[1] / times[0]:>6.1f}")


if __name__ == "__main__":
    main()
