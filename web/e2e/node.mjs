// A real OurChat node for the end-to-end run: the built binary on free
// loopback ports and a throwaway data folder, serving web/dist beside the
// WebSocket at /ws. Kill it with -9 and start it again on the same folder
// and ports to test recovery.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const repo = join(web, "..");
export const bin = (name) => join(process.env.OURCHAT_BIN_DIR ?? join(repo, "target", "debug"), name);

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

function reachable(port) {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.on("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.on("error", () => resolve(false));
  });
}

export class Node {
  /** `settings`: more `--set key=value` pairs. */
  static async create(settings = []) {
    const node = new Node();
    node.settings = settings;
    node.dataDir = mkdtempSync(join(tmpdir(), "ourchat-web-e2e-"));
    node.tcpPort = await freePort();
    do node.wsPort = await freePort();
    while (node.wsPort === node.tcpPort);
    await node.start();
    return node;
  }

  get url() {
    return `http://localhost:${this.wsPort}`;
  }

  get tcp() {
    return `127.0.0.1:${this.tcpPort}`;
  }

  async start() {
    this.process = spawn(
      bin("ourchat"),
      [
        "serve", "--data-dir", this.dataDir, "--listen", this.tcp, "--cores", "2",
        "--set", "server.pin_cores=false",
        "--set", `server.ws_listen="127.0.0.1:${this.wsPort}"`,
        "--set", `server.web_root="${join(web, "dist")}"`,
        "--set", 'server.admin_listen=""', "--set", 'server.grpc_listen=""',
        ...this.settings.flatMap((kv) => ["--set", kv]),
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    this.log = "";
    this.process.stderr.on("data", (chunk) => (this.log += chunk));
    for (let i = 0; i < 200; i++) {
      if (this.process.exitCode !== null) throw new Error(`the node exited: ${this.log}`);
      if ((await reachable(this.wsPort)) && (await reachable(this.tcpPort))) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`the node did not start: ${this.log}`);
  }

  /** kill -9, as a crash. */
  async crash() {
    const exited = new Promise((r) => this.process.once("exit", r));
    this.process.kill("SIGKILL");
    await exited;
  }

  async stop() {
    if (this.process.exitCode !== null) return;
    const exited = new Promise((r) => this.process.once("exit", r));
    this.process.kill("SIGTERM");
    await exited;
  }

  /** Runs ourchat-cli against this node with its own session file. */
  cli(session, ...args) {
    return execFileSync(bin("ourchat-cli"), ["--server", this.tcp, "--session", join(this.dataDir, `${session}.session`), ...args], {
      encoding: "utf8",
    });
  }
}
