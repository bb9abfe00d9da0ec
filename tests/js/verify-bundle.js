#!/usr/bin/env node
// Independent verifier for Stella's key-based Sigstore bundles, built on sigstore-js (@sigstore/verify).
//
//   node verify-bundle.js BUNDLE.sigstore.json PUBLIC_KEY.pem
//
// Prints `OK` and exits 0 when the bundle's DSSE signature verifies with the key; otherwise prints
// `<error code>: <message>` (e.g. `SIGNATURE_ERROR: signature verification failed`) and exits 1.
// Usage errors exit 2.
//
// The key is offered to @sigstore/verify under the hint that standard tools compute for it,
// base64(sha256(DER SubjectPublicKeyInfo)), computed here by Node from the PEM. So a bundle whose hint
// names another key fails with PUBLIC_KEY_ERROR (sigstore-js looks keys up by hint), and a bundle
// whose hint matches but whose signature does not fails with SIGNATURE_ERROR.
// There is no trust root: no tlog entries, SCTs or timestamps are required (thresholds 0), as key-based
// bundles made offline carry none. Everything runs offline.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const { bundleFromJSON } = require('@sigstore/bundle');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');

// PublicKeyDetails.PKIX_ECDSA_P256_SHA_256 in @sigstore/protobuf-specs.
const PKIX_ECDSA_P256_SHA_256 = 5;

function verify(bundlePath, keyPath) {
  const der = crypto
    .createPublicKey(fs.readFileSync(keyPath))
    .export({ type: 'spki', format: 'der' });
  const hint = crypto.createHash('sha256').update(der).digest('base64');
  const root = { tlogs: [], certificateAuthorities: [], ctlogs: [], timestampAuthorities: [] };
  const trust = toTrustMaterial(root, {
    [hint]: { rawBytes: der, keyDetails: PKIX_ECDSA_P256_SHA_256, validFor: undefined },
  });
  const verifier = new Verifier(trust, { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 });
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, 'utf8')));
  verifier.verify(toSignedEntity(bundle));
}

function main(argv) {
  if (argv.length !== 2) {
    process.stderr.write('usage: node verify-bundle.js BUNDLE.sigstore.json PUBLIC_KEY.pem\n');
    return 2;
  }
  try {
    verify(argv[0], argv[1]);
  } catch (err) {
    const code = err && err.code ? err.code : err && err.name ? err.name : 'ERROR';
    process.stdout.write(`${code}: ${err && err.message ? err.message : String(err)}\n`);
    return 1;
  }
  process.stdout.write('OK\n');
  return 0;
}

process.exitCode = main(process.argv.slice(2));
