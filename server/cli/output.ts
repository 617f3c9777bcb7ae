import { once } from "node:events";
import { createWriteStream, openSync } from "node:fs";
import type { Writable } from "node:stream";

/**
 * A file or standard stream to write to, with backpressure and errors as exceptions: the file is
 * opened at once (a bad path fails before any work), and a failed write (disk full, a closed
 * pipe) fails the next write instead of crashing the process.
 */
export class Output {
  private failed: Error | undefined;
  private readonly stream: Writable;

  constructor(target: string | Writable) {
    this.stream =
      typeof target === "string" ? createWriteStream("", { fd: openSync(target, "w") }) : target;
    this.stream.on("error", (error: Error) => {
      this.failed ??= error;
    });
  }

  async write(text: string): Promise<void> {
    if (this.failed) throw this.failed;
    if (!this.stream.write(text)) await once(this.stream, "drain");
    if (this.failed) throw this.failed;
  }

  /** Ends a file (flushed when this resolves); a standard stream is left open. */
  async close(): Promise<void> {
    if (this.stream !== process.stdout && this.stream !== process.stderr) {
      this.stream.end();
      await once(this.stream, "finish");
    }
    if (this.failed) throw this.failed;
  }

  destroy(): void {
    if (this.stream !== process.stdout && this.stream !== process.stderr) this.stream.destroy();
  }
}
