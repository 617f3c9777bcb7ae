import { Code, ConnectError } from "@connectrpc/connect";

/**
 * The bytes of request bodies still arriving, per connection and for the whole process, each under
 * a budget. A request's body is read whole before the request's own limits apply (Connect decodes
 * a unary message before any interceptor runs), so without this one connection could make the
 * server hold its streams × ORISUN_MAX_REQUEST_BYTES for as long as it kept them unfinished: any
 * client with authentication off, any signed-in one with it on (request-body.ts reads nothing of a
 * body before its call is authenticated).
 *
 * A body is charged as its bytes arrive and let go once it is complete (or the call ended): what is
 * bounded is what clients can make the server hold by sending slowly or never finishing, not the
 * decoded messages, which the request limits bound. Past either budget the call is refused with
 * RESOURCE_EXHAUSTED, naming the setting; nothing of it was read into the store.
 */
export class BodyBudget {
  private total = 0;
  private readonly byConnection = new WeakMap<object, number>();

  constructor(
    /** ORISUN_MAX_CONNECTION_BODY_BYTES */
    readonly perConnection: number,
    /** ORISUN_MAX_BODY_BYTES */
    readonly perProcess: number,
  ) {}

  /** Bytes held now, all connections together (for tests and metrics). */
  get held(): number {
    return this.total;
  }

  /** A meter for one request's body on `connection`. */
  meter(connection: object): BodyMeter {
    let charged = 0;
    return {
      add: (bytes: number) => {
        const held = this.byConnection.get(connection) ?? 0;
        if (held + bytes > this.perConnection) {
          throw new ConnectError(
            `request bodies still arriving on this connection exceed ORISUN_MAX_CONNECTION_BODY_BYTES (${this.perConnection} bytes); finish or cancel some, or retry`,
            Code.ResourceExhausted,
          );
        }
        if (this.total + bytes > this.perProcess) {
          throw new ConnectError(
            `request bodies still arriving at the server exceed ORISUN_MAX_BODY_BYTES (${this.perProcess} bytes); retry`,
            Code.ResourceExhausted,
          );
        }
        this.byConnection.set(connection, held + bytes);
        this.total += bytes;
        charged += bytes;
      },
      release: () => {
        if (charged === 0) return;
        const held = this.byConnection.get(connection) ?? 0;
        this.byConnection.set(connection, Math.max(0, held - charged));
        this.total -= charged;
        charged = 0;
      },
    };
  }
}

export interface BodyMeter {
  /** Charges `bytes`; throws RESOURCE_EXHAUSTED (charging nothing) past either budget. */
  add(bytes: number): void;
  /** Lets go of everything charged; idempotent. */
  release(): void;
}
