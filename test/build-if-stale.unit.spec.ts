import { spawnSync } from "node:child_process";
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { dirname, join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { STAMP, staleReason } from "../scripts/build-if-stale.js";
import { tempDir } from "./support/temp.js";

const SCRIPT = resolve("scripts/build-if-stale.ts");

/**
 * A project whose `npm run build` counts its runs in `builds` and writes the outputs the server
 * needs, so that the script's real decisions can be watched without a real 30 s build.
 */
function project(): string {
  const root = tempDir("orisun-build-");
  const build = [
    "const fs = require('fs');",
    "fs.appendFileSync('builds', 'x');",
    "fs.mkdirSync('dist/server', { recursive: true });",
    "fs.mkdirSync('dist/console', { recursive: true });",
    "fs.writeFileSync('dist/server/main.js', '');",
    "fs.writeFileSync('dist/console/index.html', '');",
  ].join(" ");
  writeFileSync(
    join(root, "package.json"),
    JSON.stringify({ name: "p", private: true, scripts: { build: `node -e "${build}"` } }),
  );
  mkdirSync(join(root, "server/api"), { recursive: true });
  writeFileSync(join(root, "server/api/handler.ts"), "export {};\n");
  // Inputs dated in the past, as a checkout some time ago would leave them.
  const past = new Date(Date.now() - 3_600_000);
  for (const file of ["package.json", "server/api/handler.ts"])
    utimesSync(join(root, file), past, past);
  return root;
}

/** Saves `file` now, a minute after the last build began: an edit made since. */
function edit(root: string, file: string): void {
  const stamp = join(root, STAMP);
  const minuteAgo = new Date(Date.now() - 60_000);
  utimesSync(stamp, minuteAgo, minuteAgo);
  mkdirSync(dirname(join(root, file)), { recursive: true });
  appendFileSync(join(root, file), "\n");
}

function start(root: string): { builds: number; said: string } {
  const run = spawnSync(process.execPath, [SCRIPT], { cwd: root, encoding: "utf8" });
  expect(run.status, run.stderr).toBe(0);
  const builds = existsSync(join(root, "builds"))
    ? readFileSync(join(root, "builds"), "utf8").length
    : 0;
  return { builds, said: run.stderr };
}

describe("npm start's build-if-stale", () => {
  it("builds the first time, not again while nothing changed, and again after a source changed", () => {
    const root = project();
    expect(staleReason(root)).toBe("no build stamp (never built by npm start)");
    expect(start(root)).toMatchObject({
      builds: 1,
      said: expect.stringContaining("building (no build stamp"),
    });
    expect(existsSync(join(root, STAMP))).toBe(true);
    expect(staleReason(root)).toBeUndefined();
    expect(start(root)).toMatchObject({ builds: 1, said: expect.stringContaining("up to date") });

    edit(root, "server/api/handler.ts");
    expect(staleReason(root)).toBe("server/api/handler.ts changed");
    expect(start(root).builds).toBe(2);
    expect(start(root).builds).toBe(2);
  });

  it("rebuilds when package.json changed, a new input appeared, or an output is missing", () => {
    const root = project();
    start(root);
    edit(root, "package.json");
    expect(staleReason(root)).toBe("package.json changed");
    expect(start(root).builds).toBe(2);

    edit(root, "proto/orisun/v1/new.proto");
    expect(staleReason(root)).toBe("proto/orisun/v1/new.proto changed");
    expect(start(root).builds).toBe(3);

    rmSync(join(root, "dist/server/main.js"));
    expect(staleReason(root)).toBe("dist/server/main.js is missing");
    expect(start(root).builds).toBe(4);
  });

  it("a failed build leaves no stamp, so the next start tries again", () => {
    const root = project();
    writeFileSync(
      join(root, "package.json"),
      JSON.stringify({ name: "p", private: true, scripts: { build: "exit 3" } }),
    );
    const run = spawnSync(process.execPath, [SCRIPT], { cwd: root, encoding: "utf8" });
    expect(run.status).toBe(3);
    expect(existsSync(join(root, STAMP))).toBe(false);
  });
});
