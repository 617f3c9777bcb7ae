import { ListenConnection } from "../store/listen-connection.js";
import { PRINCIPALS_CHANNEL } from "./principals-store.js";

/**
 * Hears that principals changed in other processes on the same database, through
 * `LISTEN orisun_principals` (PostgreSQL; with PGlite there is one process and the store's own
 * changes are announced directly). `connected` is false while the LISTEN connection is down:
 * notices may be missed then, so the credential cache must not trust old entries (see
 * authenticator.ts); reconnecting announces a change, since one may have been missed.
 */
export class PrincipalSignals {
  private readonly connection: ListenConnection | undefined;

  constructor(
    url: string | undefined,
    schema: string,
    onChange: () => void,
    onError: (error: Error) => void,
  ) {
    this.connection =
      url === undefined
        ? undefined
        : new ListenConnection({
            url,
            channel: PRINCIPALS_CHANNEL,
            retryMs: 500,
            onNotice: (payload) => {
              if (payload === schema) onChange();
            },
            onUp: onChange,
            onError,
          });
  }

  /** No process but this one can change principals (PGlite), or the LISTEN connection is up. */
  get connected(): boolean {
    return this.connection?.listening ?? true;
  }

  async close(): Promise<void> {
    await this.connection?.close();
  }
}
