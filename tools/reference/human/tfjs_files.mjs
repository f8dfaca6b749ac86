// Shared by the TF.js scripts in this folder.

import fs from 'node:fs';
import path from 'node:path';

// file:// IO handler for tf.loadGraphModel: model.json + shards listed in its weightsManifest.
export function fileRouter(url) {
  if (typeof url !== 'string' || !url.startsWith('file://')) return null;
  const jsonPath = url.slice('file://'.length);
  return {
    load: async () => {
      const model = JSON.parse(fs.readFileSync(jsonPath, 'utf8'));
      const weightSpecs = [];
      const buffers = [];
      for (const group of model.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const shard of group.paths) buffers.push(fs.readFileSync(path.join(path.dirname(jsonPath), shard)));
      }
      const joined = Buffer.concat(buffers);
      return {
        modelTopology: model.modelTopology,
        format: model.format,
        generatedBy: model.generatedBy,
        convertedBy: model.convertedBy,
        signature: model.signature,
        userDefinedMetadata: model.userDefinedMetadata,
        weightSpecs,
        weightData: joined.buffer.slice(joined.byteOffset, joined.byteOffset + joined.byteLength),
      };
    },
  };
}
