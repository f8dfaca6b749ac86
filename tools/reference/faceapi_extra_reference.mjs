// Reference outputs of face-api.js's AgeGenderNet and FaceRecognitionNet, computed by TF.js in Node
// with the pure-JavaScript CPU backend, for the parity tests of the torch ports
// (tests/models/test_faceapi_extra.py -> tests/fixtures/faceapi/age_gender_recognition_reference.npz).
//
// Regenerate (Node 20, npm 11; run from the repository root):
//   mkdir -p /tmp/faceapi_extra_ref/node
//   cp tools/reference/faceapi_extra/package.json /tmp/faceapi_extra_ref/node/
//   npm install --prefix /tmp/faceapi_extra_ref/node --no-audit --no-fund
//       # @tensorflow/tfjs 4.22.0, @tensorflow/tfjs-backend-wasm 4.22.0 (only because face-api's
//       # node-wasm bundle imports it; the CPU backend is used), @vladmandic/face-api 1.7.15
//   node tools/reference/faceapi_extra_reference.mjs \
//       --modules /tmp/faceapi_extra_ref/node/node_modules \
//       --models "${HFLD_CACHE:-$HOME/.cache/hfld}/starter/face_api/model" \
//       --out /tmp/faceapi_extra_ref/out.json
//   .venv/bin/python tools/reference/faceapi_extra/to_npz.py /tmp/faceapi_extra_ref/out.json \
//       tests/fixtures/faceapi/age_gender_recognition_reference.npz
//
// The model files are the npm package's model/ folder (what `hfld zoo fetch starter` extracts):
// age_gender_model{-weights_manifest.json,.bin} and face_recognition_model{-weights_manifest.json,.bin}.
//
// Inputs are fed at the nets' native sizes (112x112 and 150x150, HWC, values 0..255 as integers,
// i.e. what face-api gets from an 8-bit image), so face-api's toBatchTensor does no resizing and the
// fixture tests the networks themselves. Three inputs per net: uniform noise, a smooth colour pattern,
// and smooth blobs on a skin-like background.

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`);
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const name of ['modules', 'models', 'out']) {
    if (!args[name]) throw new Error(`missing --${name}`);
  }
  return args;
}

// Small deterministic PRNG (mulberry32) so the inputs are the same on every run and platform.
function makeRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function clampByte(v) {
  return Math.min(255, Math.max(0, Math.round(v)));
}

// Each pattern returns a Float32Array of size*size*3 in HWC order with integer values 0..255.
function noiseImage(size, seed) {
  const rnd = makeRandom(seed);
  const out = new Float32Array(size * size * 3);
  for (let i = 0; i < out.length; i += 1) out[i] = Math.floor(rnd() * 256);
  return out;
}

function smoothPattern(size) {
  const out = new Float32Array(size * size * 3);
  for (let y = 0; y < size; y += 1) {
    for (let x = 0; x < size; x += 1) {
      const u = x / size;
      const v = y / size;
      const o = (y * size + x) * 3;
      out[o] = clampByte(127.5 + 120 * Math.sin(2 * Math.PI * (1.5 * u + 0.5 * v)));
      out[o + 1] = clampByte(127.5 + 120 * Math.cos(2 * Math.PI * (0.7 * u - 1.3 * v)));
      out[o + 2] = clampByte(255 * (0.5 * u + 0.5 * v));
    }
  }
  return out;
}

function blobsOnSkin(size, seed) {
  const rnd = makeRandom(seed);
  const blobs = [];
  for (let k = 0; k < 6; k += 1) {
    blobs.push({
      cx: rnd() * size, cy: rnd() * size, r: (0.08 + 0.15 * rnd()) * size,
      colour: [rnd() * 255, rnd() * 255, rnd() * 255],
    });
  }
  const skin = [200, 160, 130];
  const out = new Float32Array(size * size * 3);
  for (let y = 0; y < size; y += 1) {
    for (let x = 0; x < size; x += 1) {
      const o = (y * size + x) * 3;
      const pixel = [...skin];
      for (const b of blobs) {
        const w = Math.exp(-((x - b.cx) ** 2 + (y - b.cy) ** 2) / (2 * b.r * b.r));
        for (let c = 0; c < 3; c += 1) pixel[c] = (1 - w) * pixel[c] + w * b.colour[c];
      }
      for (let c = 0; c < 3; c += 1) out[o + c] = clampByte(pixel[c]);
    }
  }
  return out;
}

function makeInputs(size, seedBase) {
  return [noiseImage(size, seedBase + 1), smoothPattern(size), blobsOnSkin(size, seedBase + 2)];
}

// Read a TF.js weights manifest + its .bin shards and decode them (dequantising uint8) with TF.js itself.
function readWeightMap(tf, modelDir, name) {
  const manifest = JSON.parse(fs.readFileSync(path.join(modelDir, `${name}-weights_manifest.json`), 'utf8'));
  const specs = [];
  const buffers = [];
  for (const group of manifest) {
    specs.push(...group.weights);
    for (const shard of group.paths) buffers.push(fs.readFileSync(path.join(modelDir, shard)));
  }
  const joined = Buffer.concat(buffers);
  const arrayBuffer = joined.buffer.slice(joined.byteOffset, joined.byteOffset + joined.byteLength);
  return tf.io.decodeWeights(arrayBuffer, specs);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const require = createRequire(path.join(path.resolve(args.modules), 'noop.js'));
  const tf = require('@tensorflow/tfjs');
  const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
  await tf.setBackend('cpu');
  await tf.ready();
  if (tf.getBackend() !== 'cpu') throw new Error(`expected the cpu backend, got ${tf.getBackend()}`);

  const ageGender = new faceapi.AgeGenderNet();
  ageGender.loadFromWeightMap(readWeightMap(tf, args.models, 'age_gender_model'));
  const recognition = new faceapi.FaceRecognitionNet();
  recognition.loadFromWeightMap(readWeightMap(tf, args.models, 'face_recognition_model'));

  const agInputs = makeInputs(112, 100);
  const agTensors = agInputs.map((d) => tf.tensor3d(d, [112, 112, 3], 'float32'));
  const agNetInput = await faceapi.toNetInput(agTensors);
  const raw = ageGender.runNet(agNetInput); // age [B], gender logits [B,2] (before softmax)
  const probs = ageGender.forwardInput(agNetInput); // gender softmax [B,2]: index 0 male, 1 female
  const predictions = await ageGender.predictAgeAndGender(agTensors);

  const recInputs = makeInputs(150, 200);
  const recTensors = recInputs.map((d) => tf.tensor3d(d, [150, 150, 3], 'float32'));
  const descriptors = recognition.forwardInput(await faceapi.toNetInput(recTensors));

  const result = {
    versions: { tfjs: tf.version.tfjs, faceapi: faceapi.version, backend: tf.getBackend() },
    age_gender_inputs: agInputs.map((d) => Array.from(d)),
    age: Array.from(await raw.age.data()),
    gender_logits: Array.from(await raw.gender.data()),
    gender_probs: Array.from(await probs.gender.data()),
    age_gender_predictions: predictions,
    recognition_inputs: recInputs.map((d) => Array.from(d)),
    descriptors: Array.from(await descriptors.data()),
  };
  fs.writeFileSync(args.out, JSON.stringify(result));
  console.log(`wrote ${args.out}`);
  console.log('age', result.age, 'gender', JSON.stringify(predictions.map((p) => [p.gender, p.genderProbability])));
}

main().catch((e) => { console.error(e); process.exit(1); });
