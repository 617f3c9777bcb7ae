import { join } from "node:path";

/**
 * Where this worker sits among the cluster's workers. Each listens on `<dir>/<slot>.sock`; the
 * primary makes `dir` (mode 0700) and gives a replaced worker the slot of the one it replaces.
 */
export interface WorkerSlots {
  readonly slot: number;
  readonly slots: number;
  readonly dir: string;
}

export const SLOT_ENV = "ORISUN_INTERNAL_WORKER_SLOT";
export const SLOTS_ENV = "ORISUN_INTERNAL_WORKER_SLOTS";
export const SOCKETS_ENV = "ORISUN_INTERNAL_WORKER_SOCKETS";

/** The slots the primary gave this worker, or undefined in a process that is not one of several. */
export function workerSlotsOf(env: NodeJS.ProcessEnv): WorkerSlots | undefined {
  const slot = Number(env[SLOT_ENV]);
  const slots = Number(env[SLOTS_ENV]);
  const dir = env[SOCKETS_ENV];
  if (!dir || !Number.isInteger(slot) || !Number.isInteger(slots) || slots < 2) return undefined;
  if (slot < 0 || slot >= slots) return undefined;
  return { slot, slots, dir };
}

export const socketPath = (dir: string, slot: number) => join(dir, `${slot}.sock`);
