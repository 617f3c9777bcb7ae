import * as http2 from "node:http2";
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, type ContextValues } from "@connectrpc/connect";
import type { BodyMeter } from "./body-budget.js";

/**
 * Admits a call from its headers before any of its body is read (api/authorization.ts `admit`),
 * recording what it found in the call's context values; a rejection is the call's answer.
 */
export type Admit = (
  method: DescMethod,
  authorization: string | undefined,
  values: ContextValues,
) => Promise<void>;

/** What a request body must pass before and while it is read (`guardedBody`, grpc-unary-path.ts). */
export interface BodyGuard {
  /**
   * Settles once the call may be read (authenticated from its headers, api/authorization.ts);
   * until then not a byte of the body is read, and its rejection is the call's answer.
   */
  readonly admitted?: Promise<void>;
  /** Charged for each chunk as it arrives (body-budget.ts). */
  readonly meter?: BodyMeter;
  /**
   * ORISUN_BODY_TIMEOUT: the whole body must have arrived this long after the call began (calls
   * with one request message; undefined: a stream, whose body lasts as long as the call).
   */
  readonly timeoutMs: number | undefined;
  /**
   * Called when the body is given up before its end (refused, too slow, or its reader stopped):
   * the transport then tells the client to stop sending once the call is answered.
   */
  readonly onCutShort?: () => void;
}

/** The error of a body that did not arrive within ORISUN_BODY_TIMEOUT. */
export function bodyTooSlow(timeoutMs: number): ConnectError {
  return new ConnectError(
    `the request body did not arrive within ORISUN_BODY_TIMEOUT (${timeoutMs} ms); send it faster or split it`,
    Code.DeadlineExceeded,
  );
}

/**
 * The body as Connect reads it, behind the guard: nothing is read until the call is admitted, each
 * chunk is charged to the budget as it comes (if metered), and a body still arriving when the
 * timeout passes (if any) is cut short with DEADLINE_EXCEEDED. Everything charged is let go once the body is complete or
 * given up. Whatever error ends it, Connect answers the call with it.
 */
export async function* guardedBody(
  body: AsyncIterable<Uint8Array>,
  guard: BodyGuard,
): AsyncGenerator<Uint8Array, void, undefined> {
  let timer: NodeJS.Timeout | undefined;
  const { timeoutMs } = guard;
  const expired = new Promise<never>((_, reject) => {
    if (timeoutMs !== undefined)
      timer = setTimeout(() => reject(bodyTooSlow(timeoutMs)), timeoutMs);
  });
  // Rejected after the body was read, or raced and lost: never an unhandled rejection.
  expired.catch(() => {});
  const it = body[Symbol.asyncIterator]();
  let ended = false;
  try {
    if (guard.admitted) await Promise.race([guard.admitted, expired]);
    for (;;) {
      const chunk = await Promise.race([it.next(), expired]);
      if (chunk.done) {
        ended = true;
        return;
      }
      guard.meter?.add(chunk.value.byteLength);
      yield chunk.value;
    }
  } finally {
    clearTimeout(timer);
    guard.meter?.release();
    if (!ended) guard.onCutShort?.();
    // A read still pending (the timeout won) settles once the stream is reset; nobody awaits it.
    it.return?.().catch(() => {});
  }
}

/** How long an answer may take to go out before a stream still receiving its body is reset anyway. */
const ANSWER_GRACE_MS = 5_000;

/**
 * Ends an HTTP/2 stream whose request body is still arriving, once its answer has gone out:
 * RST_STREAM with NO_ERROR, which asks the client to stop sending without failing the call (RFC
 * 9113, 8.1). Without it a refused client could go on sending into the stream, and the stream
 * would count against the connection's open streams until the client gave up.
 *
 * Node offers no event for "END_STREAM sent", and a reset submitted before the last frame of the
 * answer went out would cut it off (Node sends trailers a tick after asking for them), so the
 * stream's state is looked at every millisecond until its side is closed. A client that does not
 * read its answer within ANSWER_GRACE_MS gets CANCEL instead.
 */
export function endUnfinishedRequest(stream: http2.ServerHttp2Stream): void {
  const giveUpAt = performance.now() + ANSWER_GRACE_MS;
  const check = () => {
    if (stream.destroyed || stream.closed) return;
    const state = stream.state;
    if (state.remoteClose) return; // the body ended after all: nothing to stop
    if (state.localClose) stream.close(http2.constants.NGHTTP2_NO_ERROR);
    else if (performance.now() >= giveUpAt) stream.close(http2.constants.NGHTTP2_CANCEL);
    else setTimeout(check, 1).unref();
  };
  check();
}
