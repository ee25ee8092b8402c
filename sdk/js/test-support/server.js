// Starts a real SnackBase server process for the tests (python -m snackbase serve) on a free port.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

function freePort() {
  return new Promise((ok, fail) => {
    const probe = createServer();
    probe.once("error", fail);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => ok(port));
    });
  });
}

export const SUPERADMIN = { email: "root@example.com", password: "Sdk-superadmin-2026!", account: "system" };

export async function startServer() {
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "snackbase-sdk-"));
  const python = process.env.SNACKBASE_PYTHON || join(REPO, ".venv", "bin", "python");
  const child = spawn(python, ["-m", "snackbase", "serve", "--port", String(port), "--data-dir", join(dataDir, "data")], {
    cwd: dataDir,
    env: {
      ...process.env,
      PYTHONPATH: REPO,
      SNACKBASE_ENVIRONMENT: "testing",
      SNACKBASE_LOG_LEVEL: "WARNING",
      SNACKBASE_SUPERADMIN_EMAIL: SUPERADMIN.email,
      SNACKBASE_SUPERADMIN_PASSWORD: SUPERADMIN.password,
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (chunk) => { stderr += chunk; });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited: ${stderr}`);
    try {
      if ((await fetch(`${url}/health`)).ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`server did not start: ${stderr}`);
    await new Promise((ok) => setTimeout(ok, 50));
  }
  return {
    url,
    async stop() {
      const exited = new Promise((ok) => child.once("exit", ok));
      child.kill("SIGTERM");
      await exited;
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
