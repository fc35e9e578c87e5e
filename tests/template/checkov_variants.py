"""Write template.yaml resolved for the parameter sets Checkov must also see.

Checkov skips what sits under an Fn::If it cannot evaluate (a conditional policy, the VPC
config, the KMS settings): scanned as written, the optional features are never checked.
`make checkov` therefore scans template.yaml itself and these resolutions of it (conditions
evaluated, Fn::If replaced by the branch taken; conditions.py), so every optional resource
and policy is scanned at least once. The resources keep their Metadata, so the suppressions
in template.yaml (and their reasons) apply to the variants too.

    .venv/bin/python tests/template/checkov_variants.py OUT_DIR   -> OUT_DIR/<variant>.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conditions import resolve  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

KEY = "arn:aws:kms:us-east-1:111122223333:key/0b6a3c1e-7d2f-4e55-9a8b-1c2d3e4f5a6b"

# Every optional feature on (the customer key, the consumer in a VPC, the e-mail
# subscription, the incoming/ expiry; never LocalInvoke). template.yaml as written covers the defaults: Checkov reads each Fn::If
# there as set, and the resources only the defaults create (the alarm topic's own key) are
# unconditional for it. An existing AlarmTopicArn only removes resources.
VARIANTS = {
    "all-options": {
        "KmsKeyArn": KEY,
        "ConsumerSubnetIds": "subnet-0123456789abcdef0,subnet-0fedcba9876543210",
        "ConsumerSecurityGroupIds": "sg-0123456789abcdef0",
        "AlarmEmail": "oncall@example.org",
        "IncomingExpirationDays": 30,
    },
}


def load() -> dict:
    from cfnlint.decode import decode

    tpl, matches = decode(str(TEMPLATE))
    if matches:
        raise SystemExit(f"template.yaml does not parse: {matches}")
    return json.loads(json.dumps(tpl))


def main(out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = load()
    for name, params in VARIANTS.items():
        path = out_dir / f"{name}.json"
        variant = resolve(source, params)
        # Checkov resolves a Ref to a parameter through its Default: make the chosen values
        # the defaults, as a deploy with these overrides would see them.
        for k, v in params.items():
            variant["Parameters"][k]["Default"] = v
        path.write_text(json.dumps(variant, indent=1) + "\n")
        print(path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
