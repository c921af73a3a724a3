// A WebSocket the tests play the node for: what the page sends is kept
// decoded (and handed to `FakeSocket.serve`, when a test sets it, to
// answer like a node would); `reply` delivers an envelope to the page.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { EnvelopeSchema, type Envelope } from "../gen/client_pb";

export class FakeSocket {
  static OPEN = 1;
  static last: FakeSocket;
  /** Answers each envelope the page sends, when set. */
  static serve?: (socket: FakeSocket, envelope: Envelope) => void;
  readyState = 0;
  binaryType = "";
  sent: Envelope[] = [];
  onopen?: () => void;
  onmessage?: (event: { data: ArrayBuffer }) => void;
  onclose?: () => void;
  constructor(readonly url: string) {
    FakeSocket.last = this;
  }
  send(bytes: Uint8Array) {
    const envelope = fromBinary(EnvelopeSchema, bytes);
    this.sent.push(envelope);
    FakeSocket.serve?.(this, envelope);
  }
  close() {
    this.readyState = 3;
    this.onclose?.();
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  reply(reqId: number, body: object) {
    const bytes = toBinary(EnvelopeSchema, create(EnvelopeSchema, { reqId, body } as never));
    this.onmessage?.({ data: bytes.slice().buffer });
  }
}
