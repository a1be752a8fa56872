"""Puts records into a Kinesis stream the way producers do: boto3's PutRecords (500 at a time), and
every `--aggregate-every` Nth group of records as one KPL aggregated record built by AWS's own
aws_kinesis_agg (the Kinesis Producer Library's format). Used by tests/kinesis.rs against moto.

    kinesis_put.py ENDPOINT STREAM RECORDS_FILE [--aggregate-every N]

RECORDS_FILE holds one record per line (the line without its newline is the record's data).
Exits non-zero if any record was not accepted.
"""
import argparse
import hashlib

import boto3
from aws_kinesis_agg.aggregator import RecordAggregator


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("stream")
    parser.add_argument("records")
    parser.add_argument("--aggregate-every", type=int, default=0)
    args = parser.parse_args()
    kinesis = boto3.client("kinesis", endpoint_url=args.endpoint, region_name="us-east-1")
    with open(args.records, "rb") as f:
        records = f.read().split(b"\n")
    if records and records[-1] == b"":
        records.pop()
    plain = []
    for group_start in range(0, len(records), 100):
        group = records[group_start:group_start + 100]
        aggregate = args.aggregate_every and (group_start // 100) % args.aggregate_every == 0
        if not aggregate:
            plain.extend(group)
            continue
        aggregator = RecordAggregator()
        for record in group:
            # Partition keys spread the user records' hash keys; the aggregated record goes by its first.
            full = aggregator.add_user_record(hashlib.md5(record).hexdigest(), record)
            assert full is None, "a group fits one aggregated record"
        key, hash_key, data = aggregator.clear_and_get().get_contents()
        extra = {"ExplicitHashKey": hash_key} if hash_key else {}
        kinesis.put_record(StreamName=args.stream, Data=data, PartitionKey=key, **extra)
    for start in range(0, len(plain), 500):
        batch = [{"Data": r, "PartitionKey": hashlib.md5(r).hexdigest()} for r in plain[start:start + 500]]
        answer = kinesis.put_records(StreamName=args.stream, Records=batch)
        assert answer["FailedRecordCount"] == 0, answer


if __name__ == "__main__":
    main()
