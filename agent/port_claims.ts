/**
 * Which relay session has a port of the pod: a claim every agent in the pod's network namespace
 * can see, whatever its privileges. A claim is a UDP socket on port CLAIM_PORT of a loopback
 * address that names the pod port (127.82.HIGH.LOW), so binding it is the check (a second
 * session's agent cannot), and it ends with the agent however the agent ends. Without it, a
 * session that listens on a free port and another that steals it would each believe they had
 * it. The pod port is in the address, not the port, since apps bind UDP ports of their own.
 */
import { OpenError } from "../lib/tunnel/types.ts";

/** The one UDP port claims use (relay's agent group's number), on 127.82.0.0/16. */
export const CLAIM_PORT = 64646;

/** The loopback address that claims `port`: in 127.0.0.0/8, which every pod's lo has. */
export function claimAddress(port: number): string {
  return `127.82.${port >> 8}.${port & 0xff}`;
}

/** One agent's claims, counted, so that its own listen on a port it holds goes on. */
export class PortClaims {
  readonly #held = new Map<number, { socket?: Deno.DatagramConn; users: number }>();

  /**
   * Claims `port` for this agent until the returned release is called; rejects with an
   * OpenError when another live agent in the pod holds it.
   */
  claim(port: number): () => void {
    let held = this.#held.get(port);
    if (!held) {
      held = { socket: bindClaim(port), users: 0 };
      this.#held.set(port, held);
    }
    held.users++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--held.users > 0) return;
      this.#held.delete(port);
      try {
        held.socket?.close();
      } catch {
        // closed already
      }
    };
  }
}

function bindClaim(port: number): Deno.DatagramConn | undefined {
  const hostname = claimAddress(port);
  try {
    return Deno.listenDatagram({ hostname, port: CLAIM_PORT, transport: "udp" });
  } catch (error) {
    // Taken by another agent's claim, or by something bound to every address on CLAIM_PORT,
    // which claims nothing: then the port is taken unclaimed, as before claims.
    if (error instanceof Deno.errors.AddrInUse && claimedBySomeoneElse(hostname)) {
      throw new OpenError(
        "forbidden",
        `another relay session already takes port ${port} of this pod; stop that one first`,
      );
    }
    return undefined;
  }
}

/** Whether a UDP socket is bound to exactly `hostname`:CLAIM_PORT (/proc/net/udp). */
function claimedBySomeoneElse(hostname: string): boolean {
  const [a, b, c, d] = hostname.split(".").map(Number);
  // /proc/net/udp writes an IPv4 address as the hex of its bytes in host (little-endian) order.
  const hex = [d, c, b, a].map((x) => x.toString(16).padStart(2, "0")).join("").toUpperCase();
  const local = `${hex}:${CLAIM_PORT.toString(16).toUpperCase().padStart(4, "0")}`;
  try {
    return Deno.readTextFileSync("/proc/net/udp").split("\n")
      .some((line) => line.trim().split(/\s+/)[1] === local);
  } catch {
    return true; // No way to tell: a bind that failed on the claim's own address is a claim.
  }
}
