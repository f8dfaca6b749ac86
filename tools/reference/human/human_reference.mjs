// Reference outputs of @vladmandic/human 3.3.6's facemesh, faceres and blazeface TF.js graph models,
// computed by TF.js in Node with the pure-JavaScript CPU backend, for the parity tests of the torch
// ports (tests/models/test_human.py -> tests/fixtures/human/human_reference.npz).
//
// Regenerate (Node 20, npm 10+; run from the repository root, after `hfld zoo fetch starter`):
//   mkdir -p /tmp/human_ref/node
//   cp tools/reference/human/package.json /tmp/human_ref/node/
//   npm install --prefix /tmp/human_ref/node --no-audit --no-fund
//       # @tensorflow/tfjs 4.22.0 (pure JS; tfjs-node needs a libtensorflow download) and
//       # @vladmandic/human 3.3.6, only for its models/ folder (same bytes as the zoo's copy)
//   PYTHONPATH=. .venv/bin/python tools/reference/human/make_inputs.py /tmp/human_ref/inputs.json
//   node tools/reference/human/human_reference.mjs --modules /tmp/human_ref/node/node_modules \
//       --models "${HFLD_CACHE:-$HOME/.cache/hfld}/starter/human/models" \
//       --inputs /tmp/human_ref/inputs.json --out /tmp/human_ref/out.json
//   .venv/bin/python tools/reference/human/to_npz.py /tmp/human_ref/inputs.json /tmp/human_ref/out.json \
//       tests/fixtures/human/human_reference.npz
// (--models may also point at /tmp/human_ref/node/node_modules/@vladmandic/human/models.)
//
// Each graph is loaded with tf.loadGraphModel('file://<dir>/<name>.json'); pure @tensorflow/tfjs has
// no file:// handler in Node, so this script registers a small load router that reads the model.json
// and its weight shards with fs (the same files, nothing converted). Model inputs are built from the
// uint8 sources by integer nearest-neighbour upsampling, which numpy reproduces exactly:
//   facemesh  [1,192,192,3] = src64 x3 / 255          (human: face crop / 255)
//   blazeface [1,256,256,3] = src64 x4 / 127.5 - 1    (human: pixels / 127.5 - 1)
//   faceres   [1,224,224,3] = src56 x4, 0..255        (human: crop in 0..1 x 255)
// Every image runs alone (batch 1: blazeface's Reshape constants hard-code it). For blazeface the
// script also decodes the candidates as human's getBoxes does and records the indices that
// tf.image.nonMaxSuppression keeps, for two settings, to check the torch NMS.

import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

import { fileRouter } from './tfjs_files.mjs';

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`);
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const name of ['modules', 'models', 'inputs', 'out']) {
    if (!args[name]) throw new Error(`missing --${name}`);
  }
  return args;
}

// uint8 HWC image (flat) of size s -> Float32Array of size (s*k)^2*3, upsampled x k, then v*scale+offset.
function upsample(src, size, k, scale, offset) {
  const out = new Float32Array(size * k * size * k * 3);
  const big = size * k;
  for (let y = 0; y < big; y += 1) {
    for (let x = 0; x < big; x += 1) {
      const s = (Math.floor(y / k) * size + Math.floor(x / k)) * 3;
      const o = (y * big + x) * 3;
      for (let c = 0; c < 3; c += 1) out[o + c] = src[s + c] * scale + offset;
    }
  }
  return out;
}

function images(stack) {
  const [n, h, w, c] = stack.shape;
  const per = h * w * c;
  return Array.from({ length: n }, (_, i) => Uint8Array.from(stack.data.slice(i * per, (i + 1) * per)));
}

// human's anchors (src/face/facemeshutil.ts generateAnchors) for a 256 input: strides 16, 32; 2, 6 per cell.
function anchors256() {
  const out = [];
  for (const [stride, perCell] of [[16, 2], [32, 6]]) {
    const cells = Math.floor((256 + stride - 1) / stride);
    for (let gy = 0; gy < cells; gy += 1) {
      for (let gx = 0; gx < cells; gx += 1) {
        for (let n = 0; n < perCell; n += 1) out.push([stride * (gx + 0.5), stride * (gy + 0.5)]);
      }
    }
  }
  return out;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const require = createRequire(path.join(path.resolve(args.modules), 'noop.js'));
  const tf = require('@tensorflow/tfjs');
  await tf.setBackend('cpu');
  await tf.ready();
  if (tf.getBackend() !== 'cpu') throw new Error(`expected the cpu backend, got ${tf.getBackend()}`);
  tf.io.registerLoadRouter(fileRouter);
  const load = (name) => tf.loadGraphModel(`file://${path.resolve(args.models, `${name}.json`)}`);
  const [facemesh, faceres, blazeface] = await Promise.all([load('facemesh'), load('faceres'), load('blazeface')]);

  const inputs = JSON.parse(fs.readFileSync(args.inputs, 'utf8'));
  const src64 = images(inputs.src64);
  const src56 = images(inputs.src56);
  const result = {
    versions: { tfjs: tf.version.tfjs, backend: tf.getBackend(), node: process.version },
    model_sha256: Object.fromEntries(['facemesh', 'faceres', 'blazeface'].flatMap((name) => ['json', 'bin'].map((ext) => {
      const file = `${name}.${ext}`;
      return [file, createHash('sha256').update(fs.readFileSync(path.resolve(args.models, file))).digest('hex')];
    }))),
    facemesh_mesh: [], facemesh_faceflag: [], facemesh_contours: [],
    faceres_gender: [], faceres_age: [], faceres_descriptor: [],
    blazeface_scores16: [], blazeface_boxes16: [], blazeface_scores8: [], blazeface_boxes8: [],
    blazeface_nms_default: [], blazeface_nms_loose: [],
  };
  const run = async (model, data, shape, outputs) => {
    const x = tf.tensor(data, shape, 'float32');
    const ys = model.execute(x, outputs);
    const values = await Promise.all(ys.map((y) => y.data()));
    tf.dispose([x, ...ys]);
    return values.map((v) => Array.from(v));
  };

  for (const img of src64) {
    const [mesh, flag, contours] = await run(facemesh, upsample(img, 64, 3, 1 / 255, 0), [1, 192, 192, 3],
      ['Identity_2', 'Identity_1', 'Identity']);
    result.facemesh_mesh.push(mesh); result.facemesh_faceflag.push(flag); result.facemesh_contours.push(contours);

    const [s16, b16, s8, b8] = await run(blazeface, upsample(img, 64, 4, 1 / 127.5, -1), [1, 256, 256, 3],
      ['Identity', 'Identity_2', 'Identity_1', 'Identity_3']);
    result.blazeface_scores16.push(s16); result.blazeface_boxes16.push(b16);
    result.blazeface_scores8.push(s8); result.blazeface_boxes8.push(b8);
    // human's decoding: per anchor [logit, dx, dy, w, h, ...]; 16x16 grid anchors first.
    const logits = s16.concat(s8);
    const regs = b16.concat(b8);
    const anchors = anchors256();
    const boxes = anchors.map(([ax, ay], i) => {
      const r = regs.slice(16 * i, 16 * i + 4);
      const cx = r[0] + ax; const cy = r[1] + ay;
      return [cx - r[2] / 2, cy - r[3] / 2, cx + r[2] / 2, cy + r[3] / 2];
    });
    const boxesT = tf.tensor2d(boxes);
    const scoresT = tf.sigmoid(tf.tensor1d(logits));
    for (const [key, maxOut, iou, minScore] of [['blazeface_nms_default', 1, 0.1, 0.2], ['blazeface_nms_loose', 10, 0.3, 0.01]]) {
      const keep = tf.image.nonMaxSuppression(boxesT, scoresT, maxOut, iou, minScore);
      const kept = Array.from(await keep.data());
      result[key].push(kept.concat(Array(10 - kept.length).fill(-1)));
      keep.dispose();
    }
    tf.dispose([boxesT, scoresT]);
  }

  for (const img of src56) {
    const [gender, age, descriptor] = await run(faceres, upsample(img, 56, 4, 1, 0), [1, 224, 224, 3],
      ['gender_pred/Sigmoid', 'age_pred/Softmax', 'global_pooling/Mean']);
    result.faceres_gender.push(gender); result.faceres_age.push(age); result.faceres_descriptor.push(descriptor);
  }

  fs.writeFileSync(args.out, JSON.stringify(result));
  console.log(`wrote ${args.out}`, result.versions);
  console.log('faceflag', result.facemesh_faceflag.flat(), 'gender', result.faceres_gender.flat());
  console.log('nms default', JSON.stringify(result.blazeface_nms_default), 'loose', JSON.stringify(result.blazeface_nms_loose));
}

main().catch((e) => { console.error(e); process.exit(1); });
