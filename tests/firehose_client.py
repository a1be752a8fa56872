"""Drives sluice's Firehose API with the official AWS SDK for Python (boto3/botocore) and prints what
happened as JSON, for the integration tests in tests/api.rs.

    firehose_client.py put ENDPOINT STREAM COUNT [KEY SECRET]   -> {"sent": [...records acknowledged...]}
    firehose_client.py errors ENDPOINT STREAM [KEY SECRET]      -> {"case": "ErrorType", ...}
    firehose_client.py auth ENDPOINT STREAM KEY SECRET          -> {"case": "ErrorType", ...}
    firehose_client.py put_b64 ENDPOINT STREAM FILE              -> {"sent": N} (one base64 record per line,
                                                                    sent as bytes in one PutRecordBatch)
    firehose_client.py access ENDPOINT STREAM KEY SECRET        -> {"Operation": {"ok": ...} | {"error",
                                                                    "message", "status"}} for all four
"""

import base64
import datetime
import hashlib
import hmac
import json
import sys
import urllib.parse

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.httpsession
from botocore.config import Config
from botocore.exceptions import ClientError

REGION = "us-east-1"


def client(endpoint, key="AKIDANYTHING", secret="anything"):
    return boto3.client(
        "firehose",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        # The tests want to see each error, not the SDK's retries of it.
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def record(i):
    # Text that needs JSON escaping and non-ASCII, one record per line at the sink.
    return json.dumps({"n": i, "msg": f'héllo "quoted" \\ tab\t{i}', "pad": "x" * (i % 300)}, ensure_ascii=False)


def put(endpoint, stream, count, key="AKIDANYTHING", secret="anything"):
    c = client(endpoint, key, secret)
    sent = []
    i = 0
    # A few single puts, then batches of up to 500.
    while i < min(count, 5):
        r = c.put_record(DeliveryStreamName=stream, Record={"Data": record(i).encode()})
        assert r["RecordId"], r
        sent.append(record(i))
        i += 1
    while i < count:
        batch = [record(j) for j in range(i, min(count, i + 500))]
        r = c.put_record_batch(DeliveryStreamName=stream, Records=[{"Data": b.encode()} for b in batch])
        for b, resp in zip(batch, r["RequestResponses"]):
            if "RecordId" in resp:
                sent.append(b)
            else:
                raise SystemExit(f"record refused: {resp}")
        assert r["FailedPutCount"] == 0, r
        i += len(batch)
    return {"sent": sent}


def error_type(call):
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"]
    return "OK"


def raw(endpoint, target, body, key=None, secret=None, tamper=None, region=REGION, service="firehose"):
    """Sends `body` (bytes) as X-Amz-Target `target`, signed by botocore when a key is given."""
    request = botocore.awsrequest.AWSRequest(
        method="POST",
        url=endpoint + "/",
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
    )
    if key is not None:
        credentials = botocore.credentials.Credentials(key, secret)
        botocore.auth.SigV4Auth(credentials, service, region).add_auth(request)
    if tamper:
        tamper(request)
    return send(request)


def send(request):
    response = botocore.httpsession.URLLib3Session().send(request.prepare())
    if response.status_code == 200:
        return "OK"
    return json.loads(response.content)["__type"]


def hand_signed(endpoint, target, body, key, secret, region=REGION, service="firehose", signed=None):
    """A request signed here, step by step as AWS's SigV4 documentation gives it, over the headers
    `signed` names (default: host, x-amz-date, x-amz-target)."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    headers = {
        "host": urllib.parse.urlparse(endpoint).netloc,
        "x-amz-date": now,
        "x-amz-target": target,
        "content-type": "application/x-amz-json-1.1",
    }
    names = sorted(signed or ["host", "x-amz-date", "x-amz-target"])
    canonical = "\n".join(
        ["POST", "/", "", *[f"{n}:{headers[n]}" for n in names], "", ";".join(names), hashlib.sha256(body).hexdigest()]
    )
    scope = f"{now[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", now, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    signing_key = ("AWS4" + secret).encode()
    for part in scope.split("/"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return send(botocore.awsrequest.AWSRequest(method="POST", url=endpoint + "/", data=body, headers=headers))


def errors(endpoint, stream, key="AKIDANYTHING", secret="anything"):
    c = client(endpoint, key, secret)
    out = {}
    out["unknown_stream"] = error_type(lambda: c.put_record(DeliveryStreamName="no-such-stream", Record={"Data": b"x"}))
    out["bad_stream_name"] = error_type(lambda: c.put_record(DeliveryStreamName="bad name!", Record={"Data": b"x"}))
    out["oversize_record"] = error_type(
        lambda: c.put_record(DeliveryStreamName=stream, Record={"Data": b"x" * (1_024_000 + 1)})
    )
    out["too_many_records"] = error_type(
        lambda: c.put_record_batch(DeliveryStreamName=stream, Records=[{"Data": b"x"}] * 501)
    )
    out["oversize_batch"] = error_type(
        lambda: c.put_record_batch(DeliveryStreamName=stream, Records=[{"Data": b"y" * 1_000_000}] * 5)
    )
    out["describe_unknown"] = error_type(lambda: c.describe_delivery_stream(DeliveryStreamName="no-such-stream"))
    tags = c.list_tags_for_delivery_stream(DeliveryStreamName=stream)
    out["list_tags"] = "OK" if (tags["Tags"], tags["HasMoreTags"]) == ([], False) else repr(tags)
    out["list_tags_unknown"] = error_type(lambda: c.list_tags_for_delivery_stream(DeliveryStreamName="no-such-stream"))
    out["tag_stream"] = error_type(
        lambda: c.tag_delivery_stream(DeliveryStreamName=stream, Tags=[{"Key": "team", "Value": "sec"}])
    )
    put_batch = "Firehose_20150804.PutRecordBatch"
    sign = {"key": key, "secret": secret}
    out["bad_json"] = raw(endpoint, put_batch, b'{"DeliveryStreamName": "' + stream.encode() + b'", "Records": [', **sign)
    out["bad_base64"] = raw(
        endpoint, put_batch, json.dumps({"DeliveryStreamName": stream, "Records": [{"Data": "!!not base64!!"}]}).encode(), **sign
    )
    out["wrong_shape"] = raw(endpoint, put_batch, json.dumps({"DeliveryStreamName": stream, "Records": "x"}).encode(), **sign)
    out["unknown_operation"] = raw(endpoint, "Firehose_20150804.FlyToTheMoon", b"{}", **sign)
    out["no_target"] = raw(endpoint, "", b"{}", **sign)
    out["create_stream"] = raw(endpoint, "Firehose_20150804.CreateDeliveryStream", b"{}", **sign)
    put_one = "Firehose_20150804.PutRecord"
    out["missing_data"] = raw(endpoint, put_one, json.dumps({"DeliveryStreamName": stream, "Record": {}}).encode(), **sign)
    out["batch_missing_data"] = raw(
        endpoint, put_batch, json.dumps({"DeliveryStreamName": stream, "Records": [{"Data": "eA=="}, {}]}).encode(), **sign
    )
    out["record_as_array"] = raw(
        endpoint, put_one, json.dumps({"DeliveryStreamName": stream, "Record": ["eA=="]}).encode(), **sign
    )
    out["records_of_arrays"] = raw(
        endpoint, put_batch, json.dumps({"DeliveryStreamName": stream, "Records": [["eA=="]]}).encode(), **sign
    )
    out["top_level_array"] = raw(endpoint, put_one, json.dumps([stream, {"Data": "eA=="}]).encode(), **sign)
    # Nothing of the refused requests may have been accepted: one good record marks the end.
    c.put_record(DeliveryStreamName=stream, Record={"Data": b'{"marker":true}'})
    return out


def auth(endpoint, stream, key, secret):
    body = json.dumps({"DeliveryStreamName": stream, "Record": {"Data": base64.b64encode(b"{}").decode()}}).encode()
    target = "Firehose_20150804.PutRecord"

    def expire(request):
        # Ten minutes past the allowed skew; checked before the signature, so this is the error.
        request.headers.replace_header("X-Amz-Date", "20200101T000000Z")

    def non_ascii(request):
        value = request.headers["Authorization"].replace("Credential=", "Credential=\u00e9", 1)
        request.headers.replace_header("Authorization", value)

    return {
        "signed": raw(endpoint, target, body, key, secret),
        "hand_signed": hand_signed(endpoint, target, body, key, secret),
        "wrong_region": raw(endpoint, target, body, key, secret, region="eu-west-1"),
        "hand_wrong_region": hand_signed(endpoint, target, body, key, secret, region="eu-west-1"),
        "wrong_service": raw(endpoint, target, body, key, secret, service="s3"),
        "hand_wrong_service": hand_signed(endpoint, target, body, key, secret, service="s3"),
        "hand_host_not_signed": hand_signed(endpoint, target, body, key, secret, signed=["x-amz-date", "x-amz-target"]),
        "non_ascii_authorization": raw(endpoint, target, body, key, secret, tamper=non_ascii),
        "unsigned": raw(endpoint, target, body),
        "wrong_secret": raw(endpoint, target, body, key, secret + "x"),
        "unknown_key": raw(endpoint, target, body, "AKIDUNKNOWN", secret),
        "expired": raw(endpoint, target, body, key, secret, tamper=expire),
        "boto3_wrong_secret": error_type(
            lambda: client(endpoint, key, "wrong").put_record(DeliveryStreamName=stream, Record={"Data": b"{}"})
        ),
    }


def access(endpoint, stream, key, secret):
    c = client(endpoint, key, secret)
    calls = {
        "PutRecord": lambda: c.put_record(DeliveryStreamName=stream, Record={"Data": b'{"access":"PutRecord"}'}),
        "PutRecordBatch": lambda: c.put_record_batch(
            DeliveryStreamName=stream, Records=[{"Data": b'{"access":"PutRecordBatch"}'}]
        ),
        "DescribeDeliveryStream": lambda: c.describe_delivery_stream(DeliveryStreamName=stream),
        "ListDeliveryStreams": lambda: c.list_delivery_streams(),
    }
    out = {}
    for name, call in calls.items():
        try:
            answer = call()
            out[name] = {"ok": answer.get("DeliveryStreamNames", True)}
        except ClientError as e:
            out[name] = {
                "error": e.response["Error"]["Code"],
                "message": e.response["Error"]["Message"],
                "status": e.response["ResponseMetadata"]["HTTPStatusCode"],
            }
    return out


def put_b64(endpoint, stream, path):
    with open(path) as f:
        records = [base64.b64decode(line) for line in f.read().split("\n") if line]
    r = client(endpoint).put_record_batch(DeliveryStreamName=stream, Records=[{"Data": d} for d in records])
    assert r["FailedPutCount"] == 0, r
    return {"sent": len(records)}


if __name__ == "__main__":
    command, endpoint, stream, *rest = sys.argv[1:]
    if command == "put":
        result = put(endpoint, stream, int(rest[0]), *rest[1:])
    elif command == "errors":
        result = errors(endpoint, stream, *rest)
    elif command == "auth":
        result = auth(endpoint, stream, *rest)
    elif command == "access":
        result = access(endpoint, stream, *rest)
    elif command == "put_b64":
        result = put_b64(endpoint, stream, rest[0])
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result, ensure_ascii=False))
