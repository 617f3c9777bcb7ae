import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { QUOTE_MAX_CHARS } from "../store/errors.js";

/**
 * How request bodies are decoded, and what a client learns when one cannot be: INVALID_ARGUMENT
 * (HTTP 400 on Connect) on every transport, with a message of bounded length.
 *
 * JSON (Connect and gRPC+json): unknown fields and unknown enum names are refused rather than
 * dropped, and bytes that are not UTF-8 are refused rather than read as U+FFFD. Binary protobuf
 * strings are always checked (proto3 fields are `utf8_validation = VERIFY`).
 */
export const jsonOptions = {
  ignoreUnknownFields: false,
  // Read by Connect's JSON serialization (the option is typed on createJsonSerialization only).
  textDecoder: new TextDecoder("utf-8", { fatal: true }),
};

/**
 * Room for a rule and one quoted input (store/errors.ts `quote`); longer messages come from
 * libraries that repeat input whole (protobuf's JSON reader names an unknown key in full).
 */
const MAX_MESSAGE_CHARS = 2 * QUOTE_MAX_CHARS + 56;
const CUT = "… (cut)";

/**
 * The longest deadline a call may ask for (`grpc-timeout`, `Connect-Timeout-Ms`): the longest delay
 * Node's timers take, about 24.8 days. Connect arms the deadline with setTimeout, which runs a
 * longer delay after 1 ms, so a call asking for 597 hours failed at once with DEADLINE_EXCEEDED;
 * past this it is refused with INVALID_ARGUMENT, which names the limit.
 */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * Connect 2.2 turns a binary body that protobuf cannot parse (truncated, not protobuf, strings
 * that are not UTF-8) into INTERNAL "parse binary: ...", and decodes a unary request before any
 * interceptor runs, so errors.ts never sees it. Every protocol handler aborts the call's context
 * with the error just before writing it (`context.abort(error)`): this gate, which runs first for
 * every call, wraps that method, the one place that sees them all. The error is corrected in place
 * because the handler writes the very object it aborted with. (Not a listener on the context's
 * signal: a deadline that passed first, or had passed before the call began, aborts the signal,
 * and a signal aborts once, so the error written after it went uncorrected.)
 */
export function requestGate(context: HandlerContext): void {
  if (context.requestMethod === "GET") checkGetMessage(context.url);
  // Every handler's context is createHandlerContext's, a plain object with an `abort` method that
  // the HandlerContext type leaves out.
  const controller = context as HandlerContext & { abort(reason?: unknown): void };
  const abort = controller.abort.bind(controller);
  controller.abort = (reason?: unknown) => {
    if (reason instanceof ConnectError) correct(reason);
    abort(reason);
  };
}

function correct(error: ConnectError): void {
  // Writable at run time; `readonly` only in the type. See requestGate for why in place.
  const target = error as { -readonly [K in "code" | "rawMessage" | "message"]: ConnectError[K] };
  if (error.code === Code.Internal && isDecodingFailure(error.rawMessage)) {
    target.code = Code.InvalidArgument;
    target.rawMessage = `the request body is not a valid message: ${error.rawMessage}`;
  }
  // A unary or server-streaming call over a streaming protocol (gRPC, gRPC-Web) must carry one
  // message: Connect answers none or two as UNIMPLEMENTED, as if the method did not exist.
  if (
    error.code === Code.Unimplemented &&
    /^protocol error: (missing|received extra) input message/.test(error.rawMessage)
  ) {
    target.code = Code.InvalidArgument;
    target.rawMessage = `the request must carry exactly one message: ${error.rawMessage}`;
  }
  if (error.rawMessage.length > MAX_MESSAGE_CHARS) {
    target.rawMessage = `${error.rawMessage.slice(0, MAX_MESSAGE_CHARS - CUT.length)}${CUT}`;
  }
  target.message = `[${codeToString(error.code)}] ${error.rawMessage}`;
}

/** Failures Connect raises as INTERNAL although the client's bytes are at fault. */
function isDecodingFailure(message: string): boolean {
  return (
    message.startsWith("parse binary:") ||
    message === "received compressed envelope, but do not know how to decompress"
  );
}

/**
 * A Connect GET carries the message in the query. Without `base64=1` it is percent-encoded text,
 * which URLSearchParams decodes leniently (bad UTF-8 becomes U+FFFD); refuse it as JSON bodies are.
 * With `base64=1` it is base64 (standard or URL-safe, padding optional), which Connect decodes
 * with a plain Error that it would answer as INTERNAL.
 */
function checkGetMessage(url: string): void {
  const query = url.indexOf("?");
  if (query < 0) return;
  let base64 = false;
  let message: string | undefined;
  for (const pair of url.slice(query + 1).split("&")) {
    if (pair === "base64=1") base64 = true;
    if (!pair.startsWith("message=")) continue;
    try {
      message = decodeURIComponent(pair.slice("message=".length).replaceAll("+", " "));
    } catch {
      throw new ConnectError(
        "message: the query parameter must be percent-encoded UTF-8",
        Code.InvalidArgument,
      );
    }
  }
  if (base64 && message !== undefined && !isBase64(message)) {
    throw new ConnectError(
      "message: with base64=1 the query parameter must be base64 (standard or URL-safe alphabet, padding optional)",
      Code.InvalidArgument,
    );
  }
}

function isBase64(text: string): boolean {
  const unpadded = text.replace(/={1,2}$/, "");
  return /^[A-Za-z0-9+/_-]*$/.test(unpadded) && unpadded.length % 4 !== 1;
}
