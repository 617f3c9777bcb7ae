import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Client, Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Admin, type ImportEventsRequestSchema } from "../../gen/orisun/v1/admin_pb.js";
import { EventStore } from "../../gen/orisun/v1/eventstore_pb.js";
import { runCli } from "../support/cli.js";
import { failure } from "../support/clients.js";
import { dropSchema, freshSchema, PG_URL } from "../support/databases.js";
import { seedEvents } from "../support/seed.js";
import { freePort, type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { tempDir } from "../support/temp.js";

const version = (JSON.parse(readFileSync("package.json", "utf8")) as { version: string }).version;

let schema: string;
let server: SpawnedServer;
let store: Client<typeof EventStore>;
let admin: Client<typeof Admin>;
let dir: string;
/** An export of "source": 300 events in commits of 7. */
let file: string;

beforeAll(async () => {
  schema = freshSchema("cli");
  server = await spawnServer({ ORISUN_PG_URL: PG_URL, ORISUN_PG_SCHEMA: schema });
  const transport = createGrpcTransport({ baseUrl: server.url });
  store = createClient(EventStore, transport);
  admin = createClient(Admin, transport);
  dir = tempDir("orisun-cli-");
  await seedEvents(store, "source", 300, 7);
  file = join(dir, "source.ndjson");
  const exported = await runCli([
    "export",
    "--boundary",
    "source",
    "--out",
    file,
    "--url",
    server.url,
  ]);
  expect(exported.code).toBe(0);
});

afterAll(async () => {
  await server?.stop();
  await dropSchema(schema);
});

async function countOf(boundary: string): Promise<bigint> {
  const { boundaries } = await admin.listBoundaries({});
  return boundaries.find((b) => b.name === boundary)?.eventCount ?? 0n;
}

const lines = (path: string) =>
  readFileSync(path, "utf8")
    .split("\n")
    .filter((l) => l !== "");

describe("orisun import", () => {
  it("keeps positions, ids and dates in an empty boundary, from standard input too", async () => {
    const result = await runCli(["import", "--boundary", "copy", "--url", server.url, "-"], {
      stdin: readFileSync(file, "utf8"),
    });
    expect(result.code).toBe(0);
    const again = join(dir, "copy.ndjson");
    await runCli(["export", "--boundary", "copy", "--out", again, "--url", server.url]);
    expect(lines(again)).toEqual(
      lines(file).map((l) => l.replace('"boundary":"source"', '"boundary":"copy"')),
    );
  });

  it("reports an export it cannot write, leaving no file", async () => {
    const result = await runCli([
      "export",
      "--out",
      join(dir, "missing", "x.ndjson"),
      "--url",
      server.url,
    ]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("ENOENT");
    expect(result.stderr).not.toContain("    at ");
  });

  it("refuses a non-empty boundary without --append, writing nothing", async () => {
    const result = await runCli(["import", file, "--url", server.url]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('boundary "source" already holds 300 events');
    expect(result.stderr).toContain("--append");
    expect(await countOf("source")).toBe(300n);
  });

  it("refuses a malformed line anywhere, writing nothing", async () => {
    const good = lines(file);
    const cases: [string, string[], RegExp][] = [
      ["not json", [...good, "{oops"], /line 301: not an Event in protobuf JSON/],
      [
        "unknown field",
        [...good.slice(0, 299), good[299]?.replace("{", '{"color":"red",') ?? ""],
        /line 300: .*unknown field "color"/,
      ],
      [
        "data not JSON",
        [...good, good[0]?.replace(/"data":"[^"]*?\{/, '"data":"{{') ?? ""],
        /line 301: .*data must be JSON text/,
      ],
      ["positions going back", [...good, good[0] ?? ""], /line 301: position \{1, 1\} must follow/],
      [
        "no position",
        [...good, good[299]?.replace(/"position":\{[^}]*\},/, "") ?? ""],
        /line 301: position is required/,
      ],
      [
        "two boundaries into one",
        [...good, good[0]?.replace('"boundary":"source"', '"boundary":"other"') ?? ""],
        /line 301: the file holds events of boundaries "source" and "other"/,
      ],
    ];
    for (const [name, content, message] of cases) {
      const path = join(dir, `bad-${name.replaceAll(" ", "-")}.ndjson`);
      writeFileSync(path, `${content.join("\n")}\n`);
      // Batches of 50: six messages are on the server when line 301 cancels the stream.
      const args = ["--boundary", "fresh", "--batch-events", "50"];
      const result = await runCli(["import", ...args, path, "--url", server.url]);
      expect(result.stderr, name).toMatch(message);
      expect(result.stderr, name).toContain("nothing was written");
      expect(result.code, name).toBe(1);
      expect(await countOf("fresh"), name).toBe(0n);
      expect(await countOf("split"), name).toBe(0n);
    }
  });

  it("with --append, writes at new positions and maps each old position to its new one", async () => {
    await seedEvents(store, "target", 10, 10);
    const map = join(dir, "map.ndjson");
    const result = await runCli([
      "import",
      "--boundary",
      "target",
      "--append",
      "--batch-events",
      "64",
      "--map",
      map,
      file,
      "--url",
      server.url,
    ]);
    expect(result.code).toBe(0);
    expect(await countOf("target")).toBe(310n);
    const source = lines(file).map(
      (l) =>
        JSON.parse(l) as { eventId: string; eventType: string; data: string; position: unknown },
    );
    const mapping = lines(map).map(
      (l) =>
        JSON.parse(l) as {
          boundary: string;
          eventId: string;
          from: unknown;
          to: { commitPosition: string; preparePosition: string };
        },
    );
    expect(mapping.map((m) => [m.eventId, m.from])).toEqual(
      source.map((e) => [e.eventId, e.position]),
    );
    for (const [i, m] of mapping.entries()) {
      const { events } = await store.getEvents({
        boundary: "target",
        count: 1,
        fromPosition: {
          commitPosition: BigInt(m.to.commitPosition),
          preparePosition: BigInt(m.to.preparePosition),
        },
      });
      expect(m.boundary).toBe("target");
      expect([events[0]?.eventId, events[0]?.data]).toEqual([source[i]?.eventId, source[i]?.data]);
      expect(events[0]?.position?.preparePosition).toBe(BigInt(m.to.preparePosition));
    }
    // 300 events in batches of at most 64: 5 commits after the 10 events already there.
    expect(mapping.at(-1)?.to).toEqual({ commitPosition: "6", preparePosition: "310" });
  });
});

describe("ImportEvents", () => {
  const event = (commit: bigint, prepare: bigint, id = `id-${commit}-${prepare}`) => ({
    eventId: id,
    eventType: "T",
    data: "{}",
    position: { commitPosition: commit, preparePosition: prepare },
    dateCreated: { seconds: 1_700_000_000n, nanos: 123_456_000 },
  });
  type Message = MessageInitShape<typeof ImportEventsRequestSchema>;
  /** The messages as a client stream, one after another, as they are. */
  const raw = (...messages: Message[]) =>
    admin.importEvents(
      (async function* () {
        yield* messages;
      })(),
    );
  /** The messages, then the message that commits the import. */
  const stream = (...messages: Message[]) => raw(...messages, { commit: true });

  it("refuses positions at or below the head with FAILED_PRECONDITION, writing nothing", async () => {
    await stream({
      boundary: "imp",
      events: [event(3n, 5n), event(3n, 6n), event(4n, 7n)],
    });
    const refused: [ReturnType<typeof event>[], Code][] = [
      [[event(4n, 8n)], Code.FailedPrecondition], // the head's own commit
      [[event(5n, 7n)], Code.FailedPrecondition], // the head's prepare position
      [[event(2n, 2n)], Code.FailedPrecondition],
      [[event(9n, 9n), event(10n, 10n), event(10n, 10n, "x")], Code.InvalidArgument],
    ];
    for (const [events, code] of refused) {
      expect((await failure(stream({ boundary: "imp", events }))).code).toBe(code);
    }
    const error = await failure(stream({ boundary: "imp", events: [event(4n, 8n)] }));
    expect(error.code).toBe(Code.FailedPrecondition);
    expect(error.rawMessage).toContain('must be above the head of "imp" {4, 7}');
    const { events } = await store.getEvents({ boundary: "imp", count: 100 });
    expect(events.map((e) => [e.position?.commitPosition, e.position?.preparePosition])).toEqual([
      [3n, 5n],
      [3n, 6n],
      [4n, 7n],
    ]);
    expect(events[0]?.dateCreated).toEqual(
      expect.objectContaining({ seconds: 1_700_000_000n, nanos: 123_000_000 }),
    );
    expect(await countOf("imp")).toBe(3n);
  });

  it("names the field and the rule of every bad input", async () => {
    const cases: [Message, string][] = [
      [{ boundary: "imp2", events: [] }, "events: must contain at least one event"],
      [{ boundary: "Bad", events: [event(1n, 1n)] }, "boundary: must match"],
      [
        { boundary: "imp2", events: [{ ...event(1n, 1n), eventId: "" }] },
        "events[0].event_id: must not be empty",
      ],
      [
        { boundary: "imp2", events: [event(1n, 1n, "a"), event(2n, 2n, "a")] },
        'events[1].event_id: duplicates events[0].event_id "a"',
      ],
      [
        { boundary: "imp2", events: [{ ...event(1n, 1n), eventType: "" }] },
        "events[0].event_type: must not be empty",
      ],
      [
        { boundary: "imp2", events: [{ ...event(1n, 1n), data: "{" }] },
        "events[0].data: must be JSON text",
      ],
      [
        { boundary: "imp2", events: [{ ...event(1n, 1n), position: undefined }] },
        "events[0].position: is required",
      ],
      [
        { boundary: "imp2", events: [event(0n, 1n)] },
        "events[0].position: commit_position and prepare_position must both be at least 1",
      ],
      [
        { boundary: "imp2", events: [event(2n, 2n), event(1n, 3n)] },
        "events[1].position: must follow events[0].position {2, 2}",
      ],
      [
        { boundary: "imp2", events: [event(2n, 2n), event(3n, 2n)] },
        "events[1].position: must follow",
      ],
      [
        { boundary: "imp2", events: [{ ...event(1n, 1n), dateCreated: undefined }] },
        "events[0].date_created: is required",
      ],
      [
        {
          boundary: "imp2",
          events: [{ ...event(1n, 1n), dateCreated: { seconds: 1n, nanos: 1 } }],
        },
        "events[0].date_created: nanos must be",
      ],
      [
        {
          boundary: "imp2",
          events: [{ ...event(1n, 1n), dateCreated: { seconds: 253_402_300_800n } }],
        },
        "events[0].date_created: must lie from",
      ],
      [
        { boundary: "imp2", events: [{ ...event(1n, 1n), boundary: "other" }] },
        "events[0].boundary: must be empty or the request's boundary",
      ],
      [
        {
          boundary: "imp2",
          events: [
            {
              ...event(1n, 1n),
              tags: Array.from({ length: 65 }, () => ({ key: "k", value: "v" })),
            },
          ],
        },
        "events[0].tags: must have at most 64 tags",
      ],
    ];
    for (const [request, message] of cases) {
      const error = await failure(stream(request));
      expect(error.rawMessage, message).toContain(message);
      expect([Code.InvalidArgument, Code.ResourceExhausted], message).toContain(error.code);
    }
    expect(await countOf("imp2")).toBe(0n);
  });

  it("refuses an id already stored with ALREADY_EXISTS, writing nothing", async () => {
    await stream({ boundary: "imp3", events: [event(1n, 1n, "taken")] });
    const error = await failure(
      stream({
        boundary: "imp3",
        events: [event(2n, 2n, "new"), event(3n, 3n, "taken")],
      }),
    );
    expect(error.code).toBe(Code.AlreadyExists);
    expect(error.rawMessage).toContain('event id "taken" is already stored in "imp3"');
    expect(await countOf("imp3")).toBe(1n);
    // Appends continue after the imported head.
    const written = await store.saveEvents({
      boundary: "imp3",
      events: [{ eventType: "T", data: "{}" }],
    });
    expect(written.logPosition).toEqual(
      expect.objectContaining({ commitPosition: 2n, preparePosition: 2n }),
    );
  });

  it("wakes live subscribers like an append", async () => {
    const abort = new AbortController();
    const seen: string[] = [];
    const done = (async () => {
      for await (const e of store.subscribeToEvents(
        { boundary: "imp4", subscriberName: "s" },
        { signal: abort.signal },
      )) {
        seen.push(e.eventId);
        if (seen.length === 2) return;
      }
    })();
    await new Promise((r) => setTimeout(r, 500));
    await stream({
      boundary: "imp4",
      events: [event(1n, 1n, "a"), event(1n, 2n, "b")],
    });
    await done;
    abort.abort();
    expect(seen).toEqual(["a", "b"]);
  });

  it("writes messages of several boundaries, interleaved, each above the head the last left", async () => {
    const result = await stream(
      { boundary: "multi_a", events: [event(1n, 1n, "a1"), event(1n, 2n, "a2")] },
      { boundary: "multi_b", events: [event(5n, 9n, "b1")] },
      { boundary: "multi_a", events: [event(2n, 3n, "a3")] },
    );
    expect(result.imported).toBe(4n);
    expect(result.head).toEqual(
      expect.objectContaining({ commitPosition: 2n, preparePosition: 3n }),
    );
    expect(await countOf("multi_a")).toBe(3n);
    expect(await countOf("multi_b")).toBe(1n);
  });

  it("commits a stream of only the commit message as an import of nothing", async () => {
    const result = await stream();
    expect(result.imported).toBe(0n);
    expect(result.head).toBeUndefined();
  });

  it("is all or nothing: a fault in any message of the stream writes nothing", async () => {
    const cases: [Message[], Code, string][] = [
      [
        [
          { boundary: "all_a", events: [event(1n, 1n), event(1n, 2n)] },
          { boundary: "all_b", events: [event(1n, 1n)] },
          { boundary: "all_a", events: [event(2n, 2n)] },
        ],
        Code.FailedPrecondition,
        'messages[2].events[0].position: {2, 2} must be above the head of "all_a" {1, 2}',
      ],
      [
        [
          { boundary: "all_a", events: [event(1n, 1n)] },
          { boundary: "all_a", events: [{ ...event(2n, 2n), data: "{" }] },
        ],
        Code.InvalidArgument,
        "messages[1].events[0].data: must be JSON text",
      ],
      [
        [
          { boundary: "all_a", events: [event(1n, 1n, "same")] },
          { boundary: "all_b", events: [event(1n, 1n)] },
          { boundary: "all_a", events: [event(2n, 2n, "same")] },
        ],
        Code.AlreadyExists,
        'messages[2].events.event_id: event id "same" is already stored in "all_a" (or earlier in this import)',
      ],
    ];
    for (const [messages, code, message] of cases) {
      const error = await failure(stream(...messages));
      expect(error.rawMessage, message).toContain(message);
      expect(error.code, message).toBe(code);
    }
    const unfinished: [Message[], string][] = [
      [[], "commit: the stream ended without a message with commit set"],
      [
        [{ boundary: "all_a", events: [event(1n, 1n)] }],
        "commit: the stream ended without a message with commit set",
      ],
      [
        [
          { boundary: "all_a", events: [event(1n, 1n)], commit: true },
          { boundary: "all_a", events: [event(2n, 2n)] },
        ],
        "messages[1]: must not follow the message with commit set",
      ],
    ];
    for (const [messages, message] of unfinished) {
      const error = await failure(raw(...messages));
      expect(error.rawMessage, message).toContain(message);
      expect(error.code, message).toBe(Code.InvalidArgument);
    }
    const { boundaries } = await admin.listBoundaries({});
    expect(boundaries.map((b) => b.name)).not.toContain("all_a");
    expect(boundaries.map((b) => b.name)).not.toContain("all_b");
  });

  it("writes nothing when the client cancels the stream, and lets the boundary go", async () => {
    const abort = new AbortController();
    const call = admin.importEvents(
      (async function* () {
        yield { boundary: "cancelled", events: [event(1n, 1n)] };
        yield { boundary: "cancelled", events: [event(2n, 2n)] };
        // The server is writing; the client goes away without ending the stream.
        setTimeout(() => abort.abort(), 300);
        await new Promise(() => {});
      })(),
      { signal: abort.signal },
    );
    expect((await failure(call)).code).toBe(Code.Canceled);
    // The row lock is released and nothing was committed: the same positions import again.
    const again = await stream({ boundary: "cancelled", events: [event(1n, 1n)] });
    expect(again.imported).toBe(1n);
    expect(await countOf("cancelled")).toBe(1n);
  });

  it("keeps every character of ids, types, tags, data and metadata", async () => {
    const awkward = [
      'quote " and backslash \\',
      "tab\tnew\nline\r",
      "braces {a,b} and commas",
      "unicode é ✓ 😀",
      "",
      "NULL",
      " spaced ",
    ];
    const events = awkward.map((text, i) => ({
      eventId: `id ${i} ${text}`,
      eventType: `type ${text}`,
      tags: [
        { key: `k ${text}`, value: text },
        { key: "same", value: "v" },
        { key: "same", value: "v" },
      ],
      // A raw newline between tokens: JSON text the array literal must keep as it is.
      data: JSON.stringify({ text, list: [text] }).replace(":", ":\n "),
      metadata: i % 2 === 0 ? "" : JSON.stringify({ text }),
      position: { commitPosition: 1n, preparePosition: BigInt(i + 1) },
      dateCreated: { seconds: 1_700_000_000n + BigInt(i), nanos: 999_999_000 },
    }));
    await stream({ boundary: "awkward", events });
    const { events: read } = await store.getEvents({ boundary: "awkward", count: 100 });
    expect(read.map((e) => [e.eventId, e.eventType, e.data, e.metadata])).toEqual(
      events.map((e) => [e.eventId, e.eventType, e.data, e.metadata]),
    );
    expect(read.map((e) => e.tags.map((t) => [t.key, t.value]))).toEqual(
      awkward.map((text) => [
        [`k ${text}`, text],
        ["same", "v"],
      ]),
    );
  });
});

describe("ListBoundaries and GetServerInfo", () => {
  it("count and head every boundary as the log does, after concurrent appends", async () => {
    const names = ["conc_a", "conc_b", "conc_c"];
    await Promise.all(
      Array.from({ length: 24 }, (_, i) =>
        store.saveEvents({
          boundary: names[i % 3] as string,
          events: Array.from({ length: 1 + (i % 5) }, () => ({ eventType: "T", data: "{}" })),
        }),
      ),
    );
    const { boundaries } = await admin.listBoundaries({});
    expect(boundaries.map((b) => b.name)).toEqual([...boundaries.map((b) => b.name)].sort());
    const client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
    try {
      const { rows } = await client.query<{ boundary: string; n: string; c: string; p: string }>(
        `SELECT boundary, count(*) AS n, max(commit_position) AS c, max(prepare_position) AS p
         FROM "${schema}".orisun_events GROUP BY boundary`,
      );
      for (const row of rows) {
        const b = boundaries.find((x) => x.name === row.boundary);
        expect(
          [b?.eventCount, b?.head?.commitPosition, b?.head?.preparePosition],
          row.boundary,
        ).toEqual([BigInt(row.n), BigInt(row.c), BigInt(row.p)]);
      }
      expect(rows.map((r) => r.boundary)).toEqual(expect.arrayContaining(names));
    } finally {
      await client.end();
    }
  });

  it("tell what the server runs on", async () => {
    const info = await admin.getServerInfo({});
    expect([info.version, info.store, info.broker, info.authEnabled]).toEqual([
      version,
      "postgres",
      "memory",
      false,
    ]);
  });
});

describe("orisun health and boundaries", () => {
  it("health exits 0 when serving and 1 when nothing answers", async () => {
    const up = await runCli(["health"], { env: { ORISUN_URL: server.url } });
    expect([up.code, up.stdout]).toEqual([0, 'SERVING (200 {"status":"ready"})\n']);
    const down = await runCli(["health", "--url", `http://127.0.0.1:${await freePort()}`]);
    expect(down.code).toBe(1);
    expect(down.stdout).toMatch(/^NOT_SERVING .*ECONNREFUSED/);
  });

  it("boundaries prints a table, or the response as JSON", async () => {
    const table = await runCli(["boundaries", "--url", server.url]);
    expect(table.code).toBe(0);
    expect(table.stdout.split("\n")[0]).toMatch(/^BOUNDARY +EVENTS +HEAD +CREATED$/);
    expect(table.stdout).toMatch(/\nsource +300 +43\/300 +\d{4}-/);
    const json = await runCli(["boundaries", "--json", "--url", server.url]);
    const parsed = JSON.parse(json.stdout) as {
      boundaries: { name: string; eventCount: string }[];
    };
    expect(parsed.boundaries.find((b) => b.name === "source")?.eventCount).toBe("300");
  });

  it("sends the credentials given as the authorization header", async () => {
    // Auth is not built yet: the server ignores the header, so this checks the parsing only.
    expect((await runCli(["boundaries", "--url", server.url, "--api-key", "k1"])).code).toBe(0);
    expect(
      (
        await runCli(["boundaries", "--url", server.url], {
          env: { ORISUN_USER: "u", ORISUN_PASSWORD: "p" },
        })
      ).code,
    ).toBe(0);
  });

  it("answers bad arguments with exit code 2, naming the option and the rule", async () => {
    const cases: [string[], string][] = [
      [["export", "--boundary", "Bad"], "--boundary: must match"],
      [["export", "--color"], "Unknown option '--color'"],
      [["import", "a", "b"], "import: takes one FILE"],
      [["import", "--map", "m"], "--map: only with --append"],
      [
        ["import", "/nonexistent/file.ndjson"],
        'import: cannot read "/nonexistent/file.ndjson" (ENOENT)',
      ],
      [["import", "--append", "--batch-events", "0"], "--batch-events: must be an integer from 1"],
      [["boundaries", "--url", "ftp://x"], "--url: must be an http:// or https:// URL"],
      [["boundaries", "--user", "u"], "--password (or ORISUN_PASSWORD): required with --user"],
      [
        ["boundaries", "--user", "u", "--password", "p", "--api-key", "k"],
        "--api-key: give either",
      ],
      [["frobnicate"], 'no command "frobnicate"'],
      [[], "usage: orisun"],
    ];
    for (const [args, message] of cases) {
      const result = await runCli(args);
      expect(result.code, args.join(" ")).toBe(2);
      expect(result.stderr + result.stdout, args.join(" ")).toContain(message);
    }
  });
});
