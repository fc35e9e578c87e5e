"""moto_server, with DynamoDB requests served one at a time.

DynamoDB applies a conditional write atomically. moto's server is threaded and its DynamoDB
backend checks a condition and then writes without a lock, so two concurrent conditional
UpdateItems on one item can both pass: a race production cannot have. The consumer's ledger
(one lease per record) depends on that atomicity, so the local stack serialises DynamoDB
requests here; S3, SQS and Secrets Manager stay concurrent.

Usage: python serial_dynamodb.py -H 127.0.0.1 -p PORT   (the arguments of moto_server)
"""
import sys
import threading

from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_lock = threading.Lock()
_call_action = DynamoHandler.call_action


def _serialised(self):  # type: ignore[no-untyped-def]
    with _lock:
        return _call_action(self)


DynamoHandler.call_action = _serialised  # type: ignore[method-assign]

if __name__ == "__main__":
    main(sys.argv[1:])
