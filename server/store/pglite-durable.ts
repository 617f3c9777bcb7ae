import { existsSync, fsyncSync, readdirSync } from "node:fs";
import { open, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { PGlite, type PGliteOptions } from "@electric-sql/pglite";
import { NodeFS } from "@electric-sql/pglite/nodefs";

/**
 * Opens PGlite on a folder so that an acknowledged commit is on disk, as with PostgreSQL.
 *
 * As shipped, PGlite in Node writes but never syncs:
 * - it starts PostgreSQL with `-F` (fsync=off), so PostgreSQL skips its durability points: the WAL
 *   flush before a commit returns, and the data-file flush at a checkpoint;
 * - below that, Emscripten's NODEFS implements neither: `fsync()` succeeds without a system call
 *   (its file streams have no fsync operation) and `fdatasync()` is a stub returning 0.
 * PGlite's `relaxedDurability` and `syncToFs` do not help: they govern when the browser file
 *   systems (IndexedDB, OPFS) copy memory out, and do nothing on NODEFS.
 *
 * So PostgreSQL runs with fsync on, its `fsync()` of a file becomes a real fsync of the host file,
 * and the WAL is flushed with `fsync` (`wal_sync_method=fsync`), the one method that reaches it:
 * `fdatasync` cannot be hooked, `open_datasync` would only cover the WAL. A commit then returns
 * after its WAL is on disk; a checkpoint (one runs on close) syncs the data files it wrote before
 * it records itself; after a crash, PostgreSQL's own recovery syncs the whole folder before replay.
 * Group commit makes one transaction, so one WAL sync, per batch of appends.
 */
export async function openDurablePGlite(dir: string, options: PGliteOptions): Promise<PGlite> {
  const pglite = new PGlite({
    ...options,
    dataDir: dir,
    fs: new SyncingNodeFS(dir),
    startParams: [
      ...PGlite.defaultStartParams.filter((p) => p !== "-F"),
      ...["-c", "fsync=on", "-c", "wal_sync_method=fsync"],
      ...["-c", "synchronous_commit=on", "-c", "full_page_writes=on"],
    ],
  });
  await pglite.waitReady;
  // PGlite runs initdb in memory and copies the result in without a sync, and earlier versions
  // of this store never synced at all: sync the folder once, as initdb does, or a power cut could
  // leave one PostgreSQL cannot start from. The marker, inside so that it goes with the folder,
  // says it was done (PostgreSQL ignores files it does not know at the top of its folder).
  const marker = join(dir, "orisun-synced");
  if (!existsSync(marker)) {
    await syncTree(dir);
    await writeFile(marker, "");
    await syncPath(dir);
    await syncPath(dirname(dir));
  }
  return pglite;
}

/** The parts of Emscripten's NODEFS this file uses (PGlite types it as a bare FileSystemType). */
interface NodeFsInternals {
  readonly stream_ops: { fsync?: (stream: { readonly nfd: number }) => number };
  tryFSOperation<T>(operation: () => T): T;
}

type EmscriptenOptions = Parameters<NodeFS["init"]>[1];

/** NODEFS whose fsync() reaches the disk; a failure is an I/O error PostgreSQL acts on. */
class SyncingNodeFS extends NodeFS {
  override async init(pg: PGlite, options: EmscriptenOptions) {
    const { emscriptenOpts } = await super.init(pg, options);
    const preRun = [
      ...(emscriptenOpts.preRun ?? []),
      (mod: { readonly NODEFS: unknown }) => {
        const nodefs = mod.NODEFS as NodeFsInternals;
        nodefs.stream_ops.fsync = (stream) =>
          nodefs.tryFSOperation(() => {
            fsyncSync(stream.nfd);
            return 0;
          });
      },
    ];
    return { emscriptenOpts: { ...emscriptenOpts, preRun } };
  }
}

/** Syncs in flight at once while syncing a folder: Node runs them on its 4 I/O threads. */
const PARALLEL_SYNCS = 8;

/**
 * fsyncs every file under `dir` several at a time (about 1,000 files in a new folder: 5.5 s one by
 * one on a slow disk), then every folder, deepest first, so that each one's entries are on disk
 * before the entry that names it.
 */
async function syncTree(dir: string): Promise<void> {
  const files: string[] = [];
  const folders: string[] = [];
  const walk = (folder: string) => {
    for (const entry of readdirSync(folder, { withFileTypes: true })) {
      const path = join(folder, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.isFile()) files.push(path);
    }
    folders.push(folder);
  };
  walk(dir);
  let next = 0;
  const worker = async () => {
    while (next < files.length) await syncPath(files[next++] ?? "");
  };
  await Promise.all(Array.from({ length: PARALLEL_SYNCS }, worker));
  for (const folder of folders) await syncPath(folder);
}

async function syncPath(path: string): Promise<void> {
  const handle = await open(path, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
