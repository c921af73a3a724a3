// The socket to the node: one binary WebSocket message is one Envelope.
// Requests carry a req_id and are answered by the reply that echoes it;
// everything with req_id 0 is a push. The socket reconnects by itself with
// a growing delay, and says which state it is in, so the UI can show
// "reconnecting…" and the app can log in again and resync when it is back.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { EnvelopeSchema, type Envelope } from "./gen/client_pb";
import { ErrorCode } from "./gen/common_pb";

export type Body = NonNullable<Envelope["body"]>;
export type BodyCase = Body["case"];
/** The body of the given case. */
export type BodyOf<C extends BodyCase> = Extract<Body, { case: C }>["value"];
export type NetState = "connecting" | "online" | "reconnecting";

/** A request the node refused: its stable code, never its text, decides. */
export class ServerError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly retryable: boolean,
  ) {
    super(message || ErrorCode[code] || "error");
  }
}

/** The socket closed or the reply did not come in time. */
export class NetError extends Error {}

const REQUEST_TIMEOUT_MS = 15_000;
const MAX_BACKOFF_MS = 5_000;

interface Waiting {
  resolve: (body: Body) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

export interface NetEvents {
  /** A push (req_id 0). */
  push(body: Body): void;
  /** The socket opened: log in and resync here; the state turns online after. */
  opened(): Promise<void>;
  state(state: NetState): void;
}

export class Connection {
  private socket?: WebSocket;
  private nextReqId = 1;
  private waiting = new Map<number, Waiting>();
  private backoffMs = 250;
  private closedByUs = false;
  private heartbeat?: ReturnType<typeof setInterval>;

  constructor(
    private readonly url: string,
    private readonly events: NetEvents,
  ) {}

  start(): void {
    this.closedByUs = false;
    this.open("connecting");
  }

  /** Closes for good (logout). */
  stop(): void {
    this.closedByUs = true;
    this.socket?.close(1000);
    this.dropAll(new NetError("closed"));
  }

  /** Sends every `secs` seconds a heartbeat while the socket is open. */
  keepAlive(secs: number): void {
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(
      () => {
        this.request({ case: "heartbeat", value: {} }).catch(() => {});
      },
      Math.max(5, secs) * 1000,
    );
  }

  /** Sends a request and waits for its reply (an Error reply rejects). */
  request<C extends BodyCase>(body: { case: C; value: object }): Promise<Body> {
    const socket = this.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      return Promise.reject(new NetError("not connected"));
    }
    const reqId = this.nextReqId;
    this.nextReqId = this.nextReqId >= 0xffff_fff0 ? 1 : this.nextReqId + 1;
    return new Promise<Body>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(reqId);
        reject(new NetError("no reply in time"));
      }, REQUEST_TIMEOUT_MS);
      this.waiting.set(reqId, { resolve, reject, timer });
      socket.send(toBinary(EnvelopeSchema, create(EnvelopeSchema, { reqId, body } as never)));
    });
  }

  /** Sends with no reply expected (delivery acks, typing). */
  tell<C extends BodyCase>(body: { case: C; value: object }): void {
    if (this.socket?.readyState === WebSocket.OPEN) {
      this.socket.send(toBinary(EnvelopeSchema, create(EnvelopeSchema, { reqId: 0, body } as never)));
    }
  }

  private open(state: NetState): void {
    this.events.state(state);
    const socket = new WebSocket(this.url);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onopen = () => {
      this.events.opened().then(
        () => {
          this.backoffMs = 250;
          this.events.state("online");
        },
        () => socket.close(4000),
      );
    };
    socket.onmessage = (event) => this.receive(event.data as ArrayBuffer);
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.dropAll(new NetError("connection lost"));
      if (this.closedByUs) return;
      const delay = this.backoffMs * (0.75 + Math.random() * 0.5);
      this.backoffMs = Math.min(MAX_BACKOFF_MS, this.backoffMs * 2);
      this.events.state("reconnecting");
      setTimeout(() => {
        if (!this.closedByUs) this.open("reconnecting");
      }, delay);
    };
  }

  private receive(data: ArrayBuffer): void {
    let envelope: Envelope;
    try {
      envelope = fromBinary(EnvelopeSchema, new Uint8Array(data));
    } catch {
      this.socket?.close(1002);
      return;
    }
    const body = envelope.body;
    if (!body.case) return;
    const waiting = envelope.reqId ? this.waiting.get(envelope.reqId) : undefined;
    if (!waiting) {
      this.events.push(body as Body);
      return;
    }
    this.waiting.delete(envelope.reqId);
    clearTimeout(waiting.timer);
    const refusal = refusalIn(body as Body);
    if (refusal) {
      waiting.reject(new ServerError(refusal.code, refusal.message, refusal.retryable));
    } else {
      waiting.resolve(body as Body);
    }
  }

  private dropAll(error: Error): void {
    clearInterval(this.heartbeat);
    for (const waiting of this.waiting.values()) {
      clearTimeout(waiting.timer);
      waiting.reject(error);
    }
    this.waiting.clear();
  }
}

/**
 * The refusal a reply carries: an `Error` body, or the seed's replies
 * that say `success: false` with their own error field (send, login,
 * register, create group) — never to be taken for a success.
 */
function refusalIn(body: Body): { code: ErrorCode; message: string; retryable: boolean } | undefined {
  if (body.case === "error") return body.value;
  const value = body.value as { success?: boolean; error?: { code: ErrorCode; message: string; retryable: boolean } };
  if (value.success === false) return value.error ?? { code: ErrorCode.INTERNAL, message: "refused", retryable: false };
  return undefined;
}

/** The reply's body if it is of the expected case. */
export function expect<C extends BodyCase>(body: Body, kind: C): BodyOf<C> {
  if (body.case !== kind) throw new NetError(`expected ${kind}, got ${body.case}`);
  return body.value as BodyOf<C>;
}
