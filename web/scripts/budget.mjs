// The JS budget: every script the app ships, gzipped, at most 200 KB. A
// size, not a timing, so the build fails on it. Also writes the .gz and
// .br siblings the node serves to browsers that accept them.
import { readdirSync, readFileSync, writeFileSync, statSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync, brotliCompressSync, constants } from "node:zlib";

const BUDGET = 200 * 1024;
const dist = join(dirname(fileURLToPath(import.meta.url)), "..", "dist");

function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

let js = 0;
for (const path of files(dist)) {
  if (!/\.(js|css|html|svg|json)$/.test(path)) continue;
  const body = readFileSync(path);
  // Node's gzip header carries no mtime, so the build stays reproducible.
  const gz = gzipSync(body, { level: 9 });
  writeFileSync(`${path}.gz`, gz);
  writeFileSync(`${path}.br`, brotliCompressSync(body, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }));
  if (path.endsWith(".js")) js += gz.length;
}
console.log(`budget: JS ${(js / 1024).toFixed(1)} KB gzipped of ${BUDGET / 1024} KB`);
if (js > BUDGET) {
  console.error("budget: over the JS budget");
  process.exit(1);
}
