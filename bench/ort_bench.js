#!/usr/bin/env node
// The ONNX Runtime peer of `kiln bench`: the same timing rules and statistics, written with the
// same JSON field names, so bench/run_bench.sh can put the two side by side.
//
//   node bench/ort_bench.js MODEL.onnx [--shapes NAME:1x3x224x224,...] [--threads N]
//        [--warmup-ms N] [--iterations N | --duration S] [--json FILE] [--seed N] [--int-range LO,HI]
//
// Session: CPU execution provider, intraOpNumThreads = --threads, interOpNumThreads = 1,
// graphOptimizationLevel 'all', sequential execution. Inputs are seeded random data of each
// input's dtype (floats uniform in [-1, 1), integers in --int-range, bools 0/1): the same
// distributions as kiln bench, not the same bits. Errors exit 1, bad flags exit 2.
'use strict';

const fs = require('fs');

const DEFAULT_MIN_ITERATIONS = 10;
const DEFAULT_MIN_SECONDS = 3.0;
const MAX_RECORDED_LATENCIES = 100000;

const USAGE = `usage: node ort_bench.js MODEL.onnx [--shapes NAME:1x3x224x224,...] [--threads N]
       [--warmup-ms N] [--iterations N | --duration S] [--json FILE] [--seed N] [--int-range LO,HI]
Default timing: at least ${DEFAULT_MIN_ITERATIONS} iterations and at least ${DEFAULT_MIN_SECONDS} s, whichever is longer.`;

class UsageError extends Error {}

function parseNumber(flag, text, { integer = false, min = -Infinity, minExclusive = false } = {}) {
  const v = Number(text);
  if (text === undefined || text === '' || !Number.isFinite(v) || (integer && !Number.isInteger(v)) ||
      (minExclusive ? v <= min : v < min))
    throw new UsageError(`${flag}: invalid value '${text}'`);
  return v;
}

function parseArgs(argv) {
  const a = { model: null, shapes: '', threads: 1, warmupMs: 200, iterations: 0, duration: 0, json: '',
              seed: 0, intRange: [0, 10] };
  const takes = new Set(['--shapes', '--threads', '--warmup-ms', '--iterations', '--duration', '--json', '--seed',
                         '--int-range']);
  for (let i = 0; i < argv.length; ++i) {
    let arg = argv[i];
    let value;
    if (arg === '-h' || arg === '--help') {
      console.log(USAGE);
      process.exit(0);
    }
    if (arg.startsWith('--') && arg.includes('=')) [arg, value] = [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)];
    if (takes.has(arg)) {
      if (value === undefined) {
        if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
        value = argv[++i];
      }
      switch (arg) {
        case '--shapes': a.shapes = value; break;
        case '--threads': a.threads = parseNumber(arg, value, { integer: true, min: 1 }); break;
        case '--warmup-ms': a.warmupMs = parseNumber(arg, value, { min: 0 }); break;
        case '--iterations': a.iterations = parseNumber(arg, value, { integer: true, min: 1 }); break;
        case '--duration': a.duration = parseNumber(arg, value, { min: 0, minExclusive: true }); break;
        case '--json': a.json = value; break;
        case '--seed': a.seed = parseNumber(arg, value, { integer: true, min: 0 }); break;
        case '--int-range': {
          const parts = value.split(',');
          if (parts.length !== 2) throw new UsageError(`--int-range: expected LO,HI, got '${value}'`);
          a.intRange = parts.map((p) => parseNumber(arg, p, { integer: true }));
          break;
        }
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
  if (a.iterations > 0 && a.duration > 0) throw new UsageError('--iterations excludes --duration');
  return a;
}

// "x:1x3x224x224,mask:1x128" -> Map name -> dims (same rules as kiln's parse_shapes).
function parseShapes(spec) {
  const out = new Map();
  for (const item of spec.split(',')) {
    if (!item) continue;
    const colon = item.lastIndexOf(':');
    if (colon <= 0) throw new Error(`--shapes: '${item}' should look like NAME:1x3x224x224`);
    const name = item.slice(0, colon);
    const dims = item.slice(colon + 1);
    const shape = [];
    if (dims !== 'scalar' && dims !== '') {
      for (const d of dims.split('x')) {
        if (!/^[0-9]+$/.test(d)) throw new Error(`--shapes: bad dimension '${d}' in '${item}'`);
        shape.push(Number(d));
      }
    }
    if (out.has(name)) throw new Error(`--shapes: input '${name}' is given twice`);
    out.set(name, shape);
  }
  return out;
}

function shapeString(dims) { return dims.length ? dims.join('x') : 'scalar'; }
function declaredString(dims) { return '[' + dims.join(',') + ']'; }

// Seeded 32-bit generator (mulberry32): floats in [0, 1).
function rng(seed) {
  let s = (seed >>> 0) ^ 0x9e3779b9;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function floatToHalfBits(f) {
  const buf = new DataView(new ArrayBuffer(4));
  buf.setFloat32(0, f);
  const x = buf.getUint32(0);
  const sign = (x >>> 16) & 0x8000;
  let exp = ((x >>> 23) & 0xff) - 127 + 15;
  let mant = x & 0x7fffff;
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant |= 0x800000;
    return sign | (mant >> (14 - exp));
  }
  if (exp >= 31) return sign | 0x7c00;
  return sign | (exp << 10) | (mant >> 13);
}

function randomTensor(ort, type, dims, seed, lo, hi) {
  const n = dims.reduce((p, d) => p * d, 1);
  const r = rng(seed);
  const uniform = () => r() * 2 - 1;
  const intIn = () => lo + Math.floor(r() * (hi - lo));
  let data;
  switch (type) {
    case 'float32': data = Float32Array.from({ length: n }, uniform); break;
    case 'float64': data = Float64Array.from({ length: n }, uniform); break;
    case 'float16': data = Uint16Array.from({ length: n }, () => floatToHalfBits(uniform())); break;
    case 'int8': data = Int8Array.from({ length: n }, intIn); break;
    case 'uint8': data = Uint8Array.from({ length: n }, intIn); break;
    case 'int16': data = Int16Array.from({ length: n }, intIn); break;
    case 'uint16': data = Uint16Array.from({ length: n }, intIn); break;
    case 'int32': data = Int32Array.from({ length: n }, intIn); break;
    case 'uint32': data = Uint32Array.from({ length: n }, intIn); break;
    case 'int64': data = BigInt64Array.from({ length: n }, () => BigInt(intIn())); break;
    case 'uint64': data = BigUint64Array.from({ length: n }, () => BigInt(intIn())); break;
    case 'bool': data = Uint8Array.from({ length: n }, () => (r() < 0.5 ? 0 : 1)); break;
    default: throw new Error(`cannot generate inputs of type ${type}`);
  }
  return new ort.Tensor(type, data, dims);
}

// Same definitions as kiln bench: linear interpolation between closest ranks (numpy's default).
function percentile(sorted, p) {
  if (sorted.length === 1) return sorted[0];
  const pos = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

function latencyStats(ms) {
  const s = [...ms].sort((x, y) => x - y);
  const mean = s.reduce((p, x) => p + x, 0) / s.length;
  const variance = s.reduce((p, x) => p + (x - mean) * (x - mean), 0) / s.length;
  return { min: s[0], mean, median: percentile(s, 50), p90: percentile(s, 90), p95: percentile(s, 95),
           p99: percentile(s, 99), max: s[s.length - 1], stddev: Math.sqrt(variance) };
}

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const fixed = (v, d = 3) => v.toFixed(d);

async function main(args) {
  let ort;
  try {
    ort = require('onnxruntime-node');
  } catch (e) {
    throw new Error(`cannot load onnxruntime-node (run scripts/setup-bench.sh): ${e.message}`);
  }
  const ortVersion = require('onnxruntime-node/package.json').version;
  let jsonFd = null;
  if (args.json) {
    try {
      jsonFd = fs.openSync(args.json, 'w');
    } catch (e) {
      throw new Error(`${args.json}: cannot open for writing (${e.code})`);
    }
  }
  if (args.intRange[1] <= args.intRange[0]) throw new Error(`--int-range: empty range [${args.intRange[0]}, ${args.intRange[1]})`);
  if (!fs.existsSync(args.model)) throw new Error(`${args.model}: cannot open (no such file)`);

  const t0 = nowMs();
  const session = await ort.InferenceSession.create(args.model, {
    executionProviders: ['cpu'],
    intraOpNumThreads: args.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  });
  const t1 = nowMs();

  const shapes = parseShapes(args.shapes);
  const meta = session.inputMetadata;
  for (const name of shapes.keys())
    if (!session.inputNames.includes(name))
      throw new Error(`--shapes: '${name}' is not an input of ${args.model} (inputs: ${session.inputNames.join(', ')})`);
  const feeds = {};
  const inputs = [];
  let notes = '';
  meta.forEach((m, i) => {
    if (!m.isTensor) throw new Error(`input '${m.name}' is not a tensor; ort_bench.js cannot generate it`);
    let dims;
    if (shapes.has(m.name)) {
      dims = shapes.get(m.name);
      if (m.shape.length && m.shape.length !== dims.length)
        throw new Error(`--shapes: input '${m.name}' has rank ${m.shape.length} ${declaredString(m.shape)}, got ${shapeString(dims)}`);
      m.shape.forEach((d, k) => {
        if (typeof d === 'number' && d >= 0 && d !== dims[k])
          throw new Error(`--shapes: input '${m.name}' has static shape ${declaredString(m.shape)}, got ${shapeString(dims)}`);
      });
    } else {
      dims = m.shape.map((d) => {
        if (typeof d === 'number' && d >= 0) return d;
        notes += `input '${m.name}': dynamic dim ${d} set to 1 (use --shapes to choose)\n`;
        return 1;
      });
    }
    feeds[m.name] = randomTensor(ort, m.type, dims, args.seed + i, args.intRange[0], args.intRange[1]);
    inputs.push({ name: m.name, dtype: m.type, shape: dims });
  });
  const batch = inputs.length && inputs[0].shape.length ? inputs[0].shape[0] : 1;
  const t2 = nowMs();
  const executor = `onnxruntime-node ${ortVersion} (CPU EP)`;

  process.stderr.write(notes);
  console.log(`model:      ${args.model}`);
  console.log(`executor:   ${executor}`);
  console.log(`threads:    ${args.threads} requested, ${args.threads} used (intra-op ${args.threads}, inter-op 1)`);
  console.log(`opt level:  graphOptimizationLevel 'all'`);
  console.log(`inputs:     ${inputs.map((x) => `${x.name} ${x.dtype}[${shapeString(x.shape)}]`).join(', ')} (random, seed ${args.seed}); batch ${batch}`);

  let warmupIterations = 0;
  const w0 = nowMs();
  while (args.warmupMs > 0 && (warmupIterations === 0 || nowMs() - w0 < args.warmupMs)) {
    await session.run(feeds);
    ++warmupIterations;
  }
  const warmupElapsed = nowMs() - w0;

  let minIterations = DEFAULT_MIN_ITERATIONS;
  let minMs = DEFAULT_MIN_SECONDS * 1000;
  let stopRule = `at least ${DEFAULT_MIN_ITERATIONS} iterations and at least ${fixed(DEFAULT_MIN_SECONDS, 1)} s`;
  if (args.iterations > 0) {
    minIterations = args.iterations;
    minMs = 0;
    stopRule = `${args.iterations} iterations`;
  } else if (args.duration > 0) {
    minIterations = 1;
    minMs = args.duration * 1000;
    stopRule = `at least ${fixed(args.duration, 3)} s`;
  }
  const latencies = [];
  const r0 = nowMs();
  while (latencies.length < minIterations || nowMs() - r0 < minMs) {
    const a = nowMs();
    await session.run(feeds);
    latencies.push(nowMs() - a);
  }
  const totalMs = nowMs() - r0;
  const lat = latencyStats(latencies);
  const ips = latencies.length / (totalMs / 1000);

  const j = {
    tool: 'ort_bench.js',
    ort_version: ortVersion,
    model: args.model,
    executor,
    threads: args.threads,
    threads_used: args.threads,
    intra_op_threads: args.threads,
    inter_op_threads: 1,
    graph_optimization_level: 'all',
    inputs,
    batch,
    seed: args.seed,
    setup_ms: { load: t1 - t0, optimize: 0, prepare: t2 - t1 },  // ORT optimizes inside session creation ("load")
    warmup: { requested_ms: args.warmupMs, iterations: warmupIterations, ms: warmupElapsed },
    stop_rule: stopRule,
    iterations: latencies.length,
    total_ms: totalMs,
    throughput: { inferences_per_s: ips, items_per_s: ips * batch },
    latency_ms: lat,
  };
  if (latencies.length <= MAX_RECORDED_LATENCIES) j.latencies_ms = latencies;

  console.log(`warm-up:    ${warmupIterations} iterations, ${fixed(warmupElapsed, 1)} ms (requested ${fixed(args.warmupMs, 0)} ms)`);
  console.log(`timed:      ${latencies.length} iterations in ${fixed(totalMs / 1000)} s (${stopRule})`);
  console.log('=== Performance summary ===');
  console.log(`throughput: ${fixed(ips)} inferences/s, ${fixed(ips * batch)} items/s (batch ${batch})`);
  console.log(`latency:    min ${fixed(lat.min)} ms, mean ${fixed(lat.mean)} ms, median ${fixed(lat.median)} ms, ` +
              `p90 ${fixed(lat.p90)} ms, p95 ${fixed(lat.p95)} ms, p99 ${fixed(lat.p99)} ms, max ${fixed(lat.max)} ms`);
  if (jsonFd !== null) {
    fs.writeSync(jsonFd, JSON.stringify(j, null, 2) + '\n');
    fs.closeSync(jsonFd);
    console.log(`json:       ${args.json}`);
  }
  await session.release();
}

let args;
try {
  args = parseArgs(process.argv.slice(2));
} catch (e) {
  if (!(e instanceof UsageError)) throw e;
  console.error(`ort_bench: ${e.message}\n${USAGE}`);
  process.exit(2);
}
main(args).catch((e) => {
  console.error(`ort_bench: error: ${e.message}`);
  process.exit(1);
});
