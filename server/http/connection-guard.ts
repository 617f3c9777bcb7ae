import type { Socket } from "node:net";
import type { ConnectionLimits } from "../config.js";

export type Warn = (fields: Record<string, unknown>, message: string) => void;

/** TCP keepalive probes start after this much silence, so dead peers free their descriptors. */
const TCP_KEEPALIVE_MS = 30_000;

const WARN_EVERY_MS = 10_000;

/**
 * One warning per interval at most: a flood must not flood the log. What was held back is
 * counted in one line at the end of the interval.
 */
export function rateLimited(warn: Warn): Warn {
  let window: NodeJS.Timeout | undefined;
  let heldBack = 0;
  let last: { fields: Record<string, unknown>; message: string } | undefined;
  const close = () => {
    if (heldBack === 0 || last === undefined) {
      window = undefined;
      return;
    }
    warn({ ...last.fields, heldBack }, `${last.message} (and ${heldBack} more like it)`);
    heldBack = 0;
    open();
  };
  const open = () => {
    window = setTimeout(close, WARN_EVERY_MS);
    window.unref();
  };
  return (fields, message) => {
    if (window !== undefined) {
      heldBack++;
      last = { fields, message };
      return;
    }
    warn(fields, message);
    open();
  };
}

/**
 * Admits accepted sockets before any byte is parsed: at most `maxConnectionsPerAddress` per
 * client address, TCP keepalive on, and a deadline by which the protocol must be known
 * (cleartext) or the TLS handshake done, whether the peer is silent or trickles bytes.
 */
export class ConnectionGuard {
  private readonly perAddress = new Map<string, number>();
  private readonly handshakes = new Map<string, NodeJS.Timeout>();
  private readonly warnRefused: Warn;

  constructor(
    private readonly limits: ConnectionLimits,
    warn: Warn,
  ) {
    this.warnRefused = rateLimited(warn);
  }

  /** Returns false after destroying a socket that is over its address's cap. */
  admit(socket: Socket): boolean {
    const address = clientAddress(socket);
    if (address === undefined) {
      socket.destroy(); // already gone: the peer reset before we saw it
      return false;
    }
    const held = this.perAddress.get(address) ?? 0;
    if (held >= this.limits.maxConnectionsPerAddress) {
      socket.destroy();
      this.warnRefused(
        { address, limit: this.limits.maxConnectionsPerAddress },
        "connection refused: the address holds ORISUN_MAX_CONNECTIONS_PER_ADDRESS connections",
      );
      return false;
    }
    this.perAddress.set(address, held + 1);
    const key = peer(socket);
    const deadline = setTimeout(() => socket.destroy(), this.limits.handshakeTimeoutMs);
    deadline.unref();
    this.handshakes.set(key, deadline);
    socket.once("close", () => {
      clearTimeout(deadline);
      this.handshakes.delete(key);
      const left = (this.perAddress.get(address) ?? 1) - 1;
      if (left === 0) this.perAddress.delete(address);
      else this.perAddress.set(address, left);
    });
    socket.setKeepAlive(true, TCP_KEEPALIVE_MS);
    return true;
  }

  /**
   * The protocol layer has the connection now and bounds it with its own timeouts. Takes the
   * accepted socket or the TLS socket over it: both name the same peer.
   */
  handshakeDone(socket: Socket): void {
    const key = peer(socket);
    clearTimeout(this.handshakes.get(key));
    this.handshakes.delete(key);
  }
}

/** IPv4 clients of a dual-stack listener show up as `::ffff:a.b.c.d`: count them as a.b.c.d. */
function clientAddress(socket: Socket): string | undefined {
  const address = socket.remoteAddress;
  return address?.startsWith("::ffff:") ? address.slice(7) : address;
}

function peer(socket: Socket): string {
  return `${socket.remoteAddress}|${socket.remotePort}`;
}
