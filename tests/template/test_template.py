"""Security and operability properties of template.yaml, checked on the template itself and on
what SAM turns it into (samtranslator, offline): the IAM policies, bucket, queues, functions,
parameters and outputs that a deploy would create, and the consumer's ledger table and its
settings.

Every check is a function that returns a list of problems. Each is run on the real template
(it must find none) and on a deliberately broken copy (it must find the break), so none of
these tests can pass by checking nothing.

Run by `make template-test` (part of `make test`): .venv/bin/python -m pytest tests/template
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

# SQS's largest message (1 MiB). The splitter refuses (rejects the row) any message larger than
# SQS_MAX_MESSAGE_BYTES, whose default is this value (shared/src/app.rs), so the work queue and
# the DLQ must accept at least this much or rows the splitter accepted would fail to send.
SPLITTER_MAX_MESSAGE_BYTES = 1024 * 1024
# Worst case of one envelope: a max_row_bytes row (events/feeds.toml: 65536) whose every byte
# JSON-escapes to \u00XX (6 bytes), plus column names, metadata and message attributes.
ENVELOPE_WORST_CASE_BYTES = 65536 * 6 + 16 * 1024

# Actions that have no resource-level permissions: only these may use Resource "*".
NO_RESOURCE_LEVEL_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}

# What each role may do in the data bucket, by key prefix (least privilege, by design):
# the splitter never writes incoming/ (it would re-trigger itself); the consumer has no
# business in the bucket at all (its ledger is the DynamoDB table, consumer_from_env in
# shared/src/adapters/env.rs builds no S3 client).
S3_GRANTS = {
    "SplitterRole": {
        "s3:GetObject": {"incoming", "state", "config"},
        "s3:GetObjectVersion": {"incoming", "state", "config"},
        "s3:PutObject": {"state", "runs", "rejects", "removed", "held"},
    },
    "ConsumerRole": {},
}

# What the consumer does on its ledger table (shared/src/adapters/dynamodb.rs): GetItem (a
# strongly consistent read after a failed condition), PutItem (a fate), UpdateItem (lease,
# acknowledgement, release). Nothing that reads many items or deletes one (TTL expires them).
LEDGER_ACTIONS = {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"}
LEDGER_TABLE = "LedgerTable"

# consumer_from_env's defaults and bounds (shared/src/adapters/env.rs), for the variables the
# ledger checks read: name -> (default, min, max).
CONSUMER_ENV_NUMBERS = {
    "API_TIMEOUT_MS": (10_000, 100, 60_000),
    "API_CONNECT_TIMEOUT_MS": (2_000, 100, 30_000),
    "LEDGER_LEASE_SECS": (120, 5, 43_200),
    "LEDGER_WAIT_MS": (2_000, 0, 60_000),
    "LEDGER_TTL_DAYS": (30, 1, 3_650),
}

# cfn-lint suppressions (Metadata cfn-lint ignore_checks) and why each is justified. Empty:
# the template needs none. Adding one means adding its justification here.
JUSTIFIED_SUPPRESSIONS: dict[tuple[str, str], str] = {}

DATA_BUCKET_NAME = "${AWS::StackName}-data-${AWS::AccountId}-${AWS::Region}"


# ----------------------------------------------------------------------------- loading


def load_source() -> dict:
    from cfnlint.decode import decode

    tpl, matches = decode(str(TEMPLATE))
    assert not matches, f"template.yaml does not parse: {matches}"
    # cfn-lint's nodes carry positions; plain JSON types are enough here
    return json.loads(json.dumps(tpl))


def transform(source: dict) -> dict:
    """The CloudFormation template SAM would deploy (no AWS call: no managed policies used)."""
    import os

    from samtranslator.translator.transform import transform as sam_transform

    class NoManagedPolicies:
        def load(self) -> dict:
            return {}

    t = copy.deepcopy(source)
    for r in t["Resources"].values():
        if r["Type"] == "AWS::Serverless::Function":
            r["Properties"]["CodeUri"] = "s3://bucket/code.zip"  # what `sam package` puts there
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return sam_transform(t, {"ApiBaseUrl": "https://api.example.org"}, NoManagedPolicies())


@pytest.fixture(scope="module")
def source() -> dict:
    return load_source()


@pytest.fixture(scope="module")
def deployed(source) -> dict:
    return transform(source)


# ----------------------------------------------------------------------------- helpers


def as_list(v):
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def of_type(tpl: dict, typ: str) -> dict:
    return {k: r for k, r in tpl["Resources"].items() if r["Type"] == typ}


def sub_string(v) -> str | None:
    """The string of a Fn::Sub (either form) or a literal string."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and "Fn::Sub" in v:
        s = v["Fn::Sub"]
        return s if isinstance(s, str) else s[0]
    return None


def refers_to(v, logical_id: str) -> bool:
    """Whether v is Ref/GetAtt of logical_id (any attribute)."""
    if not isinstance(v, dict):
        return False
    if v.get("Ref") == logical_id:
        return True
    ga = v.get("Fn::GetAtt")
    if isinstance(ga, list) and ga and ga[0] == logical_id:
        return True
    if isinstance(ga, str) and ga.split(".")[0] == logical_id:
        return True
    return False


def is_table_arn(v) -> bool:
    """Exactly the ledger table's ARN (not an index, a stream or another table)."""
    return v in ({"Fn::GetAtt": [LEDGER_TABLE, "Arn"]}, {"Fn::GetAtt": f"{LEDGER_TABLE}.Arn"})


def role_statements(role: dict) -> list[dict]:
    out = []
    for p in role["Properties"].get("Policies", []):
        out.extend(as_list(p["PolicyDocument"]["Statement"]))
    return out


S3_OBJECT_ARN = re.compile(r"^arn:\$\{AWS::Partition\}:s3:::(?P<bucket>[^/]+)/(?P<rest>.*)$")


# ----------------------------------------------------------------------------- checks
# Each returns a list of problems (strings); [] means the property holds.


def check_iam_least_privilege(t: dict) -> list[str]:
    problems = []
    roles = of_type(t, "AWS::IAM::Role")
    if set(roles) != {"SplitterRole", "ConsumerRole"}:
        problems.append(f"unexpected roles {sorted(roles)} (SAM must not generate any)")
    for typ in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        if of_type(t, typ):
            problems.append(f"unexpected {typ}: policies belong inline in the two roles")
    queue_ids = set(of_type(t, "AWS::SQS::Queue"))
    for name, role in roles.items():
        props = role["Properties"]
        if props.get("ManagedPolicyArns"):
            problems.append(f"{name}: managed policies ({props['ManagedPolicyArns']}) are broader than needed")
        for st in as_list(props["AssumeRolePolicyDocument"]["Statement"]):
            if st.get("Principal") != {"Service": "lambda.amazonaws.com"}:
                problems.append(f"{name}: trust policy principal {st.get('Principal')}")
        for st in role_statements(role):
            sid = st.get("Sid", "?")
            if st.get("Effect") != "Allow":
                continue
            if "NotAction" in st or "NotResource" in st:
                problems.append(f"{name}/{sid}: NotAction/NotResource grants too much")
            actions = as_list(st.get("Action"))
            resources = as_list(st.get("Resource"))
            for a in actions:
                if not isinstance(a, str) or "*" in a or "?" in a:
                    problems.append(f"{name}/{sid}: wildcard action {a!r}")
            if not resources:
                problems.append(f"{name}/{sid}: no Resource")
            for r in resources:
                if r == "*":
                    broad = [a for a in actions if a not in NO_RESOURCE_LEVEL_ACTIONS]
                    if broad:
                        problems.append(f"{name}/{sid}: Resource '*' for {broad}, which support narrower resources")
                    continue
                s = sub_string(r)
                for a in actions:
                    service = a.split(":")[0]
                    if service == "s3":
                        problems += check_s3_grant(name, sid, a, s, st)
                    elif service == "sqs":
                        if not any(refers_to(r, q) for q in queue_ids):
                            problems.append(f"{name}/{sid}: {a} on {r} (must be one queue of this stack)")
                    elif service == "dynamodb":
                        if name != "ConsumerRole" or a not in LEDGER_ACTIONS or not is_table_arn(r):
                            problems.append(f"{name}/{sid}: {a} on {r} (only the consumer, only "
                                            f"{sorted(LEDGER_ACTIONS)}, only the ledger table itself)")
                    elif service == "secretsmanager":
                        if a != "secretsmanager:GetSecretValue" or not refers_to(r, "ApiTokenSecret"):
                            problems.append(f"{name}/{sid}: {a} on {r} (only GetSecretValue of the API token secret)")
                    elif service == "logs":
                        if not (isinstance(r, dict) and "Fn::GetAtt" in r and str(r["Fn::GetAtt"][0]).endswith("LogGroup")):
                            problems.append(f"{name}/{sid}: {a} on {r} (must be the function's own log group)")
                    elif a in NO_RESOURCE_LEVEL_ACTIONS:
                        pass
                    else:
                        problems.append(f"{name}/{sid}: {a} is not an action this role is expected to need")
    # the API secret: read by the consumer only
    for name, role in roles.items():
        uses = [a for st in role_statements(role) for a in as_list(st.get("Action")) if str(a).startswith("secretsmanager:")]
        if name == "ConsumerRole" and uses != ["secretsmanager:GetSecretValue"]:
            problems.append(f"ConsumerRole: secret actions {uses} (expected exactly GetSecretValue)")
        if name != "ConsumerRole" and uses:
            problems.append(f"{name}: must not read secrets ({uses})")
    return problems


def check_s3_grant(role: str, sid: str, action: str, arn: str | None, st: dict) -> list[str]:
    if arn is None:
        return [f"{role}/{sid}: {action} on a non-string resource"]
    if action == "s3:ListBucket":
        if arn != f"arn:${{AWS::Partition}}:s3:::{DATA_BUCKET_NAME}":
            return [f"{role}/{sid}: ListBucket on {arn}"]
        prefixes = as_list(st.get("Condition", {}).get("StringLike", {}).get("s3:prefix"))
        if not prefixes or any(p in ("*", "") for p in prefixes):
            return [f"{role}/{sid}: ListBucket without an s3:prefix condition"]
        allowed = {p for grants in S3_GRANTS.get(role, {}).values() for p in grants}
        bad = [p for p in prefixes if p.split("/")[0] not in allowed]
        return [f"{role}/{sid}: ListBucket prefixes {bad} beyond what the role reads"] if bad else []
    m = S3_OBJECT_ARN.match(arn)
    if not m or m["bucket"] != DATA_BUCKET_NAME:
        return [f"{role}/{sid}: {action} on {arn} (must be the data bucket)"]
    prefix, _, tail = m["rest"].partition("/")
    if not prefix or "*" in prefix or tail != "*":
        return [f"{role}/{sid}: {action} on {arn} (must be one <prefix>/* of the data bucket)"]
    allowed = S3_GRANTS.get(role, {}).get(action)
    if allowed is None:
        return [f"{role}/{sid}: {action} is not expected for this role"]
    if prefix not in allowed:
        return [f"{role}/{sid}: {action} on {prefix}/ (allowed: {sorted(allowed)})"]
    return []


def check_data_bucket(t: dict) -> list[str]:
    problems = []
    b = t["Resources"]["DataBucket"]["Properties"]
    pab = b.get("PublicAccessBlockConfiguration", {})
    for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
        if pab.get(k) is not True:
            problems.append(f"DataBucket: PublicAccessBlockConfiguration.{k} is not true")
    sse = [r.get("ServerSideEncryptionByDefault", {}).get("SSEAlgorithm")
           for r in b.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [])]
    if not any(a in ("AES256", "aws:kms", "aws:kms:dsse") for a in sse):
        problems.append("DataBucket: no default encryption")
    if b.get("VersioningConfiguration", {}).get("Status") != "Enabled":
        problems.append("DataBucket: versioning not enabled")
    if b.get("OwnershipControls", {}).get("Rules", [{}])[0].get("ObjectOwnership") != "BucketOwnerEnforced":
        problems.append("DataBucket: ACLs not disabled (ObjectOwnership BucketOwnerEnforced)")

    rules = []
    for r in b.get("LifecycleConfiguration", {}).get("Rules", []):
        if isinstance(r, dict) and "Fn::If" in r:  # conditional rule: both branches
            rules += [x for x in r["Fn::If"][1:] if isinstance(x, dict) and "Id" in x]
        else:
            rules.append(r)
    rules = [r for r in rules if r.get("Status") == "Enabled"]

    def prefix_of(r):
        return r.get("Prefix", r.get("Filter", {}).get("Prefix", ""))

    def expires(prefix: str) -> bool:
        return any(prefix_of(r) in ("", prefix) and isinstance(r.get("ExpirationInDays"), int) and r["ExpirationInDays"] > 0
                   for r in rules)

    if any(prefix_of(r).startswith("ledger") for r in rules):
        problems.append("DataBucket: a lifecycle rule for ledger/ (the ledger is the DynamoDB table; nothing writes there)")
    if not expires("runs/"):
        problems.append("DataBucket: no lifecycle expiry of old run reports (runs/)")
    if not any(prefix_of(r) in ("", "state/") and r.get("NoncurrentVersionExpiration", {}).get("NoncurrentDays", 0) > 0
               for r in rules):
        problems.append("DataBucket: noncurrent versions (replaced snapshots under state/) never expire")
    if any(prefix_of(r) in ("", "state/") and "ExpirationInDays" in r for r in rules):
        problems.append("DataBucket: a lifecycle rule would expire the current snapshots under state/")

    policies = [p for p in of_type(t, "AWS::S3::BucketPolicy").values() if refers_to(p["Properties"]["Bucket"], "DataBucket")]
    if not any(denies_insecure_transport(p["Properties"]["PolicyDocument"], "s3",
                                         {"arn:${AWS::Partition}:s3:::${DataBucket}", "arn:${AWS::Partition}:s3:::${DataBucket}/*"})
               for p in policies):
        problems.append("DataBucket: no bucket policy denying requests without TLS on the bucket and its objects")
    return problems


def denies_insecure_transport(doc: dict, service: str, must_cover: set | None = None, cover_refs: set | None = None) -> bool:
    for st in as_list(doc["Statement"]):
        cond = st.get("Condition", {}).get("Bool", {})
        if not (st.get("Effect") == "Deny" and st.get("Principal") in ("*", {"AWS": "*"})
                and as_list(st.get("Action")) in ([f"{service}:*"], ["*"])
                and str(cond.get("aws:SecureTransport")).lower() == "false"):
            continue
        res = as_list(st.get("Resource"))
        if must_cover is not None and not must_cover <= {sub_string(r) for r in res}:
            continue
        if cover_refs is not None and not all(any(refers_to(r, q) for r in res) for q in cover_refs):
            continue
        return True
    return False


def check_queues(t: dict) -> list[str]:
    problems = []
    queues = of_type(t, "AWS::SQS::Queue")
    for name, q in queues.items():
        p = q["Properties"]
        if p.get("SqsManagedSseEnabled") is not True and "KmsMasterKeyId" not in p:
            problems.append(f"{name}: server-side encryption is off")
    covered = set()
    for pol in of_type(t, "AWS::SQS::QueuePolicy").values():
        qs = {q for q in queues if any(refers_to(x, q) for x in pol["Properties"]["Queues"])}
        if denies_insecure_transport(pol["Properties"]["PolicyDocument"], "sqs", cover_refs=qs):
            covered |= qs
    for name in sorted(set(queues) - covered):
        problems.append(f"{name}: no queue policy denying requests without TLS")

    work = queues.get("WorkQueue", {}).get("Properties", {})
    target = work.get("RedrivePolicy", {}).get("deadLetterTargetArn")
    dlq_ids = [q for q in queues if refers_to(target, q)]
    if not dlq_ids:
        return problems + ["WorkQueue: no dead-letter queue (RedrivePolicy)"]
    dlq = queues[dlq_ids[0]]["Properties"]
    if dlq.get("MessageRetentionPeriod") != 1209600:
        problems.append(f"{dlq_ids[0]}: retention {dlq.get('MessageRetentionPeriod')} s, expected 14 days (1209600)")
    if not isinstance(work.get("MessageRetentionPeriod"), int) or work["MessageRetentionPeriod"] >= dlq.get("MessageRetentionPeriod", 0):
        problems.append("WorkQueue: retention must be shorter than the DLQ's (a moved message keeps its enqueue time)")
    if not refers_to(work.get("RedrivePolicy", {}).get("maxReceiveCount"), "MaxReceiveCount"):
        problems.append("WorkQueue: maxReceiveCount is not the MaxReceiveCount parameter")
    need = max(SPLITTER_MAX_MESSAGE_BYTES, ENVELOPE_WORST_CASE_BYTES)
    for name, props in (("WorkQueue", work), (dlq_ids[0], dlq)):
        size = props.get("MaximumMessageSize", 262144)
        if not isinstance(size, int) or size < need:
            problems.append(f"{name}: MaximumMessageSize {size} < {need} (what the splitter may send)")
    return problems


def check_functions(t: dict, source: dict) -> list[str]:
    problems = []
    fns = of_type(t, "AWS::Lambda::Function")
    if set(fns) != {"SplitterFunction", "ConsumerFunction"}:
        problems.append(f"functions {sorted(fns)}")
    for name, f in fns.items():
        p = f["Properties"]
        if p.get("TracingConfig", {}).get("Mode") != "Active":
            problems.append(f"{name}: X-Ray tracing not Active")
        if p.get("LoggingConfig", {}).get("LogFormat") != "JSON":
            problems.append(f"{name}: log format is not JSON")
        if not refers_to(p.get("LoggingConfig", {}).get("LogGroup"), name.replace("Function", "LogGroup")):
            problems.append(f"{name}: does not log to its own log group (the role is limited to it)")
        if p.get("Runtime") != "provided.al2023":
            problems.append(f"{name}: runtime {p.get('Runtime')}")
        if p.get("Architectures") not in (["x86_64"], ["arm64"]):
            problems.append(f"{name}: architecture {p.get('Architectures')} not set explicitly")
        role = {"SplitterFunction": "SplitterRole", "ConsumerFunction": "ConsumerRole"}.get(name)
        if not refers_to(p.get("Role"), role):
            problems.append(f"{name}: role is not {role}")
        env = p.get("Environment", {}).get("Variables", {})
        for local_only in ("AWS_ENDPOINT_URL", "API_ALLOW_HTTP", "API_TOKEN"):
            v = env.get(local_only)
            if v is not None and v != {"Fn::If": ["IsLocalInvoke", "", {"Ref": "AWS::NoValue"}]}:
                problems.append(f"{name}: {local_only} must exist only under LocalInvoke")
    # the architecture is a stated decision: set once, in Globals, with its reason beside it
    arch = source.get("Globals", {}).get("Function", {}).get("Architectures")
    if arch is None:
        problems.append("Globals.Function.Architectures is not set (choose x86_64 or arm64 deliberately)")
    elif "# x86_64 matches" not in TEMPLATE.read_text() and arch == ["x86_64"]:
        problems.append("Globals.Function.Architectures: the reason for the choice is not stated")
    return problems


def check_ledger_table(t: dict) -> list[str]:
    """The consumer's ledger table as shared/src/adapters/dynamodb.rs uses it: one string
    partition key `pk`, on demand, items expiring on `expires_at`; encrypted, recoverable and
    kept when the stack goes (it is what stops an old version being sent again)."""
    tables = of_type(t, "AWS::DynamoDB::Table")
    if LEDGER_TABLE not in tables:
        return [f"{LEDGER_TABLE}: missing (tables: {sorted(tables)})"]
    problems = []
    if set(tables) != {LEDGER_TABLE}:
        problems.append(f"unexpected tables {sorted(set(tables) - {LEDGER_TABLE})}")
    table = tables[LEDGER_TABLE]
    p = table["Properties"]
    for policy in ("DeletionPolicy", "UpdateReplacePolicy"):
        if table.get(policy) != "Retain":
            problems.append(f"{LEDGER_TABLE}: {policy} is {table.get(policy)!r}, not Retain")
    if p.get("BillingMode") != "PAY_PER_REQUEST" or "ProvisionedThroughput" in p:
        problems.append(f"{LEDGER_TABLE}: billing {p.get('BillingMode')!r} (expected PAY_PER_REQUEST, no provisioned throughput)")
    if p.get("KeySchema") != [{"AttributeName": "pk", "KeyType": "HASH"}]:
        problems.append(f"{LEDGER_TABLE}: key schema {p.get('KeySchema')} (expected pk HASH only)")
    if p.get("AttributeDefinitions") != [{"AttributeName": "pk", "AttributeType": "S"}]:
        problems.append(f"{LEDGER_TABLE}: attribute definitions {p.get('AttributeDefinitions')} (expected pk S only)")
    ttl = p.get("TimeToLiveSpecification", {})
    if ttl.get("Enabled") is not True or ttl.get("AttributeName") != "expires_at":
        problems.append(f"{LEDGER_TABLE}: TTL {ttl} (expected enabled on expires_at)")
    if p.get("SSESpecification", {}).get("SSEEnabled") is not True:
        problems.append(f"{LEDGER_TABLE}: SSE not enabled")
    if p.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled") is not True:
        problems.append(f"{LEDGER_TABLE}: point-in-time recovery not enabled")
    for index in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if p.get(index):
            problems.append(f"{LEDGER_TABLE}: {index} (nothing queries the ledger)")
    return problems


def check_ledger_access(t: dict) -> list[str]:
    """Only the consumer touches the ledger, with exactly GetItem/PutItem/UpdateItem on exactly
    the table; the consumer has no S3 permission at all; the splitter no DynamoDB one."""
    problems = []
    roles = of_type(t, "AWS::IAM::Role")
    for name, role in roles.items():
        for st in role_statements(role):
            if st.get("Effect") != "Allow":
                continue
            sid = st.get("Sid", "?")
            actions = [str(a) for a in as_list(st.get("Action", st.get("NotAction")))]
            ddb = [a for a in actions if a.split(":")[0] in ("dynamodb", "*")]
            if name != "ConsumerRole" and ddb:
                problems.append(f"{name}/{sid}: DynamoDB actions {ddb} (only the consumer uses the ledger)")
            if name == "ConsumerRole" and any(a.split(":")[0] in ("s3", "*") for a in actions):
                problems.append(f"ConsumerRole/{sid}: S3 actions {actions} (the consumer needs no bucket)")
    consumer = roles.get("ConsumerRole")
    if consumer is None:
        return problems + ["ConsumerRole: missing"]
    granted: set[str] = set()
    for st in role_statements(consumer):
        if st.get("Effect") != "Allow":
            continue
        actions = [str(a) for a in as_list(st.get("Action"))]
        ddb = [a for a in actions if a.startswith("dynamodb:")]
        if not ddb:
            continue
        sid = st.get("Sid", "?")
        if "NotResource" in st or "NotAction" in st:
            problems.append(f"ConsumerRole/{sid}: NotAction/NotResource on the ledger")
        extra = sorted(set(ddb) - LEDGER_ACTIONS)
        if extra:
            problems.append(f"ConsumerRole/{sid}: {extra} beyond {sorted(LEDGER_ACTIONS)}")
        resources = as_list(st.get("Resource"))
        if not resources or not all(is_table_arn(r) for r in resources):
            problems.append(f"ConsumerRole/{sid}: DynamoDB on {resources} (must be exactly {LEDGER_TABLE}.Arn)")
        granted |= set(ddb) & LEDGER_ACTIONS
    if granted != LEDGER_ACTIONS:
        problems.append(f"ConsumerRole: ledger actions {sorted(granted)} (the consumer needs {sorted(LEDGER_ACTIONS)})")
    return problems


def env_number(env: dict, name: str) -> tuple[int | None, str | None]:
    """A consumer variable's value as consumer_from_env reads it (its default when unset), or
    why it cannot be read from the template."""
    default, lo, hi = CONSUMER_ENV_NUMBERS[name]
    v = env.get(name, str(default))
    if not isinstance(v, (str, int)) or not str(v).isdigit():
        return None, f"ConsumerFunction: {name} is {v!r}, not a literal number the check can verify"
    n = int(v)
    if not lo <= n <= hi:
        return None, f"ConsumerFunction: {name}={n} outside {lo}..{hi} (the consumer refuses to start)"
    return n, None


def check_consumer_ledger_env(t: dict) -> list[str]:
    """The consumer's ledger settings as template.yaml sets them: the table by reference, no
    bucket; a lease that outlasts two of the longest API calls (consumer_from_env refuses a
    shorter one at start-up, so this finds it before a deploy); items that outlive every message
    (work queue retention + DLQ retention: the consumer's own dead letters start a new
    retention period in the DLQ)."""
    fn = t["Resources"].get("ConsumerFunction", {})
    env = fn.get("Properties", {}).get("Environment", {}).get("Variables", {})
    problems = []
    if env.get("LEDGER_TABLE") != {"Ref": LEDGER_TABLE}:
        problems.append(f"ConsumerFunction: LEDGER_TABLE is {env.get('LEDGER_TABLE')!r}, not !Ref {LEDGER_TABLE}")
    if "LEDGER_BUCKET" in env:
        problems.append("ConsumerFunction: LEDGER_BUCKET is set (the ledger is the DynamoDB table)")
    n = {}
    for name in CONSUMER_ENV_NUMBERS:
        n[name], problem = env_number(env, name)
        if problem:
            problems.append(problem)
    if None in n.values():
        return problems
    longest_call_ms = n["API_TIMEOUT_MS"] + n["API_CONNECT_TIMEOUT_MS"]
    if n["LEDGER_LEASE_SECS"] * 1000 < 2 * longest_call_ms:
        problems.append(f"ConsumerFunction: LEDGER_LEASE_SECS={n['LEDGER_LEASE_SECS']} < 2 x (API_TIMEOUT_MS + "
                        f"API_CONNECT_TIMEOUT_MS) = {2 * longest_call_ms / 1000:g} s")
    queues = of_type(t, "AWS::SQS::Queue")
    work = queues.get("WorkQueue", {}).get("Properties", {})
    target = work.get("RedrivePolicy", {}).get("deadLetterTargetArn")
    dlq = next((q["Properties"] for k, q in queues.items() if refers_to(target, k)), {})
    retention = [p.get("MessageRetentionPeriod", 345600) for p in (work, dlq)]  # SQS's default: 4 days
    if not all(isinstance(r, int) for r in retention) or not dlq:
        problems.append(f"WorkQueue/DLQ retention {retention} cannot be verified against LEDGER_TTL_DAYS")
    elif n["LEDGER_TTL_DAYS"] * 86400 <= sum(retention):
        problems.append(f"ConsumerFunction: LEDGER_TTL_DAYS={n['LEDGER_TTL_DAYS']} ({n['LEDGER_TTL_DAYS'] * 86400} s) "
                        f"<= work queue + DLQ retention ({sum(retention)} s): a message could outlive its ledger item")
    return problems


# The longest retry window a feed may set (MAX_RETRY_WINDOW_SECS in shared/src/config.rs) and
# SQS's longest message delay (a requeued copy waits at most that long).
MAX_RETRY_WINDOW_SECS = 259_200
SQS_MAX_DELAY_SECS = 900


def check_consumer_gate_env(t: dict) -> list[str]:
    """The consumer's outage settings: the API's rate from the ApiRequestsPerSecond parameter
    (at least 1), the breaker's probe interval from BreakerProbeSeconds, a backoff that fits
    SQS's 15-minute delay, a default retry window within the longest one, a work queue that
    keeps a message longer than the longest window plus one delay (else a message still
    inside its window could expire), and the consumer's right to requeue onto the work queue."""
    problems = []
    fn = t["Resources"].get("ConsumerFunction", {})
    env = fn.get("Properties", {}).get("Environment", {}).get("Variables", {})
    params = t.get("Parameters", {})
    for var, param, floor in (("API_RATE_PER_SEC", "ApiRequestsPerSecond", 1),
                              ("BREAKER_PROBE_SECS", "BreakerProbeSeconds", 1)):
        if env.get(var) != {"Ref": param}:
            problems.append(f"ConsumerFunction: {var} is {env.get(var)!r}, not !Ref {param}")
        p = params.get(param, {})
        if p.get("Type") != "Number" or not isinstance(p.get("MinValue"), int) or p["MinValue"] < floor:
            problems.append(f"{param}: must be a Number with MinValue >= {floor}")
    cap = params.get("BackoffCapSeconds", {})
    if not isinstance(cap.get("MaxValue"), int) or cap["MaxValue"] > SQS_MAX_DELAY_SECS:
        problems.append(f"BackoffCapSeconds: MaxValue {cap.get('MaxValue')} beyond SQS's {SQS_MAX_DELAY_SECS} s delay")
    window = env.get("RETRY_WINDOW_SECS")
    if not (isinstance(window, str) and window.isdigit() and 1 <= int(window) <= MAX_RETRY_WINDOW_SECS):
        problems.append(f"ConsumerFunction: RETRY_WINDOW_SECS={window!r} (1..{MAX_RETRY_WINDOW_SECS})")
    work = of_type(t, "AWS::SQS::Queue").get("WorkQueue", {}).get("Properties", {})
    retention = work.get("MessageRetentionPeriod", 345600)
    if not isinstance(retention, int) or retention <= MAX_RETRY_WINDOW_SECS + SQS_MAX_DELAY_SECS:
        problems.append(f"WorkQueue: MessageRetentionPeriod {retention!r} <= the longest retry window + one delay "
                        f"({MAX_RETRY_WINDOW_SECS + SQS_MAX_DELAY_SECS} s)")
    role = t["Resources"].get("ConsumerRole", {})
    requeue = [st for st in role_statements(role) if st.get("Effect") == "Allow"
               and "sqs:SendMessage" in as_list(st.get("Action"))
               and any(refers_to(r, "WorkQueue") for r in as_list(st.get("Resource")))]
    if not requeue:
        problems.append("ConsumerRole: no sqs:SendMessage on the WorkQueue (a retry is a requeued copy)")
    return problems


def check_parameters(source: dict) -> list[str]:
    problems = []
    params = source["Parameters"]
    api = params.get("ApiBaseUrl", {})
    pat = api.get("AllowedPattern")
    if not pat:
        problems.append("ApiBaseUrl: no AllowedPattern")
    else:
        for ok in ("https://api.example.org", "https://ct.example.org:8443/v2"):
            if not re.fullmatch(pat, ok):
                problems.append(f"ApiBaseUrl pattern refuses {ok}")
        for bad in ("http://api.example.org", "https://", "ftp://x", "api.example.org", "https:// x", "HTTP://a.b"):
            if re.fullmatch(pat, bad):
                problems.append(f"ApiBaseUrl pattern accepts {bad!r}")
    for name, floor in (("ConsumerConcurrency", 2), ("MaxReceiveCount", 5)):
        p = params.get(name, {})
        if p.get("Type") != "Number" or not isinstance(p.get("MinValue"), int) or p["MinValue"] < floor:
            problems.append(f"{name}: MinValue must be >= {floor} (is {p.get('MinValue')})")
    for name, p in params.items():
        d = p.get("Default")
        if p.get("Type") == "Number" and d is not None:
            if "MinValue" in p and float(d) < p["MinValue"] or "MaxValue" in p and float(d) > p["MaxValue"]:
                problems.append(f"{name}: default {d} outside its own bounds")
        if p.get("Type") == "String" and d is not None and p.get("AllowedPattern") and not re.fullmatch(p["AllowedPattern"], d):
            problems.append(f"{name}: default {d!r} does not match its own pattern")
    # the work queue's visibility must cover the consumer's timeout (AWS recommends 6x)
    vis = params.get("WorkQueueVisibilityTimeout", {})
    timeout = source["Resources"]["ConsumerFunction"]["Properties"].get("Timeout", 3)
    if vis.get("Default", 0) < 6 * timeout or vis.get("MinValue", 0) < timeout:
        problems.append("WorkQueueVisibilityTimeout: default below 6x / minimum below 1x the consumer timeout")
    return problems


def check_outputs(source: dict) -> list[str]:
    outs = source.get("Outputs", {})
    want = {
        "DataBucketName": "DataBucket",
        "WorkQueueUrl": "WorkQueue",
        "DeadLetterQueueUrl": "DeadLetterQueue",
        "LedgerTableName": "LedgerTable",
        "SplitterFailuresQueueUrl": "SplitterFailuresQueue",
        "SplitterFunctionName": "SplitterFunction",
        "ConsumerFunctionName": "ConsumerFunction",
    }
    return [f"Outputs.{k}: missing or not {v}" for k, v in want.items() if not refers_to(outs.get(k, {}).get("Value"), v)]


def check_no_unjustified_suppressions(source: dict) -> list[str]:
    found = []
    tops = [("template", source.get("Metadata", {}))] + [(k, r.get("Metadata", {})) for k, r in source["Resources"].items()]
    for where, meta in tops:
        for rule in as_list(meta.get("cfn-lint", {}).get("config", {}).get("ignore_checks")):
            if (where, rule) not in JUSTIFIED_SUPPRESSIONS:
                found.append(f"{where}: cfn-lint rule {rule} suppressed without a justification")
    return found


# ----------------------------------------------------------------------------- the real template


def test_iam_least_privilege(deployed):
    assert check_iam_least_privilege(deployed) == []


def test_data_bucket(deployed):
    assert check_data_bucket(deployed) == []


def test_queues(deployed):
    assert check_queues(deployed) == []


def test_functions(deployed, source):
    assert check_functions(deployed, source) == []


def test_ledger_table(deployed):
    assert check_ledger_table(deployed) == []


def test_ledger_access(deployed):
    assert check_ledger_access(deployed) == []


def test_consumer_ledger_env(deployed):
    assert check_consumer_ledger_env(deployed) == []


def test_consumer_gate_env(deployed):
    assert check_consumer_gate_env(deployed) == []


def test_parameters(source):
    assert check_parameters(source) == []


def test_outputs(source):
    assert check_outputs(source) == []


def test_no_unjustified_suppressions(source):
    assert check_no_unjustified_suppressions(source) == []


def test_cfn_lint_clean():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    r = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_sam_test_image_matches_the_architecture(source):
    """tools/sam-test.sh invokes under the image of the architecture the template deploys."""
    arch = source["Globals"]["Function"]["Architectures"][0]
    script = (ROOT / "tools" / "sam-test.sh").read_text()
    assert f"public.ecr.aws/lambda/provided:al2023-{arch}" in script


# ----------------------------------------------------------------------------- the checks catch breaks


def statement(t: dict, role: str, sid: str) -> dict:
    return next(s for s in role_statements(t["Resources"][role]) if s.get("Sid") == sid)


def _set(path):
    """A mutation that sets t[path[0]][path[1]]... = value."""
    def apply(value):
        def m(t):
            d = t
            for k in path[:-1]:
                d = d[k]
            d[path[-1]] = value
        return m
    return apply


def _stmt(role, sid, key, value):
    def m(t):
        statement(t, role, sid)[key] = value
    return m


def _add_stmt(role, st):
    def m(t):
        t["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(st)
    return m


def _del(path):
    def m(t):
        d = t
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return m


BUCKET = ["Resources", "DataBucket", "Properties"]
DATA = "arn:${AWS::Partition}:s3:::" + DATA_BUCKET_NAME

LEDGER_ARN = {"Fn::GetAtt": ["LedgerTable", "Arn"]}
CONSUMER_READS_STATE = {"Sid": "X", "Effect": "Allow", "Action": "s3:GetObject", "Resource": {"Fn::Sub": DATA + "/state/*"}}
SPLITTER_USES_LEDGER = {"Sid": "X", "Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": LEDGER_ARN}

IAM_BREAKS = {
    "resource star on sqs": _stmt("SplitterRole", "SendWork", "Resource", "*"),
    "action wildcard": _stmt("ConsumerRole", "Ledger", "Action", "dynamodb:*"),
    "star action": _stmt("ConsumerRole", "PermanentFailuresToDlq", "Action", "*"),
    "whole bucket objects": _stmt("SplitterRole", "ReadInputsStateConfig", "Resource", {"Fn::Sub": DATA + "/*"}),
    "splitter writes incoming": _stmt("SplitterRole", "WriteOutputs", "Resource", {"Fn::Sub": DATA + "/incoming/*"}),
    "consumer reads state": _add_stmt("ConsumerRole", CONSUMER_READS_STATE),
    "list without prefix": _stmt("SplitterRole", "ListForNotFound", "Condition", {}),
    "ledger scan": _stmt("ConsumerRole", "Ledger", "Action", ["dynamodb:GetItem", "dynamodb:Scan"]),
    "ledger on every table": _stmt("ConsumerRole", "Ledger", "Resource", "*"),
    "foreign table": _stmt("ConsumerRole", "Ledger", "Resource", "arn:aws:dynamodb:us-east-1:111122223333:table/t"),
    "splitter uses the ledger": _add_stmt("SplitterRole", SPLITTER_USES_LEDGER),
    "all secrets": _stmt("ConsumerRole", "ApiToken", "Resource", "*"),
    "splitter reads the secret": _add_stmt("SplitterRole", {"Sid": "X", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                                                            "Resource": {"Ref": "ApiTokenSecret"}}),
    "other log groups": _stmt("SplitterRole", "Logs", "Resource", {"Fn::Sub": "arn:${AWS::Partition}:logs:*:*:*"}),
    "foreign queue": _stmt("ConsumerRole", "PermanentFailuresToDlq", "Resource", "arn:aws:sqs:us-east-1:111122223333:other"),
    "unexpected service": _add_stmt("ConsumerRole", {"Sid": "X", "Effect": "Allow", "Action": "lambda:InvokeFunction",
                                                     "Resource": "arn:aws:lambda:us-east-1:111122223333:function:f"}),
    "managed policy": _set(["Resources", "ConsumerRole", "Properties", "ManagedPolicyArns"])(
        ["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]),
}

BUCKET_BREAKS = {
    "public acls": _set(BUCKET + ["PublicAccessBlockConfiguration", "BlockPublicAcls"])(False),
    "no encryption": _del(BUCKET + ["BucketEncryption"]),
    "no versioning": _del(BUCKET + ["VersioningConfiguration"]),
    "no runs expiry": lambda t: t["Resources"]["DataBucket"]["Properties"]["LifecycleConfiguration"].__setitem__(
        "Rules", [r for r in t["Resources"]["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
                  if not (isinstance(r, dict) and r.get("Prefix") == "runs/")]),
    "a ledger/ rule again": lambda t: t["Resources"]["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"].append(
        {"Id": "expire-ledger", "Status": "Enabled", "Prefix": "ledger/", "ExpirationInDays": 30}),
    "no noncurrent expiry": lambda t: [r.pop("NoncurrentVersionExpiration", None)
                                       for r in t["Resources"]["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
                                       if isinstance(r, dict)],
    "no tls policy": lambda t: t["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"].pop(0),
}

QUEUE_BREAKS = {
    "dlq no sse": _set(["Resources", "DeadLetterQueue", "Properties", "SqsManagedSseEnabled"])(False),
    "dlq 4 days": _set(["Resources", "DeadLetterQueue", "Properties", "MessageRetentionPeriod"])(345600),
    "small messages": _set(["Resources", "WorkQueue", "Properties", "MaximumMessageSize"])(262144),
    "dlq default size": _del(["Resources", "DeadLetterQueue", "Properties", "MaximumMessageSize"]),
    "failures queue not tls-only": lambda t: t["Resources"]["QueuesTlsOnlyPolicy"]["Properties"]["Queues"].pop(),
    "no redrive": _del(["Resources", "WorkQueue", "Properties", "RedrivePolicy"]),
}

FUNCTION_BREAKS = {
    "tracing off": _set(["Resources", "ConsumerFunction", "Properties", "TracingConfig"])({"Mode": "PassThrough"}),
    "text logs": _set(["Resources", "SplitterFunction", "Properties", "LoggingConfig", "LogFormat"])("Text"),
    "endpoint deployed": _set(["Resources", "SplitterFunction", "Properties", "Environment", "Variables", "AWS_ENDPOINT_URL"])(
        "http://localhost:5000"),
}

TABLE = ["Resources", "LedgerTable"]
TABLE_PROPS = TABLE + ["Properties"]

LEDGER_TABLE_BREAKS = {
    "no table": _del(TABLE),
    "provisioned": _set(TABLE_PROPS + ["BillingMode"])("PROVISIONED"),
    "range key": _set(TABLE_PROPS + ["KeySchema"])([{"AttributeName": "pk", "KeyType": "HASH"},
                                                    {"AttributeName": "sk", "KeyType": "RANGE"}]),
    "numeric key": _set(TABLE_PROPS + ["AttributeDefinitions"])([{"AttributeName": "pk", "AttributeType": "N"}]),
    "other key name": _set(TABLE_PROPS + ["KeySchema"])([{"AttributeName": "id", "KeyType": "HASH"}]),
    "ttl off": _set(TABLE_PROPS + ["TimeToLiveSpecification", "Enabled"])(False),
    "ttl on another attribute": _set(TABLE_PROPS + ["TimeToLiveSpecification", "AttributeName"])("ttl"),
    "no ttl": _del(TABLE_PROPS + ["TimeToLiveSpecification"]),
    "sse off": _set(TABLE_PROPS + ["SSESpecification", "SSEEnabled"])(False),
    "no pitr": _del(TABLE_PROPS + ["PointInTimeRecoverySpecification"]),
    "deleted with the stack": _set(TABLE + ["DeletionPolicy"])("Delete"),
    "replaced away": _set(TABLE + ["UpdateReplacePolicy"])("Delete"),
}

LEDGER_ACCESS_BREAKS = {
    "dynamodb star": _stmt("ConsumerRole", "Ledger", "Action", "dynamodb:*"),
    "scan": _stmt("ConsumerRole", "Ledger", "Action", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                                                       "dynamodb:Scan"]),
    "query": _stmt("ConsumerRole", "Ledger", "Action", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                                                        "dynamodb:Query"]),
    "delete item": _stmt("ConsumerRole", "Ledger", "Action", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                                                              "dynamodb:DeleteItem"]),
    "no update": _stmt("ConsumerRole", "Ledger", "Action", ["dynamodb:GetItem", "dynamodb:PutItem"]),
    "star resource": _stmt("ConsumerRole", "Ledger", "Resource", "*"),
    "the table and its indexes": _stmt("ConsumerRole", "Ledger", "Resource", [
        LEDGER_ARN, {"Fn::Sub": "${LedgerTable.Arn}/index/*"}]),
    "another table": _stmt("ConsumerRole", "Ledger", "Resource", "arn:aws:dynamodb:us-east-1:111122223333:table/t"),
    "no ledger grant": lambda t: t["Resources"]["ConsumerRole"]["Properties"]["Policies"][0]["PolicyDocument"].__setitem__(
        "Statement", [s for s in role_statements(t["Resources"]["ConsumerRole"]) if s.get("Sid") != "Ledger"]),
    "splitter uses the ledger": _add_stmt("SplitterRole", SPLITTER_USES_LEDGER),
    "consumer reads the bucket": _add_stmt("ConsumerRole", CONSUMER_READS_STATE),
    "consumer s3 star": _add_stmt("ConsumerRole", {"Sid": "X", "Effect": "Allow", "Action": "s3:*",
                                                   "Resource": {"Fn::Sub": DATA + "/*"}}),
}

CONSUMER_ENV = ["Resources", "ConsumerFunction", "Properties", "Environment", "Variables"]

CONSUMER_LEDGER_ENV_BREAKS = {
    "no table": _del(CONSUMER_ENV + ["LEDGER_TABLE"]),
    "table by name": _set(CONSUMER_ENV + ["LEDGER_TABLE"])("casefeed-ledger"),
    "a ledger bucket again": _set(CONSUMER_ENV + ["LEDGER_BUCKET"])({"Fn::Sub": DATA_BUCKET_NAME}),
    "lease shorter than two calls": _set(CONSUMER_ENV + ["LEDGER_LEASE_SECS"])("20"),
    "slower api": _set(CONSUMER_ENV + ["API_TIMEOUT_MS"])("40000"),
    "lease below the consumer's minimum": _set(CONSUMER_ENV + ["LEDGER_LEASE_SECS"])("3"),
    "lease from a parameter": _set(CONSUMER_ENV + ["LEDGER_LEASE_SECS"])({"Ref": "WorkQueueVisibilityTimeout"}),
    "ttl 17 days": _set(CONSUMER_ENV + ["LEDGER_TTL_DAYS"])("17"),
    "ttl just the retention (4 + 14 days)": _set(CONSUMER_ENV + ["LEDGER_TTL_DAYS"])("18"),
    "ttl 20 days, a 10-day work queue": lambda t: (
        t["Resources"]["ConsumerFunction"]["Properties"]["Environment"]["Variables"].__setitem__("LEDGER_TTL_DAYS", "20"),
        t["Resources"]["WorkQueue"]["Properties"].__setitem__("MessageRetentionPeriod", 864000)),
    "wait beyond the consumer's maximum": _set(CONSUMER_ENV + ["LEDGER_WAIT_MS"])("120000"),
}

CONSUMER_GATE_ENV_BREAKS = {
    "a literal rate": _set(CONSUMER_ENV + ["API_RATE_PER_SEC"])("50"),
    "no rate": _del(CONSUMER_ENV + ["API_RATE_PER_SEC"]),
    "a rate of zero allowed": _set(["Parameters", "ApiRequestsPerSecond", "MinValue"])(0),
    "no probe interval": _del(CONSUMER_ENV + ["BREAKER_PROBE_SECS"]),
    "a 12-hour backoff": _set(["Parameters", "BackoffCapSeconds", "MaxValue"])(43200),
    "a window of 4 days": _set(CONSUMER_ENV + ["RETRY_WINDOW_SECS"])("345600"),
    "a 3-day work queue": _set(["Resources", "WorkQueue", "Properties", "MessageRetentionPeriod"])(259200),
    "no requeue": lambda t: t["Resources"]["ConsumerRole"]["Properties"]["Policies"][0]["PolicyDocument"].__setitem__(
        "Statement", [s for s in role_statements(t["Resources"]["ConsumerRole"]) if s.get("Sid") != "RequeueForRetry"]),
}

PARAMETER_BREAKS = {
    "http allowed": _set(["Parameters", "ApiBaseUrl", "AllowedPattern"])("^https?://.*"),
    "empty host allowed": _set(["Parameters", "ApiBaseUrl", "AllowedPattern"])("^https://.*"),
    "concurrency 1": _set(["Parameters", "ConsumerConcurrency", "MinValue"])(1),
    "receive count 2": _set(["Parameters", "MaxReceiveCount", "MinValue"])(2),
    "no min receive count": _del(["Parameters", "MaxReceiveCount", "MinValue"]),
}


def broken(t: dict, mutate) -> dict:
    t = copy.deepcopy(t)
    mutate(t)
    return t


@pytest.mark.parametrize("break_", IAM_BREAKS.values(), ids=IAM_BREAKS.keys())
def test_iam_check_catches(deployed, break_):
    assert check_iam_least_privilege(broken(deployed, break_)) != []


@pytest.mark.parametrize("break_", BUCKET_BREAKS.values(), ids=BUCKET_BREAKS.keys())
def test_bucket_check_catches(deployed, break_):
    assert check_data_bucket(broken(deployed, break_)) != []


@pytest.mark.parametrize("break_", QUEUE_BREAKS.values(), ids=QUEUE_BREAKS.keys())
def test_queue_check_catches(deployed, break_):
    assert check_queues(broken(deployed, break_)) != []


@pytest.mark.parametrize("break_", FUNCTION_BREAKS.values(), ids=FUNCTION_BREAKS.keys())
def test_function_check_catches(deployed, source, break_):
    assert check_functions(broken(deployed, break_), source) != []


@pytest.mark.parametrize("break_", LEDGER_TABLE_BREAKS.values(), ids=LEDGER_TABLE_BREAKS.keys())
def test_ledger_table_check_catches(deployed, break_):
    assert check_ledger_table(broken(deployed, break_)) != []


@pytest.mark.parametrize("break_", LEDGER_ACCESS_BREAKS.values(), ids=LEDGER_ACCESS_BREAKS.keys())
def test_ledger_access_check_catches(deployed, break_):
    assert check_ledger_access(broken(deployed, break_)) != []


@pytest.mark.parametrize("break_", CONSUMER_LEDGER_ENV_BREAKS.values(), ids=CONSUMER_LEDGER_ENV_BREAKS.keys())
def test_consumer_ledger_env_check_catches(deployed, break_):
    assert check_consumer_ledger_env(broken(deployed, break_)) != []


@pytest.mark.parametrize("break_", CONSUMER_GATE_ENV_BREAKS.values(), ids=CONSUMER_GATE_ENV_BREAKS.keys())
def test_consumer_gate_env_check_catches(deployed, break_):
    assert check_consumer_gate_env(broken(deployed, break_)) != []


@pytest.mark.parametrize("break_", PARAMETER_BREAKS.values(), ids=PARAMETER_BREAKS.keys())
def test_parameter_check_catches(source, break_):
    assert check_parameters(broken(source, break_)) != []


def test_outputs_check_catches(source):
    assert check_outputs(broken(source, _del(["Outputs", "DeadLetterQueueUrl"]))) != []
    assert check_outputs(broken(source, _del(["Outputs", "LedgerTableName"]))) != []


def test_suppression_check_catches(source):
    t = broken(source, _set(["Resources", "WorkQueue", "Metadata"])({"cfn-lint": {"config": {"ignore_checks": ["W3011"]}}}))
    assert check_no_unjustified_suppressions(t) != []


def test_sam_adds_no_policy_when_broken_on_purpose(source):
    """Sanity of the transform path: a function without an explicit Role gets a SAM role with
    a managed policy, which the IAM check refuses."""
    t = copy.deepcopy(source)
    del t["Resources"]["ConsumerFunction"]["Properties"]["Role"]
    assert check_iam_least_privilege(transform(t)) != []
