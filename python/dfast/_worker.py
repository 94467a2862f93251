"""The bench worker under Python: `python -m dfast._worker bench-worker --job JOB --answer ANSWER` measures
one combination in this process (what `dfast bench-worker` does for the CLI); `dfast.bench` starts it."""

import argparse
import sys

from . import _dfast


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m dfast._worker")
    parser.add_argument("command", choices=["bench-worker"])
    parser.add_argument("--job", required=True)
    parser.add_argument("--answer", required=True)
    args = parser.parse_args(argv)
    try:
        _dfast.answer_job(args.job, args.answer)
    except _dfast.DfastError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
