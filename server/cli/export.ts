import { renameSync, rmSync } from "node:fs";
import { createClient, type Transport } from "@connectrpc/connect";
import { Admin } from "../../gen/orisun/v1/admin_pb.js";
import {
  Direction,
  EventStore,
  type GetEventsResponse,
} from "../../gen/orisun/v1/eventstore_pb.js";
import { positionAfter } from "../store/types.js";
import { eventToJson } from "./event-json.js";
import { UsageError } from "./options.js";
import { Output } from "./output.js";
import { Progress } from "./progress.js";

/** Events a GetEvents page asks for: the server's largest page. */
const PAGE = 10_000;

export interface ExportOptions {
  readonly boundary: string | undefined;
  /** undefined: standard output. */
  readonly out: string | undefined;
}

/**
 * Writes every event of one boundary (or of each, by name) as NDJSON, one Event a line in
 * protobuf JSON with every field. Each boundary is read up to the head it had when the export
 * began, page after page in position order, the next page fetched while the last one is written;
 * a write waits for the output to drain, so memory holds about two pages whatever the size.
 * A file is written under a temporary name and renamed at the end: a failed export never leaves
 * a truncated file that looks complete.
 */
export async function exportEvents(via: Transport, options: ExportOptions): Promise<number> {
  const admin = createClient(Admin, via);
  const store = createClient(EventStore, via);
  const { boundaries } = await admin.listBoundaries({});
  const chosen =
    options.boundary === undefined
      ? boundaries
      : boundaries.filter((b) => b.name === options.boundary);
  if (options.boundary !== undefined && chosen.length === 0) {
    throw new UsageError(`--boundary: the server has no boundary "${options.boundary}"`);
  }
  const partial = options.out === undefined ? undefined : `${options.out}.partial`;
  const out = new Output(partial ?? process.stdout);
  const progress = new Progress("exported");
  let total = 0;
  try {
    for (const boundary of chosen) {
      const head = boundary.head;
      if (head === undefined || boundary.eventCount === 0n) continue;
      const page = (from: { commitPosition: bigint; preparePosition: bigint } | undefined) =>
        store.getEvents({
          boundary: boundary.name,
          direction: Direction.ASC,
          count: PAGE,
          fromPosition: from,
        });
      let next: Promise<GetEventsResponse> | undefined = page(undefined);
      while (next !== undefined) {
        const { events } = await next;
        next = undefined;
        let lines = "";
        // A page can hold fewer than PAGE events and not be the last (the server also stops a page
        // at ORISUN_MAX_READ_BYTES): the walk ends at the head, or at an empty page.
        let ended = events.length === 0;
        for (const event of events) {
          const p = event.position;
          if (
            p === undefined ||
            p.commitPosition > head.commitPosition ||
            (p.commitPosition === head.commitPosition && p.preparePosition > head.preparePosition)
          ) {
            ended = true;
            break;
          }
          lines += `${eventToJson(event)}\n`;
          total++;
        }
        const last = events.at(-1)?.position;
        if (
          last?.commitPosition === head.commitPosition &&
          last.preparePosition === head.preparePosition
        ) {
          ended = true;
        }
        // GetEvents starts at from_position inclusive: the next page starts just after.
        const after =
          last && positionAfter({ commit: last.commitPosition, prepare: last.preparePosition });
        if (!ended && after !== undefined) {
          next = page({ commitPosition: after.commit, preparePosition: after.prepare });
        }
        await out.write(lines);
        progress.update(total, `(boundary ${boundary.name})`);
      }
    }
    if (partial !== undefined && options.out !== undefined) {
      await out.close();
      renameSync(partial, options.out);
    }
  } catch (error) {
    out.destroy();
    if (partial !== undefined) {
      rmSync(partial, { force: true });
    }
    throw error;
  }
  progress.done(total, `from ${chosen.length} boundar${chosen.length === 1 ? "y" : "ies"}`);
  return total;
}
