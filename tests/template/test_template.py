"""Security and operability properties of template.yaml, checked on the template itself and on
what SAM turns it into (samtranslator, offline): the IAM policies, bucket, queues, functions,
parameters and outputs that a deploy would create, the consumer's ledger table and its
settings, the alarms, their topic and the dashboard, and the optional customer key, VPC and
access logging under the parameters that switch them on (conditions.py resolves the
template's conditions for given parameter values, as CloudFormation would).

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conditions import condition_values, resolve, rules_hold  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

# The EMF metrics the functions emit (namespace casefeed), each with its dimension sets.
# Mirrors shared/src/metrics.rs, which has a unit test checking the same list: change both
# together. Alarms and the dashboard may name only these (and AWS/* metrics of the stack's
# own resources).
EMF_NAMESPACE = "casefeed"
_SPLITTER_DIMS = [["feed"], ["feed", "status"], []]
_CONSUMER_FEED_DIMS = [["feed"], []]
EMITTED: dict[str, list[list[str]]] = {
    # splitter, per run
    **{name: _SPLITTER_DIMS for name in (
        "RowsRead", "RowsNew", "RowsChanged", "RowsRemoved", "RowsRejected", "RowsDuplicate",
        "RowsKnown", "MessagesSent", "FilesHeld", "RunsApplied", "RunMillis")},
    # consumer, per feed
    **{name: _CONSUMER_FEED_DIMS for name in (
        "Applied", "Duplicates", "Superseded", "Retried", "Unfinished", "ApiCalls",
        "ApiLatencyMillis", "SentToAppliedMillis", "UploadToAppliedMillis", "SupersededAgeMillis",
        "DeadLetteredAgeMillis")},
    # consumer, per feed and class
    "DeadLettered": [["feed"], ["feed", "class"], []],
    # consumer, per invocation
    "ApiAuthFailures": [[]],
    "CircuitOpen": [[]],
}

# AWS metrics the alarms and dashboard may use, by namespace: the dimension and the resource
# type it must name (a resource of this template).
AWS_METRICS = {
    "AWS/Lambda": ("FunctionName", ("AWS::Lambda::Function", "AWS::Serverless::Function"), {
        "Invocations", "Errors", "Throttles", "Duration", "ConcurrentExecutions",
        "AsyncEventsDropped", "AsyncEventAge", "AsyncEventsReceived"}),
    "AWS/SQS": ("QueueName", ("AWS::SQS::Queue",), {
        "ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed", "ApproximateAgeOfOldestMessage",
        "NumberOfMessagesSent", "NumberOfMessagesReceived", "NumberOfMessagesDeleted"}),
}

# The casefeed CLI commands an alarm description may point to (tools/src/main.rs).
CLI_COMMANDS = ("casefeed status", "casefeed dlq list", "casefeed failures list", "casefeed held",
                "casefeed runs --feed")

# Parameter sets the template is resolved for (conditions evaluated); every security check runs
# on each. The values are placeholders: nothing here is ever sent to AWS.
KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/0b6a3c1e-7d2f-4e55-9a8b-1c2d3e4f5a6b"
TOPIC_ARN = "arn:aws:sns:us-east-1:111122223333:ops-alarms"
VPC = {"ConsumerSubnetIds": "subnet-0123456789abcdef0,subnet-0fedcba9876543210",
       "ConsumerSecurityGroupIds": "sg-0123456789abcdef0"}
SCENARIOS = {
    "defaults": {},
    "customer-key": {"KmsKeyArn": KEY_ARN},
    "vpc": VPC,
    "email": {"AlarmEmail": "oncall@example.org"},
    "existing-topic": {"AlarmTopicArn": TOPIC_ARN},
    "existing-topic+email": {"AlarmTopicArn": TOPIC_ARN, "AlarmEmail": "oncall@example.org"},
    "everything": {"KmsKeyArn": KEY_ARN, **VPC, "AlarmEmail": "oncall@example.org"},
}

# SQS's largest message (1 MiB). The splitter refuses (rejects the row) any message larger than
# SQS_MAX_MESSAGE_BYTES, whose default is this value (shared/src/app.rs), so the work queue and
# the DLQ must accept at least this much or rows the splitter accepted would fail to send.
SPLITTER_MAX_MESSAGE_BYTES = 1024 * 1024
# Worst case of one envelope: a max_row_bytes row (events/feeds.toml: 65536) whose every byte
# JSON-escapes to \u00XX (6 bytes), plus column names, metadata and message attributes.
ENVELOPE_WORST_CASE_BYTES = 65536 * 6 + 16 * 1024

# Actions that have no resource-level permissions: only these may use Resource "*".
NO_RESOURCE_LEVEL_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
# The consumer in a VPC (ConsumerSubnetIds): Lambda manages its network interfaces with its
# role (AWSLambdaVPCAccessExecutionRole's actions). The Describe ones have no resource-level
# permissions; the changes are limited to the stack's account and region.
VPC_DESCRIBE_ACTIONS = {"ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"}
VPC_ENI_ACTIONS = {"ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface",
                   "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"}
VPC_ENI_RESOURCE = "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:*/*"
# What each role may do with the customer key (KmsKeyArn), and only with it.
KMS_ACTIONS = {"kms:Decrypt", "kms:GenerateDataKey"}

# What each role may do in the data bucket, by key prefix (least privilege, by design):
# the splitter never writes incoming/ (it would re-trigger itself); the consumer has no
# business in the bucket at all (its ledger is the DynamoDB table, consumer_from_env in
# shared/src/adapters/env.rs builds no S3 client).
S3_GRANTS = {
    "SplitterRole": {
        "s3:GetObject": {"incoming", "state", "config"},
        "s3:GetObjectVersion": {"incoming", "state", "config"},
        "s3:PutObject": {"state", "runs", "rejects", "removed", "sent", "held"},
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
def raw(source) -> dict:
    """What SAM produces, conditions unresolved (Fn::If, AWS::NoValue as written)."""
    return transform(source)


@pytest.fixture(scope="module")
def deployed(raw) -> dict:
    """The stack deployed with every parameter at its default."""
    return resolve(raw)


@pytest.fixture(scope="module", params=list(SCENARIOS), ids=list(SCENARIOS))
def scenario(request, raw) -> dict:
    """The stack deployed with one of SCENARIOS' parameter sets."""
    return resolve(raw, SCENARIOS[request.param])


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
    """The statements of a role's inline policies (of both branches of a conditional policy
    when the template is not resolved)."""
    out = []
    for p in role["Properties"].get("Policies", []):
        if "Fn::If" in p:
            branches = [b for b in p["Fn::If"][1:] if isinstance(b, dict) and "PolicyDocument" in b]
        else:
            branches = [p]
        for b in branches:
            out.extend(as_list(b["PolicyDocument"]["Statement"]))
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
                    star_ok = NO_RESOURCE_LEVEL_ACTIONS | (VPC_DESCRIBE_ACTIONS if name == "ConsumerRole" else set())
                    broad = [a for a in actions if a not in star_ok]
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
                    elif service == "kms":
                        if a not in KMS_ACTIONS or r != {"Ref": "KmsKeyArn"}:
                            problems.append(f"{name}/{sid}: {a} on {r} (only {sorted(KMS_ACTIONS)} on KmsKeyArn)")
                    elif service == "ec2":
                        if name != "ConsumerRole" or a not in VPC_ENI_ACTIONS or s != VPC_ENI_RESOURCE:
                            problems.append(f"{name}/{sid}: {a} on {r} (only the consumer's network interfaces: "
                                            f"{sorted(VPC_ENI_ACTIONS)} on {VPC_ENI_RESOURCE})")
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


# ----------------------------------------------------------------------------- optional wiring
# These take the unresolved template (what SAM produces) and resolve it themselves for the
# parameter sets they are about.

KMS_TARGETS = {
    # resource -> where its key goes (a path of keys into Properties)
    "WorkQueue": ["KmsMasterKeyId"],
    "DeadLetterQueue": ["KmsMasterKeyId"],
    "SplitterFailuresQueue": ["KmsMasterKeyId"],
    "LedgerTable": ["SSESpecification", "KMSMasterKeyId"],
    "SplitterLogGroup": ["KmsKeyId"],
    "ConsumerLogGroup": ["KmsKeyId"],
    "ApiTokenSecret": ["KmsKeyId"],
    "SplitterFunction": ["KmsKeyArn"],
    "ConsumerFunction": ["KmsKeyArn"],
    "AlarmTopic": ["KmsMasterKeyId"],
}
KEY_REF = {"Ref": "KmsKeyArn"}


def dig(d, path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def mentions(x, needle) -> bool:
    """Whether the value needle occurs anywhere in x."""
    if x == needle:
        return True
    if isinstance(x, dict):
        return any(mentions(v, needle) for v in x.values())
    if isinstance(x, list):
        return any(mentions(v, needle) for v in x)
    return False


def bucket_sse(t: dict, bucket: str) -> list[dict]:
    return [r.get("ServerSideEncryptionByDefault", {}) for r in
            t["Resources"][bucket]["Properties"].get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [])]


def role_grants(t: dict, role: str, action: str) -> list:
    return [r for st in role_statements(t["Resources"][role]) if st.get("Effect") == "Allow"
            and action in as_list(st.get("Action")) for r in as_list(st.get("Resource"))]


def check_kms_wiring(raw: dict) -> list[str]:
    """KmsKeyArn empty: AWS-managed encryption everywhere, the key named nowhere. Set: it
    encrypts the bucket (SSE-KMS), the queues, the table, the log groups, the secret, the
    functions' environment and the alarm topic, and both roles may use it."""
    problems = []
    off, on = resolve(raw), resolve(raw, {"KmsKeyArn": KEY_ARN})
    for name, path in KMS_TARGETS.items():
        if name not in on["Resources"]:
            problems.append(f"{name}: missing")
            continue
        if dig(on["Resources"][name]["Properties"], path) != KEY_REF:
            problems.append(f"{name}: {'.'.join(path)} is not KmsKeyArn when KmsKeyArn is set")
    for name in off["Resources"]:
        if mentions(off["Resources"][name], KEY_REF):
            problems.append(f"{name}: uses KmsKeyArn although it is empty (the default)")
    # the defaults: as before the parameter existed
    for q in ("WorkQueue", "DeadLetterQueue", "SplitterFailuresQueue"):
        p_off, p_on = off["Resources"][q]["Properties"], on["Resources"][q]["Properties"]
        if p_off.get("SqsManagedSseEnabled") is not True or "KmsMasterKeyId" in p_off:
            problems.append(f"{q}: default is not SSE-SQS")
        if "SqsManagedSseEnabled" in p_on:
            problems.append(f"{q}: SqsManagedSseEnabled together with a KMS key (SQS refuses both)")
    if [s.get("SSEAlgorithm") for s in bucket_sse(off, "DataBucket")] != ["AES256"]:
        problems.append("DataBucket: default encryption is not SSE-S3 (AES256)")
    if [(s.get("SSEAlgorithm"), s.get("KMSMasterKeyID")) for s in bucket_sse(on, "DataBucket")] != [("aws:kms", KEY_REF)]:
        problems.append("DataBucket: not SSE-KMS with KmsKeyArn when it is set")
    ddb = on["Resources"]["LedgerTable"]["Properties"].get("SSESpecification", {})
    if ddb.get("SSEEnabled") is not True or ddb.get("SSEType") != "KMS":
        problems.append(f"LedgerTable: SSESpecification {ddb} with KmsKeyArn (SSEEnabled true, SSEType KMS)")
    for role in ("SplitterRole", "ConsumerRole"):
        for action in sorted(KMS_ACTIONS):
            if KEY_REF not in role_grants(on, role, action):
                problems.append(f"{role}: no {action} on KmsKeyArn when it is set")
            if role_grants(off, role, action):
                problems.append(f"{role}: {action} granted although KmsKeyArn is empty")
    # the access-log bucket stays SSE-S3: S3 log delivery does not support SSE-KMS there
    if [s.get("SSEAlgorithm") for s in bucket_sse(on, "AccessLogBucket")] != ["AES256"]:
        problems.append("AccessLogBucket: must stay SSE-S3 (server access log delivery refuses SSE-KMS)")
    pattern = raw["Parameters"]["KmsKeyArn"].get("AllowedPattern", "")
    if not (re.fullmatch(pattern, "") and re.fullmatch(pattern, KEY_ARN)
            and not re.fullmatch(pattern, "alias/aws/sqs")):
        problems.append("KmsKeyArn: AllowedPattern must accept empty or a key ARN, and refuse aliases")
    return problems


def check_vpc_wiring(raw: dict) -> list[str]:
    """ConsumerSubnetIds/ConsumerSecurityGroupIds empty: no VPC, no EC2 permission. Set: the
    consumer (only) in those subnets with those groups, and its role may manage its ENIs; a
    Rule refuses one without the other."""
    problems = []
    off, on = resolve(raw), resolve(raw, VPC)
    for t, label in ((off, "default"), (on, "vpc")):
        if "VpcConfig" in t["Resources"]["SplitterFunction"]["Properties"]:
            problems.append(f"SplitterFunction: in a VPC ({label})")
    if "VpcConfig" in off["Resources"]["ConsumerFunction"]["Properties"]:
        problems.append("ConsumerFunction: VpcConfig although ConsumerSubnetIds is empty")
    vpc = on["Resources"]["ConsumerFunction"]["Properties"].get("VpcConfig")
    if vpc != {"SubnetIds": {"Ref": "ConsumerSubnetIds"}, "SecurityGroupIds": {"Ref": "ConsumerSecurityGroupIds"}}:
        problems.append(f"ConsumerFunction: VpcConfig {vpc} (expected the two parameters)")
    ec2_off = [a for role in ("SplitterRole", "ConsumerRole") for st in role_statements(off["Resources"][role])
               for a in as_list(st.get("Action")) if str(a).startswith("ec2:")]
    if ec2_off:
        problems.append(f"EC2 permissions without a VPC: {ec2_off}")
    granted = {a for st in role_statements(on["Resources"]["ConsumerRole"]) for a in as_list(st.get("Action"))
               if str(a).startswith("ec2:")}
    if granted != VPC_DESCRIBE_ACTIONS | VPC_ENI_ACTIONS:
        problems.append(f"ConsumerRole in a VPC: ec2 actions {sorted(granted)} "
                        f"(AWSLambdaVPCAccessExecutionRole's: {sorted(VPC_DESCRIBE_ACTIONS | VPC_ENI_ACTIONS)})")
    rules = {
        "neither": ({}, True),
        "both": (VPC, True),
        "subnets only": ({"ConsumerSubnetIds": VPC["ConsumerSubnetIds"]}, False),
        "groups only": ({"ConsumerSecurityGroupIds": VPC["ConsumerSecurityGroupIds"]}, False),
    }
    for label, (params, ok) in rules.items():
        verdict = all(rules_hold(raw, params).values()) if raw.get("Rules") else True
        if verdict != ok:
            problems.append(f"Rules: {label} is {'accepted' if verdict else 'refused'} (should be "
                            f"{'accepted' if ok else 'refused'})")
        if not ok and condition_values(raw, params).get("ConsumerInVpc"):
            problems.append(f"ConsumerInVpc is true for {label}")
    for name, prefix in (("ConsumerSubnetIds", "subnet-"), ("ConsumerSecurityGroupIds", "sg-")):
        p = raw["Parameters"].get(name, {})
        if p.get("Type") != "CommaDelimitedList" or p.get("Default") != "":
            problems.append(f"{name}: must be a CommaDelimitedList defaulting to empty")
        else:
            pat = p.get("AllowedPattern")
            if not pat or not (re.fullmatch(pat, "") and re.fullmatch(pat, prefix + "0123456789abcdef0")) \
                    or re.fullmatch(pat, "vpc-0123456789abcdef0"):
                problems.append(f"{name}: AllowedPattern must accept empty and {prefix}... ids (only)")
    return problems


def check_access_logging(t: dict) -> list[str]:
    """The data bucket logs its access into a log bucket of its own: encrypted, private,
    versioned, expiring, TLS-only, written only by S3's log delivery for the data bucket."""
    problems = []
    res = t["Resources"]
    log = res.get("AccessLogBucket")
    if log is None:
        return ["AccessLogBucket: missing"]
    cfg = res["DataBucket"]["Properties"].get("LoggingConfiguration", {})
    if not refers_to(cfg.get("DestinationBucketName"), "AccessLogBucket"):
        problems.append(f"DataBucket: LoggingConfiguration {cfg} does not log to AccessLogBucket")
    prefix = cfg.get("LogFilePrefix", "")
    if "LoggingConfiguration" in log["Properties"]:
        problems.append("AccessLogBucket: logs to somewhere (a loop, or yet another bucket)")
    p = log["Properties"]
    pab = p.get("PublicAccessBlockConfiguration", {})
    if not all(pab.get(k) is True for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")):
        problems.append("AccessLogBucket: public access not fully blocked")
    if [s.get("SSEAlgorithm") for s in bucket_sse(t, "AccessLogBucket")] != ["AES256"]:
        problems.append("AccessLogBucket: not encrypted with SSE-S3")
    if p.get("VersioningConfiguration", {}).get("Status") != "Enabled":
        problems.append("AccessLogBucket: not versioned")
    rules = [r for r in p.get("LifecycleConfiguration", {}).get("Rules", []) if r.get("Status") == "Enabled"]
    if not any(isinstance(r.get("ExpirationInDays"), int) and r.get("Prefix", r.get("Filter", {}).get("Prefix", "")) in ("", prefix)
               for r in rules):
        problems.append("AccessLogBucket: no lifecycle rule expiring the logs")
    if not any(r.get("NoncurrentVersionExpiration", {}).get("NoncurrentDays", 0) > 0 for r in rules):
        problems.append("AccessLogBucket: noncurrent versions never expire")
    if p.get("OwnershipControls", {}).get("Rules", [{}])[0].get("ObjectOwnership") != "BucketOwnerEnforced":
        problems.append("AccessLogBucket: ACLs not disabled (delivery is authorised by the bucket policy)")
    policies = [x["Properties"]["PolicyDocument"] for x in of_type(t, "AWS::S3::BucketPolicy").values()
                if refers_to(x["Properties"]["Bucket"], "AccessLogBucket")]
    if not any(denies_insecure_transport(d, "s3", {"arn:${AWS::Partition}:s3:::${AccessLogBucket}",
                                                   "arn:${AWS::Partition}:s3:::${AccessLogBucket}/*"}) for d in policies):
        problems.append("AccessLogBucket: no bucket policy denying requests without TLS")
    delivery = [st for d in policies for st in as_list(d["Statement"]) if st.get("Effect") == "Allow"]
    ok = [st for st in delivery if st.get("Principal") == {"Service": "logging.s3.amazonaws.com"}
          and as_list(st.get("Action")) == ["s3:PutObject"]
          and sub_string(st.get("Resource")) == "arn:${AWS::Partition}:s3:::${AccessLogBucket}/" + prefix + "*"
          and sub_string(st.get("Condition", {}).get("ArnLike", {}).get("aws:SourceArn")) == "arn:${AWS::Partition}:s3:::" + DATA_BUCKET_NAME
          and st.get("Condition", {}).get("StringEquals", {}).get("aws:SourceAccount") == {"Ref": "AWS::AccountId"}]
    if len(ok) != 1 or len(delivery) != 1:
        problems.append("AccessLogBucketPolicy: must allow exactly S3 log delivery (logging.s3.amazonaws.com, "
                        "s3:PutObject under the log prefix, for the data bucket of this account)")
    return problems


def topic_in_use(t: dict):
    return {"Ref": "AlarmTopic"} if "AlarmTopic" in t["Resources"] else {"Ref": "AlarmTopicArn"}


def check_alarm_topic(raw: dict) -> list[str]:
    """AlarmTopicArn empty: the stack creates an encrypted topic (a customer managed key,
    never alias/aws/sns, which CloudWatch cannot publish with); given: no topic is created.
    AlarmEmail: an e-mail subscription to the topic in use. The topic's ARN is an output."""
    problems = []
    for label, params in SCENARIOS.items():
        t = resolve(raw, params)
        res = t["Resources"]
        own = not params.get("AlarmTopicArn")
        if ("AlarmTopic" in res) != own:
            problems.append(f"{label}: AlarmTopic {'missing' if own else 'created although AlarmTopicArn is given'}")
        if own and "AlarmTopic" in res:
            key = res["AlarmTopic"]["Properties"].get("KmsMasterKeyId")
            want = KEY_REF if params.get("KmsKeyArn") else {"Ref": "AlarmTopicKey"}
            if key != want:
                problems.append(f"{label}: AlarmTopic encrypted with {key!r}, expected {want}")
        own_key = own and not params.get("KmsKeyArn")
        if ("AlarmTopicKey" in res) != own_key:
            problems.append(f"{label}: AlarmTopicKey {'missing' if own_key else 'created needlessly'}")
        if "AlarmTopicKey" in res:
            k = res["AlarmTopicKey"]["Properties"]
            if k.get("EnableKeyRotation") is not True:
                problems.append(f"{label}: AlarmTopicKey without rotation")
            cw = [st for st in as_list(k["KeyPolicy"]["Statement"]) if st.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}]
            if not cw or set(as_list(cw[0].get("Action"))) != {"kms:Decrypt", "kms:GenerateDataKey*"}:
                problems.append(f"{label}: AlarmTopicKey does not let CloudWatch publish (kms:Decrypt, kms:GenerateDataKey*)")
            if any(st.get("Principal") in ("*", {"AWS": "*"}) for st in as_list(k["KeyPolicy"]["Statement"])):
                problems.append(f"{label}: AlarmTopicKey policy with a * principal")
        subs = of_type(t, "AWS::SNS::Subscription")
        if bool(subs) != bool(params.get("AlarmEmail")):
            problems.append(f"{label}: {len(subs)} subscriptions with AlarmEmail={params.get('AlarmEmail')!r}")
        for name, sub in subs.items():
            sp = sub["Properties"]
            if (sp.get("Protocol"), sp.get("Endpoint"), sp.get("TopicArn")) != ("email", {"Ref": "AlarmEmail"}, topic_in_use(t)):
                problems.append(f"{label}: {name} is {sp} (email to AlarmEmail, on the topic in use)")
        out = t.get("Outputs", {}).get("AlarmTopicArn", {}).get("Value")
        if out != topic_in_use(t):
            problems.append(f"{label}: output AlarmTopicArn is {out!r}, expected {topic_in_use(t)}")
    if mentions(raw, "alias/aws/sns"):
        problems.append("alias/aws/sns: CloudWatch alarms cannot publish to a topic encrypted with it")
    email = raw["Parameters"].get("AlarmEmail", {})
    pat = email.get("AllowedPattern", "")
    if email.get("Default") != "" or not re.fullmatch(pat, "") or not re.fullmatch(pat, "a.b@example.org") or re.fullmatch(pat, "a b@x"):
        problems.append("AlarmEmail: must default to empty and accept one address")
    return problems


# ----------------------------------------------------------------------------- alarms


def metric_refs(props: dict) -> list[dict]:
    """An alarm's metrics: {ns, name, dims, stat, period} (and id / expression for math)."""
    if "Metrics" not in props:
        return [{"ns": props.get("Namespace"), "name": props.get("MetricName"),
                 "dims": {d["Name"]: d["Value"] for d in props.get("Dimensions", [])},
                 "stat": props.get("Statistic", props.get("ExtendedStatistic")), "period": props.get("Period"),
                 "id": None, "return": True}]
    out = []
    for m in props["Metrics"]:
        if "MetricStat" in m:
            ms = m["MetricStat"]
            out.append({"ns": ms["Metric"].get("Namespace"), "name": ms["Metric"].get("MetricName"),
                        "dims": {d["Name"]: d["Value"] for d in ms["Metric"].get("Dimensions", [])},
                        "stat": ms.get("Stat"), "period": ms.get("Period"), "id": m.get("Id"),
                        "return": m.get("ReturnData", True)})
        else:
            out.append({"expression": m.get("Expression"), "id": m.get("Id"), "return": m.get("ReturnData", True)})
    return out


def expression_ids(expr: str) -> set[str]:
    """The metric ids an expression refers to (quoted strings and function names left out)."""
    bare = re.sub(r"'[^']*'|\"[^\"]*\"", "", expr)
    return {m.group(1) for m in re.finditer(r"\b([a-z][A-Za-z0-9_]*)\b(?!\s*\()", bare)}


def check_metric(t: dict, ns, name, dims: dict, where: str, resource_of=None) -> list[str]:
    """A metric the template names exists: one of EMITTED with one of its dimension sets, or
    an AWS/Lambda / AWS/SQS metric of a resource of this template."""
    if ns == EMF_NAMESPACE:
        if name not in EMITTED:
            return [f"{where}: {ns}/{name} is not a metric the functions emit (EMITTED)"]
        if sorted(dims) not in [sorted(d) for d in EMITTED[name]]:
            return [f"{where}: {name} with dimensions {sorted(dims)} (emitted with {EMITTED[name]})"]
        return []
    if ns in AWS_METRICS:
        dim, typ, names = AWS_METRICS[ns]
        if name not in names:
            return [f"{where}: {ns}/{name} is not one of {sorted(names)}"]
        if set(dims) != {dim}:
            return [f"{where}: {ns}/{name} dimensions {sorted(dims)} (expected {dim})"]
        target = (resource_of or (lambda v: v))(dims[dim])
        own = [r for ty in typ for r in of_type(t, ty)]
        if not any(refers_to(target, r) or target == r for r in own):
            return [f"{where}: {ns}/{name} on {dims[dim]!r}, not a {' or '.join(typ)} of this template"]
        return []
    return [f"{where}: namespace {ns!r} (only {EMF_NAMESPACE} and {sorted(AWS_METRICS)})"]


def param_ref(name):
    return {"Ref": name}


def splitter_timeout(source: dict) -> int:
    return source["Resources"]["SplitterFunction"]["Properties"]["Timeout"]


# Every alarm and what it must be. metrics: (namespace, name, stat, resource or None);
# threshold/evaluation: a literal, param_ref(...) or a function of the source template.
ALARMS = {
    "DeadLetteredAlarm": dict(
        metrics=[("casefeed", "DeadLettered", "Sum", None),
                 ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "Maximum", "DeadLetterQueue"),
                 ("AWS/SQS", "ApproximateNumberOfMessagesNotVisible", "Maximum", "DeadLetterQueue")],
        period=60, op="GreaterThanThreshold", threshold=0, evaluation=(1, 1), missing="notBreaching",
        # each new one: the consumer's EMF count plus any rise of the DLQ (redrive by SQS)
        expression=r"DIFF\(depth\)", command="casefeed dlq list"),
    "SplitterFailuresAlarm": dict(
        metrics=[("AWS/SQS", "ApproximateNumberOfMessagesVisible", "Maximum", "SplitterFailuresQueue")],
        period=300, op="GreaterThanThreshold", threshold=0, evaluation=(1, None), missing="notBreaching",
        command="casefeed failures list"),
    "WorkQueueAgeAlarm": dict(
        metrics=[("AWS/SQS", "ApproximateAgeOfOldestMessage", "Maximum", "WorkQueue")],
        period=300, op="GreaterThanThreshold", threshold=param_ref("QueueAgeAlarmSeconds"), evaluation=(1, None),
        missing="notBreaching", command="casefeed status"),
    "ConsumerErrorsAlarm": dict(
        metrics=[("AWS/Lambda", "Errors", "Sum", "ConsumerFunction")],
        period=300, op="GreaterThanThreshold", threshold=0, evaluation=(1, None), missing="notBreaching",
        command="casefeed status"),
    "ConsumerThrottlesAlarm": dict(
        metrics=[("AWS/Lambda", "Throttles", "Sum", "ConsumerFunction")],
        period=300, op="GreaterThanThreshold", threshold=0, evaluation=(1, None), missing="notBreaching",
        command="casefeed status"),
    "SplitterErrorsAlarm": dict(
        metrics=[("AWS/Lambda", "Errors", "Sum", "SplitterFunction")],
        period=300, op="GreaterThanThreshold", threshold=0, evaluation=(1, None), missing="notBreaching",
        command="casefeed runs --feed"),
    "SplitterThrottlesAlarm": dict(
        metrics=[("AWS/Lambda", "Throttles", "Sum", "SplitterFunction")],
        period=300, op="GreaterThanThreshold", threshold=0, evaluation=(3, 3), missing="notBreaching",
        command="casefeed status"),
    "SplitterDurationAlarm": dict(
        metrics=[("AWS/Lambda", "Duration", "Maximum", "SplitterFunction")],
        period=300, op="GreaterThanThreshold", threshold=lambda src: 0.8 * splitter_timeout(src) * 1000,
        evaluation=(1, None), missing="notBreaching", command="casefeed runs --feed"),
    "SplitterEventsDroppedAlarm": dict(
        metrics=[("AWS/Lambda", "AsyncEventsDropped", "Sum", "SplitterFunction")],
        period=300, op="GreaterThanThreshold", threshold=0, evaluation=(1, None), missing="notBreaching",
        command="casefeed failures list"),
    "SplitterEventAgeAlarm": dict(
        metrics=[("AWS/Lambda", "AsyncEventAge", "Maximum", "SplitterFunction")],
        period=300, op="GreaterThanThreshold", threshold=lambda src: splitter_timeout(src) * 1000,
        evaluation=(1, None), missing="notBreaching", command="casefeed status"),
    "FilesHeldAlarm": dict(
        metrics=[("casefeed", "FilesHeld", "Sum", None)],
        period=300, op="GreaterThanThreshold", threshold=0, evaluation=(1, None), missing="notBreaching",
        command="casefeed held"),
    "ApiAuthFailuresAlarm": dict(
        metrics=[("casefeed", "ApiAuthFailures", "Sum", None)],
        period=300, op="GreaterThanThreshold", threshold=0, evaluation=(1, None), missing="notBreaching",
        command="casefeed status"),
    "BreakerOpenAlarm": dict(
        metrics=[("casefeed", "CircuitOpen", "Maximum", None)],
        period=60, op="GreaterThanOrEqualToThreshold", threshold=1,
        evaluation=(param_ref("BreakerOpenAlarmMinutes"), param_ref("BreakerOpenAlarmMinutes")), missing="ignore",
        command="casefeed status"),
    "FreshnessAlarm": dict(
        metrics=[("casefeed", "RunsApplied", "Sum", None)],
        period=3600, op="LessThanThreshold", threshold=1,
        evaluation=(param_ref("FreshnessHours"), param_ref("FreshnessHours")), missing="breaching",
        command="casefeed runs --feed", description=r"[Ff]eeds are configuration"),
    "LatencyObjectiveAlarm": dict(
        metrics=[("casefeed", "UploadToAppliedMillis", "p99", None)],
        period=300, op="GreaterThanThreshold", threshold=param_ref("LatencyObjectiveSeconds"), evaluation=(3, 3),
        missing="notBreaching", expression=r"^latencyMillis / 1000$", command="casefeed runs --feed"),
}

# The new parameters' defaults (the issue's) and the longest evaluation each allows
# (CloudWatch: period x evaluation periods at most one day).
ALARM_PARAMETERS = {
    "QueueAgeAlarmSeconds": (3600, None),
    "BreakerOpenAlarmMinutes": (15, 60),
    "FreshnessHours": (2, 3600),
    "LatencyObjectiveSeconds": (3600, None),
}


def check_alarms(raw: dict, source: dict) -> list[str]:
    problems = []
    alarms = of_type(raw, "AWS::CloudWatch::Alarm")
    if set(alarms) != set(ALARMS):
        problems.append(f"alarms {sorted(set(alarms) ^ set(ALARMS))}: every alarm needs its entry in ALARMS "
                        f"(and every entry its alarm)")
    for name, spec in ALARMS.items():
        if name not in alarms:
            continue
        p = alarms[name]["Properties"]
        where = name
        desc = p.get("AlarmDescription", "")
        if len(desc) < 80 or not any(c in desc for c in CLI_COMMANDS):
            problems.append(f"{where}: the description must say what it means and which casefeed command shows why")
        if spec["command"] not in desc:
            problems.append(f"{where}: description does not name `{spec['command']}`")
        if "description" in spec and not re.search(spec["description"], desc):
            problems.append(f"{where}: description lacks {spec['description']!r}")
        if not sub_string(p.get("AlarmName", "")) or not sub_string(p["AlarmName"]).startswith("${AWS::StackName}-"):
            problems.append(f"{where}: AlarmName not prefixed with the stack name")
        if p.get("TreatMissingData") != spec["missing"]:
            problems.append(f"{where}: TreatMissingData {p.get('TreatMissingData')!r}, expected {spec['missing']!r}")
        if p.get("ComparisonOperator") != spec["op"]:
            problems.append(f"{where}: {p.get('ComparisonOperator')} (expected {spec['op']})")
        want = spec["threshold"](source) if callable(spec["threshold"]) else spec["threshold"]
        got = p.get("Threshold")
        if not (got == want or (isinstance(got, (int, float)) and isinstance(want, (int, float)) and float(got) == float(want))):
            problems.append(f"{where}: Threshold {got!r}, expected {want!r}")
        periods, datapoints = spec["evaluation"]
        if p.get("EvaluationPeriods") != periods or (datapoints is not None and p.get("DatapointsToAlarm") != datapoints):
            problems.append(f"{where}: evaluation {p.get('EvaluationPeriods')!r}/{p.get('DatapointsToAlarm')!r}, "
                            f"expected {periods!r}/{datapoints!r}")
        refs = metric_refs(p)
        stats = [r for r in refs if "expression" not in r]
        got_metrics = [(r["ns"], r["name"], r["stat"], next((k for k in raw["Resources"]
                        if any(refers_to(v, k) for v in r["dims"].values())), None)) for r in stats]
        got_metrics.sort(key=str)
        if got_metrics != sorted(spec["metrics"], key=str):
            problems.append(f"{where}: metrics {got_metrics}, expected {sorted(spec['metrics'])}")
        for r in stats:
            problems += check_metric(raw, r["ns"], r["name"], r["dims"], where)
            if r["period"] != spec["period"]:
                problems.append(f"{where}: {r['name']} period {r['period']} (expected {spec['period']})")
        exprs = [r for r in refs if "expression" in r]
        ids = {r["id"] for r in refs}
        for r in exprs:
            missing = expression_ids(r["expression"]) - ids
            if missing:
                problems.append(f"{where}: expression {r['expression']!r} refers to unknown ids {sorted(missing)}")
        if "Metrics" in p and sum(1 for r in refs if r["return"]) != 1:
            problems.append(f"{where}: metric math must return exactly one series")
        if "expression" in spec:
            returned = [r.get("expression") or "" for r in refs if r["return"]]
            if not returned or not re.search(spec["expression"], returned[0]):
                problems.append(f"{where}: the alarm's series is not an expression matching {spec['expression']!r}")
        # notifications: the topic in use, on ALARM and OK, in every topic configuration
        for label in ("defaults", "existing-topic"):
            t = resolve(raw, SCENARIOS[label])
            rp = t["Resources"][name]["Properties"]
            for key in ("AlarmActions", "OKActions"):
                if rp.get(key) != [topic_in_use(t)]:
                    problems.append(f"{where} ({label}): {key} {rp.get(key)!r}, expected [{topic_in_use(t)}]")
    # the dead-letter alarm counts a rise of the DLQ's total (visible + in flight), so an
    # operator's `casefeed dlq list` (which receives, then releases) raises nothing
    if "DeadLetteredAlarm" in alarms:
        depth = [r for r in metric_refs(alarms["DeadLetteredAlarm"]["Properties"]) if r["id"] == "depth"]
        if not depth or not {"visible", "inflight"} <= expression_ids(depth[0].get("expression", "")):
            problems.append("DeadLetteredAlarm: depth must be visible + in flight of the DLQ")
    params = raw["Parameters"]
    for name, (default, period) in ALARM_PARAMETERS.items():
        p = params.get(name, {})
        if p.get("Type") != "Number" or p.get("Default") != default:
            problems.append(f"{name}: must be a Number defaulting to {default}")
        if period and (not isinstance(p.get("MaxValue"), int) or p["MaxValue"] * period > 86400):
            problems.append(f"{name}: MaxValue x {period} s must stay within CloudWatch's one-day evaluation")
    return problems


# ----------------------------------------------------------------------------- dashboard


def dashboard_body(t: dict, source: dict) -> dict:
    """The dashboard's JSON with every ${...} replaced: a parameter by its default, an
    AWS:: pseudo parameter by a sample, a variable of the Sub's map by @@Target@@ (the
    logical id its Ref/GetAtt names)."""
    body = t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]
    text, variables = (body["Fn::Sub"], {}) if isinstance(body["Fn::Sub"], str) else body["Fn::Sub"]

    def target(v):
        if isinstance(v, dict) and "Ref" in v:
            return v["Ref"]
        ga = v.get("Fn::GetAtt") if isinstance(v, dict) else None
        if ga:
            return ga[0] if isinstance(ga, list) else ga.split(".")[0]
        raise ValueError(f"dashboard variable {v!r}")

    def sub(m):
        name = m.group(1)
        if name in variables:
            return f"@@{target(variables[name])}@@"
        if name.startswith("AWS::"):
            return {"AWS::Region": "us-east-1", "AWS::AccountId": "111122223333", "AWS::StackName": "casefeed",
                    "AWS::Partition": "aws"}[name]
        if name in source["Parameters"]:
            return str(source["Parameters"][name]["Default"])
        raise KeyError(f"dashboard: ${{{name}}} is neither a variable nor a parameter")

    return json.loads(re.sub(r"\$\{([^}]+)\}", sub, text))


SEARCH = re.compile(r"SEARCH\('\{([^}]*)\}\s+MetricName=\"([^\"]+)\"'")


def check_dashboard(t: dict, source: dict) -> list[str]:
    """Every metric the dashboard names exists (EMITTED with one of its dimension sets, or an
    AWS/* metric of this stack's resources), every expression refers to ids of its widget, and
    it shows what operators need."""
    problems = []
    try:
        body = dashboard_body(t, source)
    except (ValueError, KeyError) as e:
        return [f"Dashboard: body does not resolve to JSON: {e}"]
    seen: set[tuple] = set()
    searched: set[str] = set()
    annotations: set[str] = set()

    def resource_of(v):
        m = re.fullmatch(r"@@(\w+)@@", str(v))
        return m.group(1) if m else None

    for i, w in enumerate(body["widgets"]):
        props = w.get("properties", {})
        where = f"Dashboard widget {i} ({props.get('title')})"
        ids = set()
        entries = props.get("metrics", [])
        for e in entries:
            opts = e[-1] if e and isinstance(e[-1], dict) else {}
            if "id" in opts:
                ids.add(opts["id"])
        for e in entries:
            opts = e[-1] if e and isinstance(e[-1], dict) else {}
            if "expression" in opts:
                expr = opts["expression"]
                for m in SEARCH.finditer(expr):
                    schema = [x.strip() for x in m.group(1).split(",")]
                    problems += check_metric(t, schema[0], m.group(2), {d: "*" for d in schema[1:]}, where)
                    searched.add(m.group(2))
                if "SEARCH(" in expr and not SEARCH.search(expr):
                    problems.append(f"{where}: SEARCH {expr!r} not of the form SEARCH('{{ns,dims}} MetricName=\"X\"', ...)")
                unknown = expression_ids(expr) - ids
                if unknown:
                    problems.append(f"{where}: expression {expr!r} refers to unknown ids {sorted(unknown)}")
                continue
            parts = [x for x in e if not isinstance(x, dict)]
            if "..." in parts or len(parts) < 2 or len(parts) % 2:
                problems.append(f"{where}: metric entry {e} (write each in full: namespace, name, dimension pairs)")
                continue
            ns, name, dims = parts[0], parts[1], dict(zip(parts[2::2], parts[3::2]))
            problems += check_metric(t, ns, name, dims, where, resource_of)
            seen.add((ns, name, opts.get("stat", props.get("stat"))))
        for a in props.get("annotations", {}).get("horizontal", []):
            annotations.add(a.get("label"))
            if not isinstance(a.get("value"), (int, float)):
                problems.append(f"{where}: annotation {a} has no numeric value")
    need_stats = [("casefeed", "ApiLatencyMillis", "p50"), ("casefeed", "ApiLatencyMillis", "p99"),
                  ("casefeed", "UploadToAppliedMillis", "p50"), ("casefeed", "UploadToAppliedMillis", "p99"),
                  ("casefeed", "CircuitOpen", "Maximum"), ("AWS/Lambda", "ConcurrentExecutions", "Maximum"),
                  ("AWS/SQS", "ApproximateAgeOfOldestMessage", "Maximum"),
                  ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "Maximum"), ("casefeed", "ApiCalls", "Sum")]
    for n in need_stats:
        if n not in seen:
            problems.append(f"Dashboard: does not show {n}")
    for fate in ("Applied", "Duplicates", "Superseded", "Retried", "DeadLettered"):
        if not any(s[1] == fate for s in seen):
            problems.append(f"Dashboard: the consumer's fate {fate} is missing")
    for per_feed in ("RowsRead", "RowsNew", "RowsChanged", "MessagesSent", "FilesHeld"):
        if per_feed not in searched:
            problems.append(f"Dashboard: {per_feed} is not shown per feed (SEARCH over the feed dimension)")
    if "ApiRequestsPerSecond" not in annotations:
        problems.append("Dashboard: the API rate limit (ApiRequestsPerSecond) is not drawn as an annotation")
    return problems


# ----------------------------------------------------------------------------- checkov

CHECKOV_ID = re.compile(r"^CKV2?_AWS_\d+$")


def check_checkov_suppressions(source: dict) -> list[str]:
    """Every Checkov suppression (Metadata checkov skip) names a check and says why; none is
    made out of sight (inline #checkov:skip comments, a .checkov config's skip-check)."""
    problems = []
    for name, r in source["Resources"].items():
        skips = r.get("Metadata", {}).get("checkov", {}).get("skip", [])
        for s in as_list(skips):
            if not isinstance(s, dict) or not CHECKOV_ID.match(str(s.get("id", ""))):
                problems.append(f"{name}: checkov skip {s!r} does not name a check (id: CKV_AWS_n)")
                continue
            comment = str(s.get("comment") or "").strip()
            if len(comment.split()) < 5:
                problems.append(f"{name}: checkov skip {s['id']} has no written reason (comment)")
    for line in TEMPLATE.read_text().splitlines():
        if re.search(r"checkov:skip=", line):
            problems.append(f"template.yaml: inline suppression {line.strip()!r} (use Metadata with a comment)")
    for cfg in (ROOT / ".checkov.yaml", ROOT / ".checkov.yml"):
        if cfg.exists() and re.search(r"^\s*skip[-_]check", cfg.read_text(), re.M):
            problems.append(f"{cfg.name}: skip-check suppresses without a reason per resource")
    return problems


# ----------------------------------------------------------------------------- the real template


def test_iam_least_privilege(scenario):
    assert check_iam_least_privilege(scenario) == []


def test_data_bucket(scenario):
    assert check_data_bucket(scenario) == []


def test_queues(scenario):
    assert check_queues(scenario) == []


def test_functions(scenario, raw, source):
    assert check_functions(scenario, source) == []
    assert check_functions(raw, source) == []  # the local-only variables as written


def test_ledger_table(scenario):
    assert check_ledger_table(scenario) == []


def test_ledger_access(scenario):
    assert check_ledger_access(scenario) == []


def test_kms_wiring(raw):
    assert check_kms_wiring(raw) == []


def test_vpc_wiring(raw):
    assert check_vpc_wiring(raw) == []


def test_access_logging(scenario):
    assert check_access_logging(scenario) == []


def test_alarm_topic(raw):
    assert check_alarm_topic(raw) == []


def test_alarms(raw, source):
    assert check_alarms(raw, source) == []


def test_dashboard(raw, source):
    assert check_dashboard(raw, source) == []


def test_checkov_suppressions(source):
    assert check_checkov_suppressions(source) == []


def test_checkov_is_offline_and_part_of_make_test():
    """make test -> lint -> template-lint -> checkov, run with no platform call, on the
    template and on its all-options resolution."""
    mk = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^checkov:.*\n((?:\t.*\n)+)", mk, re.M)
    assert recipe, "Makefile: no checkov target"
    text = recipe.group(1).replace("\\\n", " ")
    for needed in ("BC_SKIP_MAPPING=TRUE", "--skip-download", "--framework cloudformation", "-f template.yaml",
                   "checkov_variants.py", "all-options.json"):
        assert needed in text, f"checkov recipe lacks {needed}"
    assert re.search(r"^template-lint:.*\bcheckov\b", mk, re.M)
    assert re.search(r"^lint:.*\btemplate-lint\b", mk, re.M)
    assert re.search(r"^test:.*\blint\b", mk, re.M)


def test_checkov_scans_every_optional_feature(source):
    """Checkov cannot see under an Fn::If: every condition (but the local-only one) must be
    true in template.yaml's defaults or in a variant `make checkov` scans."""
    from checkov_variants import VARIANTS

    configs = [{}] + list(VARIANTS.values())
    truths = [condition_values(source, c) for c in configs]
    unscanned = [c for c in source["Conditions"] if c != "IsLocalInvoke" and not any(t[c] for t in truths)]
    assert unscanned == [], f"conditions no Checkov scan switches on: {unscanned}"
    assert not any(t["IsLocalInvoke"] for t in truths)


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


def _filter_policies(role, condition):
    def m(t):
        props = t["Resources"][role]["Properties"]
        props["Policies"] = [p for p in props["Policies"] if not ("Fn::If" in p and p["Fn::If"][0] == condition)]
    return m


R = ["Resources"]

KMS_BREAKS = {
    "log group without the key": _del(R + ["ConsumerLogGroup", "Properties", "KmsKeyId"]),
    "queue always under the key": _set(R + ["WorkQueue", "Properties", "KmsMasterKeyId"])(KEY_REF),
    "sse-sqs with the key": _set(R + ["DeadLetterQueue", "Properties", "SqsManagedSseEnabled"])(True),
    "secret without the key": _del(R + ["ApiTokenSecret", "Properties", "KmsKeyId"]),
    "table without SSEType": _del(R + ["LedgerTable", "Properties", "SSESpecification", "SSEType"]),
    "environment without the key": _del(R + ["SplitterFunction", "Properties", "KmsKeyArn"]),
    "consumer cannot use the key": _filter_policies("ConsumerRole", "HasKmsKey"),
    "bucket always SSE-S3": _set(R + ["DataBucket", "Properties", "BucketEncryption"])(
        {"ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}),
    "log bucket under the key": _set(R + ["AccessLogBucket", "Properties", "BucketEncryption"])(
        {"ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms",
                                                                                  "KMSMasterKeyID": KEY_REF}}]}),
    "an alias accepted": _set(["Parameters", "KmsKeyArn", "AllowedPattern"])(".*"),
    "topic not under the key": _set(R + ["AlarmTopic", "Properties", "KmsMasterKeyId"])({"Ref": "AlarmTopicKey"}),
}

VPC_BREAKS = {
    "always in a vpc": _set(R + ["ConsumerFunction", "Properties", "VpcConfig"])(
        {"SubnetIds": {"Ref": "ConsumerSubnetIds"}, "SecurityGroupIds": {"Ref": "ConsumerSecurityGroupIds"}}),
    "never in a vpc": _del(R + ["ConsumerFunction", "Properties", "VpcConfig"]),
    "splitter in the vpc": lambda t: t["Resources"]["SplitterFunction"]["Properties"].__setitem__(
        "VpcConfig", copy.deepcopy(t["Resources"]["ConsumerFunction"]["Properties"]["VpcConfig"])),
    "no eni permissions": _filter_policies("ConsumerRole", "ConsumerInVpc"),
    "no rule": _del(["Rules"]),
    "subnets alone enough": _set(["Conditions", "ConsumerInVpc"])(
        {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "ConsumerSubnetIds"}]}, ""]}]}),
    "vpc ids unchecked": _del(["Parameters", "ConsumerSubnetIds", "AllowedPattern"]),
}


def _vpc_policy(t):
    p = next(p for p in t["Resources"]["ConsumerRole"]["Properties"]["Policies"]
             if "Fn::If" in p and p["Fn::If"][0] == "ConsumerInVpc")
    return p["Fn::If"][1]["PolicyDocument"]["Statement"]


VPC_IAM_BREAKS = {
    "eni changes on *": lambda t: _vpc_policy(t)[1].__setitem__("Resource", "*"),
    "ec2 star": lambda t: _vpc_policy(t)[1].__setitem__("Action", "ec2:*"),
    "run instances": lambda t: _vpc_policy(t)[1]["Action"].append("ec2:RunInstances"),
}

LOG = R + ["AccessLogBucket", "Properties"]


def _log_policy(t):
    return t["Resources"]["AccessLogBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]


LOGGING_BREAKS = {
    "no access logging": _del(R + ["DataBucket", "Properties", "LoggingConfiguration"]),
    "logs into the data bucket": _set(R + ["DataBucket", "Properties", "LoggingConfiguration", "DestinationBucketName"])(
        {"Ref": "DataBucket"}),
    "log bucket public": _set(LOG + ["PublicAccessBlockConfiguration", "RestrictPublicBuckets"])(False),
    "log bucket unversioned": _del(LOG + ["VersioningConfiguration"]),
    "logs kept forever": lambda t: t["Resources"]["AccessLogBucket"]["Properties"]["LifecycleConfiguration"].__setitem__(
        "Rules", [r for r in t["Resources"]["AccessLogBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
                  if "ExpirationInDays" not in r]),
    "log bucket logs itself": _set(LOG + ["LoggingConfiguration"])({"DestinationBucketName": {"Ref": "AccessLogBucket"}}),
    "log bucket acls": _set(LOG + ["OwnershipControls", "Rules", 0, "ObjectOwnership"])("ObjectWriter"),
    "delivery for any bucket": lambda t: _log_policy(t)[1]["Condition"].pop("ArnLike"),
    "anyone may write logs": lambda t: _log_policy(t)[1].__setitem__("Principal", "*"),
    "log bucket without tls policy": lambda t: _log_policy(t).pop(0),
}

TOPIC_BREAKS = {
    "topic always created": _del(R + ["AlarmTopic", "Condition"]),
    "topic under aws/sns": _set(R + ["AlarmTopic", "Properties", "KmsMasterKeyId"])("alias/aws/sns"),
    "topic unencrypted": _del(R + ["AlarmTopic", "Properties", "KmsMasterKeyId"]),
    "key not rotated": _set(R + ["AlarmTopicKey", "Properties", "EnableKeyRotation"])(False),
    "cloudwatch may not use the key": lambda t: t["Resources"]["AlarmTopicKey"]["Properties"]["KeyPolicy"]["Statement"].pop(1),
    "subscription always": _del(R + ["AlarmEmailSubscription", "Condition"]),
    "sms": _set(R + ["AlarmEmailSubscription", "Properties", "Protocol"])("sms"),
    "subscribed to the own topic only": _set(R + ["AlarmEmailSubscription", "Properties", "TopicArn"])({"Ref": "AlarmTopic"}),
    "no topic output": _del(["Outputs", "AlarmTopicArn"]),
    "email not optional": _set(["Parameters", "AlarmEmail", "Default"])("ops@example.org"),
}

A = R


def _alarm(name, *path):
    return A + [name, "Properties", *path]


def _metrics(t, alarm):
    return {m["Id"]: m for m in t["Resources"][alarm]["Properties"]["Metrics"]}


ALARM_BREAKS = {
    "no OK notification": _del(_alarm("BreakerOpenAlarm", "OKActions")),
    "only the created topic": _set(_alarm("FilesHeldAlarm", "AlarmActions"))([{"Ref": "AlarmTopic"}]),
    "a literal age threshold": _set(_alarm("WorkQueueAgeAlarm", "Threshold"))(3600),
    "duration threshold off the timeout": _set(_alarm("SplitterDurationAlarm", "Threshold"))(800000),
    "timeout changed, alarm not": _set(R + ["SplitterFunction", "Properties", "Timeout"])(600),
    "an unknown EMF metric": _set(_alarm("FilesHeldAlarm", "MetricName"))("FileHeld"),
    "an emitted metric with other dimensions": _set(_alarm("ApiAuthFailuresAlarm", "Dimensions"))(
        [{"Name": "feed", "Value": "labs"}]),
    "missing data left to the default": _del(_alarm("FreshnessAlarm", "TreatMissingData")),
    "freshness not breaching": _set(_alarm("FreshnessAlarm", "TreatMissingData"))("notBreaching"),
    "no command in the description": _set(_alarm("LatencyObjectiveAlarm", "AlarmDescription"))(
        "The p99 of upload to applied is above the objective for fifteen minutes, rows are late to the API."),
    "dlq rise not counted": lambda t: _metrics(t, "DeadLetteredAlarm")["deadLettered"].__setitem__(
        "Expression", "FILL(consumer, 0)"),
    "dlq visible only": lambda t: _metrics(t, "DeadLetteredAlarm")["depth"].__setitem__("Expression", "FILL(visible, 0)"),
    "a foreign function": _set(_alarm("ConsumerErrorsAlarm", "Dimensions"))([{"Name": "FunctionName", "Value": "other"}]),
    "an unlisted alarm": lambda t: t["Resources"].__setitem__("ExtraAlarm", copy.deepcopy(t["Resources"]["FilesHeldAlarm"])),
    "breaker minutes literal": _set(_alarm("BreakerOpenAlarm", "EvaluationPeriods"))(15),
    "breaker missing data breaches": _set(_alarm("BreakerOpenAlarm", "TreatMissingData"))("breaching"),
    "freshness beyond a day": _set(["Parameters", "FreshnessHours", "MaxValue"])(48),
    "latency in ms vs seconds": lambda t: _metrics(t, "LatencyObjectiveAlarm")["latencySeconds"].__setitem__(
        "Expression", "latencyMillis"),
    "expression id typo": lambda t: _metrics(t, "LatencyObjectiveAlarm")["latencySeconds"].__setitem__(
        "Expression", "latencyMilis / 1000"),
    "p50 latency": lambda t: _metrics(t, "LatencyObjectiveAlarm")["latencyMillis"]["MetricStat"].__setitem__("Stat", "p50"),
    "other default objective": _set(["Parameters", "LatencyObjectiveSeconds", "Default"])(7200),
}


def _dash(old, new):
    def m(t):
        body = t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        assert old in body[0], old
        body[0] = body[0].replace(old, new)
    return m


DASHBOARD_BREAKS = {
    "a metric not emitted": _dash('["casefeed", "Applied"', '["casefeed", "Applies"'),
    "a search for a metric not emitted": _dash('MetricName=\\"RowsRead\\"', 'MetricName=\\"RowsReads\\"'),
    "a dimension set not emitted": _dash('{casefeed,feed} MetricName=\\"FilesHeld\\"', '{casefeed,feed,class} MetricName=\\"FilesHeld\\"'),
    "a queue of another stack": _dash('"QueueName", "${DlqName}"', '"QueueName", "casefeed-dlq"'),
    "another namespace": _dash('["AWS/Lambda", "Errors", "FunctionName", "${ConsumerName}"]', '["AWS/Lamda", "Errors", "FunctionName", "${ConsumerName}"]'),
    "no rate limit line": _dash('[{"label": "ApiRequestsPerSecond", "value": ${ApiRequestsPerSecond}}]', '[]'),
    "an expression id typo": _dash('"calls / PERIOD(calls)"', '"calls / PERIOD(call)"'),
    "no p99 latency": _dash('["casefeed", "ApiLatencyMillis", {"stat": "p99", "label": "p99"}]', '["casefeed", "ApiLatencyMillis", {"stat": "p90", "label": "p90"}]'),
    "not json": _dash('"widgets": [', '"widgets": [,'),
}

SUPPRESSION_BREAKS = {
    "no reason": lambda t: t["Resources"]["SplitterFunction"]["Metadata"]["checkov"]["skip"][0].__setitem__("comment", ""),
    "a reason of one word": lambda t: t["Resources"]["ConsumerFunction"]["Metadata"]["checkov"]["skip"][0].__setitem__("comment", "n/a"),
    "not a check id": lambda t: t["Resources"]["AccessLogBucket"]["Metadata"]["checkov"]["skip"].append(
        {"id": "all", "comment": "we trust this bucket entirely, no need to check anything"}),
}


@pytest.mark.parametrize("break_", KMS_BREAKS.values(), ids=KMS_BREAKS.keys())
def test_kms_check_catches(raw, break_):
    assert check_kms_wiring(broken(raw, break_)) != []


@pytest.mark.parametrize("break_", VPC_BREAKS.values(), ids=VPC_BREAKS.keys())
def test_vpc_check_catches(raw, break_):
    assert check_vpc_wiring(broken(raw, break_)) != []


@pytest.mark.parametrize("break_", VPC_IAM_BREAKS.values(), ids=VPC_IAM_BREAKS.keys())
def test_iam_check_catches_in_a_vpc(raw, break_):
    assert check_iam_least_privilege(resolve(broken(raw, break_), VPC)) != []


@pytest.mark.parametrize("break_", LOGGING_BREAKS.values(), ids=LOGGING_BREAKS.keys())
def test_access_logging_check_catches(deployed, break_):
    assert check_access_logging(broken(deployed, break_)) != []


@pytest.mark.parametrize("break_", TOPIC_BREAKS.values(), ids=TOPIC_BREAKS.keys())
def test_alarm_topic_check_catches(raw, break_):
    assert check_alarm_topic(broken(raw, break_)) != []


@pytest.mark.parametrize("break_", ALARM_BREAKS.values(), ids=ALARM_BREAKS.keys())
def test_alarm_check_catches(raw, source, break_):
    t = broken(raw, break_)
    # the splitter's timeout is read from the source template
    src = broken(source, break_) if break_ is ALARM_BREAKS["timeout changed, alarm not"] else source
    assert check_alarms(t, src) != []


@pytest.mark.parametrize("break_", DASHBOARD_BREAKS.values(), ids=DASHBOARD_BREAKS.keys())
def test_dashboard_check_catches(raw, source, break_):
    assert check_dashboard(broken(raw, break_), source) != []


@pytest.mark.parametrize("break_", SUPPRESSION_BREAKS.values(), ids=SUPPRESSION_BREAKS.keys())
def test_checkov_suppression_check_catches(source, break_):
    assert check_checkov_suppressions(broken(source, break_)) != []


def test_sam_adds_no_policy_when_broken_on_purpose(source):
    """Sanity of the transform path: a function without an explicit Role gets a SAM role with
    a managed policy, which the IAM check refuses."""
    t = copy.deepcopy(source)
    del t["Resources"]["ConsumerFunction"]["Properties"]["Role"]
    assert check_iam_least_privilege(transform(t)) != []


def test_emitted_mirrors_the_metrics_the_code_declares():
    """EMITTED here is the list in shared/src/metrics.rs (`pub const EMITTED`), name for name."""
    src = (Path(__file__).resolve().parents[2] / "shared/src/metrics.rs").read_text()
    block = re.search(r"pub const EMITTED: \[&str; \d+\] = \[(.*?)\];", src, re.S)
    assert block, "shared/src/metrics.rs declares EMITTED"
    declared = set(re.findall(r'"(\w+)"', block.group(1)))
    assert declared == set(EMITTED), (declared ^ set(EMITTED))


def test_audit_records_have_a_lifecycle_rule_that_keeps_them_for_the_retention_parameter(source):
    t = source
    rules = t["Resources"]["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    audit = [r for r in rules if isinstance(r, dict) and r.get("Prefix") == "audit/"]
    assert len(audit) == 1, rules
    assert audit[0]["Status"] == "Enabled"
    assert audit[0]["ExpirationInDays"] == {"Ref": "AuditRetentionDays"}
    assert t["Parameters"]["AuditRetentionDays"]["MinValue"] >= 365
