/**
 * A stream's receive credit: how much the peer may have in flight toward us, when to grant
 * more, and (TCP) how the window grows while the reader keeps up and shrinks when the
 * peer gives credit back.
 */
import { UDP_SHARED_WINDOW, UDP_WINDOW } from "../contract.ts";

/**
 * A UDP receiver grants credit back every this many bytes taken, whatever the sender's
 * current cap: at most half of UDP_SHARED_WINDOW, so a sender held at that cap is always
 * granted more, even if the two ends briefly count the tunnel's UDP streams differently.
 */
const UDP_GRANT_EVERY = UDP_SHARED_WINDOW / 2;

/**
 * Receive-window auto-tuning, as HTTP/2 and QUIC stacks do: a TCP stream's window doubles
 * (up to limits.maxReceiveWindow) each time its reader takes a whole window within this
 * long, since a stream that fast is held back by the credit round trip, not by its reader.
 * Growth is sent as extra WINDOW credit, so the sender needs no part in it.
 */
const GROW_WITHIN_MS = 50;

/**
 * On a tunnel whose round trip is longer, a window taken within this many round trips grows
 * too: a stream held back by credit takes one window per round trip, so with a fixed time
 * alone a stream to a distant cluster never grew past its first window.
 */
const GROW_WITHIN_ROUND_TRIPS = 4;

/** How quickly a reader must take a whole window for it to grow, on a tunnel of `roundTripMs`. */
function growWithinMs(roundTripMs: number): number {
  return Math.max(GROW_WITHIN_MS, GROW_WITHIN_ROUND_TRIPS * roundTripMs);
}

/**
 * A new stream's head start takes at most this share of the growth budget left, so the streams
 * that open after it still find some.
 */
const HEAD_START_SHARE = 1 / 4;

/** Tunables for one stream, shared by a session's streams. */
export interface StreamLimits {
  /** Bytes we let the peer have in flight toward us at first (TCP). */
  receiveWindow: number;
  /** Growth a new stream is granted at once, from the session's budget (TCP). */
  headStart: number;
  /** Most a stream's receive window may grow to while its reader keeps up (TCP). */
  maxReceiveWindow: number;
  /** Bytes the peer lets us have in flight toward it (TCP). */
  sendWindow: number;
  /** Datagrams queued for a slow reader before new ones are dropped (UDP). */
  udpQueue: number;
  /** What the session's streams may still grow their windows by, together. */
  growth: GrowthBudget;
  /** The session's open UDP streams, counted together (see UDP_SHARED_WINDOW). */
  udpStreams: { open: number };
  /** The tunnel's round trip, once the session has measured it (0 until then). */
  roundTrip: { ms: number };
}

/**
 * Window growth shared by a session's streams, like HTTP/2's connection window: each stream
 * bounds what it buffers, and this bounds what they buffer together.
 */
export interface GrowthBudget {
  /** Bytes of growth left to hand out; streams give theirs back when they end. */
  left: number;
}

/** One stream's receive window and the credit it owes the peer. */
export class ReceiveWindow {
  #size: number;
  /** Bytes taken by the reader and not yet granted back. */
  #unacked = 0;
  /** Bytes read since #epochStart: how fast the reader takes a window decides growth. */
  #readSinceGrowth = 0;
  #epochStart = performance.now();
  /** The peer gave its grown credit back: its next data earns the stream a new head start. */
  #headStartDue = false;

  constructor(private readonly limits: StreamLimits, private readonly udp: boolean) {
    this.#size = udp ? Math.min(limits.receiveWindow, UDP_WINDOW) : limits.receiveWindow;
  }

  /** Bytes the peer may have in flight toward us now. */
  get size(): number {
    return this.#size;
  }

  /**
   * The stream just opened (or got busy again, see resumed): the credit to grant the peer at
   * once beyond the current window, taken from the session's growth budget (0 for none). A transfer then starts near speed
   * instead of doubling its way up from the initial window one round trip at a time.
   */
  headStart(): number {
    if (this.udp) return 0;
    const budget = this.limits.growth;
    const growth = Math.floor(Math.min(
      this.limits.headStart,
      this.limits.maxReceiveWindow - this.#size,
      budget.left * HEAD_START_SHARE,
    ));
    if (growth <= 0) return 0;
    budget.left -= growth;
    this.#size += growth;
    return growth;
  }

  /**
   * The reader took `n` bytes: the credit to grant the peer now (in batches of a quarter
   * window, growth included), or 0 while the batch is not full yet.
   */
  taken(n: number): number {
    this.#unacked += n;
    if (this.#unacked < (this.udp ? UDP_GRANT_EVERY : this.#size / 4)) return 0;
    let increment = this.#unacked;
    this.#unacked = 0;
    if (this.udp || this.#size >= this.limits.maxReceiveWindow) return increment;
    this.#readSinceGrowth += increment;
    if (this.#readSinceGrowth >= this.#size) {
      const now = performance.now();
      if (now - this.#epochStart < growWithinMs(this.limits.roundTrip.ms)) {
        const budget = this.limits.growth;
        const growth = Math.min(
          this.#size,
          this.limits.maxReceiveWindow - this.#size,
          budget.left,
        );
        budget.left -= growth;
        this.#size += growth;
        increment += growth;
      }
      this.#readSinceGrowth = 0;
      this.#epochStart = now;
    }
    return increment;
  }

  /**
   * The peer's sender gave back `decrement` bytes of credit it held beyond the initial
   * window: the window shrinks by as much, not below the initial one, and the growth goes
   * back to the session's budget (TCP).
   */
  shrink(decrement: number): void {
    const by = Math.min(decrement, this.#size - this.limits.receiveWindow);
    if (by <= 0) return;
    this.#size -= by;
    this.limits.growth.left += by;
    // Growth starts over, measured from now, should the stream get busy again.
    this.#readSinceGrowth = 0;
    this.#epochStart = performance.now();
    this.#headStartDue = true;
  }

  /**
   * Data arrived: the credit to grant at once if it is the first since the peer gave its grown
   * credit back (a kept-alive connection's next answer), so that answer does not start over
   * from the initial window either (0 otherwise).
   */
  resumed(): number {
    if (!this.#headStartDue) return 0;
    this.#headStartDue = false;
    return this.headStart();
  }

  /** The stream ended: its growth goes back to the session's budget (TCP). */
  close(): void {
    if (!this.udp) this.limits.growth.left += this.#size - this.limits.receiveWindow;
  }
}
