import { execFile } from "node:child_process";
import { resolve } from "node:path";
import { promisify } from "node:util";
import { create, createFileRegistry, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  type FileDescriptorProto,
  FileDescriptorProtoSchema,
  FileDescriptorSetSchema,
} from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SaveEventsRequestSchema } from "../../gen/orisun/v1/eventstore_pb.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "../support/databases.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

const run = promisify(execFile);

/** A reflection response as @grpc/proto-loader decodes it (camelCase, oneof name set). */
interface Reply {
  validHost: string;
  messageResponse: string;
  fileDescriptorResponse?: { fileDescriptorProto: Buffer[] };
  listServicesResponse?: { service: { name: string }[] };
  allExtensionNumbersResponse?: { baseTypeName: string; extensionNumber: number[] };
  errorResponse?: { errorCode: number; errorMessage: string };
}

type Ask = Record<string, unknown>;

/**
 * A reflection stream as grpcurl drives one: a request, its answer, the next. Loaded from the
 * official protos with @grpc/proto-loader, as grpcurl carries its own copy of them.
 */
function reflectionStream(server: SpawnedServer, version: "v1" | "v1alpha") {
  const def = protoLoader.loadSync(`grpc/reflection/${version}/reflection.proto`, {
    includeDirs: ["proto"],
    oneofs: true,
    arrays: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    grpc: { reflection: Record<string, { ServerReflection: grpc.ServiceClientConstructor }> };
  };
  const Client = pkg.grpc.reflection[version]?.ServerReflection;
  if (!Client) throw new Error(`no ${version} in the loaded proto`);
  const client = new Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure(), {
    "grpc.use_local_subchannel_pool": 1,
  }) as unknown as grpc.Client & { ServerReflectionInfo(): grpc.ClientDuplexStream<Ask, Reply> };
  const call = client.ServerReflectionInfo();
  const replies: Reply[] = [];
  let ended: grpc.StatusObject | undefined;
  let wake = () => {};
  call.on("data", (reply: Reply) => {
    replies.push(reply);
    wake();
  });
  call.on("error", () => {});
  call.on("status", (status: grpc.StatusObject) => {
    ended = status;
    wake();
  });
  const next = async (ms = 10_000): Promise<Reply> => {
    const deadline = Date.now() + ms;
    while (replies.length === 0) {
      if (ended) throw Object.assign(new Error(ended.details), { code: ended.code });
      if (Date.now() > deadline) throw new Error("no reflection reply in time");
      await new Promise<void>((done) => {
        const timer = setTimeout(done, 100);
        wake = () => {
          clearTimeout(timer);
          done();
        };
      });
    }
    return replies.shift() as Reply;
  };
  return {
    ask(request: Ask): Promise<Reply> {
      call.write({ host: "", ...request });
      return next();
    },
    /** The status the server ended the stream with, waiting up to `ms`. */
    async ended(ms: number): Promise<grpc.StatusObject> {
      const deadline = Date.now() + ms;
      while (!ended && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      if (!ended) throw new Error("the stream did not end");
      return ended;
    },
    close() {
      call.end();
      client.close();
    },
  };
}

type Stream = ReturnType<typeof reflectionStream>;

function decodeFiles(reply: Reply): FileDescriptorProto[] {
  if (!reply.fileDescriptorResponse) {
    throw new Error(`expected files, got ${reply.messageResponse}: ${JSON.stringify(reply)}`);
  }
  return reply.fileDescriptorResponse.fileDescriptorProto.map((b) =>
    fromBinary(FileDescriptorProtoSchema, b),
  );
}

/**
 * What grpcurl's `describe` does: the file declaring the symbol, then each import it was not
 * sent yet, by file name, until the set is closed under imports.
 */
async function resolveSymbol(stream: Stream, symbol: string): Promise<FileDescriptorProto[]> {
  const files = new Map<string, FileDescriptorProto>();
  const add = (list: FileDescriptorProto[]) => {
    for (const f of list) files.set(f.name, f);
  };
  add(decodeFiles(await stream.ask({ fileContainingSymbol: symbol })));
  for (;;) {
    const missing = [...files.values()].flatMap((f) => f.dependency).find((d) => !files.has(d));
    if (missing === undefined) break;
    add(decodeFiles(await stream.ask({ fileByFilename: missing })));
  }
  return [...files.values()];
}

/** The order a descriptor set is read in: each file after the files it imports. */
function importsFirst(files: readonly FileDescriptorProto[]): FileDescriptorProto[] {
  const byName = new Map(files.map((f) => [f.name, f]));
  const out: FileDescriptorProto[] = [];
  const visit = (f: FileDescriptorProto) => {
    if (out.includes(f)) return;
    for (const d of f.dependency) {
      const dependency = byName.get(d);
      if (dependency) visit(dependency);
    }
    out.push(f);
  };
  for (const f of files) visit(f);
  return out;
}

const ALL_SERVICES = [
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
  "orisun.v1.Admin",
  "orisun.v1.EventStore",
];

describe("gRPC server reflection (v1 and v1alpha)", () => {
  const schema = freshSchema("reflect");
  let server: SpawnedServer;

  beforeAll(async () => {
    server = await spawnServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_DATA_DIR: freshDataDir(),
      ORISUN_REFLECTION_MAX_REQUESTS: "20",
    });
  });
  afterAll(async () => {
    await server?.stop("SIGKILL");
    await dropSchema(schema);
  });

  for (const version of ["v1", "v1alpha"] as const) {
    it(`${version}: lists every service, and describes EventStore into a descriptor set a client can call SaveEvents with`, async () => {
      const stream = reflectionStream(server, version);
      try {
        const listed = await stream.ask({ listServices: "" });
        expect(listed.listServicesResponse?.service.map((s) => s.name).sort()).toEqual(
          ALL_SERVICES,
        );

        const files = await resolveSymbol(stream, "orisun.v1.EventStore");
        expect(files.map((f) => f.name).sort()).toEqual([
          "google/protobuf/empty.proto",
          "google/protobuf/timestamp.proto",
          "orisun/v1/eventstore.proto",
        ]);
        // Imports come with the file that needs them; a later answer on the stream does not
        // send them again.
        const admin = decodeFiles(await stream.ask({ fileContainingSymbol: "orisun.v1.Admin" }));
        expect(admin.map((f) => f.name)).toEqual(["orisun/v1/admin.proto"]);
        files.push(...admin);

        // The descriptors describe SaveEvents' request as the server's own code sees it.
        const set = create(FileDescriptorSetSchema, { file: importsFirst(files) });
        const registry = createFileRegistry(set);
        const save = registry
          .getService("orisun.v1.EventStore")
          ?.methods.find((m) => m.name === "SaveEvents");
        expect(save?.input.typeName).toBe("orisun.v1.SaveEventsRequest");
        expect(save?.input.fields.map((f) => [f.name, f.number, f.fieldKind])).toEqual(
          SaveEventsRequestSchema.fields.map((f) => [f.name, f.number, f.fieldKind]),
        );
        expect(registry.getMessage("orisun.v1.EventToSave")?.fields.map((f) => f.name)).toEqual([
          "event_id",
          "event_type",
          "tags",
          "data",
          "metadata",
        ]);

        // And they are enough to call the API with no proto file at hand, as grpcurl does.
        const def = protoLoader.loadFileDescriptorSetFromBuffer(
          Buffer.from(toBinary(FileDescriptorSetSchema, set)),
          { keepCase: true, longs: String },
        );
        const pkg = grpc.loadPackageDefinition(def) as unknown as {
          orisun: { v1: { EventStore: grpc.ServiceClientConstructor } };
        };
        const store = new pkg.orisun.v1.EventStore(
          `127.0.0.1:${server.port}`,
          grpc.credentials.createInsecure(),
        ) as unknown as grpc.Client & {
          SaveEvents(
            req: object,
            cb: (err: grpc.ServiceError | null, res: { log_position: object }) => void,
          ): void;
        };
        const boundary = `reflected_${version}`;
        const written = await new Promise<{ log_position: object }>((done, fail) =>
          store.SaveEvents(
            {
              boundary,
              events: [{ event_type: "Reflected", data: '{"via":"reflection"}', tags: [] }],
            },
            (err, res) => (err ? fail(err) : done(res)),
          ),
        );
        expect(written.log_position).toHaveProperty("commit_position");
        store.close();
      } finally {
        stream.close();
      }
    });
  }

  it("finds methods, fields, nested types and enum values; says NOT_FOUND in-stream for unknown names and goes on", async () => {
    const stream = reflectionStream(server, "v1");
    try {
      const fileOf = async (symbol: string) =>
        decodeFiles(await stream.ask({ fileContainingSymbol: symbol }))[0]?.name;
      expect(await fileOf("orisun.v1.EventStore.SaveEvents")).toBe("orisun/v1/eventstore.proto");
      expect(await fileOf("orisun.v1.SaveEventsRequest.boundary")).toBe(
        "orisun/v1/eventstore.proto",
      );
      expect(await fileOf("grpc.health.v1.HealthCheckResponse.ServingStatus")).toBe(
        "grpc/health/v1/health.proto",
      );
      // Enum values live beside their enum, as protoc scopes them.
      expect(await fileOf("grpc.health.v1.HealthCheckResponse.SERVING")).toBe(
        "grpc/health/v1/health.proto",
      );
      expect(await fileOf("google.protobuf.Timestamp")).toBe("google/protobuf/timestamp.proto");

      const unknown = await stream.ask({ fileContainingSymbol: "orisun.v1.Nope" });
      expect(unknown.errorResponse?.errorCode).toBe(grpc.status.NOT_FOUND);
      expect(unknown.errorResponse?.errorMessage).toContain("orisun.v1.Nope");
      const noFile = await stream.ask({ fileByFilename: "orisun/v1/nope.proto" });
      expect(noFile.errorResponse?.errorCode).toBe(grpc.status.NOT_FOUND);
      const long = await stream.ask({ fileByFilename: "x".repeat(1_000) });
      expect(long.errorResponse?.errorMessage.length).toBeLessThan(300);

      // No extensions are declared: an empty list for a message, NOT_FOUND for anything else.
      const numbers = await stream.ask({ allExtensionNumbersOfType: "orisun.v1.Event" });
      expect(numbers.allExtensionNumbersResponse).toEqual({
        baseTypeName: "orisun.v1.Event",
        extensionNumber: [],
      });
      const notMessage = await stream.ask({ allExtensionNumbersOfType: "orisun.v1.EventStore" });
      expect(notMessage.errorResponse?.errorCode).toBe(grpc.status.NOT_FOUND);
      const extension = await stream.ask({
        fileContainingExtension: { containingType: "orisun.v1.Event", extensionNumber: 100 },
      });
      expect(extension.errorResponse?.errorCode).toBe(grpc.status.NOT_FOUND);

      // Still answering after the errors.
      const listed = await stream.ask({ listServices: "*" });
      expect(listed.listServicesResponse?.service).toHaveLength(ALL_SERVICES.length);
    } finally {
      stream.close();
    }
  });

  it("a request with nothing set ends the stream INVALID_ARGUMENT", async () => {
    const stream = reflectionStream(server, "v1");
    await expect(stream.ask({})).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    stream.close();
  });

  it("a request whose host and name pass 1 KiB ends the stream INVALID_ARGUMENT", async () => {
    const stream = reflectionStream(server, "v1");
    const fits = await stream.ask({ host: "h".repeat(500), fileContainingSymbol: "x".repeat(524) });
    expect(fits.errorResponse?.errorCode).toBe(grpc.status.NOT_FOUND);
    const refused = stream.ask({ host: "h".repeat(500), fileContainingSymbol: "x".repeat(525) });
    await expect(refused).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    const { details } = await stream.ended(1_000);
    expect(details).toContain("must be at most 1024 bytes together");
    expect(details).toContain("1025");
    stream.close();
  });

  it("a stream takes at most ORISUN_REFLECTION_MAX_REQUESTS requests", async () => {
    const stream = reflectionStream(server, "v1alpha");
    for (let i = 0; i < 20; i++) {
      const reply = await stream.ask({ fileContainingSymbol: "orisun.v1.Event" });
      expect(reply.fileDescriptorResponse).toBeDefined();
    }
    const refused = stream.ask({ listServices: "" });
    await expect(refused).rejects.toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED });
    expect((await stream.ended(1_000)).details).toContain("ORISUN_REFLECTION_MAX_REQUESTS");
    stream.close();
  });

  it("buf curl lists and calls methods through reflection alone", async () => {
    const buf = resolve("node_modules/.bin/buf");
    const common = ["curl", "--protocol", "grpc", "--http2-prior-knowledge"];
    const { stdout: methods } = await run(buf, [...common, "--list-methods", server.url]);
    expect(methods.split("\n")).toEqual(
      expect.arrayContaining([
        "orisun.v1.EventStore/SaveEvents",
        "orisun.v1.Admin/ListBoundaries",
        "grpc.health.v1.Health/Check",
      ]),
    );
    const { stdout: health } = await run(buf, [
      ...common,
      "-d",
      "{}",
      `${server.url}/grpc.health.v1.Health/Check`,
    ]);
    expect(JSON.parse(health)).toEqual({ status: "SERVING" });
    const { stdout: saved } = await run(buf, [
      ...common,
      "-d",
      JSON.stringify({
        boundary: "reflected_buf",
        events: [{ eventType: "Curled", data: '{"n":1}' }],
      }),
      `${server.url}/orisun.v1.EventStore/SaveEvents`,
    ]);
    expect(JSON.parse(saved)).toHaveProperty("logPosition");
  });
});

describe("on the embedded store (PGlite): an idle reflection stream, and health", () => {
  let server: SpawnedServer;

  beforeAll(async () => {
    server = await spawnServer({ ORISUN_DATA_DIR: freshDataDir(), ORISUN_IDLE_TIMEOUT: "2s" });
  });
  afterAll(async () => {
    await server?.stop("SIGKILL");
  });

  it("probes PGlite like PostgreSQL: SERVING, /readyz ready", async () => {
    const { stdout } = await run(resolve("node_modules/.bin/buf"), [
      "curl",
      "--protocol",
      "connect",
      "-d",
      '{"service":"orisun.v1.EventStore"}',
      `${server.url}/grpc.health.v1.Health/Check`,
    ]);
    expect(JSON.parse(stdout)).toEqual({ status: "SERVING" });
    const ready = await fetch(`${server.url}/readyz`);
    expect(ready.status).toBe(200);
  });

  it("ends DEADLINE_EXCEEDED after ORISUN_IDLE_TIMEOUT without a request", async () => {
    const stream = reflectionStream(server, "v1");
    expect((await stream.ask({ listServices: "" })).listServicesResponse).toBeDefined();
    const t0 = Date.now();
    const status = await stream.ended(10_000);
    expect(status.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(status.details).toContain("ORISUN_IDLE_TIMEOUT");
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1_500);
    stream.close();
  });
});
