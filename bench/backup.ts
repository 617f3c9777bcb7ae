/**
 * The backup workload: the `orisun` CLI exporting a boundary to NDJSON and importing it into an
 * empty store, each timed as a child process from start to exit (its own start-up included).
 */
import { spawn } from "node:child_process";
import { ROOT } from "./server.js";

/** Runs `orisun <args>` and resolves to the seconds it took; rejects on a non-zero exit. */
function timedCli(args: readonly string[]): Promise<number> {
  const started = performance.now();
  const child = spawn(process.execPath, [`${ROOT}dist/server/cli/orisun.js`, ...args], {
    env: { PATH: process.env.PATH ?? "" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  return new Promise((done, fail) => {
    child.once("error", fail);
    child.once("close", (code) => {
      if (code === 0) done((performance.now() - started) / 1_000);
      else fail(new Error(`orisun ${args.join(" ")} exited with ${code}:\n${stderr}`));
    });
  });
}

/** Events/s of `orisun export --boundary` of `count` events into `file`. */
export async function exportRate(
  url: string,
  boundary: string,
  file: string,
  count: number,
): Promise<number> {
  return count / (await timedCli(["export", "--url", url, "--boundary", boundary, "--out", file]));
}

/** Events/s of `orisun import` of `file` (`count` events) into a server with an empty store. */
export async function importRate(url: string, file: string, count: number): Promise<number> {
  return count / (await timedCli(["import", "--url", url, file]));
}
