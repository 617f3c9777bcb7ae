import { mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";

/**
 * The directories in which cluster workers listen for each other's appends (boundary-owners.ts):
 * `orisun-workers-<primary pid>-<random>`, made by mkdtemp (mode 0700: only this user enters).
 * The primary removes its own on exit; one killed with SIGKILL (or by the OOM killer) cannot, so a
 * primary starting later removes those whose primary is gone.
 */
const PREFIX = "orisun-workers-";
const NAME = /^orisun-workers-(\d+)-/;

/** A new socket directory in `base`, named for this process. */
export function makeSocketDir(base: string): string {
  return mkdtempSync(join(base, `${PREFIX}${process.pid}-`));
}

/**
 * Removes the socket directories in `base` that this user owns and whose primary no longer runs;
 * the names of those removed. A directory of a running primary (this one, another deployment's),
 * of another user, or of a version that did not put the pid in the name is left alone. A pid
 * reused by an unrelated process keeps its directory until that process is gone too: a leftover,
 * never a directory taken from a running primary. Pids are those of this pid namespace: containers
 * that share one temporary folder need a TMPDIR each.
 */
export function removeStaleSocketDirs(base: string): string[] {
  let names: string[];
  try {
    names = readdirSync(base);
  } catch {
    return [];
  }
  const uid = process.getuid?.();
  const removed: string[] = [];
  for (const name of names) {
    const pid = Number(NAME.exec(name)?.[1]);
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid || running(pid)) continue;
    const dir = join(base, name);
    try {
      const stat = statSync(dir);
      if (!stat.isDirectory() || (uid !== undefined && stat.uid !== uid)) continue;
      rmSync(dir, { recursive: true, force: true });
      removed.push(name);
    } catch {
      // Gone meanwhile, or not ours to remove: nothing to clean.
    }
  }
  return removed;
}

/** Whether a process with this pid exists (EPERM: it does, under another user). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}
