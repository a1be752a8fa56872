// Sends records to sluice's Firehose API with the AWS SDK for JavaScript v3 (its own SigV4 signer)
// and prints {"sent": [...]} with the records it saw acknowledged.
// node put.mjs ENDPOINT STREAM KEY SECRET
import { FirehoseClient, PutRecordBatchCommand, PutRecordCommand } from "@aws-sdk/client-firehose";

const [endpoint, stream, accessKeyId, secretAccessKey] = process.argv.slice(2);
const client = new FirehoseClient({ endpoint, region: "us-east-1", credentials: { accessKeyId, secretAccessKey }, maxAttempts: 1 });
const encode = (s) => new TextEncoder().encode(s);
const records = [0, 1, 2].map((i) => JSON.stringify({ js: i, text: "ünïcode" }));
const sent = [];
const single = JSON.stringify({ js: "single" });
const one = await client.send(new PutRecordCommand({ DeliveryStreamName: stream, Record: { Data: encode(single) } }));
if (!one.RecordId) throw new Error("no RecordId");
sent.push(single);
const batch = await client.send(
  new PutRecordBatchCommand({ DeliveryStreamName: stream, Records: records.map((r) => ({ Data: encode(r) })) }),
);
if (batch.FailedPutCount !== 0) throw new Error(JSON.stringify(batch));
sent.push(...records);
console.log(JSON.stringify({ sent }));
