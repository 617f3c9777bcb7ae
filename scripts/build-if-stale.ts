/**
 * `npm start` builds only when something the build reads changed since the last build it made:
 * a fresh build costs ~12-30 s of CPU, an unchanged one nothing. It compares modification times
 * of the build's inputs with a stamp that it writes after a successful build, dated to when that
 * build began (an input saved during the build is newer, so the next start builds again).
 * Runs with Node's own TypeScript support; only node: imports.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

/** What `npm run build` reads (tsc, the client library, Vite's console), relative to the root. */
export const BUILD_INPUTS = [
  "server",
  "gen",
  "bench",
  "proto",
  "client-web/src",
  "client-web/console",
  "client-web/vite.config.ts",
  "client-web/tsconfig.json",
  "client-web/tsconfig.lib.json",
  "client-web/package.json",
  "package.json",
  "package-lock.json",
  "tsconfig.json",
  "tsconfig.build.json",
];

/** What the server needs to run; a build that lost one of them is no build. */
const OUTPUTS = ["dist/server/main.js", "dist/console/index.html"];

export const STAMP = "dist/.build-stamp";

/** The newest file under `path` (a file or a folder), or undefined if there is none. */
function newest(path: string): { path: string; mtimeMs: number } | undefined {
  if (!existsSync(path)) return undefined;
  const stat = statSync(path);
  if (!stat.isDirectory()) return { path, mtimeMs: stat.mtimeMs };
  let best: { path: string; mtimeMs: number } | undefined;
  for (const entry of readdirSync(path)) {
    if (entry === "node_modules" || entry === "dist") continue;
    const found = newest(join(path, entry));
    if (found && (!best || found.mtimeMs > best.mtimeMs)) best = found;
  }
  return best;
}

/** Why `root` needs a build, or undefined when its dist/ is newer than every input. */
export function staleReason(root: string): string | undefined {
  const stamp = join(root, STAMP);
  if (!existsSync(stamp)) return "no build stamp (never built by npm start)";
  for (const output of OUTPUTS) {
    if (!existsSync(join(root, output))) return `${output} is missing`;
  }
  const built = statSync(stamp).mtimeMs;
  for (const input of BUILD_INPUTS) {
    const found = newest(join(root, input));
    if (found && found.mtimeMs > built) return `${found.path.slice(root.length + 1)} changed`;
  }
  return undefined;
}

function main(root: string): number {
  const reason = staleReason(root);
  if (reason === undefined) {
    console.error("orisun: dist/ is up to date; not rebuilding");
    return 0;
  }
  console.error(`orisun: building (${reason})`);
  const began = new Date();
  const build = spawnSync("npm", ["run", "build", "--silent"], { cwd: root, stdio: "inherit" });
  if (build.status !== 0) return build.status ?? 1;
  const stamp = join(root, STAMP);
  writeFileSync(stamp, `${began.toISOString()}\n`);
  utimesSync(stamp, began, began);
  return 0;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  process.exitCode = main(process.cwd());
}
