import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  cpSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../support/spawn-server.js";

/**
 * There is no Docker engine here, so this runs the image's final stage by hand, as Docker would:
 * the Dockerfile's own WORKDIR, ENV, COPY layout, RUN steps, USER, CMD and HEALTHCHECK, with
 * /app rooted in a root-owned temp folder and the `node` user of the node images (uid 1000).
 */
const NODE_UID = 1000;

interface FinalStage {
  readonly workdir: string;
  readonly env: Record<string, string>;
  readonly copies: { from: string | undefined; source: string; target: string }[];
  readonly runs: string[];
  readonly user: string;
  readonly volumes: string[];
  readonly cmd: string[];
  readonly healthcheck: string[];
}

/** The last stage of the Dockerfile, with continuation lines joined. */
function finalStage(dockerfile: string): FinalStage {
  const lines = dockerfile
    .replace(/\\\n\s*/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  const last = lines.map((l) => l.startsWith("FROM ")).lastIndexOf(true);
  const stage: FinalStage = {
    workdir: "/",
    env: {},
    copies: [],
    runs: [],
    user: "root",
    volumes: [],
    cmd: [],
    healthcheck: [],
  };
  const mutable = stage as { -readonly [K in keyof FinalStage]: FinalStage[K] };
  for (const line of lines.slice(last + 1)) {
    const [instruction = "", ...rest] = line.split(" ");
    const args = rest.join(" ");
    if (instruction === "WORKDIR") mutable.workdir = args;
    else if (instruction === "ENV") {
      for (const pair of args.split(/\s+/)) {
        const [key = "", value = ""] = pair.split("=");
        mutable.env[key] = value;
      }
    } else if (instruction === "COPY") {
      const from = /--from=(\S+)/.exec(args)?.[1];
      const paths = args.split(/\s+/).filter((a) => !a.startsWith("--"));
      const target = paths.at(-1) ?? "";
      for (const source of paths.slice(0, -1)) mutable.copies.push({ from, source, target });
    } else if (instruction === "RUN") mutable.runs.push(args);
    else if (instruction === "USER") mutable.user = args;
    else if (instruction === "VOLUME") mutable.volumes.push(...(JSON.parse(args) as string[]));
    else if (instruction === "CMD") mutable.cmd = JSON.parse(args) as string[];
    else if (instruction === "HEALTHCHECK") {
      mutable.healthcheck = JSON.parse(args.slice(args.indexOf("CMD ") + 4)) as string[];
    }
  }
  return stage;
}

/**
 * What `docker run -e` adds: the image binds 0.0.0.0, so authentication is on, and the first
 * admin's password must come from the environment (the image has none).
 */
const ADMIN_PASSWORD = "image-admin-pass-1";
const RUN_ENV = { ORISUN_ADMIN_PASSWORD: ADMIN_PASSWORD };

describe("the Docker image's final stage, run as the node user from a root-owned copy", () => {
  const stage = finalStage(readFileSync("Dockerfile", "utf8"));
  // A folder of its own in /tmp (the run's temp root is private to root): uid 1000 must reach it.
  const root = mkdtempSync(join(tmpdir(), "orisun-image-"));
  chmodSync(root, 0o755);
  const app = join(root, stage.workdir);
  const inImage = (path: string) => path.replaceAll(stage.workdir, app);
  const env = Object.fromEntries(Object.entries(stage.env).map(([k, v]) => [k, inImage(v)]));
  const asNode = (command: string[]) => [
    "--reuid",
    String(NODE_UID),
    "--regid",
    String(NODE_UID),
    "--clear-groups",
    ...command.map((part) => (part === "node" ? process.execPath : part)),
  ];
  let server: ChildProcess | undefined;

  beforeAll(() => {
    // COPY, as root: the build stage's node_modules and dist, and the context's package.json.
    mkdirSync(app, { recursive: true });
    for (const { source, target } of stage.copies) {
      const name = source.split("/").at(-1) ?? source;
      const to = join(app, target === "./" ? name : target);
      if (name === "node_modules") symlinkSync(resolve("node_modules"), to);
      else cpSync(resolve(name), to, { recursive: true });
    }
  });
  afterAll(() => {
    if (server?.exitCode === null) server.kill("SIGKILL");
    rmSync(root, { recursive: true, force: true });
  });

  it("declares what an operator relies on", () => {
    expect(stage.user).toBe("node");
    expect(stage.env.ORISUN_DATA_DIR).toBe("/app/data");
    expect(stage.volumes).toEqual(["/app/data"]);
    expect(stage.cmd).toEqual(["node", "dist/server/main.js"]);
    expect(stage.healthcheck[0]).toBe("node");
    expect(statSync(app).uid).toBe(0);
  });

  it("without the image's RUN steps, the node user cannot make the data folder (the old failure)", () => {
    const run = spawnSync("setpriv", asNode(stage.cmd), {
      cwd: app,
      env: { PATH: process.env.PATH ?? "", ...env, ...RUN_ENV, ORISUN_PORT: "0" },
      encoding: "utf8",
      timeout: 60_000,
    });
    expect(run.status).not.toBe(0);
    expect(run.stderr + run.stdout).toContain(`EACCES: permission denied, mkdir '${app}/data`);
  });

  it("with them, it starts on the embedded default, answers, writes as uid 1000, is healthy and stops cleanly", async () => {
    for (const step of stage.runs) {
      execFileSync("sh", ["-c", inImage(step).replaceAll("node:node", `${NODE_UID}:${NODE_UID}`)]);
    }
    const port = await freePort();
    const runtime = { PATH: process.env.PATH ?? "", ...env, ...RUN_ENV, ORISUN_PORT: String(port) };
    const healthy = () =>
      spawnSync("setpriv", asNode(stage.healthcheck), { cwd: app, env: runtime, timeout: 10_000 })
        .status;
    expect(healthy()).toBe(1); // nothing listens yet

    server = spawn("setpriv", asNode(stage.cmd), { cwd: app, env: runtime });
    let log = "";
    server.stdout?.on("data", (d: Buffer) => {
      log += d.toString();
    });
    server.stderr?.on("data", (d: Buffer) => {
      log += d.toString();
    });
    const exited = new Promise<number | null>((done) => server?.once("exit", done));
    const deadline = Date.now() + 120_000;
    while (!log.includes("Orisun listening")) {
      if (server.exitCode !== null || Date.now() > deadline) throw new Error(log);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(log).toContain(`embedded PGlite in ${app}/data`);

    const save = (headers: Record<string, string>) =>
      fetch(`http://127.0.0.1:${port}/orisun.v1.EventStore/SaveEvents`, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...headers },
        body: JSON.stringify({ boundary: "docker", events: [{ event_type: "T", data: "{}" }] }),
      });
    expect((await save({})).status).toBe(401);
    const admin = `Basic ${Buffer.from(`admin:${ADMIN_PASSWORD}`).toString("base64")}`;
    expect((await save({ authorization: admin })).status).toBe(200);
    expect(healthy()).toBe(0);

    const owners = new Set<number>();
    const walk = (dir: string) => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, entry.name);
        owners.add(statSync(path).uid);
        if (entry.isDirectory()) walk(path);
      }
    };
    walk(join(app, "data"));
    expect([...owners]).toEqual([NODE_UID]);

    server.kill("SIGTERM");
    expect(await exited).toBe(0);
    expect(healthy()).toBe(1);
  });
});
