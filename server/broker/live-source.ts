import type { StoredEvent } from "../store/types.js";

/**
 * Where a process hears a boundary's committed events from, besides reading the store. The
 * embedded default has none (the feed reads the store on each commit signal); with NATS it is
 * the boundary's JetStream stream, filled by the elected publisher.
 */
export interface LiveSource {
  /**
   * Follows the boundary: once the promise resolves, `onEvent` receives every event published
   * from then on, in position order. It may repeat or skip events (the feed drops repeats and
   * fills gaps from the store) and calls `onBroken` when it stops delivering for good; the feed
   * then follows again.
   */
  follow(
    boundary: string,
    onEvent: (event: StoredEvent) => void,
    onBroken: (error: Error) => void,
  ): Promise<Following>;
  close(): Promise<void>;
}

export interface Following {
  /** Stops following and frees what it held on the server (its consumer). */
  stop(): Promise<void>;
}
