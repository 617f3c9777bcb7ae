import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { Admin } from "../../gen/orisun/v1/admin_pb.js";
import { EventStore } from "../../gen/orisun/v1/eventstore_pb.js";
import { type EventJson, eventFromJson } from "./event-json.js";
import { lines, openFile } from "./lines.js";
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

/** The first batch of a stream, in events: see batches(). */
const FIRST_BATCH_EVENTS = 1_000;

/** The file is not a valid export, or the server refuses it: nothing was written. */
export class ImportRefused extends Error {
  override readonly name = "ImportRefused";
}

interface Parsed {
  readonly event: EventJson;
  readonly target: string;
  /** UTF-8 bytes of its line: above the size of its binary encoding, so a safe batch measure. */
  readonly bytes: number;
}

/**
 * Reads an export back. Every line must be an Event in protobuf JSON with id, type, JSON data,
 * position and date, positions increasing per boundary, and each target boundary must be empty
 * (or --append): a fault stops the import before anything is written.
 *
 * - Into empty boundaries the file is read once and streamed to ImportEvents in batches of whole
 *   commits (positions, ids and dates kept). The server writes the whole stream in one
 *   transaction, committed by the last message (commit set) once every line was read, so a fault
 *   found on a late line cancels the stream and nothing is written.
 * - With --append a first pass checks every line (standard input is kept in a temporary file for
 *   the second), then SaveEvents without condition writes batches at new positions, one request
 *   in flight while the next batch is read: each batch is its own transaction.
 */
export async function importEvents(via: Transport, options: ImportOptions): Promise<number> {
  const stdin = options.file === undefined || options.file === "-";
  const admin = createClient(Admin, via);
  const { boundaries } = await admin.listBoundaries({});
  const empty = (target: string, n: number) => {
    const existing = boundaries.find((b) => b.name === target);
    if (existing && existing.eventCount > 0n && !options.append) {
      const h = existing.head;
      refuse(
        n,
        `boundary "${target}" already holds ${existing.eventCount} events (head {${h?.commitPosition}, ${h?.preparePosition}}); import into an empty boundary to keep positions, or pass --append to add the events at new positions`,
      );
    }
  };
  if (!options.append) {
    return stream(via, options, stdin ? process.stdin : openFile(options.file as string), empty);
  }
  const spoolDir = stdin ? mkdtempSync(join(tmpdir(), "orisun-import-")) : undefined;
  try {
    const path =
      spoolDir === undefined ? (options.file as string) : join(spoolDir, "events.ndjson");
    const copy = spoolDir === undefined ? undefined : new Output(path);
    const checker = new FileCheck(options, empty);
    for await (const chunk of lines(stdin ? process.stdin : openFile(path))) {
      for (const { line, n } of chunk) {
        await copy?.write(`${line}\n`);
        checker.check(parseLine(line, n, options), n);
      }
    }
    await copy?.close();
    return await append(via, options, path, checker.targets);
  } finally {
    if (spoolDir !== undefined) rmSync(spoolDir, { recursive: true, force: true });
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

/** The rules of a file, line by line; `empty` is asked once per target boundary. */
class FileCheck {
  /** The last position seen of each target boundary. */
  readonly targets = new Map<string, { commit: bigint; prepare: bigint } | undefined>();
  private source: string | undefined;
  private previousTarget: string | undefined;

  constructor(
    private readonly options: ImportOptions,
    private readonly empty: (target: string, n: number) => void,
  ) {}

  check({ event, target }: Parsed, n: number): void {
    const options = this.options;
    if (options.boundary !== undefined && event.boundary !== "") {
      this.source ??= event.boundary;
      if (event.boundary !== this.source) {
        refuse(
          n,
          `the file holds events of boundaries "${this.source}" and "${event.boundary}", and --boundary takes the events of one`,
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
    if (!this.targets.has(target)) {
      this.empty(target, n);
      this.targets.set(target, undefined);
    }
    const last = this.targets.get(target);
    if (
      !options.append &&
      last !== undefined &&
      target !== this.previousTarget &&
      p.commitPosition === last.commit
    ) {
      refuse(
        n,
        `commit ${p.commitPosition} of "${target}" is split by lines of another boundary; a commit's events must be consecutive lines`,
      );
    }
    this.previousTarget = target;
    if (last && (p.preparePosition <= last.prepare || p.commitPosition < last.commit)) {
      refuse(
        n,
        `position {${p.commitPosition}, ${p.preparePosition}} must follow the previous event of "${target}" {${last.commit}, ${last.prepare}} (preparePosition greater, commitPosition not smaller)`,
      );
    }
    this.targets.set(target, { commit: p.commitPosition, prepare: p.preparePosition });
  }
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

/**
 * The events of the lines in batches of one boundary, at most `batchEvents` and `batchBytes`
 * each (with `wholeCommits`, from FIRST_BATCH_EVENTS doubling up to `batchEvents`); with `wholeCommits`, a batch takes a commit whole (a single commit above the limits goes
 * alone). `each` sees every line first (the checks of the streamed import).
 */
async function* batches(
  input: Readable,
  options: ImportOptions,
  wholeCommits: boolean,
  each?: (parsed: Parsed, n: number) => void,
): AsyncGenerator<{ target: string; batch: Parsed[] }> {
  const ready: { target: string; batch: Parsed[] }[] = [];
  // A stream starts small and doubles to the full batch, so the server starts writing while the
  // first full batch would still be read.
  let limit = wholeCommits
    ? Math.min(options.batchEvents, FIRST_BATCH_EVENTS)
    : options.batchEvents;
  let target: string | undefined;
  let batch: Parsed[] = [];
  let batchBytes = 0;
  /** The events of the commit being read (with !wholeCommits: of the line being read). */
  let commit: Parsed[] = [];
  let commitBytes = 0;
  const flush = () => {
    if (batch.length > 0) {
      ready.push({ target: target as string, batch });
      limit = Math.min(limit * 2, options.batchEvents);
    }
    batch = [];
    batchBytes = 0;
  };
  const closeCommit = () => {
    const events = batch.length + commit.length;
    if (events > limit || batchBytes + commitBytes > options.batchBytes) flush();
    // Not push(...commit): a commit can hold more events than a call can take arguments.
    for (const event of commit) batch.push(event);
    batchBytes += commitBytes;
    commit = [];
    commitBytes = 0;
  };
  for await (const chunk of lines(input)) {
    for (const { line, n } of chunk) {
      const parsed = parseLine(line, n, options);
      each?.(parsed, n);
      if (parsed.target !== target) {
        closeCommit();
        flush();
        target = parsed.target;
      } else if (
        !wholeCommits ||
        parsed.event.position?.commitPosition !== commit[0]?.event.position?.commitPosition
      ) {
        closeCommit();
      }
      commit.push(parsed);
      commitBytes += parsed.bytes;
    }
    yield* ready.splice(0);
  }
  closeCommit();
  flush();
  yield* ready.splice(0);
}

/** Into empty boundaries: one pass, one ImportEvents stream, one transaction on the server. */
async function stream(
  via: Transport,
  options: ImportOptions,
  input: Readable,
  empty: (target: string, n: number) => void,
): Promise<number> {
  const admin = createClient(Admin, via);
  const progress = new Progress("sent");
  const checker = new FileCheck(options, empty);
  let sent = 0;
  async function* messages() {
    for await (const { target, batch } of batches(input, options, true, (p, n) =>
      checker.check(p, n),
    )) {
      // An event's own boundary is accepted as is; another one (--boundary) is left out.
      const events = batch.map((p) =>
        p.event.boundary === target ? p.event : { ...p.event, boundary: "" },
      );
      yield { boundary: target, events };
      sent += batch.length;
      progress.update(sent, `(boundary ${target})`);
    }
    // The whole file was read and checked: the server commits when the stream ends after this.
    yield { commit: true };
  }
  let imported: bigint;
  try {
    ({ imported } = await admin.importEvents(messages()));
  } catch (error) {
    // A fault in the file cancelled the stream: the server rolled everything back.
    const cause = error instanceof ConnectError ? error.cause : undefined;
    throw cause instanceof ImportRefused ? cause : error;
  }
  const n = checker.targets.size;
  progress.done(Number(imported), `into ${n} boundar${n === 1 ? "y" : "ies"}`, "imported");
  return Number(imported);
}

/** --append: batches at new positions (SaveEvents), the next one read while the last is in flight. */
async function append(
  via: Transport,
  options: ImportOptions,
  path: string,
  targets: ReadonlyMap<string, unknown>,
): Promise<number> {
  const store = createClient(EventStore, via);
  const map = new Output(options.map ?? process.stderr);
  const progress = new Progress("appended");
  let total = 0;
  let inFlight: Promise<void> | undefined;

  const dispatch = async (target: string, events: EventJson[]) => {
    await inFlight;
    inFlight = (async () => {
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
      await map.write(lines);
      total += events.length;
      progress.update(total, `(boundary ${target})`);
    })();
    // Awaited before the next batch or at the end; a failure meanwhile must not go unhandled.
    inFlight.catch(() => {});
  };

  try {
    for await (const { target, batch } of batches(openFile(path), options, false)) {
      await dispatch(
        target,
        batch.map((p) => p.event),
      );
    }
    await inFlight;
  } catch (error) {
    // Earlier batches are committed: say how far the import got before the failure.
    process.stderr.write(
      `orisun: ${total} events were written before the failure (each batch is all or nothing)\n`,
    );
    throw error;
  }
  await map.close();
  progress.done(total, `into ${targets.size} boundar${targets.size === 1 ? "y" : "ies"}`);
  return total;
}
