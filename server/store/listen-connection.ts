import pg from "pg";
import { sessionConfig } from "./pg-session.js";

export interface ListenOptions {
  readonly url: string;
  readonly channel: string;
  /** Wait before reconnecting after the connection failed or was lost. */
  readonly retryMs: number;
  /** Each notification's payload. */
  onNotice(payload: string): void;
  /** Listening again (also the first time): notices may have been missed while it was down. */
  onUp(): void;
  /** Each failure or loss of the connection; it reconnects after `retryMs`. */
  onError(error: Error): void;
}

/**
 * `LISTEN channel` on a connection of its own, kept up: no statement or idle timeout of the pool
 * ends it, and TCP keepalive notices a dead network under a connection that only ever waits.
 */
export class ListenConnection {
  private client: pg.Client | undefined;
  private up = false;
  private closed = false;
  private retry: NodeJS.Timeout | undefined;

  constructor(private readonly options: ListenOptions) {
    void this.listen();
  }

  /** Connected and listening: no notice is being missed. */
  get listening(): boolean {
    return this.up;
  }

  private async listen(): Promise<void> {
    const { url, channel, retryMs } = this.options;
    // So that a dead network is noticed on both ends, not only a closed socket.
    const client = new pg.Client(sessionConfig(url));
    const lost = (error: Error) => {
      if (this.client !== client) return;
      this.client = undefined;
      this.up = false;
      void client.end().catch(() => {});
      if (this.closed) return;
      this.options.onError(error);
      this.retry = setTimeout(() => void this.listen(), retryMs);
    };
    client.on("error", lost);
    client.on("end", () => lost(new Error("LISTEN connection ended")));
    client.on("notification", (n) => this.options.onNotice(n.payload ?? ""));
    this.client = client;
    try {
      await client.connect();
      await client.query(`LISTEN ${channel}`);
      this.up = true;
      this.options.onUp();
    } catch (error) {
      lost(error as Error);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    const client = this.client;
    this.client = undefined;
    this.up = false;
    await client?.end().catch(() => {});
  }
}
