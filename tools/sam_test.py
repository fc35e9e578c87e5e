"""Set-up and checks of `make sam-test` (tools/sam-test.sh), against the moto server and the
stand-in API that the script started on the docker bridge's gateway address.

  sam_test.py setup         bucket, feed config and queues of events/env.json
  sam_test.py upload NAME CSV EVENT_OUT [--baseline]
                            upload CSV as incoming/lab_results/NAME and write the S3 event
                            for it (events/s3-put.json with the real ETag, size, sequencer)
  sam_test.py splitter OUT EXPECTED --status S
                            check one splitter invoke: its answer, and the work queue holds
                            exactly the generator's new + changed rows (then purge it)
  sam_test.py batch OUT     events/sqs-batch.json sent now (fresh SentTimestamp)
  sam_test.py consumer OUT --failures ID,... --requeued ID,... --applied N --dlq CLASS,...
                            --rejected N
                            check one consumer invoke of events/sqs-batch.json: its
                            batchItemFailures, the copies it requeued on the work queue (the
                            bodies of those messages, attempt 1), the API's counters and
                            ledger, the DLQ

Endpoints: MOTO_URL, API_URL, API_TOKEN, API_LEDGER (environment). Exits 1 with the reason on
the first failed check. Never prints a row's field values.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"
ENV = json.loads((EVENTS / "env.json").read_text())
BUCKET = ENV["SplitterFunction"]["CASEFEED_CONFIG"].split("/", 3)[2]
LEDGER_TABLE = ENV["ConsumerFunction"]["LEDGER_TABLE"]
WORK = ENV["SplitterFunction"]["WORK_QUEUE_URL"].rsplit("/", 1)[1]
DLQ = ENV["ConsumerFunction"]["DLQ_URL"].rsplit("/", 1)[1]
CONFIG_KEY = ENV["SplitterFunction"]["CASEFEED_CONFIG"].split("/", 3)[3]
FEED_PREFIX = "incoming/lab_results/"

# Sequencers and event times of the two uploads: the baseline strictly older than the
# sample event's (events/s3-put.json), so the second file is the newer one.
BASELINE_SEQUENCER = "0067C6D6BF4A1E2B30"
BASELINE_EVENT_TIME = "2025-03-04T10:00:07.412Z"


class CheckFailed(Exception):
    pass


def ensure(cond: bool, what: str) -> None:
    """`what` states the expectation, with the observed value in parentheses."""
    if not cond:
        raise CheckFailed(what)
    print(f"  ok: {what}")


def clients():
    cfg = Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30)
    kw = dict(endpoint_url=os.environ["MOTO_URL"], region_name="us-east-1", config=cfg,
              aws_access_key_id="test", aws_secret_access_key="test")
    return boto3.client("s3", **kw), boto3.client("sqs", **kw)


def dynamodb():
    cfg = Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30)
    return boto3.client("dynamodb", endpoint_url=os.environ["MOTO_URL"], region_name="us-east-1",
                        config=cfg, aws_access_key_id="test", aws_secret_access_key="test")


def queue_url(sqs, name: str) -> str:
    return sqs.get_queue_url(QueueName=name)["QueueUrl"]


def waiting(sqs, url: str) -> int:
    """Messages of the queue still to be received: visible ones and delayed ones (a requeued
    copy waits its backoff). Both count: a copy can turn visible between the last receive
    and this call, and must not end the drain then."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"]
    a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names).get("Attributes", {})
    return sum(int(a.get(n, "0")) for n in names)


def drain(sqs, name: str) -> list[dict]:
    """Every message of the queue (received once, then deleted), delayed ones included
    (waited for up to 150 s: a retry whose call's outcome is unknown, a timeout, waits out
    the record's 60 s lease before its copy shows)."""
    url = queue_url(sqs, name)
    out, empty = [], 0
    import time
    until = time.time() + 150
    while empty < 2 or (waiting(sqs, url) > 0 and time.time() < until):
        r = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600,
                                WaitTimeSeconds=1, MessageAttributeNames=["All"], AttributeNames=["All"])
        msgs = r.get("Messages", [])
        if not msgs:
            empty += 1
            continue
        empty = 0
        out += msgs
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])
    return out


def api(path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(os.environ["API_URL"] + path, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {os.environ['API_TOKEN']}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def cmd_setup(_a) -> None:
    s3, sqs = clients()
    s3.create_bucket(Bucket=BUCKET)
    # versioned, like production's data bucket: events carry versionId, reads are pinned to it
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    # the consumer's ledger table, as template.yaml declares it
    ddb = dynamodb()
    ddb.create_table(TableName=LEDGER_TABLE, BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    ddb.update_time_to_live(TableName=LEDGER_TABLE, TimeToLiveSpecification={
        "Enabled": True, "AttributeName": "expires_at"})
    s3.put_object(Bucket=BUCKET, Key=CONFIG_KEY, Body=(EVENTS / "feeds.toml").read_bytes())
    dlq = sqs.create_queue(QueueName=DLQ)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sqs.create_queue(QueueName=WORK, Attributes={
        "VisibilityTimeout": "60",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "10"})})
    print(f"  bucket {BUCKET} (versioned, with {CONFIG_KEY}), queues {WORK} and {DLQ}, "
          f"ledger table {LEDGER_TABLE}")


def cmd_upload(a) -> None:
    s3, _ = clients()
    key = FEED_PREFIX + a.name
    s3.upload_file(a.csv, BUCKET, key)
    head = s3.head_object(Bucket=BUCKET, Key=key)
    event = json.loads((EVENTS / "s3-put.json").read_text())
    rec = event["Records"][0]
    sample_key = rec["s3"]["object"]["key"]
    obj = rec["s3"]["object"]
    obj["key"] = key
    obj["eTag"] = head["ETag"].strip('"')
    obj["size"] = head["ContentLength"]
    obj["versionId"] = head["VersionId"]
    if a.baseline:
        obj["sequencer"] = BASELINE_SEQUENCER
        rec["eventTime"] = BASELINE_EVENT_TIME
    elif key != sample_key:
        raise CheckFailed(f"the second upload must be the sample event's object {sample_key}")
    Path(a.event_out).write_text(json.dumps(event, indent=2))
    print(f"  uploaded s3://{BUCKET}/{key} ({obj['size']} bytes), event {a.event_out}")


def invoke_answer(path: str) -> dict:
    """The JSON answer of `sam local invoke` (its stdout; logs go to stderr)."""
    text = Path(path).read_text().strip()
    try:
        return json.loads(text.splitlines()[-1] if text else "")
    except (json.JSONDecodeError, IndexError):
        raise CheckFailed(f"the invoke answer is not JSON: {text[:300]!r}")


def cmd_splitter(a) -> None:
    _, sqs = clients()
    ans = invoke_answer(a.out)
    results = ans.get("results", [])
    if len(results) != 1 or "error" in results[0]:
        raise CheckFailed(f"the splitter should answer one result without error, got {results}")
    print("  ok: the splitter answered one result without error")
    r = results[0]
    ensure(r.get("status") == a.status, f"status is {a.status!r} (got {r.get('status')!r})")
    exp = json.loads(Path(a.expected).read_text())
    want = {k: "new" for k in exp.get("new", [])} if a.status != "baseline" else {}
    if a.status != "baseline":
        want.update({k: "changed" for k in exp.get("changed", [])})
    msgs = drain(sqs, WORK)
    got: dict[str, str] = {}
    dups = 0
    for m in msgs:
        body = json.loads(m["Body"])
        if body["record_key"] in got:
            dups += 1
        got[body["record_key"]] = body["change"]
        attr = m.get("MessageAttributes", {}).get("change", {}).get("StringValue")
        if attr != body["change"]:
            raise CheckFailed(f"message attribute change={attr!r} differs from the body's {body['change']!r}")
    counts = r.get("counts", {})
    ensure(len(msgs) == len(want), f"work queue holds {len(want)} messages (got {len(msgs)})")
    ensure(dups == 0, "no record was sent twice")
    ensure(got == want, f"the messages are exactly the generator's {sum(v == 'new' for v in want.values())} new"
                        f" and {sum(v == 'changed' for v in want.values())} changed rows"
                        + ("" if got == want else f" (missing {sorted(set(want) - set(got))[:5]},"
                                                  f" extra {sorted(set(got) - set(want))[:5]})"))
    if a.status != "baseline":
        ensure(counts.get("sent") == len(want), f"the run's counts say sent={len(want)} (got {counts.get('sent')})")
        ensure(counts.get("removed") == len(exp.get("removed", [])),
               f"the run's counts say removed={len(exp.get('removed', []))} (got {counts.get('removed')})")


def cmd_consumer(a) -> None:
    _, sqs = clients()
    ans = invoke_answer(a.out)
    failures = sorted(f["itemIdentifier"] for f in ans.get("batchItemFailures", []))
    want = sorted(x for x in a.failures.split(",") if x)
    ensure(failures == want, f"batchItemFailures are {want} (got {failures})")
    stats = api("/stats")
    ensure(stats["applied"] == a.applied, f"the API applied {a.applied} (got {stats['applied']})")
    ensure(stats["rejected_422"] == a.rejected, f"the API rejected {a.rejected} with 422 (got {stats['rejected_422']})")
    lines = [json.loads(x) for x in Path(os.environ["API_LEDGER"]).read_text().splitlines() if x.strip()] \
        if Path(os.environ["API_LEDGER"]).exists() else []
    keys = [x["idempotency_key"] for x in lines]
    ensure(len(keys) == a.applied and len(set(keys)) == len(keys),
           f"the API's ledger has {a.applied} effect(s), each key once (got {len(keys)}, {len(set(keys))} distinct)")
    if a.applied_key:
        ensure(keys == [a.applied_key] * (1 if a.applied else 0), f"the applied effect is {a.applied_key}")
    batch = {r["messageId"]: r["body"] for r in json.loads((EVENTS / "sqs-batch.json").read_text())["Records"]}
    copies = drain(sqs, WORK)
    want_copies = sorted(batch[x] for x in a.requeued.split(",") if x)
    ensure(sorted(m["Body"] for m in copies) == want_copies,
           f"the work queue holds a requeued copy of exactly {a.requeued or 'nothing'} (got {len(copies)} message(s))")
    for m in copies:
        at = m.get("MessageAttributes", {})
        ensure(at.get("attempts", {}).get("StringValue") == "1", "a requeued copy counts its first attempt")
        ensure(at.get("retry_since_ms", {}).get("StringValue", "").isdigit(), "a requeued copy carries its retry clock")
    dead = drain(sqs, DLQ)
    classes = sorted(m.get("MessageAttributes", {}).get("error_class", {}).get("StringValue", "?") for m in dead)
    want_dlq = sorted(x for x in a.dlq.split(",") if x)
    ensure(classes == want_dlq, f"the DLQ received {want_dlq} (got {classes})")
    for m in dead:
        at = m.get("MessageAttributes", {})
        if at.get("error_class", {}).get("StringValue") == "permanent":
            ensure(at.get("http_status", {}).get("StringValue") == "422", "the permanent dead letter carries http_status 422")


def cmd_batch(a) -> None:
    """events/sqs-batch.json as SQS would deliver it now: the sample's SentTimestamp is of
    2025, older than any retry window, so its retries would be dead-lettered at once."""
    batch = json.loads((EVENTS / "sqs-batch.json").read_text())
    now = str(int(__import__("time").time() * 1000))
    for r in batch["Records"]:
        r["attributes"]["SentTimestamp"] = now
        r["attributes"]["ApproximateFirstReceiveTimestamp"] = now
    Path(a.out).write_text(json.dumps(batch))


def cmd_control(a) -> None:
    api("/control", json.loads(a.patch))
    print(f"  API faults patched: {a.patch}")


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup").set_defaults(f=cmd_setup)
    u = sub.add_parser("upload")
    u.add_argument("name")
    u.add_argument("csv")
    u.add_argument("event_out")
    u.add_argument("--baseline", action="store_true")
    u.set_defaults(f=cmd_upload)
    s = sub.add_parser("splitter")
    s.add_argument("out")
    s.add_argument("expected")
    s.add_argument("--status", required=True)
    s.set_defaults(f=cmd_splitter)
    c = sub.add_parser("consumer")
    c.add_argument("out")
    c.add_argument("--failures", default="")
    c.add_argument("--requeued", default="")
    c.add_argument("--applied", type=int, required=True)
    c.add_argument("--applied-key", default="")
    c.add_argument("--rejected", type=int, required=True)
    c.add_argument("--dlq", default="")
    c.set_defaults(f=cmd_consumer)
    b = sub.add_parser("batch")
    b.add_argument("out")
    b.set_defaults(f=cmd_batch)
    k = sub.add_parser("control")
    k.add_argument("patch")
    k.set_defaults(f=cmd_control)
    a = p.parse_args()
    try:
        a.f(a)
    except CheckFailed as e:
        print(f"  FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
