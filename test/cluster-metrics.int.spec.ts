import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";
import { clusterMetrics } from "../server/process/cluster-metrics.js";
import { tempDir } from "./support/temp.js";

const url = (path: string) => pathToFileURL(resolve(path)).href;

/**
 * A primary with the server's metrics hook and two workers that each count a different amount:
 * once both counted, each asks for the cluster's metrics and prints what it got.
 */
const PROGRAM = `
import cluster from "node:cluster";
import client from "${url("node_modules/prom-client/index.js")}";
import { clusterMetrics, serveClusterMetrics } from "${url("dist/server/process/cluster-metrics.js")}";

if (cluster.isPrimary) {
  serveClusterMetrics();
  const workers = [cluster.fork(), cluster.fork()];
  let ready = 0;
  let reported = 0;
  for (const worker of workers) {
    worker.on("message", (m) => {
      if (m === "counted" && ++ready === workers.length) for (const w of workers) w.send("scrape");
      if (typeof m === "object" && m.line !== undefined) {
        console.log(m.line);
        if (++reported === workers.length) for (const w of workers) w.send("exit");
      }
    });
  }
} else {
  const counter = new client.Counter({ name: "orisun_test_appends_total", help: "appends" });
  counter.inc(cluster.worker.id * 10);
  process.on("message", async (m) => {
    if (m === "scrape") {
      const text = await clusterMetrics();
      process.send({ line: text.split("\\n").find((l) => l.startsWith("orisun_test_appends_total ")) });
    }
    if (m === "exit") process.exit(0);
  });
  process.send("counted");
}
`;

describe("metrics across ORISUN_WORKERS", () => {
  it("a worker's scrape gets every worker's counters, summed by the primary", () => {
    const file = join(tempDir("orisun-cluster-metrics-"), "program.mjs");
    writeFileSync(file, PROGRAM);
    const run = spawnSync(process.execPath, [file], { encoding: "utf8", timeout: 60_000 });
    expect(run.stderr).toBe("");
    expect(run.stdout.trim().split("\n")).toEqual([
      "orisun_test_appends_total 30",
      "orisun_test_appends_total 30",
    ]);
  });

  it("outside a cluster there is nothing to gather: the process's own registry is the whole", async () => {
    expect(await clusterMetrics()).toBeUndefined();
  });
});
