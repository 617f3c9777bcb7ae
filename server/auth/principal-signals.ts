import pg from "pg";
import { PRINCIPALS_CHANNEL } from "./principals-store.js";

/**
 * Hears that principals changed in other processes on the same database, through
 * `LISTEN orisun_principals` (PostgreSQL; with PGlite there is one process and the store's own
 * changes are announced directly). `connected` is false while the LISTEN connection is down:
 * notices may be missed then, so the credential cache must not trust old entries (see
 * authenticator.ts); reconnecting announces a change, since one may have been missed.
 */
export class PrincipalSignals {
  private client: pg.Client | undefined;
  private listening = false;
  private closed = false;
  private retry: NodeJS.Timeout | undefined;

  constructor(
    private readonly url: string | undefined,
    private readonly schema: string,
    private readonly onChange: () => void,
    private readonly onError: (error: Error) => void,
  ) {
    if (url !== undefined) void this.listen();
  }

  /** No process but this one can change principals (PGlite), or the LISTEN connection is up. */
  get connected(): boolean {
    return this.url === undefined || this.listening;
  }

  private async listen(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.url,
      connectionTimeoutMillis: 5_000,
      keepAlive: true,
    });
    const lost = (error: Error) => {
      if (this.client !== client) return;
      this.client = undefined;
      this.listening = false;
      void client.end().catch(() => {});
      if (this.closed) return;
      this.onError(error);
      this.retry = setTimeout(() => void this.listen(), 500);
    };
    client.on("error", lost);
    client.on("end", () => lost(new Error("LISTEN connection ended")));
    client.on("notification", (n) => {
      if (n.payload === this.schema) this.onChange();
    });
    this.client = client;
    try {
      await client.connect();
      await client.query(`LISTEN ${PRINCIPALS_CHANNEL}`);
      this.listening = true;
      this.onChange();
    } catch (error) {
      lost(error as Error);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    const client = this.client;
    this.client = undefined;
    this.listening = false;
    await client?.end().catch(() => {});
  }
}
