#!/usr/bin/env node
// A webhook receiver for rppg-agent events, with no dependencies (Node 18+).
//
//   RPPG_HOOK_SECRET=whsec_... PORT=8080 node examples/receiver.js
//
// It verifies every request over the RAW bytes it received, the only way
// that always works: the Standard Webhooks headers (webhook-id,
// webhook-timestamp, webhook-signature: HMAC-SHA256 of "id.timestamp.body"
// with the base64 key after "whsec_"), and for `format = "circadify"` the
// body's own `signature` (hex HMAC-SHA256, same key, of the body's JSON
// without `signature`, as JSON.stringify writes it). It prints one JSON line
// per request and answers 204 when the signature holds, 401 when not.
// Deduplicate by webhook-id: a retry carries the same id.
'use strict';
const http = require('http');
const crypto = require('crypto');

const secret = process.env.RPPG_HOOK_SECRET || '';
if (!secret.startsWith('whsec_')) {
  console.error('set RPPG_HOOK_SECRET to the destination secret (whsec_...)');
  process.exit(2);
}
const key = Buffer.from(secret.slice('whsec_'.length), 'base64');
const TOLERANCE_S = 300;

function standardWebhooks(headers, raw) {
  const id = headers['webhook-id'];
  const ts = headers['webhook-timestamp'];
  const sigs = headers['webhook-signature'];
  if (!id || !ts || !sigs) return 'missing webhook-id, webhook-timestamp or webhook-signature';
  if (Math.abs(Date.now() / 1000 - Number(ts)) > TOLERANCE_S) return 'timestamp outside 5 minutes';
  const mac = crypto.createHmac('sha256', key)
    .update(Buffer.concat([Buffer.from(`${id}.${ts}.`), raw]))
    .digest();
  for (const s of sigs.split(' ')) {
    const [version, b64] = s.split(',');
    const given = Buffer.from(b64 || '', 'base64');
    if (version === 'v1' && given.length === mac.length && crypto.timingSafeEqual(given, mac)) {
      return null;
    }
  }
  return 'no signature matches';
}

function circadifySignature(body) {
  const { signature, ...rest } = body;
  const mac = crypto.createHmac('sha256', key).update(JSON.stringify(rest)).digest('hex');
  return typeof signature === 'string' && signature.length === mac.length &&
    crypto.timingSafeEqual(Buffer.from(signature), Buffer.from(mac));
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const raw = Buffer.concat(chunks);
    const problem = standardWebhooks(req.headers, raw);
    let body = null;
    try { body = JSON.parse(raw.toString('utf8')); } catch (e) { /* reported below */ }
    const line = {
      id: req.headers['webhook-id'] || null,
      event: body && (body.event || body.resourceType) || null,
      verified: problem === null,
      problem,
      // Whether a receiver that re-serialises (JSON.stringify(req.body)) sees the same bytes.
      stable: body !== null && JSON.stringify(body) === raw.toString('latin1'),
      ascii: raw.every((b) => b < 0x80),
    };
    if (body && typeof body === 'object' && 'signature' in body) {
      line.circadify_signature = circadifySignature(body);
    }
    console.log(JSON.stringify(line));
    res.statusCode = problem === null ? 204 : 401;
    res.end();
  });
});
server.listen(Number(process.env.PORT || 8080), '127.0.0.1', () => {
  console.error(`listening on http://127.0.0.1:${server.address().port}/`);
});
