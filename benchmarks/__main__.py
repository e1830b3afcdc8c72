"""Run one benchmark: ``python -m benchmarks NAME [--quick]``; the last stdout line is its JSON result."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from benchmarks import REQUIRED_KEYS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("name", help="benchmark name, e.g. s3-read (module benchmarks/s3_read.py)")
    parser.add_argument("--quick", action="store_true", help="small problem size, for smoke tests")
    args = parser.parse_args(argv)
    module_name = args.name.replace("-", "_")
    try:
        module = importlib.import_module(f"benchmarks.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"benchmarks.{module_name}":
            raise
        print(f"error: no benchmark '{args.name}' (expected benchmarks/{module_name}.py)", file=sys.stderr)
        return 2
    result = module.run(quick=args.quick)
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        print(f"error: benchmark '{args.name}' returned no {missing}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
