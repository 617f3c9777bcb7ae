/** What one group-commit transaction did, for metrics. */
export interface BatchOutcome {
  /** Requests the transaction took (the batch). */
  readonly requests: number;
  /** Events it wrote (0 when every request failed its condition or was a retry). */
  readonly events: number;
  /** UTF-8 bytes of the data and metadata it wrote. */
  readonly bytes: number;
  /** Requests refused because their DCB condition failed. */
  readonly conditionFailures: number;
}

/**
 * Watches the write path without the store knowing about Prometheus or OpenTelemetry: the
 * observability layer implements it, and a store without one pays nothing.
 */
export interface AppendObserver {
  /** Runs a group-commit transaction, e.g. inside a trace span; must return `run`'s result. */
  transaction<T>(boundary: string, requests: number, run: () => Promise<T>): Promise<T>;
  /** After each transaction that committed (also one that only refused conditions). */
  committed(boundary: string, outcome: BatchOutcome): void;
}
