// Reference outputs of face-api.js's FaceLandmark68Net and FaceExpressionNet, computed by TF.js in Node
// with the pure-JS CPU backend, for the parity tests in tests/models/test_faceapi.py.
//
// Regenerate (Node 20, npm registry reachable; versions pinned in tools/reference/faceapi/package.json:
// @tensorflow/tfjs 4.22.0, @vladmandic/face-api 1.7.15):
//
//   mkdir -p /tmp/faceapi_ref/node
//   cp tools/reference/faceapi/package.json /tmp/faceapi_ref/node/
//   (cd /tmp/faceapi_ref/node && npm install --no-audit --no-fund)
//   NODE_PATH=/tmp/faceapi_ref/node/node_modules node tools/reference/faceapi_reference.mjs \
//       "$HFLD_CACHE/starter/face_api/model" /tmp/faceapi_ref/out
//   .venv/bin/python tools/reference/faceapi_reference_npz.py /tmp/faceapi_ref/out \
//       "$HFLD_CACHE/starter/face_api/model" tests/fixtures/faceapi/landmarks_expression_reference.npz
//
// (NODE_PATH is not consulted for ES-module imports, so the script loads its packages through
// createRequire rooted at $NODE_PATH; /tmp/faceapi_ref/node/node_modules is the default.)
//
// What it does: builds 4 fixed 112x112 RGB test images with integer pixel values 0..255 (seeded noise,
// smooth gradients/sinusoids, a cartoon face, low-contrast noise with blocks), loads the model files
// with tf.io.decodeWeights + face-api's own net classes (loadFromWeightMap), and writes to OUT_DIR:
//   inputs_u8.bin   [4, 112, 112, 3] uint8, NHWC
//   outputs.json    versions, backend, and per net: 256-d bottleneck features, raw fc outputs,
//                   and the net's public forward() output (landmarks after face-api's postProcess,
//                   expression softmax probabilities). Numbers are float32 values written exactly.

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const SIZE = 112;
const N_IMAGES = 4;

const [modelDir, outDir] = process.argv.slice(2);
if (!modelDir || !outDir) {
  console.error('usage: node faceapi_reference.mjs MODEL_DIR OUT_DIR');
  process.exit(2);
}

const nodeModules = process.env.NODE_PATH || '/tmp/faceapi_ref/node/node_modules';
const require = createRequire(path.join(path.resolve(nodeModules), 'noop.js'));
const tf = require('@tensorflow/tfjs');
// The node-wasm build of face-api takes TF.js from the @tensorflow/tfjs package (no native tfjs-node).
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');

// Deterministic PRNG (mulberry32) so the inputs never depend on the platform.
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const clampByte = (v) => Math.max(0, Math.min(255, Math.round(v)));

function makeImage(pixel) {
  const img = new Uint8Array(SIZE * SIZE * 3);
  for (let y = 0; y < SIZE; y++) {
    for (let x = 0; x < SIZE; x++) {
      const rgb = pixel(x, y);
      for (let c = 0; c < 3; c++) img[(y * SIZE + x) * 3 + c] = clampByte(rgb[c]);
    }
  }
  return img;
}

function uniformNoise() {
  const rand = mulberry32(1234);
  return makeImage(() => [rand() * 255, rand() * 255, rand() * 255]);
}

function smoothPattern() {
  return makeImage((x, y) => [
    128 + 100 * Math.sin(x / 9) * Math.cos(y / 13),
    255 * (x / (SIZE - 1)),
    255 * (y / (SIZE - 1)) * 0.5 + 60 * Math.sin((x + y) / 7) + 60,
  ]);
}

function cartoonFace() {
  const inEllipse = (x, y, cx, cy, rx, ry) => ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1;
  return makeImage((x, y) => {
    let rgb = [70 + y * 0.5, 90 + y * 0.4, 120];                                   // background
    if (inEllipse(x, y, 56, 60, 38, 48)) rgb = [224 - 0.3 * Math.abs(x - 56), 180, 150]; // skin
    if (inEllipse(x, y, 41, 48, 8, 4) || inEllipse(x, y, 71, 48, 8, 4)) rgb = [245, 245, 245];
    if (inEllipse(x, y, 41, 48, 3, 3) || inEllipse(x, y, 71, 48, 3, 3)) rgb = [40, 30, 20]; // pupils
    if (y >= 38 && y <= 40 && ((x >= 32 && x <= 50) || (x >= 62 && x <= 80))) rgb = [90, 60, 40]; // brows
    if (inEllipse(x, y, 56, 66, 4, 9)) rgb = [200, 150, 125];                         // nose
    if (inEllipse(x, y, 56, 86, 14, 4)) rgb = [170, 60, 70];                          // mouth
    return rgb;
  });
}

function lowContrastBlocks() {
  const rand = mulberry32(99);
  return makeImage((x, y) => {
    const block = ((x >> 4) + (y >> 4)) % 2 === 0 ? 20 : -20;
    return [120 + block + rand() * 16, 118 + block + rand() * 16, 110 - block + rand() * 16];
  });
}

function readModel(name) {
  const manifestPath = path.join(modelDir, `${name}-weights_manifest.json`);
  const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
  const specs = [];
  const buffers = [];
  for (const group of manifest) {
    specs.push(...group.weights);
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(modelDir, p)));
  }
  const joined = Buffer.concat(buffers);
  // Copy into a fresh ArrayBuffer: a Node Buffer may be a view into a larger shared pool.
  const arrayBuffer = joined.buffer.slice(joined.byteOffset, joined.byteOffset + joined.byteLength);
  return tf.io.decodeWeights(arrayBuffer, specs);
}

async function runNet(net, batch) {
  const images = tf.unstack(batch); // face-api takes a batch as an array of [H, W, 3] tensors
  const netInput = await faceapi.toNetInput(images);
  const features = net.faceFeatureExtractor.forwardInput(netInput); // [B,1,1,256]
  const raw = net.runNet(features); // a Tensor4D input to runNet is taken as bottleneck features
  const forward = await net.forward(images);
  const result = {
    features: features.reshape([N_IMAGES, -1]).arraySync(),
    raw: raw.arraySync(),
    forward: forward.arraySync(),
  };
  tf.dispose([features, raw, forward, ...images]);
  return result;
}

async function main() {
  await tf.setBackend('cpu');
  await tf.ready();

  const images = [uniformNoise(), smoothPattern(), cartoonFace(), lowContrastBlocks()];
  const allPixels = new Uint8Array(N_IMAGES * SIZE * SIZE * 3);
  images.forEach((img, i) => allPixels.set(img, i * img.length));
  const batch = tf.tensor4d(Float32Array.from(allPixels), [N_IMAGES, SIZE, SIZE, 3], 'float32');

  const landmarkNet = new faceapi.FaceLandmark68Net();
  landmarkNet.loadFromWeightMap(readModel('face_landmark_68_model'));
  const expressionNet = new faceapi.FaceExpressionNet();
  expressionNet.loadFromWeightMap(readModel('face_expression_model'));

  const landmarks = await runNet(landmarkNet, batch);
  const expression = await runNet(expressionNet, batch);

  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'inputs_u8.bin'), allPixels);
  const outputs = {
    image_names: ['uniform_noise', 'smooth_pattern', 'cartoon_face', 'low_contrast_blocks'],
    input_shape: [N_IMAGES, SIZE, SIZE, 3],
    tfjs_version: tf.version.tfjs,
    faceapi_version: faceapi.version,
    backend: tf.getBackend(),
    expression_labels: ['neutral', 'happy', 'sad', 'angry', 'fearful', 'disgusted', 'surprised'],
    landmarks,
    expression,
  };
  fs.writeFileSync(path.join(outDir, 'outputs.json'), JSON.stringify(outputs));
  console.log(`wrote ${outDir}: tfjs ${outputs.tfjs_version}, face-api ${outputs.faceapi_version}, backend ${outputs.backend}`);
}

await main();
