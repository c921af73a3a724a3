// Generates the protocol's TypeScript (src/gen) from protocol/proto with
// protoc and protoc-gen-es: the browser speaks exactly the node's messages,
// with no hand-written encoder. The output is committed, so building the
// app needs no protoc; `make test` regenerates it and fails on a difference.
import { execFileSync } from "node:child_process";
import { readdirSync, rmSync, mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const protoDir = join(web, "..", "protocol", "proto");
const out = join(web, "src", "gen");
const protos = readdirSync(protoDir).filter((f) => f.endsWith(".proto") && f !== "services.proto");

try {
  execFileSync("protoc", ["--version"], { stdio: "ignore" });
} catch {
  console.error("gen: protoc is missing (Debian: apt-get install protobuf-compiler); src/gen is left as committed");
  process.exit(process.env.CI ? 1 : 0);
}
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
execFileSync(
  "protoc",
  [
    `--plugin=protoc-gen-es=${join(web, "node_modules", ".bin", "protoc-gen-es")}`,
    `--es_out=${out}`,
    "--es_opt=target=ts,import_extension=none",
    `-I${protoDir}`,
    ...protos,
  ],
  { stdio: "inherit", cwd: protoDir },
);
console.log(`gen: ${protos.length} protos -> src/gen`);
