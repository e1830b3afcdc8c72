"""Derive the Helm chart's `pipeline.config` schema from PipelineConfig (cryocloud.submit.chart_config_schema).

    python deploy/chart_schema.py          # rewrite helm/cryocloud/values.schema.json
    python deploy/chart_schema.py --check  # exit 1 when the chart's schema is out of date

so a pipeline config the `cryocloud run` model refuses also fails at `helm install`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cryocloud.submit import chart_schema_with_config

SCHEMA = Path(__file__).resolve().parents[1] / "helm" / "cryocloud" / "values.schema.json"


def main(argv: list[str]) -> int:
    current = json.loads(SCHEMA.read_text())
    derived = chart_schema_with_config(current)
    if "--check" in argv:
        if derived != current:
            print(f"{SCHEMA}: pipeline.config differs from PipelineConfig; run python deploy/chart_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(json.dumps(derived, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
