#!/usr/bin/env node
// An independent oracle for `kiln debug reduce` checks: runs an ONNX model on ONNX Runtime with the
// inputs `kiln run --save-inputs -o DIR` used and compares its outputs with the ones kiln wrote.
//
//   node ort_check.js MODEL.onnx DIR [--atol A] [--rtol R]   compare (DIR: input.NAME.npy, NAME.npy)
//   node ort_check.js --probe                                exit 0 when onnxruntime-node loads
//
// An element mismatches when |kiln - ort| > atol + rtol * |ort| (defaults 1e-4, 1e-3); integer and
// bool outputs must be equal. Exit 0: every output matches; 3: a mismatch (or a NaN on one side
// only); 1: an error (a missing file, a model ONNX Runtime rejects); 2: bad arguments.
'use strict';

const fs = require('fs');
const path = require('path');

// onnxruntime-node from the usual module path, else from the benchmark folder's install.
function loadOrt() {
  try {
    return require('onnxruntime-node');
  } catch (first) {
    try {
      return require(path.join(__dirname, '..', '..', '..', 'bench', 'node_modules', 'onnxruntime-node'));
    } catch (e) {
      throw new Error(`cannot load onnxruntime-node (scripts/setup-bench.sh installs it): ${e.message}`);
    }
  }
}

const NPY_TYPES = {
  '<f4': ['float32', Float32Array], '<f8': ['float64', Float64Array], '<i8': ['int64', BigInt64Array],
  '<i4': ['int32', Int32Array], '<i2': ['int16', Int16Array], '|i1': ['int8', Int8Array],
  '|u1': ['uint8', Uint8Array], '<u2': ['uint16', Uint16Array], '|b1': ['bool', Uint8Array],
};

// Reads a little-endian, C-ordered .npy file into { type, dims, data }.
function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.length < 10 || buf.readUInt8(0) !== 0x93 || buf.toString('latin1', 1, 6) !== 'NUMPY')
    throw new Error(`${file}: not a .npy file`);
  const major = buf.readUInt8(6);
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', start, start + headerLen);
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !shape || /'fortran_order':\s*True/.test(header)) throw new Error(`${file}: unsupported .npy header ${header}`);
  const entry = NPY_TYPES[descr[1]];
  if (!entry) throw new Error(`${file}: unsupported dtype ${descr[1]}`);
  const dims = shape[1].split(',').map((s) => s.trim()).filter((s) => s.length).map(Number);
  const count = dims.reduce((a, b) => a * b, 1);
  const offset = start + headerLen;
  const bytes = buf.subarray(offset, offset + count * entry[1].BYTES_PER_ELEMENT);
  const data = new entry[1](bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  return { type: entry[0], dims, data };
}

function parseArgs(argv) {
  const a = { model: null, dir: null, atol: 1e-4, rtol: 1e-3 };
  const rest = [];
  for (let i = 0; i < argv.length; ++i) {
    if (argv[i] === '--atol' || argv[i] === '--rtol') {
      const v = Number(argv[i + 1]);
      if (!Number.isFinite(v) || v < 0) throw new RangeError(`${argv[i]}: invalid value '${argv[i + 1]}'`);
      a[argv[i].slice(2)] = v;
      ++i;
    } else {
      rest.push(argv[i]);
    }
  }
  if (rest.length !== 2) throw new RangeError('usage: node ort_check.js MODEL.onnx DIR [--atol A] [--rtol R] | --probe');
  [a.model, a.dir] = rest;
  return a;
}

async function main(argv) {
  if (argv.length === 1 && argv[0] === '--probe') {
    loadOrt();
    return 0;
  }
  const args = parseArgs(argv);
  const ort = loadOrt();
  const session = await ort.InferenceSession.create(args.model, { executionProviders: ['cpu'] });
  const feeds = {};
  for (const name of session.inputNames) {
    const t = readNpy(path.join(args.dir, `input.${name}.npy`));
    feeds[name] = new ort.Tensor(t.type, t.data, t.dims);
  }
  const results = await session.run(feeds);
  let mismatches = 0;
  for (const name of session.outputNames) {
    const want = results[name];
    const got = readNpy(path.join(args.dir, `${name}.npy`));
    if (got.data.length !== want.data.length || got.dims.join('x') !== want.dims.join('x')) {
      console.log(`${name}: kiln shape [${got.dims}] vs onnxruntime [${want.dims}]`);
      ++mismatches;
      continue;
    }
    const isFloat = want.type === 'float32' || want.type === 'float64';
    let bad = 0;
    let maxErr = 0;
    for (let i = 0; i < want.data.length; ++i) {
      if (!isFloat) {
        if (got.data[i] !== want.data[i]) ++bad;
        continue;
      }
      const g = got.data[i];
      const w = want.data[i];
      if (Number.isNaN(g) || Number.isNaN(w)) {
        if (Number.isNaN(g) !== Number.isNaN(w)) ++bad;
        continue;
      }
      const err = Math.abs(g - w);
      maxErr = Math.max(maxErr, err);
      if (err > args.atol + args.rtol * Math.abs(w)) ++bad;
    }
    console.log(`${name}: ${bad ? 'MISMATCH' : 'ok'} (${bad} of ${want.data.length} elements differ, max abs error ${maxErr})`);
    if (bad) ++mismatches;
  }
  return mismatches ? 3 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(`ort_check: error: ${e.message}`);
    process.exit(e instanceof RangeError ? 2 : 1);
  });
