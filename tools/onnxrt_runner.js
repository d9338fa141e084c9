#!/usr/bin/env node
// The ONNX Runtime side of `kiln compare --onnxrt`: runs an ONNX model on input sets given as .npy
// files and writes every graph output of each set as .npy, for kiln to read back.
//
//   node tools/onnxrt_runner.js MODEL.onnx --inputs DIR --outputs DIR
//        [--threads N] [--opt-level disabled|basic|extended|all] [--modules NODE_MODULES]
//
// --inputs DIR holds manifest.json, {"sets": [{"inputs": [{"name": "x", "file": "0_0.npy"}, ...]}, ...]},
// and the files it names (relative to DIR). The runner writes DIR_OUT/manifest.json,
// {"ort_version": "1.30.0", "opt_level": "disabled", "sets": [{"outputs": [{"name": "y", "file": "0_0.npy"}]}]},
// with set k's output j in k_j.npy (indices, never tensor names, name the files: names may hold '/').
// To read intermediate tensors, kiln writes a copy of the model with them added as graph outputs.
//
// Session: CPU execution provider, graphOptimizationLevel --opt-level (default 'disabled': the
// graph runs as written, so no ORT fusion changes the reference's rounding), intra-op threads
// --threads (default: ORT's choice), sequential execution.
// onnxruntime-node is loaded from --modules (a node_modules folder), else from bench/node_modules
// next to this file, else from node's own search path.
// Exit status: 0 done, 1 error (message on stderr), 2 bad flags, 3 onnxruntime-node cannot be loaded.
'use strict';

const fs = require('fs');
const path = require('path');

const USAGE = `usage: node onnxrt_runner.js MODEL.onnx --inputs DIR --outputs DIR
       [--threads N] [--opt-level disabled|basic|extended|all] [--modules NODE_MODULES]`;
const OPT_LEVELS = ['disabled', 'basic', 'extended', 'all'];

class UsageError extends Error {}
class OrtMissing extends Error {}

function parseArgs(argv) {
  const a = { model: null, inputs: null, outputs: null, threads: 0, optLevel: 'disabled', modules: null };
  const takes = new Set(['--inputs', '--outputs', '--threads', '--opt-level', '--modules']);
  for (let i = 0; i < argv.length; ++i) {
    let arg = argv[i];
    let value;
    if (arg === '-h' || arg === '--help') {
      console.log(USAGE);
      process.exit(0);
    }
    if (arg.startsWith('--') && arg.includes('=')) {
      value = arg.slice(arg.indexOf('=') + 1);
      arg = arg.slice(0, arg.indexOf('='));
    }
    if (takes.has(arg)) {
      if (value === undefined) {
        if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
        value = argv[++i];
      }
      switch (arg) {
        case '--inputs': a.inputs = value; break;
        case '--outputs': a.outputs = value; break;
        case '--modules': a.modules = value; break;
        case '--threads': {
          const n = Number(value);
          if (!Number.isInteger(n) || n < 1) throw new UsageError(`--threads: invalid value '${value}'`);
          a.threads = n;
          break;
        }
        case '--opt-level':
          if (!OPT_LEVELS.includes(value))
            throw new UsageError(`--opt-level: '${value}' is not one of ${OPT_LEVELS.join(', ')}`);
          a.optLevel = value;
          break;
      }
    } else if (arg.startsWith('-')) {
      throw new UsageError(`unknown flag ${arg}`);
    } else if (a.model === null) {
      a.model = arg;
    } else {
      throw new UsageError(`unexpected argument '${arg}'`);
    }
  }
  if (a.model === null) throw new UsageError('MODEL.onnx is required');
  if (a.inputs === null) throw new UsageError('--inputs DIR is required');
  if (a.outputs === null) throw new UsageError('--outputs DIR is required');
  return a;
}

// --- .npy: numpy's format 1.0-3.0, little-endian, C order.
// numpy descr <-> ORT tensor type <-> typed array. float16 travels as raw uint16 bits.
const DTYPES = [
  { descr: 'f4', type: 'float32', array: Float32Array },
  { descr: 'f8', type: 'float64', array: Float64Array },
  { descr: 'f2', type: 'float16', array: Uint16Array },
  { descr: 'i1', type: 'int8', array: Int8Array },
  { descr: 'u1', type: 'uint8', array: Uint8Array },
  { descr: 'i2', type: 'int16', array: Int16Array },
  { descr: 'u2', type: 'uint16', array: Uint16Array },
  { descr: 'i4', type: 'int32', array: Int32Array },
  { descr: 'u4', type: 'uint32', array: Uint32Array },
  { descr: 'i8', type: 'int64', array: BigInt64Array },
  { descr: 'u8', type: 'uint64', array: BigUint64Array },
  { descr: 'b1', type: 'bool', array: Uint8Array },
];

function readNpy(file) {
  let buf;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw new Error(`${file}: cannot read (${e.code || e.message})`);
  }
  const bad = (what) => new Error(`${file}: not a valid .npy file: ${what}`);
  if (buf.length < 10 || buf[0] !== 0x93 || buf.toString('latin1', 1, 6) !== 'NUMPY') throw bad('no NUMPY magic');
  const major = buf[6];
  let headerLen;
  let start;
  if (major === 1) {
    headerLen = buf.readUInt16LE(8);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (buf.length < 12) throw bad('truncated header');
    headerLen = buf.readUInt32LE(8);
    start = 12;
  } else {
    throw bad(`format version ${major}`);
  }
  if (start + headerLen > buf.length) throw bad('truncated header');
  const header = buf.toString(major === 3 ? 'utf8' : 'latin1', start, start + headerLen);
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header);
  const order = /'fortran_order'\s*:\s*(True|False)/.exec(header);
  const shape = /'shape'\s*:\s*\(([^)]*)\)/.exec(header);
  if (!descr || !order || !shape) throw bad(`header '${header.trim()}'`);
  if (order[1] === 'True') throw bad('fortran_order=True');
  const code = descr[1];
  if (code.length < 2 || !'<|='.includes(code[0])) throw bad(`dtype '${code}' (only little-endian dtypes)`);
  const dt = DTYPES.find((d) => d.descr === code.slice(1));
  if (!dt) throw bad(`dtype '${code}'`);
  const dims = shape[1].split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
  if (dims.some((d) => !Number.isInteger(d) || d < 0)) throw bad(`shape (${shape[1]})`);
  const count = dims.reduce((p, d) => p * d, 1);
  const bytes = count * dt.array.BYTES_PER_ELEMENT;
  const dataStart = start + headerLen;
  if (buf.length - dataStart !== bytes)
    throw bad(`${dt.type}[${dims.join('x')}] needs ${bytes} bytes of data, the file has ${buf.length - dataStart}`);
  // A fresh buffer: the typed array needs an offset aligned to its element size.
  const copy = new ArrayBuffer(bytes);
  new Uint8Array(copy).set(buf.subarray(dataStart, dataStart + bytes));
  return { type: dt.type, dims, data: new dt.array(copy) };
}

function writeNpy(file, type, dims, data) {
  const dt = DTYPES.find((d) => d.type === type);
  if (!dt) throw new Error(`cannot write a ${type} tensor as .npy`);
  const descr = (dt.array.BYTES_PER_ELEMENT === 1 ? '|' : '<') + dt.descr;
  const shape = dims.length === 1 ? `(${dims[0]},)` : `(${dims.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
  const total = Math.ceil((10 + header.length + 1) / 64) * 64;
  header = header.padEnd(total - 10 - 1, ' ') + '\n';
  const head = Buffer.alloc(10);
  head[0] = 0x93;
  head.write('NUMPY', 1, 'latin1');
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  // A bool tensor may come back as an array of booleans: stored as 0/1 bytes.
  let bytes;
  if (type === 'bool' && !(data instanceof Uint8Array)) bytes = Buffer.from(Uint8Array.from(data, (b) => (b ? 1 : 0)));
  else bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  fs.writeFileSync(file, Buffer.concat([head, Buffer.from(header, 'latin1'), bytes]));
}

// --- onnxruntime-node.
function loadOrt(modules) {
  const tries = [];
  if (modules) tries.push(path.resolve(modules, 'onnxruntime-node'));
  else {
    const bench = path.join(__dirname, '..', 'bench', 'node_modules', 'onnxruntime-node');
    if (fs.existsSync(bench)) tries.push(bench);
    tries.push('onnxruntime-node');
  }
  let last;
  for (const t of tries) {
    try {
      const ort = require(t);
      let version = 'unknown';
      try {
        version = require(`${t}/package.json`).version;
      } catch (e) { /* the version is only reported */ }
      return { ort, version };
    } catch (e) {
      last = e;
    }
  }
  // The first line only: node appends the whole require stack.
  const why = String(last && last.message).split('\n')[0];
  const where = modules ? path.resolve(modules) : "bench/node_modules or node's search path";
  throw new OrtMissing(`cannot load onnxruntime-node from ${where}: ${why}`);
}

function readManifest(dir) {
  const file = path.join(dir, 'manifest.json');
  let m;
  try {
    m = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: cannot read (${e.code || e.message})`);
  }
  if (!m || !Array.isArray(m.sets)) throw new Error(`${file}: expected {"sets": [...]}`);
  return m;
}

async function main(args) {
  const { ort, version } = loadOrt(args.modules);
  if (!fs.existsSync(args.model)) throw new Error(`${args.model}: cannot open (no such file)`);
  const manifest = readManifest(args.inputs);
  const options = {
    executionProviders: ['cpu'],
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: args.optLevel,
  };
  if (args.threads > 0) options.intraOpNumThreads = args.threads;
  let session;
  try {
    session = await ort.InferenceSession.create(args.model, options);
  } catch (e) {
    throw new Error(`ONNX Runtime cannot load ${args.model}: ${e.message}`);
  }
  fs.mkdirSync(args.outputs, { recursive: true });
  const out = { ort_version: version, opt_level: args.optLevel, sets: [] };
  for (let k = 0; k < manifest.sets.length; ++k) {
    const feeds = {};
    for (const item of manifest.sets[k].inputs || []) {
      const t = readNpy(path.join(args.inputs, item.file));
      feeds[item.name] = new ort.Tensor(t.type, t.data, t.dims);
    }
    let results;
    try {
      results = await session.run(feeds);
    } catch (e) {
      throw new Error(`ONNX Runtime failed on input set ${k}: ${e.message}`);
    }
    const outputs = [];
    session.outputNames.forEach((name, j) => {
      const t = results[name];
      if (!t) throw new Error(`ONNX Runtime returned no output '${name}' for input set ${k}`);
      if (!DTYPES.some((d) => d.type === t.type))
        throw new Error(`output '${name}' is a ${t.type} tensor, which kiln compare cannot read`);
      const file = `${k}_${j}.npy`;
      writeNpy(path.join(args.outputs, file), t.type, t.dims.map(Number), t.data);
      outputs.push({ name, file });
    });
    out.sets.push({ outputs });
  }
  fs.writeFileSync(path.join(args.outputs, 'manifest.json'), JSON.stringify(out, null, 1) + '\n');
  await session.release();
}

let args;
try {
  args = parseArgs(process.argv.slice(2));
} catch (e) {
  if (!(e instanceof UsageError)) throw e;
  console.error(`onnxrt_runner: ${e.message}\n${USAGE}`);
  process.exit(2);
}
main(args).catch((e) => {
  console.error(`onnxrt_runner: error: ${e.message}`);
  process.exit(e instanceof OrtMissing ? 3 : 1);
});
