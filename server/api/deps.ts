import type { EventStore } from "../store/event-store.js";
import type { ValidationContext } from "./validate.js";

/** What the RPC handlers are built from. Later parts (subscriptions, pub/sub) add their own. */
export interface ApiDeps {
  readonly store: EventStore;
  readonly validation: ValidationContext;
  /** Aborted when the server begins to shut down: long-lived streams end on it. */
  readonly shutdown: AbortSignal;
}
