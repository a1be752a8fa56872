"""A Google Cloud Storage XML API server for the tests, on 127.0.0.1, strict where Google's
documentation is (no GCS emulator that answers as GCS does is in the registries these machines
reach: gcp-storage-emulator answers an XML API PUT without the ETag every client reads, and a HEAD
not at all).

    python gcs_server.py PORT KEY_FILE MIRROR BUCKET...

At start it makes a service account key (RSA 2048, as `gcloud iam service-accounts keys create`
writes it: type, project_id, private_key_id, private_key in PKCS#8 PEM, client_email, ...) and
writes it to KEY_FILE with `gcs_base_url` pointing here, the field object_store reads to reach an
emulator. Every request must carry `Authorization: Bearer <token>` where the token is a JWT the key
signed itself (Google's self-signed JWT for service accounts, AIP-4111: RS256, `kid` the key's id,
`iss` = `sub` = its email, a `scope` or `aud`, unexpired): none is 403 `AccessDenied` (an anonymous
caller), another is 401 `AuthenticationRequired`. Only the buckets named exist.

The XML API as documented (cloud.google.com/storage/docs/xml-api):
- PUT /BUCKET/OBJECT: stores it; 200 with `ETag` (the MD5, quoted), `x-goog-generation`,
  `x-goog-metageneration`, `x-goog-hash` (crc32c and md5), `x-goog-stored-content-length`.
- GET and HEAD /BUCKET/OBJECT (one `Range: bytes=a-b` honoured, 206): the object with `ETag`,
  `Last-Modified`, `Content-Length`, `x-goog-generation`, ...; a missing object is 404 `NoSuchKey`.
- DELETE /BUCKET/OBJECT: 204 (404 `NoSuchKey`).
- XML multipart uploads: POST ?uploads (InitiateMultipartUploadResult), PUT ?partNumber=N&uploadId=U
  (1 <= N <= 10000; `ETag`), POST ?uploadId=U with CompleteMultipartUpload (parts in ascending order,
  each ETag the one given for its number, every part but the last at least 5 MiB: else 400
  `InvalidPartOrder`, `InvalidPart`, `EntityTooSmall`), DELETE ?uploadId=U (204); an unknown upload
  is 404 `NoSuchUpload`. GET /BUCKET?uploads lists the open ones.
- GET /BUCKET?list-type=2 (prefix, delimiter, continuation-token, max-keys, start-after):
  ListBucketResult.
- A bucket that does not exist: 404 `NoSuchBucket` with its XML error body, for every request.

Each object stored is also written under MIRROR/BUCKET/OBJECT (and removed there when deleted), so
the tests read what GCS holds with their folder helpers. Without auth, GET /__requests gives one
line per request served (`METHOD PATH STATUS`) and GET /__uploads the number of open multipart
uploads.
"""

import base64
import binascii
import datetime
import hashlib
import json
import os
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

MIN_PART = 5 * 1024 * 1024
S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
EMAIL = "sluice-tests@sluice-project.iam.gserviceaccount.com"
KEY_ID = binascii.hexlify(os.urandom(20)).decode()

LOCK = threading.Lock()
OBJECTS = {}  # (bucket, name) -> (bytes, generation, last_modified)
UPLOADS = {}  # upload id -> {"bucket", "name", "parts": {n: (etag, bytes)}}
REQUESTS = []
GENERATION = [int(time.time() * 1_000_000)]


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return (~crc) & 0xFFFFFFFF


def error_body(code, message, details=None):
    body = "<?xml version='1.0' encoding='UTF-8'?><Error><Code>%s</Code><Message>%s</Message>" % (code, message)
    if details:
        body += "<Details>%s</Details>" % details
    return (body + "</Error>").encode()


class Refusal(Exception):
    def __init__(self, status, code, message, details=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    public_key = None
    buckets = ()
    mirror = None

    def log_message(self, *args):
        pass

    # Authentication: a self-signed JWT of the service account.
    def check_auth(self):
        header = self.headers.get("Authorization")
        if not header:
            raise Refusal(403, "AccessDenied", "Access denied.",
                          "Anonymous caller does not have storage.objects.get access to the Google Cloud Storage object.")
        if not header.startswith("Bearer "):
            raise Refusal(401, "AuthenticationRequired", "Authentication required.")
        token = header[len("Bearer "):]
        try:
            head, claims, signature = token.split(".")
            jwt_header = json.loads(b64url_decode(head))
            jwt_claims = json.loads(b64url_decode(claims))
            self.public_key.verify(b64url_decode(signature), ("%s.%s" % (head, claims)).encode(),
                                   padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, InvalidSignature, json.JSONDecodeError):
            raise Refusal(401, "AuthenticationRequired", "Invalid Credentials")
        now = time.time()
        if (jwt_header.get("alg") != "RS256" or jwt_header.get("kid") != KEY_ID
                or jwt_claims.get("iss") != EMAIL or jwt_claims.get("sub") != EMAIL
                or not (jwt_claims.get("scope") or jwt_claims.get("aud"))
                or not jwt_claims.get("exp", 0) > now or jwt_claims.get("iat", now + 3600) > now + 300):
            raise Refusal(401, "AuthenticationRequired", "Invalid Credentials")

    def answer(self, status, body=b"", headers=None, head=False):
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/xml; charset=UTF-8" if body else "text/html; charset=UTF-8")
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)
        REQUESTS.append("%s %s %d" % (self.command, self.path, status))

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def route(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        if url.path == "/__requests":
            return self.answer(200, ("\n".join(REQUESTS) + "\n").encode(), {"Content-Type": "text/plain"})
        if url.path == "/__uploads":
            return self.answer(200, str(len(UPLOADS)).encode(), {"Content-Type": "text/plain"})
        payload = self.body()
        self.check_auth()
        parts = url.path.lstrip("/").split("/", 1)
        bucket = unquote(parts[0])
        name = unquote(parts[1]) if len(parts) > 1 else ""
        if bucket not in self.buckets:
            raise Refusal(404, "NoSuchBucket", "The specified bucket does not exist.")
        if not name:
            return self.bucket_request(bucket, query)
        return self.object_request(bucket, name, query, payload)

    def object_headers(self, data, generation, modified):
        md5 = hashlib.md5(data)
        return {
            "ETag": '"%s"' % md5.hexdigest(),
            "Last-Modified": formatdate(modified, usegmt=True),
            "x-goog-generation": str(generation),
            "x-goog-metageneration": "1",
            "x-goog-hash": "crc32c=%s,md5=%s" % (
                base64.b64encode(crc32c(data).to_bytes(4, "big")).decode(), base64.b64encode(md5.digest()).decode()),
            "x-goog-stored-content-length": str(len(data)),
            "x-goog-stored-content-encoding": "identity",
            "x-goog-storage-class": "STANDARD",
        }

    def store(self, bucket, name, data):
        with LOCK:
            GENERATION[0] += 1
            generation = GENERATION[0]
            OBJECTS[(bucket, name)] = (data, generation, time.time())
        path = os.path.join(self.mirror, bucket, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".part", "wb") as f:
            f.write(data)
        os.replace(path + ".part", path)
        return generation

    def object_request(self, bucket, name, query, payload):
        method = self.command
        if "uploads" in query and method == "POST":
            upload = uuid.uuid4().hex
            with LOCK:
                UPLOADS[upload] = {"bucket": bucket, "name": name, "parts": {}}
            body = ('<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult xmlns="%s">'
                    "<Bucket>%s</Bucket><Key>%s</Key><UploadId>%s</UploadId></InitiateMultipartUploadResult>"
                    % (S3_NS, bucket, name, upload)).encode()
            return self.answer(200, body)
        if "uploadId" in query:
            upload_id = query["uploadId"][0]
            upload = UPLOADS.get(upload_id)
            if upload is None or (upload["bucket"], upload["name"]) != (bucket, name):
                raise Refusal(404, "NoSuchUpload", "The requested upload was not found.")
            if method == "PUT":
                number = int(query.get("partNumber", ["0"])[0] or 0)
                if not 1 <= number <= 10000:
                    raise Refusal(400, "InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive.")
                etag = '"%s"' % hashlib.md5(payload).hexdigest()
                with LOCK:
                    upload["parts"][number] = (etag, payload)
                return self.answer(200, b"", {"ETag": etag})
            if method == "DELETE":
                with LOCK:
                    UPLOADS.pop(upload_id, None)
                return self.answer(204)
            if method == "POST":
                return self.complete(bucket, name, upload_id, upload, payload)
            raise Refusal(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
        if method == "PUT":
            generation = self.store(bucket, name, payload)
            data, generation, modified = OBJECTS[(bucket, name)]
            return self.answer(200, b"", self.object_headers(data, generation, modified))
        if method in ("GET", "HEAD"):
            found = OBJECTS.get((bucket, name))
            if found is None:
                raise Refusal(404, "NoSuchKey", "The specified key does not exist.",
                              "No such object: %s/%s" % (bucket, name))
            data, generation, modified = found
            headers = self.object_headers(data, generation, modified)
            headers["Content-Type"] = "application/octet-stream"
            wanted = self.headers.get("Range")
            if wanted and wanted.startswith("bytes="):
                first, _, last = wanted[len("bytes="):].partition("-")
                if first == "":
                    start, end = max(0, len(data) - int(last)), len(data) - 1
                else:
                    start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
                if start >= len(data):
                    raise Refusal(416, "InvalidRange", "The requested range cannot be satisfied.")
                headers["Content-Range"] = "bytes %d-%d/%d" % (start, end, len(data))
                return self.answer(206, data[start:end + 1], headers, head=method == "HEAD")
            headers["Content-Length"] = str(len(data))
            if method == "HEAD":
                return self.answer(200, b"", headers, head=True)
            return self.answer(200, data, headers)
        if method == "DELETE":
            with LOCK:
                found = OBJECTS.pop((bucket, name), None)
            if found is None:
                raise Refusal(404, "NoSuchKey", "The specified key does not exist.")
            try:
                os.remove(os.path.join(self.mirror, bucket, name))
            except FileNotFoundError:
                pass
            return self.answer(204)
        raise Refusal(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")

    def complete(self, bucket, name, upload_id, upload, payload):
        try:
            root = ET.fromstring(payload)
        except ET.ParseError:
            raise Refusal(400, "MalformedXML", "The XML you provided was not well-formed.")
        listed = []
        for part in root.iter():
            if part.tag.split("}")[-1] != "Part":
                continue
            fields = {child.tag.split("}")[-1]: (child.text or "") for child in part}
            listed.append((int(fields.get("PartNumber", "0")), fields.get("ETag", "")))
        if not listed:
            raise Refusal(400, "MalformedXML", "The XML you provided was not well-formed.")
        numbers = [n for n, _ in listed]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise Refusal(400, "InvalidPartOrder", "The list of parts was not in ascending order.")
        chunks = []
        for i, (number, etag) in enumerate(listed):
            given = upload["parts"].get(number)
            if given is None or given[0].strip('"') != etag.strip('"'):
                raise Refusal(400, "InvalidPart", "One or more of the specified parts could not be found.")
            if i < len(listed) - 1 and len(given[1]) < MIN_PART:
                raise Refusal(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size.")
            chunks.append(given[1])
        with LOCK:
            UPLOADS.pop(upload_id, None)
        data = b"".join(chunks)
        generation = self.store(bucket, name, data)
        etag = '"%s-%d"' % (hashlib.md5(b"".join(hashlib.md5(c).digest() for c in chunks)).hexdigest(), len(chunks))
        body = ('<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult xmlns="%s">'
                "<Location>http://%s/%s/%s</Location><Bucket>%s</Bucket><Key>%s</Key><ETag>%s</ETag>"
                "</CompleteMultipartUploadResult>"
                % (S3_NS, self.headers.get("Host", ""), bucket, quote(name), bucket, name, etag)).encode()
        return self.answer(200, body, {"x-goog-generation": str(generation), "x-goog-metageneration": "1"})

    def bucket_request(self, bucket, query):
        if self.command != "GET":
            raise Refusal(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
        if "uploads" in query:
            with LOCK:
                open_uploads = [(u, v["name"]) for u, v in UPLOADS.items() if v["bucket"] == bucket]
            body = '<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult xmlns="%s"><Bucket>%s</Bucket>' % (
                S3_NS, bucket)
            for upload, name in open_uploads:
                body += "<Upload><Key>%s</Key><UploadId>%s</UploadId></Upload>" % (name, upload)
            return self.answer(200, (body + "</ListMultipartUploadsResult>").encode())
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        after = query.get("continuation-token", query.get("start-after", [""]))[0]
        limit = int(query.get("max-keys", ["1000"])[0])
        with LOCK:
            names = sorted(n for (b, n) in OBJECTS if b == bucket and n.startswith(prefix) and n > after)
        contents, prefixes, truncated, last = [], [], False, None
        for n in names:
            if len(contents) + len(prefixes) >= limit:
                truncated = True
                break
            rest = n[len(prefix):]
            if delimiter and delimiter in rest:
                common = prefix + rest.split(delimiter, 1)[0] + delimiter
                if common not in prefixes:
                    prefixes.append(common)
                last = n
                continue
            contents.append(n)
            last = n
        body = '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="%s"><Name>%s</Name><Prefix>%s</Prefix>' % (
            S3_NS, bucket, prefix)
        body += "<KeyCount>%d</KeyCount><MaxKeys>%d</MaxKeys><IsTruncated>%s</IsTruncated>" % (
            len(contents) + len(prefixes), limit, "true" if truncated else "false")
        if truncated:
            body += "<NextContinuationToken>%s</NextContinuationToken>" % last
        for n in contents:
            data, generation, modified = OBJECTS[(bucket, n)]
            stamp = datetime.datetime.fromtimestamp(modified, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            body += ("<Contents><Key>%s</Key><Generation>%d</Generation><MetaGeneration>1</MetaGeneration>"
                     "<LastModified>%s</LastModified><ETag>\"%s\"</ETag><Size>%d</Size></Contents>"
                     % (n, generation, stamp, hashlib.md5(data).hexdigest(), len(data)))
        for p in prefixes:
            body += "<CommonPrefixes><Prefix>%s</Prefix></CommonPrefixes>" % p
        return self.answer(200, (body + "</ListBucketResult>").encode())

    def handle_any(self):
        try:
            self.route()
        except Refusal as refusal:
            self.answer(refusal.status, error_body(refusal.code, refusal.message, refusal.details),
                        head=self.command == "HEAD")

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


def main():
    port, key_file, mirror = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    key = {
        "type": "service_account",
        "project_id": "sluice-project",
        "private_key_id": KEY_ID,
        "private_key": pem,
        "client_email": EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "gcs_base_url": "http://127.0.0.1:%d" % port,
    }
    with open(key_file + ".part", "w") as f:
        json.dump(key, f)
    os.replace(key_file + ".part", key_file)
    Handler.public_key = private.public_key()
    Handler.buckets = tuple(sys.argv[4:])
    Handler.mirror = mirror
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
