"""Rule evaluation cost per instance with a 1000-rule ruleset.

    .venv/bin/python bench/rules.py [--rules 1000] [--instances 2000]

The rules look like a real site's: each is scoped by calling AE and Modality (the
cheap discriminators the index uses) and adds a description/regex/date condition.
Prints the median and p95 of ``decide()`` per instance, the same for a ruleset whose
rules have no indexable condition (every rule evaluated), and last
``rules_eval_ms_p50=<ms>``."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.dataset import Dataset  # noqa: E402

from shared.config import parse_config  # noqa: E402
from shared.messages import IngestMetadata  # noqa: E402
from shared.rules import decide  # noqa: E402

MODALITIES = ["CT", "MR", "US", "CR", "DX", "MG", "NM", "PT", "XA", "RF"]
BODY = ["CHEST", "HEAD", "ABDOMEN", "PELVIS", "SPINE", "KNEE", "HAND", "FOOT"]


def make_config(n_rules: int, indexable: bool):
    rules = []
    for n in range(n_rules):
        extra = [{"tag": "StudyDescription", "op": "contains", "value": BODY[n % len(BODY)], "case_insensitive": True},
                 {"any": [{"tag": "StudyDate", "op": "ge", "value": "20200101"},
                          {"tag": "InstitutionName", "op": "regex", "value": r"^GENERAL\s+\d+$"}]}]
        if indexable:
            conds = [{"association": "calling_ae", "value": f"MOD{n % 100:03d}"},
                     {"tag": "Modality", "value": MODALITIES[n % len(MODALITIES)]}, *extra]
        else:
            conds = [{"association": "calling_ae", "op": "regex", "value": f"^MOD{n % 100:03d}$"}, *extra]
        rules.append({"id": f"r{n}", "when": {"all": conds},
                      "actions": [{"action": "set", "tag": "StationName", "value": f"R{n}"}],
                      "destinations": ["d"]})
    return parse_config({"destinations": [{"id": "d", "type": "filesystem", "path": "d"}],
                         "rulesets": [{"id": "site", "mode": "ALL_MATCHES", "rules": rules}]})


def make_instances(count: int, rng: random.Random):
    out = []
    for n in range(count):
        ds = Dataset()
        ds.Modality = rng.choice(MODALITIES)
        ds.StudyDescription = f"{ds.Modality} {rng.choice(BODY).title()} routine"
        ds.StudyDate = f"20{rng.randint(18, 25)}0{rng.randint(1, 9)}15"
        ds.InstitutionName = f"GENERAL {rng.randint(1, 9)}"
        ingest = IngestMetadata(calling_ae=f"MOD{rng.randint(0, 99):03d}", source_type="cstore",
                                received_at=datetime(2024, 1, 1, tzinfo=timezone.utc))
        out.append((ds, ingest))
    return out


def measure(config, instances) -> tuple[list[float], int]:
    decide(config, *instances[0])  # build the index outside the timing
    times, matched = [], 0
    for ds, ingest in instances:
        t0 = time.perf_counter()
        matched += len(decide(config, ds, ingest).matched)
        times.append((time.perf_counter() - t0) * 1000)
    return times, matched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=2000)
    args = parser.parse_args()
    rng = random.Random(7)
    instances = make_instances(args.instances, rng)
    for label, indexable in (("unindexable rules (every rule evaluated)", False), ("indexed", True)):
        times, matched = measure(make_config(args.rules, indexable), instances)
        q = statistics.quantiles(times, n=100)
        print(f"{label}: {args.rules} rules, {args.instances} instances, {matched} matches; "
              f"p50 {statistics.median(times):.3f} ms, p95 {q[94]:.3f} ms")
    print(f"rules_eval_ms_p50={statistics.median(times):.3f}")


if __name__ == "__main__":
    main()
