// Drives the AWS SDK for JavaScript v3 against a gateway; prints one JSON line of results.
// Usage: node s3check.mjs ENDPOINT BUCKET   (credentials from AWS_ACCESS_KEY_ID/SECRET)
import {
  S3Client, PutObjectCommand, GetObjectCommand, ListObjectsV2Command, DeleteObjectCommand,
  CopyObjectCommand, HeadObjectCommand, CreateMultipartUploadCommand, UploadPartCommand,
  CompleteMultipartUploadCommand,
} from "@aws-sdk/client-s3";
import { createHash, randomBytes } from "node:crypto";

const [endpoint, bucket] = process.argv.slice(2);
const s3 = new S3Client({ endpoint, region: "us-east-1", forcePathStyle: true });
const md5 = (b) => createHash("md5").update(b).digest("hex");
const out = {};
const body = randomBytes(3 * 1024 * 1024 + 11);
const put = await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "js/one.bin", Body: body,
  ContentType: "application/x-js", Metadata: { from: "js" } }));
out.putEtag = put.ETag === `"${md5(body)}"`;
out.putChecksum = put.ChecksumCRC32 ?? null;
const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: "js/one.bin" }));
const bytes = Buffer.from(await got.Body.transformToByteArray());
out.getEqual = bytes.equals(body);
out.contentType = got.ContentType;
out.meta = got.Metadata;
const list = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: "js/" }));
out.listed = (list.Contents ?? []).map((c) => c.Key);
await s3.send(new CopyObjectCommand({ Bucket: bucket, Key: "js/copy.bin", CopySource: `${bucket}/js/one.bin` }));
const head = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: "js/copy.bin" }));
out.copyLength = head.ContentLength;
const up = await s3.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: "js/mpu.bin" }));
const p1 = randomBytes(5 * 1024 * 1024), p2 = randomBytes(1024);
const e1 = (await s3.send(new UploadPartCommand({ Bucket: bucket, Key: "js/mpu.bin", UploadId: up.UploadId, PartNumber: 1, Body: p1 }))).ETag;
const e2 = (await s3.send(new UploadPartCommand({ Bucket: bucket, Key: "js/mpu.bin", UploadId: up.UploadId, PartNumber: 2, Body: p2 }))).ETag;
const done = await s3.send(new CompleteMultipartUploadCommand({ Bucket: bucket, Key: "js/mpu.bin", UploadId: up.UploadId,
  MultipartUpload: { Parts: [{ PartNumber: 1, ETag: e1 }, { PartNumber: 2, ETag: e2 }] } }));
out.mpuEtag = done.ETag;
const mget = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: "js/mpu.bin" }));
out.mpuEqual = Buffer.from(await mget.Body.transformToByteArray()).equals(Buffer.concat([p1, p2]));
for (const k of ["js/one.bin", "js/copy.bin", "js/mpu.bin"]) {
  await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: k }));
}
out.afterDelete = ((await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: "js/" }))).KeyCount);
console.log(JSON.stringify(out));
