#!/usr/bin/env node
// A loopback stand-in for a Sigstore instance (Fulcio + Rekor v1), for offline tests of keyless signing.
//
//   node mock-sigstore-server.js TRUST_CONFIG.json [PORT]
//
// Listens on 127.0.0.1:PORT (default 0: any free port), writes a ClientTrustConfig for this instance to
// TRUST_CONFIG.json (trusted root: the CA, CT log and Rekor keys made at start-up; signing config: the
// URLs of this server), then prints one line, its base URL (`http://127.0.0.1:<port>`), on stdout.
// Requests are logged to stderr. It exits on SIGTERM/SIGINT, and when its stdin closes (so that it
// never outlives the test process that started it).
//
// The certificate authority, CT log and transparency log are `@sigstore/mock`'s (the handlers its nock
// mocks use). sigstore-python needs three shims around them:
//   1. Fulcio: the OIDC token comes in `Authorization: Bearer`; the mock reads
//      `credentials.oidcIdentityToken` from the body.
//   2. Fulcio: the CSR comes as base64(PEM); the mock parses the PEM text.
//   3. Rekor: for `dsse` entries, real Rekor stores a canonical body ({envelopeHash, payloadHash,
//      signatures: [{signature, verifier}]}), not the proposed envelope; the mock logs what it is given,
//      and sigstore-python checks the logged body against the bundle. The entry is rewritten as Rekor does.
// No timestamp authority: with Rekor v1, the log's signed integration time is the verified time. The
// identity token is never checked, and certificates last 10 minutes: for tests only.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const {
  fulcioHandler,
  initializeCA,
  initializeCTLog,
  initializeTLog,
  rekorHandler,
} = require('@sigstore/mock');

const OPERATOR = 'stella.test';
const MAX_BODY = 1024 * 1024;

function newKeyPair() {
  return crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
}

function spki(keyPair) {
  return keyPair.publicKey.export({ format: 'der', type: 'spki' });
}

// --- shims ------------------------------------------------------------------------------------------

// 1 + 2: sigstore-python's request -> the body the mock's Fulcio handler parses.
function fulcioRequest(body, headers) {
  const request = JSON.parse(body);
  const auth = headers.authorization || '';
  const token = auth.startsWith('Bearer ') ? auth.slice('Bearer '.length) : '';
  let csr = request.certificateSigningRequest;
  if (typeof csr === 'string' && !csr.startsWith('-----BEGIN')) {
    csr = Buffer.from(csr, 'base64').toString('utf8');
  }
  return JSON.stringify({
    ...request,
    credentials: { oidcIdentityToken: token, ...(request.credentials || {}) },
    certificateSigningRequest: csr,
  });
}

// 3: a proposed dsse entry -> the entry real Rekor logs for it.
function rekorRequest(body) {
  const proposed = JSON.parse(body);
  if (proposed.kind !== 'dsse') {
    return body;
  }
  const content = proposed.spec.proposedContent;
  const envelope = JSON.parse(content.envelope);
  const sha256 = (bytes) => crypto.createHash('sha256').update(bytes).digest('hex');
  return JSON.stringify({
    apiVersion: proposed.apiVersion,
    kind: 'dsse',
    spec: {
      envelopeHash: { algorithm: 'sha256', value: sha256(Buffer.from(content.envelope, 'utf8')) },
      payloadHash: { algorithm: 'sha256', value: sha256(Buffer.from(envelope.payload, 'base64')) },
      signatures: envelope.signatures.map((s) => ({ signature: s.sig, verifier: content.verifiers[0] })),
    },
  });
}

// --- the trust config -------------------------------------------------------------------------------

function trustConfig(url, since, caRoot, ctlog, rekorKeys) {
  const validFor = { start: since.toISOString() };
  const b64 = (bytes) => Buffer.from(bytes).toString('base64');
  const logKey = (der) => ({
    rawBytes: b64(der),
    keyDetails: 'PKIX_ECDSA_P256_SHA_256',
    validFor,
  });
  const service = { url, majorApiVersion: 1, validFor, operator: OPERATOR };
  return {
    mediaType: 'application/vnd.dev.sigstore.clienttrustconfig.v0.1+json',
    trustedRoot: {
      mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
      tlogs: [
        {
          baseUrl: url,
          hashAlgorithm: 'SHA2_256',
          publicKey: logKey(rekorKeys),
          logId: { keyId: b64(crypto.createHash('sha256').update(rekorKeys).digest()) },
        },
      ],
      certificateAuthorities: [
        {
          subject: { organization: 'sigstore.mock', commonName: 'sigstore' },
          uri: url,
          certChain: { certificates: [{ rawBytes: b64(caRoot) }] },
          validFor,
        },
      ],
      ctlogs: [
        {
          baseUrl: url,
          hashAlgorithm: 'SHA2_256',
          publicKey: logKey(ctlog.publicKey),
          logId: { keyId: b64(ctlog.logID) },
        },
      ],
      timestampAuthorities: [],
    },
    signingConfig: {
      mediaType: 'application/vnd.dev.sigstore.signingconfig.v0.2+json',
      caUrls: [service],
      oidcUrls: [],
      rekorTlogUrls: [service],
      tsaUrls: [],
      rekorTlogConfig: { selector: 'ANY' },
      tsaConfig: { selector: 'ANY' },
    },
  };
}

// --- the server -------------------------------------------------------------------------------------

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body, contentType) {
  res.writeHead(status, { 'Content-Type': contentType || 'text/plain; charset=utf-8' });
  res.end(body);
}

async function main(argv) {
  if (argv.length < 1 || argv.length > 2 || !/^\d*$/.test(argv[1] || '')) {
    process.stderr.write('usage: node mock-sigstore-server.js TRUST_CONFIG.json [PORT]\n');
    return 2;
  }
  const [configPath, port] = [argv[0], Number(argv[1] || 0)];
  // Keys and certificates are valid from a minute ago: the trusted root must cover every time checked.
  const since = new Date(Date.now() - 60 * 1000);

  const caKeys = newKeyPair();
  const ctKeys = newKeyPair();
  const rekorKeys = newKeyPair();
  const ctlog = await initializeCTLog(ctKeys);
  const ca = await initializeCA(caKeys, ctlog);

  const server = http.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const url = `http://127.0.0.1:${server.address().port}`;
  const tlog = await initializeTLog(url, rekorKeys);
  const fulcio = fulcioHandler(ca);
  const rekor = rekorHandler(tlog);
  const routes = new Map([
    [fulcio.path, { handler: fulcio, shim: fulcioRequest }],
    [rekor.path, { handler: rekor, shim: rekorRequest }],
  ]);

  server.on('request', async (req, res) => {
    const route = routes.get(req.url);
    if (req.method !== 'POST' || !route) {
      process.stderr.write(`${req.method} ${req.url} -> 404\n`);
      send(res, 404, 'not found\n');
      return;
    }
    try {
      const body = route.shim(await readBody(req), req.headers);
      const result = await route.handler.fn(body);
      process.stderr.write(`${req.method} ${req.url} -> ${result.statusCode}\n`);
      send(res, result.statusCode, result.response, result.contentType);
    } catch (err) {
      process.stderr.write(`${req.method} ${req.url} -> 400: ${err.message}\n`);
      send(res, 400, `${err.message}\n`);
    }
  });

  const config = trustConfig(url, since, ca.rootCertificate, ctlog, spki(rekorKeys));
  fs.writeFileSync(configPath, JSON.stringify(config, null, 2) + '\n');

  const stop = () => {
    server.close();
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
  server.on('close', () => process.stdin.destroy());

  process.stdout.write(`${url}\n`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== 0) {
      process.exitCode = code;
    }
  },
  (err) => {
    process.stderr.write(`mock-sigstore-server: ${err && err.stack ? err.stack : err}\n`);
    process.exitCode = 1;
  },
);
