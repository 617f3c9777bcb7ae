import { spawn } from "node:child_process";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { parseExposition, sampleValue } from "./support/exposition.js";

/** Runs the fixture's cluster (built dist/, as the server runs) and returns worker 1's scrape. */
async function clusterScrape(args: string[] = []): Promise<{ text?: string; error?: string }> {
  const child = spawn(process.execPath, [resolve("test/fixtures/metrics-cluster.mjs"), ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  child.stdout.on("data", (d: Buffer) => {
    out += d.toString();
  });
  const code = await new Promise<number | null>((done) => child.once("exit", done));
  expect(code).toBe(0);
  return JSON.parse(out.trim()) as { text?: string; error?: string };
}

describe("metrics of a node:cluster on one port", () => {
  it("a worker's scrape holds every worker's metrics: counters summed, lags at their max", async () => {
    const { text, error } = await clusterScrape();
    expect(error).toBeUndefined();
    const samples = parseExposition(text ?? "");
    expect(sampleValue(samples, "orisun_events_appended_total", { boundary: "orders" })).toBe(30);
    expect(sampleValue(samples, "orisun_appended_bytes_total", { boundary: "orders" })).toBe(3);
    expect(sampleValue(samples, "orisun_append_batch_requests_count")).toBe(2);
    expect(sampleValue(samples, "orisun_subscriptions_open")).toBe(2);
    expect(sampleValue(samples, "orisun_subscription_lag_events", { boundary: "orders" })).toBe(7);
  });

  it("fails the scrape, saying why, when the primary does not serve the cluster's metrics", async () => {
    const { text, error } = await clusterScrape(["--no-serve"]);
    expect(text).toBeUndefined();
    expect(error).toMatch(
      /primary did not answer within 2000 ms \(does it run serveClusterMetrics\?\)/,
    );
  });
});
