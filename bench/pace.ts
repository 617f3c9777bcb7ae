/**
 * When loop `client` of `clients` sends, for `rate` appends/s from all loops together: its i-th
 * append `offsetMs + i × intervalMs` after the start, so that the loops' sends interleave evenly.
 * Without a rate, at once (each loop sends as soon as it is answered).
 */
export function paceOf(
  rate: number | undefined,
  clients: number,
  client: number,
): { offsetMs: number; intervalMs: number } {
  if (!rate) return { offsetMs: 0, intervalMs: 0 };
  const intervalMs = (clients / rate) * 1_000;
  return { offsetMs: (intervalMs * client) / clients, intervalMs };
}
