"""events/ is consistent with itself, with template.yaml and with samconfig.toml: what
`sam local invoke` is given is what the functions need (SAM silently drops env vars that the
template does not declare, so a typo would otherwise go unnoticed)."""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import re
import tomllib
from pathlib import Path

import pytest

from test_template import load_source

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
RESERVED = {"AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # set by SAM from the shell
# envelope v2 (shared/src/contract/envelope.rs): every message carries its record's version
ENVELOPE_FIELDS = {"v", "feed", "run", "source", "change", "record_key", "version", "idempotency_key", "fields"}
SOURCE_FIELDS = {"bucket", "key", "etag"}  # and version_id, in a versioned bucket
CHANGES = {"new", "changed", "removed"}


def load(name: str):
    return json.loads((EVENTS / name).read_text())


@pytest.fixture(scope="module")
def files() -> dict:
    return {
        "env": load("env.json"),
        "localstack": load("env.localstack.json"),
        "s3": load("s3-put.json"),
        "sqs": load("sqs-batch.json"),
        "feeds": tomllib.loads((EVENTS / "feeds.toml").read_text()),
        "template": load_source(),
        "samconfig": tomllib.loads((ROOT / "samconfig.toml").read_text()),
        "script": (ROOT / "tools" / "sam-test.sh").read_text(),
        "sam_test": (ROOT / "tools" / "sam_test.py").read_text(),
    }


def check_env(f: dict, env_name: str) -> list[str]:
    problems = []
    env = f[env_name]
    fns = {k for k, r in f["template"]["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
    if set(env) != fns:
        problems.append(f"{env_name}: functions {sorted(env)} != template's {sorted(fns)}")
    for fn, vars_ in env.items():
        declared = set(f["template"]["Resources"].get(fn, {}).get("Properties", {}).get("Environment", {}).get("Variables", {}))
        for v in set(vars_) - declared - RESERVED:
            problems.append(f"{env_name}: {fn}.{v} is not declared by the template (sam local invoke would drop it)")
    s, c = env.get("SplitterFunction", {}), env.get("ConsumerFunction", {})
    if not c.get("LEDGER_TABLE"):
        problems.append(f"{env_name}: the consumer has no LEDGER_TABLE (consumer_from_env requires it)")
    if "LEDGER_BUCKET" in c:
        problems.append(f"{env_name}: the consumer still has LEDGER_BUCKET (the ledger is the DynamoDB table)")
    if s.get("WORK_QUEUE_URL") != c.get("WORK_QUEUE_URL"):
        problems.append(f"{env_name}: the two functions name different work queues")
    for fn in (s, c):
        ep = fn.get("AWS_ENDPOINT_URL", "")
        for k in ("WORK_QUEUE_URL", "DLQ_URL"):
            if k in fn and not fn[k].startswith(ep + "/"):
                problems.append(f"{env_name}: {k} {fn[k]} is not on the endpoint {ep}")
    return problems


def check_s3_event(f: dict) -> list[str]:
    problems = []
    rec = f["s3"]["Records"][0]
    bucket = rec["s3"]["bucket"]["name"]
    key = rec["s3"]["object"]["key"]
    cfg_bucket = f["env"]["SplitterFunction"]["CASEFEED_CONFIG"].removeprefix("s3://").split("/")[0]
    if bucket != cfg_bucket:
        problems.append(f"s3-put.json: bucket {bucket} is not env.json's bucket {cfg_bucket}")
    if not rec["eventName"].startswith("ObjectCreated:"):
        problems.append("s3-put.json: not an ObjectCreated event")
    prefixes = [fd.get("prefix", fd["name"]) for fd in f["feeds"]["feed"]]
    if not any(key.startswith(f"incoming/{p}/") for p in prefixes):
        problems.append(f"s3-put.json: {key} is under no feed's incoming/<prefix>/")
    return problems


def check_sqs_batch(f: dict) -> list[str]:
    problems = []
    recs = f["sqs"]["Records"]
    work = f["env"]["ConsumerFunction"]["WORK_QUEUE_URL"].rsplit("/", 1)[1]
    feeds = {fd["name"] for fd in f["feeds"]["feed"]}
    m = re.search(r"^REJECTED_RECORD=(\S+)", f["script"], re.M)
    rejected = m[1] if m else None
    kinds = []
    for r in recs:
        if r.get("eventSource") != "aws:sqs" or r.get("eventSourceARN", "").rsplit(":", 1)[-1] != work:
            problems.append(f"{r['messageId']}: not from the work queue {work}")
        if r.get("md5OfBody") != hashlib.md5(r["body"].encode()).hexdigest():
            problems.append(f"{r['messageId']}: md5OfBody is not the body's MD5")
        try:
            body = json.loads(r["body"])
        except json.JSONDecodeError:
            kinds.append("undecodable")
            continue
        if (set(body) != ENVELOPE_FIELDS or body.get("v") != 2 or not isinstance(body["source"], dict)
                or not SOURCE_FIELDS <= set(body["source"]) <= SOURCE_FIELDS | {"version_id"}):
            problems.append(f"{r['messageId']}: not a complete v2 envelope")
            continue
        if not isinstance(body["version"], int) or isinstance(body["version"], bool) or body["version"] < 1:
            problems.append(f"{r['messageId']}: version {body['version']!r} is not a positive integer")
        if body["change"] not in CHANGES or (body["change"] == "removed") != (not body["fields"]):
            problems.append(f"{r['messageId']}: change {body['change']!r} with {len(body['fields'])} field(s)")
        if body["feed"] not in feeds:
            problems.append(f"{r['messageId']}: feed {body['feed']} is not in feeds.toml")
        attrs = {k: v["stringValue"] for k, v in r.get("messageAttributes", {}).items()}
        if attrs != {k: body[k] for k in ("feed", "change", "idempotency_key")}:
            problems.append(f"{r['messageId']}: message attributes differ from the body")
        if not re.fullmatch(r"[0-9a-f]{32}", body["idempotency_key"]):
            problems.append(f"{r['messageId']}: idempotency key is not 128-bit hex")
        kinds.append("rejected" if body["record_key"] == rejected else "good")
    if sorted(kinds) != ["good", "rejected", "undecodable"]:
        problems.append(f"sqs-batch.json: messages are {kinds}, expected one good, one undecodable, one rejected")
    ids = [r["messageId"] for r in recs]
    for name in ("GOOD_ID", "REJECTED_ID"):
        m = re.search(rf"^{name}=(\S+)", f["script"], re.M)
        if not m or m[1] not in ids:
            problems.append(f"tools/sam-test.sh {name} is not a message of sqs-batch.json")
    return problems


def _calls(tree: ast.AST, method: str) -> list[dict]:
    """The keyword arguments (literals, or a Name's id) of every call of `method`."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method:
            kw = {}
            for k in node.keywords:
                try:
                    kw[k.arg] = ast.literal_eval(k.value)
                except ValueError:
                    kw[k.arg] = k.value.id if isinstance(k.value, ast.Name) else ast.dump(k.value)
            out.append(kw)
    return out


def check_sam_test_ledger(f: dict) -> list[str]:
    """tools/sam_test.py creates the table env.json names, shaped as template.yaml declares it."""
    problems = []
    text = f["sam_test"]
    if not re.search(r'^LEDGER_TABLE = ENV\["ConsumerFunction"\]\["LEDGER_TABLE"\]$', text, re.M):
        problems.append("tools/sam_test.py does not take LEDGER_TABLE from env.json's consumer")
    tree = ast.parse(text)
    table = f["template"]["Resources"]["LedgerTable"]["Properties"]
    creates = _calls(tree, "create_table")
    if len(creates) != 1:
        return problems + [f"tools/sam_test.py: {len(creates)} create_table calls, expected 1"]
    c = creates[0]
    if c.get("TableName") != "LEDGER_TABLE":
        problems.append(f"tools/sam_test.py: create_table TableName={c.get('TableName')!r}, not LEDGER_TABLE")
    for k in ("BillingMode", "AttributeDefinitions", "KeySchema"):
        if c.get(k) != table.get(k):
            problems.append(f"tools/sam_test.py: create_table {k}={c.get(k)!r}, the template's is {table.get(k)!r}")
    ttl = [t.get("TimeToLiveSpecification") for t in _calls(tree, "update_time_to_live")]
    if ttl != [table.get("TimeToLiveSpecification")]:
        problems.append(f"tools/sam_test.py: TTL {ttl}, the template's is {table.get('TimeToLiveSpecification')}")
    return problems


def check_localstack_mirrors_moto(f: dict) -> list[str]:
    def norm(env: dict, port: str, account: str) -> str:
        return json.dumps(env, sort_keys=True).replace(f"host.docker.internal:{port}", "EP").replace(f"/{account}/", "/ACCT/")

    if norm(f["env"], "5000", "123456789012") != norm(f["localstack"], "4566", "000000000000"):
        return ["env.localstack.json differs from env.json beyond the endpoint and account"]
    return []


def check_samconfig(f: dict) -> list[str]:
    problems = []
    sc = f["samconfig"]["default"]
    li = sc.get("local_invoke", {}).get("parameters", {})
    if li.get("env_vars") != "events/env.json":
        problems.append("samconfig local_invoke env_vars is not events/env.json")
    if "LocalInvoke=true" not in li.get("parameter_overrides", []):
        problems.append("samconfig local_invoke does not set LocalInvoke=true")
    if any("LocalInvoke=true" in p for p in sc.get("deploy", {}).get("parameters", {}).get("parameter_overrides", [])):
        problems.append("samconfig deploy sets LocalInvoke=true")
    pattern = f["template"]["Parameters"]["ApiBaseUrl"]["AllowedPattern"]
    for section in ("deploy", "local_invoke"):
        for p in sc.get(section, {}).get("parameters", {}).get("parameter_overrides", []):
            if p.startswith("ApiBaseUrl=") and not re.fullmatch(pattern, p.split("=", 1)[1]):
                problems.append(f"samconfig {section}: {p} does not match the template's ApiBaseUrl pattern")
    b = sc.get("build", {}).get("parameters", {})
    if b.get("parallel") is not True:
        problems.append("samconfig build is not parallel")
    return problems


def test_env_json(files):
    assert check_env(files, "env") == []


def test_env_localstack_json(files):
    assert check_env(files, "localstack") == []
    assert check_localstack_mirrors_moto(files) == []


def test_s3_event(files):
    assert check_s3_event(files) == []


def test_sqs_batch(files):
    assert check_sqs_batch(files) == []


def test_samconfig(files):
    assert check_samconfig(files) == []


def test_sam_test_ledger(files):
    assert check_sam_test_ledger(files) == []


# the checks catch breaks


def mutated(files, fn):
    f = copy.deepcopy(files)
    fn(f)
    return f


def test_env_check_catches(files):
    assert check_env(mutated(files, lambda f: f["env"]["ConsumerFunction"].__setitem__("DLQ_ULR", "x")), "env")
    assert check_env(mutated(files, lambda f: f["env"]["SplitterFunction"].__setitem__(
        "WORK_QUEUE_URL", "http://elsewhere:5000/123456789012/casefeed-work")), "env")
    assert check_localstack_mirrors_moto(mutated(files, lambda f: f["localstack"]["ConsumerFunction"].__setitem__(
        "LEDGER_TABLE", "other")))
    assert check_env(mutated(files, lambda f: f["env"]["ConsumerFunction"].pop("LEDGER_TABLE")), "env")
    assert check_env(mutated(files, lambda f: f["localstack"]["ConsumerFunction"].__setitem__(
        "LEDGER_BUCKET", "casefeed-local")), "localstack")


def test_event_checks_catch(files):
    assert check_s3_event(mutated(files, lambda f: f["s3"]["Records"][0]["s3"]["object"].__setitem__("key", "incoming/nofeed/x.csv")))
    assert check_sqs_batch(mutated(files, lambda f: f["sqs"]["Records"].pop()))
    assert check_sqs_batch(mutated(files, lambda f: f["sqs"]["Records"][0]["messageAttributes"]["change"].__setitem__(
        "stringValue", "changed")))
    assert check_sqs_batch(mutated(files, lambda f: _edit_body(f, 0, lambda b: b.pop("version"))))
    assert check_sqs_batch(mutated(files, lambda f: _edit_body(f, 0, lambda b: b.__setitem__("v", 1))))
    assert check_sqs_batch(mutated(files, lambda f: _edit_body(f, 2, lambda b: b.__setitem__("version", "2"))))
    assert check_sqs_batch(mutated(files, lambda f: _edit_body(f, 2, lambda b: b.__setitem__("change", "removed"))))
    assert check_sqs_batch(mutated(files, lambda f: f["sqs"]["Records"][1].__setitem__("md5OfBody", "0" * 32)))
    assert check_samconfig(mutated(files, lambda f: f["samconfig"]["default"]["local_invoke"]["parameters"].__setitem__(
        "parameter_overrides", [])))
    assert check_samconfig(mutated(files, lambda f: f["samconfig"]["default"]["deploy"]["parameters"].__setitem__(
        "parameter_overrides", ["ApiBaseUrl=http://contact-tracing.example.org"])))


def _edit_body(f: dict, i: int, fn) -> None:
    """Change message i's body and keep its md5OfBody true, so only the edit is wrong."""
    r = f["sqs"]["Records"][i]
    body = json.loads(r["body"])
    fn(body)
    r["body"] = json.dumps(body, separators=(",", ":"))
    r["md5OfBody"] = hashlib.md5(r["body"].encode()).hexdigest()


def test_sam_test_ledger_check_catches(files):
    assert check_sam_test_ledger(mutated(files, lambda f: f.__setitem__("sam_test", f["sam_test"].replace(
        '"AttributeName": "pk", "KeyType": "HASH"', '"AttributeName": "id", "KeyType": "HASH"'))))
    assert check_sam_test_ledger(mutated(files, lambda f: f.__setitem__("sam_test", f["sam_test"].replace(
        '"AttributeName": "expires_at"', '"AttributeName": "ttl"'))))
    assert check_sam_test_ledger(mutated(files, lambda f: f.__setitem__("sam_test", f["sam_test"].replace(
        'ENV["ConsumerFunction"]["LEDGER_TABLE"]', '"casefeed-ledger"'))))
