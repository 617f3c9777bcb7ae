import { createReadStream, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import { createClient, type Transport } from "@connectrpc/connect";
import { Admin } from "../../gen/orisun/v1/admin_pb.js";
import { EventStore } from "../../gen/orisun/v1/eventstore_pb.js";
import { type EventJson, eventFromJson } from "./event-json.js";
import { Output } from "./output.js";
import { Progress } from "./progress.js";

export interface ImportOptions {
  /** Where every event goes; undefined: each event's own boundary. */
  readonly boundary: string | undefined;
  /** Into a non-empty boundary, at new positions (SaveEvents), instead of refusing. */
  readonly append: boolean;
  /** undefined or "-": standard input. */
  readonly file: string | undefined;
  /** Where --append writes the old -> new position of each event; undefined: stderr. */
  readonly map: string | undefined;
  readonly batchEvents: number;
  readonly batchBytes: number;
}

/** The file is not a valid export, or the server refuses it: nothing was written. */
export class ImportRefused extends Error {
  override readonly name = "ImportRefused";
}

/** The last position seen of a target boundary. */
interface Span {
  last: { commit: bigint; prepare: bigint } | undefined;
}

interface Parsed {
  readonly event: EventJson;
  readonly target: string;
  /** UTF-8 bytes of its line: above the size of its binary encoding, so a safe batch measure. */
  readonly bytes: number;
}

/**
 * Reads an export back. A first pass checks every line (protobuf JSON of an Event, with id,
 * type, JSON data, position and date, positions increasing per boundary) and that each target
 * boundary is empty (or --append): any fault stops the import before anything is written.
 * Standard input is kept in a temporary file for the second pass, which sends the events in
 * batches of whole commits (ImportEvents: positions, ids and dates kept) or, with --append, in
 * batches at new positions (SaveEvents without condition), one request in flight while the next
 * batch is read.
 */
export async function importEvents(via: Transport, options: ImportOptions): Promise<number> {
  const stdin = options.file === undefined || options.file === "-";
  const spoolDir = stdin ? mkdtempSync(join(tmpdir(), "orisun-import-")) : undefined;
  try {
    const path =
      spoolDir === undefined ? (options.file as string) : join(spoolDir, "events.ndjson");
    const spans = await check(
      stdin ? process.stdin : createReadStream(path),
      options,
      spoolDir && path,
    );
    const admin = createClient(Admin, via);
    const { boundaries } = await admin.listBoundaries({});
    for (const [name] of spans) {
      const existing = boundaries.find((b) => b.name === name);
      if (existing && existing.eventCount > 0n && !options.append) {
        const h = existing.head;
        throw new ImportRefused(
          `boundary "${name}" already holds ${existing.eventCount} events (head {${h?.commitPosition}, ${h?.preparePosition}}); import into an empty boundary to keep positions, or pass --append to add the events at new positions; nothing was written`,
        );
      }
    }
    return await send(via, options, path, spans);
  } finally {
    if (spoolDir !== undefined) rmSync(spoolDir, { recursive: true, force: true });
  }
}

async function* lines(input: Readable): AsyncGenerator<{ line: string; n: number }> {
  let n = 0;
  for await (const line of createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY })) {
    n++;
    if (line.trim() !== "") yield { line, n };
  }
}

function parseLine(line: string, n: number, options: ImportOptions): Parsed {
  let event: EventJson;
  try {
    event = eventFromJson(line);
  } catch (error) {
    throw new ImportRefused(
      `line ${n}: not an Event in protobuf JSON (${(error as Error).message}); nothing was written`,
    );
  }
  const target = options.boundary ?? event.boundary;
  if (target === "") {
    throw new ImportRefused(
      `line ${n}: the event names no boundary; name one with --boundary; nothing was written`,
    );
  }
  return { event, target, bytes: Buffer.byteLength(line, "utf8") };
}

function refuse(n: number, rule: string): never {
  throw new ImportRefused(`line ${n}: ${rule}; nothing was written`);
}

/** The first pass: every line checked, standard input spooled to `spool`. */
async function check(
  input: Readable,
  options: ImportOptions,
  spool: string | undefined,
): Promise<Map<string, Span>> {
  const spans = new Map<string, Span>();
  const copy = spool === undefined ? undefined : new Output(spool);
  let source: string | undefined;
  let previousTarget: string | undefined;
  for await (const { line, n } of lines(input)) {
    await copy?.write(`${line}\n`);
    const { event, target } = parseLine(line, n, options);
    if (options.boundary !== undefined && event.boundary !== "") {
      source ??= event.boundary;
      if (event.boundary !== source) {
        refuse(
          n,
          `the file holds events of boundaries "${source}" and "${event.boundary}", and --boundary takes the events of one`,
        );
      }
    }
    if (event.eventId === "") refuse(n, "eventId must not be empty");
    if (event.eventType === "") refuse(n, "eventType must not be empty");
    json(event.data, n, "data", false);
    json(event.metadata, n, "metadata", true);
    const p = event.position;
    if (p === undefined) refuse(n, "position is required");
    if (event.dateCreated === undefined) refuse(n, "dateCreated is required");
    let span = spans.get(target);
    if (
      !options.append &&
      span?.last !== undefined &&
      target !== previousTarget &&
      p.commitPosition === span.last.commit
    ) {
      refuse(
        n,
        `commit ${p.commitPosition} of "${target}" is split by lines of another boundary; a commit's events must be consecutive lines`,
      );
    }
    previousTarget = target;
    if (!span) {
      span = { last: undefined };
      spans.set(target, span);
    }
    const last = span.last;
    if (last && (p.preparePosition <= last.prepare || p.commitPosition < last.commit)) {
      refuse(
        n,
        `position {${p.commitPosition}, ${p.preparePosition}} must follow the previous event of "${target}" {${last.commit}, ${last.prepare}} (preparePosition greater, commitPosition not smaller)`,
      );
    }
    span.last = { commit: p.commitPosition, prepare: p.preparePosition };
  }
  await copy?.close();
  return spans;
}

function json(text: string, n: number, field: string, allowEmpty: boolean): void {
  if (text === "") {
    if (allowEmpty) return;
    refuse(n, `${field} must be non-empty JSON text`);
  }
  try {
    JSON.parse(text);
  } catch (error) {
    refuse(n, `${field} must be JSON text (${(error as Error).message})`);
  }
}

/** The second pass: batches to the server, the next one read while the last is in flight. */
async function send(
  via: Transport,
  options: ImportOptions,
  path: string,
  spans: Map<string, Span>,
): Promise<number> {
  const admin = createClient(Admin, via);
  const store = createClient(EventStore, via);
  const map = options.append ? new Output(options.map ?? process.stderr) : undefined;
  const progress = new Progress(options.append ? "appended" : "imported");
  let total = 0;
  let inFlight: Promise<void> | undefined;

  const dispatch = async (target: string, batch: Parsed[]) => {
    if (batch.length === 0) return;
    await inFlight;
    const events = batch.map((p) => p.event);
    inFlight = (async () => {
      if (!options.append) {
        await admin.importEvents({
          boundary: target,
          events: events.map((e) => ({ ...e, boundary: "" })),
        });
      } else {
        const { logPosition } = await store.saveEvents({
          boundary: target,
          events: events.map((e) => ({
            eventId: e.eventId,
            eventType: e.eventType,
            tags: e.tags,
            data: e.data,
            metadata: e.metadata,
          })),
        });
        if (logPosition === undefined) throw new Error("SaveEvents answered no position");
        // One request is one commit, its events at consecutive prepare positions ending at the
        // answered one.
        let lines = "";
        events.forEach((e, i) => {
          const from = e.position;
          const prepare = logPosition.preparePosition - BigInt(events.length - 1 - i);
          lines += `${JSON.stringify({
            boundary: target,
            eventId: e.eventId,
            from: {
              commitPosition: String(from?.commitPosition),
              preparePosition: String(from?.preparePosition),
            },
            to: {
              commitPosition: String(logPosition.commitPosition),
              preparePosition: String(prepare),
            },
          })}\n`;
        });
        await map?.write(lines);
      }
      total += events.length;
      progress.update(total, `(boundary ${target})`);
    })();
    // Awaited before the next batch or at the end; a failure meanwhile must not go unhandled.
    inFlight.catch(() => {});
  };

  let target: string | undefined;
  let batch: Parsed[] = [];
  let batchBytes = 0;
  /** The events of the commit being read: a batch takes a commit whole (ImportEvents needs it). */
  let commit: Parsed[] = [];
  let commitBytes = 0;
  const full = (events: number, bytes: number) =>
    events > options.batchEvents || bytes > options.batchBytes;
  const closeCommit = async () => {
    if (batch.length > 0 && full(batch.length + commit.length, batchBytes + commitBytes)) {
      await dispatch(target as string, batch);
      batch = [];
      batchBytes = 0;
    }
    batch.push(...commit);
    batchBytes += commitBytes;
    commit = [];
    commitBytes = 0;
  };
  try {
    for await (const { line, n } of lines(createReadStream(path))) {
      const parsed = parseLine(line, n, options);
      const current = commit[0]?.event.position?.commitPosition;
      if (parsed.target !== target) {
        await closeCommit();
        await dispatch(target as string, batch);
        batch = [];
        batchBytes = 0;
        target = parsed.target;
      } else if (options.append || parsed.event.position?.commitPosition !== current) {
        await closeCommit();
      }
      commit.push(parsed);
      commitBytes += parsed.bytes;
    }
    await closeCommit();
    await dispatch(target as string, batch);
    await inFlight;
  } catch (error) {
    // Earlier batches are committed: say how far the import got before the failure.
    process.stderr.write(
      `orisun: ${total} events were written before the failure (each batch is all or nothing)\n`,
    );
    throw error;
  }
  await map?.close();
  progress.done(total, `into ${spans.size} boundar${spans.size === 1 ? "y" : "ies"}`);
  return total;
}
