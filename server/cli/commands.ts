import { accessSync, constants } from "node:fs";
import { Code, ConnectError } from "@connectrpc/connect";
import { transport } from "./client.js";
import { exportEvents } from "./export.js";
import { ImportRefused, importEvents } from "./import.js";
import {
  boundaryOption,
  CONNECTION_OPTIONS,
  connection,
  integerOption,
  noPositionals,
  parse,
  UsageError,
} from "./options.js";
import { boundaries, health } from "./status.js";

const USAGE = `usage: orisun <command> [options]

commands:
  export [--boundary B] [--out FILE]       every event (of B, or of all boundaries) as NDJSON
  import [--boundary B] [--append] [--map FILE] [--batch-events N] [--batch-bytes N] [FILE|-]
                                           write an export back (keeps positions, ids and dates
                                           in an empty boundary; --append: new positions)
  health                                   exit 0 when the server is serving, else 1
  boundaries [--json]                      every boundary with its event count and head

connection (every command):
  --url URL              or ORISUN_URL (default http://127.0.0.1:50051)
  --user U --password P  or ORISUN_USER, ORISUN_PASSWORD (HTTP Basic)
  --api-key K            or ORISUN_API_KEY (Bearer)
`;

/** The server's default request limit is 4 MiB; a batch leaves room for the envelope. */
const DEFAULT_BATCH_BYTES = 3 * 1024 * 1024;
/** ORISUN_MAX_EVENTS_PER_SAVE's default. */
const DEFAULT_BATCH_EVENTS = 10_000;

async function run(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  switch (command) {
    case "export": {
      const { values, positionals } = parse(args, {
        ...CONNECTION_OPTIONS,
        boundary: { type: "string" },
        out: { type: "string" },
      });
      noPositionals("export", positionals);
      const boundary = boundaryOption(values.boundary);
      if (values.out === "") throw new UsageError("--out: must name a file");
      const via = transport(connection(values, process.env));
      await exportEvents(via, { boundary, out: values.out });
      return 0;
    }
    case "import": {
      const { values, positionals } = parse(args, {
        ...CONNECTION_OPTIONS,
        boundary: { type: "string" },
        append: { type: "boolean" },
        map: { type: "string" },
        "batch-events": { type: "string" },
        "batch-bytes": { type: "string" },
      });
      if (positionals.length > 1) {
        throw new UsageError(
          `import: takes one FILE (or - for standard input), got ${positionals.length}`,
        );
      }
      if (values.map !== undefined && !values.append) {
        throw new UsageError("--map: only with --append (without it, positions are kept)");
      }
      const file = positionals[0];
      if (file !== undefined && file !== "-") {
        try {
          accessSync(file, constants.R_OK);
        } catch (error) {
          throw new UsageError(
            `import: cannot read "${file}" (${(error as { code?: string }).code})`,
          );
        }
      }
      const options = {
        boundary: boundaryOption(values.boundary),
        append: values.append === true,
        file,
        map: values.map,
        batchEvents: integerOption(
          "batch-events",
          values["batch-events"],
          DEFAULT_BATCH_EVENTS,
          1,
          1_000_000,
        ),
        batchBytes: integerOption(
          "batch-bytes",
          values["batch-bytes"],
          DEFAULT_BATCH_BYTES,
          1024,
          1024 ** 3,
        ),
      };
      const via = transport(connection(values, process.env));
      await importEvents(via, options);
      return 0;
    }
    case "health": {
      const { values, positionals } = parse(args, CONNECTION_OPTIONS);
      noPositionals("health", positionals);
      return (await health(connection(values, process.env))) ? 0 : 1;
    }
    case "boundaries": {
      const { values, positionals } = parse(args, {
        ...CONNECTION_OPTIONS,
        json: { type: "boolean" },
      });
      noPositionals("boundaries", positionals);
      await boundaries(transport(connection(values, process.env)), values.json === true);
      return 0;
    }
    case undefined:
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      throw new UsageError(`no command "${command}"; commands: export, import, health, boundaries`);
  }
}

try {
  process.exitCode = await run(process.argv.slice(2));
} catch (error) {
  if (error instanceof UsageError) {
    process.stderr.write(`orisun: ${error.message}\n${USAGE}`);
    process.exitCode = 2;
  } else if (error instanceof ImportRefused) {
    process.stderr.write(`orisun: ${error.message}\n`);
    process.exitCode = 1;
  } else if (error instanceof ConnectError) {
    process.stderr.write(`orisun: ${Code[error.code]}: ${error.rawMessage}\n`);
    process.exitCode = 1;
  } else {
    process.stderr.write(`orisun: ${(error as Error).message ?? String(error)}\n`);
    process.exitCode = 1;
  }
}
