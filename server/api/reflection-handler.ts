import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  type ServerReflection as ReflectionV1,
  type ServerReflectionRequest as RequestV1,
  ServerReflectionResponseSchema as ResponseV1,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import {
  type ServerReflection as ReflectionV1alpha,
  type ServerReflectionRequest as RequestV1alpha,
  ServerReflectionResponseSchema as ResponseV1alpha,
} from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import type { DescriptorIndex } from "./descriptor-index.js";

export interface ReflectionDeps {
  readonly index: DescriptorIndex;
  /** ORISUN_REFLECTION_MAX_REQUESTS: per stream; a client needs a few dozen for all of the API. */
  readonly maxRequests: number;
  /** ORISUN_IDLE_TIMEOUT: a stream with no request for this long ends, freeing its HTTP/2 stream. */
  readonly idleMs: number;
  readonly shutdown: AbortSignal;
}

/** The answer to one request, the same in v1 and v1alpha (their messages differ only in package). */
type Answer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | {
      case: "allExtensionNumbersResponse";
      value: { baseTypeName: string; extensionNumber: number[] };
    }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

type AnyRequest = RequestV1 | RequestV1alpha;

/**
 * grpc.reflection.v1 and v1alpha (what grpcurl, Postman and Kreya use) from the descriptors the
 * server itself runs on. Each request costs a map lookup and bytes already serialised; a stream
 * takes at most `maxRequests` of them and ends when idle, so a client cannot keep the server busy
 * or hold a stream for nothing.
 */
export function reflectionHandlers(deps: ReflectionDeps): {
  v1: ServiceImpl<typeof ReflectionV1>;
  v1alpha: ServiceImpl<typeof ReflectionV1alpha>;
} {
  return {
    v1: {
      async *serverReflectionInfo(requests, context) {
        for await (const [req, answer] of serve(deps, requests, context.signal)) {
          yield create(ResponseV1, {
            validHost: req.host,
            originalRequest: req,
            messageResponse: answer,
          });
        }
      },
    },
    v1alpha: {
      async *serverReflectionInfo(requests, context) {
        for await (const [req, answer] of serve(deps, requests, context.signal)) {
          yield create(ResponseV1alpha, {
            validHost: req.host,
            originalRequest: req,
            messageResponse: answer,
          });
        }
      },
    },
  };
}

async function* serve<R extends AnyRequest>(
  deps: ReflectionDeps,
  requests: AsyncIterable<R>,
  signal: AbortSignal,
): AsyncGenerator<[R, Answer]> {
  const iterator = requests[Symbol.asyncIterator]();
  const sent = new Set<string>();
  for (let count = 1; ; count++) {
    const next = await nextWithin(iterator, deps.idleMs, [signal, deps.shutdown]);
    if (next === "idle") {
      throw new ConnectError(
        `no reflection request for ${deps.idleMs} ms (ORISUN_IDLE_TIMEOUT): stream ended`,
        Code.DeadlineExceeded,
      );
    }
    if (next === "ended" || next.done) return;
    if (count > deps.maxRequests) {
      throw new ConnectError(
        `more than ${deps.maxRequests} requests on one reflection stream (ORISUN_REFLECTION_MAX_REQUESTS); open a new stream`,
        Code.ResourceExhausted,
      );
    }
    checkSize(next.value);
    yield [next.value, answer(deps.index, next.value, sent)];
  }
}

/** The iterator's next request, or why there is none: the stream idled, or it was ended. */
async function nextWithin<T>(
  iterator: AsyncIterator<T>,
  idleMs: number,
  signals: readonly AbortSignal[],
): Promise<IteratorResult<T> | "idle" | "ended"> {
  if (signals.some((s) => s.aborted)) return "ended";
  const next = iterator.next();
  // Once the stream is given up, a read still pending may fail: nobody waits for it any more.
  next.catch(() => {});
  let timer: NodeJS.Timeout | undefined;
  let onAbort = () => {};
  const stop = new Promise<"idle" | "ended">((resolve) => {
    timer = setTimeout(() => resolve("idle"), idleMs);
    onAbort = () => resolve("ended");
    for (const s of signals) s.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([next, stop]);
  } finally {
    clearTimeout(timer);
    for (const s of signals) s.removeEventListener("abort", onAbort);
  }
}

/**
 * Names in a reflection request (host, file, symbol, type): protobuf's longest real ones are a few
 * hundred bytes. The answer echoes the request whole (original_request, valid_host), so without
 * this a client that does not read could make each stream hold a copy of a 4 MiB request twice.
 */
export const MAX_REFLECTION_REQUEST_BYTES = 1024;

function checkSize(req: AnyRequest): void {
  const request = req.messageRequest;
  const name =
    request.case === "fileContainingExtension" ? request.value.containingType : request.value;
  const bytes =
    Buffer.byteLength(req.host) + (typeof name === "string" ? Buffer.byteLength(name) : 0);
  if (bytes > MAX_REFLECTION_REQUEST_BYTES) {
    throw new ConnectError(
      `a reflection request's host and name must be at most ${MAX_REFLECTION_REQUEST_BYTES} bytes together, got ${bytes}`,
      Code.InvalidArgument,
    );
  }
}

function answer(index: DescriptorIndex, req: AnyRequest, sent: Set<string>): Answer {
  const notFound = (what: string): Answer => ({
    case: "errorResponse",
    value: { errorCode: Code.NotFound, errorMessage: `${what} not found` },
  });
  const files = (file: Parameters<DescriptorIndex["withDependencies"]>[0]): Answer => ({
    case: "fileDescriptorResponse",
    value: { fileDescriptorProto: index.withDependencies(file, sent) },
  });
  // Names are echoed back in errors: cut, as any request field may be as long as the request.
  const shown = (name: string) => JSON.stringify(name.slice(0, 200));
  const request = req.messageRequest;
  switch (request.case) {
    case "listServices":
      return {
        case: "listServicesResponse",
        value: { service: index.serviceNames.map((name) => ({ name })) },
      };
    case "fileByFilename": {
      const file = index.file(request.value);
      return file ? files(file) : notFound(`file ${shown(request.value)}`);
    }
    case "fileContainingSymbol": {
      const file = index.fileContaining(request.value);
      return file ? files(file) : notFound(`symbol ${shown(request.value)}`);
    }
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = request.value;
      const file = index.fileContainingExtension(containingType, extensionNumber);
      return file
        ? files(file)
        : notFound(`extension ${extensionNumber} of ${shown(containingType)}`);
    }
    case "allExtensionNumbersOfType": {
      const numbers = index.extensionNumbers(request.value);
      return numbers
        ? {
            case: "allExtensionNumbersResponse",
            value: { baseTypeName: request.value, extensionNumber: numbers },
          }
        : notFound(`message type ${shown(request.value)}`);
    }
    default:
      throw new ConnectError(
        "a reflection request must set one of file_by_filename, file_containing_symbol, file_containing_extension, all_extension_numbers_of_type or list_services",
        Code.InvalidArgument,
      );
  }
}
