import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { makeSocketDir, removeStaleSocketDirs } from "../server/process/socket-dirs.js";

/** The pid of a process that has exited (and been reaped). */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  const pid = child.pid;
  if (pid === undefined) throw new Error("no pid");
  await new Promise((done) => child.once("exit", done));
  return pid;
}

describe("socket directories of cluster primaries", () => {
  let base: string;
  beforeEach(() => {
    base = mkdtempSync(join(tmpdir(), "socket-dirs-"));
  });
  afterEach(() => rmSync(base, { recursive: true, force: true }));

  it("are named for the primary's pid and made only for this user", () => {
    const dir = makeSocketDir(base);
    expect(dir.startsWith(join(base, `orisun-workers-${process.pid}-`))).toBe(true);
    expect(readdirSync(base)).toHaveLength(1);
  });

  it("left by a primary that is gone are removed with their sockets; every other one stays", async () => {
    const dead = await deadPid();
    const gone = join(base, `orisun-workers-${dead}-aBc123`);
    mkdirSync(gone);
    writeFileSync(join(gone, "0.sock"), "");
    const mine = makeSocketDir(base);
    // The test runner's parent runs: a primary of another deployment, say.
    const living = join(base, `orisun-workers-${process.ppid}-xYz789`);
    mkdirSync(living);
    // A version that did not put the pid in the name: whose it is cannot be told.
    const unnamed = join(base, "orisun-workers-Qw3rTy");
    mkdirSync(unnamed);
    const unrelated = join(base, `other-${dead}-dir`);
    mkdirSync(unrelated);
    // Not a directory: not made by a primary.
    const file = join(base, `orisun-workers-${dead}-file`);
    writeFileSync(file, "");

    expect(removeStaleSocketDirs(base)).toEqual([`orisun-workers-${dead}-aBc123`]);
    expect(existsSync(gone)).toBe(false);
    for (const kept of [mine, living, unnamed, unrelated, file])
      expect(existsSync(kept)).toBe(true);
    // Nothing left to remove the second time.
    expect(removeStaleSocketDirs(base)).toEqual([]);
  });

  it("in a folder that does not exist: nothing to remove", () => {
    expect(removeStaleSocketDirs(join(base, "missing"))).toEqual([]);
  });
});
