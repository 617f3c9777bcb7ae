import { statfs } from "node:fs/promises";
import { StoreError } from "./errors.js";

const MiB = 1024 * 1024;

/** ORISUN_DATA_MIN_FREE_BYTES unset: room for the WAL's next 16 MiB segments and a burst of appends. */
export const DEFAULT_MIN_FREE_BYTES = 128 * MiB;

export interface DiskSpaceOptions {
  /** The embedded store's folder. */
  readonly dir: string;
  /** Below this many bytes free (for an unprivileged user) on its file system, writes are refused; 0: never. */
  readonly minFreeBytes: number;
  /** How often the free space is read while nothing is written. Default 1 s. */
  readonly intervalMs?: number;
  /** Called when the disk crosses the minimum, either way, with the bytes free then. */
  readonly onChange?: (low: boolean, freeBytes: number) => void;
}

/**
 * Keeps the embedded store from filling its disk. PGlite runs PostgreSQL in this process's thread,
 * and PostgreSQL that cannot write its WAL stops for good: on a full disk a commit spun in
 * XLogFlush, holding the event loop, so that no call, health probe or signal was answered again.
 * So writes stop first, while there is room: appends and imports are refused with
 * "out_of_space" once the folder's file system has less than `minFreeBytes` free, and go on once it
 * has more. Reads go on throughout.
 *
 * The free space is read every `intervalMs`, and again after every sixteenth of the minimum
 * written, so that a burst of appends cannot write through the margin between two reads.
 */
export class DiskSpaceGuard {
  private freeBytes = Number.POSITIVE_INFINITY;
  private low = false;
  private writtenSinceRead = 0;
  private reading: Promise<void> | undefined;
  private readonly timer: NodeJS.Timeout;

  private constructor(private readonly options: DiskSpaceOptions) {
    this.timer = setInterval(() => void this.refresh(), options.intervalMs ?? 1_000);
    this.timer.unref();
  }

  /** Reads the free space once before it answers, so that a disk already full refuses the first write. */
  static async start(options: DiskSpaceOptions): Promise<DiskSpaceGuard> {
    const guard = new DiskSpaceGuard(options);
    await guard.refresh();
    return guard;
  }

  /** Bytes free at the last read. */
  get free(): number {
    return this.freeBytes;
  }

  get minFree(): number {
    return this.options.minFreeBytes;
  }

  /** Throws StoreError "out_of_space" while the disk has less than the minimum free. */
  check(): void {
    if (!this.low) return;
    const { minFreeBytes } = this.options;
    throw new StoreError(
      "out_of_space",
      `the data folder's disk has ${mib(this.freeBytes)} free, under ORISUN_DATA_MIN_FREE_BYTES (${mib(minFreeBytes)}): writes are refused until space is freed; nothing was written`,
    );
  }

  /**
   * Before a write of about `bytes`: throws as check() does, or counts them, and past a sixteenth
   * of the minimum since the last read, reads the free space again.
   */
  admit(bytes: number): void {
    this.check();
    this.writtenSinceRead += bytes;
    if (this.writtenSinceRead * 16 >= this.options.minFreeBytes) void this.refresh();
  }

  /** Reads the free space now (one read at a time). A failed read leaves the last answer. */
  refresh(): Promise<void> {
    if (this.options.minFreeBytes === 0) return Promise.resolve();
    this.reading ??= this.read().finally(() => {
      this.reading = undefined;
    });
    return this.reading;
  }

  close(): void {
    clearInterval(this.timer);
  }

  private async read(): Promise<void> {
    this.writtenSinceRead = 0;
    let stats: Awaited<ReturnType<typeof statfs>>;
    try {
      stats = await statfs(this.options.dir);
    } catch {
      return;
    }
    this.freeBytes = stats.bavail * stats.bsize;
    const low = this.freeBytes < this.options.minFreeBytes;
    if (low !== this.low) {
      this.low = low;
      this.options.onChange?.(low, this.freeBytes);
    }
  }
}

const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;
