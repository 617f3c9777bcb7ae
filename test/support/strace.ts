import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";

export const STRACE = "/usr/bin/strace";

/** One traced fsync-family call, with the file its descriptor named (strace -y). */
export interface SyncCall {
  readonly call: string;
  readonly path: string;
  /** Wall-clock seconds (strace -ttt) when the call began and when it returned. */
  readonly start: number;
  readonly end: number;
  readonly result: number;
}

export interface Tracer {
  /** The calls traced so far; strace writes each line as it completes. */
  calls(): SyncCall[];
  /** Resolves when strace has exited (it does when the traced process exits). */
  readonly exited: Promise<void>;
  /** Detaches (SIGINT) if still running; the traced process goes on. */
  detach(): Promise<void>;
}

/**
 * Attaches strace to every thread of a running process and records its fsync, fdatasync and
 * sync_file_range calls, with the path of each descriptor and wall-clock times, into `file`.
 * Resolves once strace reports that it is attached.
 */
export async function traceSyncs(pid: number, file: string): Promise<Tracer> {
  if (!existsSync(STRACE)) {
    throw new Error(
      `${STRACE} is missing: install strace (apt-get install strace) to run this test`,
    );
  }
  const child = spawn(
    STRACE,
    [
      "-f",
      "-y",
      "-ttt",
      "-T",
      "-e",
      "trace=fsync,fdatasync,sync_file_range",
      "-o",
      file,
      "-p",
      String(pid),
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const exited = new Promise<void>((done) => child.once("exit", () => done()));
  let log = "";
  await new Promise<void>((ready, fail) => {
    const timer = setTimeout(
      () => fail(new Error(`strace did not attach in 10 s: ${log}`)),
      10_000,
    );
    child.stderr?.on("data", (d: Buffer) => {
      log += d.toString();
      if (log.includes(`Process ${pid} attached`)) {
        clearTimeout(timer);
        ready();
      }
    });
    void exited.then(() => {
      clearTimeout(timer);
      fail(new Error(`strace exited before attaching: ${log}`));
    });
  });
  return {
    calls: () => (existsSync(file) ? parseSyncCalls(readFileSync(file, "utf8")) : []),
    exited,
    async detach() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGINT");
        await exited;
      }
    },
  };
}

const COMPLETE =
  /^\d+\s+(\d+\.\d+)\s+(fsync|fdatasync|sync_file_range)\(\d+<([^>]*)>.*\)\s+=\s+(-?\d+).*<(\d+\.\d+)>\s*$/;
const UNFINISHED =
  /^(\d+)\s+(\d+\.\d+)\s+(fsync|fdatasync|sync_file_range)\(\d+<([^>]*)>.*<unfinished \.\.\.>\s*$/;
const RESUMED = /^(\d+)\s+(\d+\.\d+)\s+<\.\.\. (\w+) resumed>.*=\s+(-?\d+).*<(\d+\.\d+)>\s*$/;

/** Parses strace -f -y -ttt -T output, joining calls that other threads' calls interrupted. */
export function parseSyncCalls(text: string): SyncCall[] {
  const calls: SyncCall[] = [];
  const pending = new Map<string, { call: string; path: string; start: number }>();
  for (const line of text.split("\n")) {
    const done = COMPLETE.exec(line);
    if (done) {
      const start = Number(done[1]);
      calls.push({
        call: done[2] ?? "",
        path: done[3] ?? "",
        start,
        end: start + Number(done[5]),
        result: Number(done[4]),
      });
      continue;
    }
    const open = UNFINISHED.exec(line);
    if (open) {
      pending.set(`${open[1]}:${open[3]}`, {
        call: open[3] ?? "",
        path: open[4] ?? "",
        start: Number(open[2]),
      });
      continue;
    }
    const resumed = RESUMED.exec(line);
    const begun = resumed && pending.get(`${resumed[1]}:${resumed[3]}`);
    if (resumed && begun) {
      pending.delete(`${resumed[1]}:${resumed[3]}`);
      calls.push({ ...begun, end: Number(resumed[2]), result: Number(resumed[4]) });
    }
  }
  return calls;
}
