import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ErrorCode } from "./gen/common_pb";
import { Connection, NetError, ServerError, type Body, type NetState } from "./net";
import { FakeSocket } from "./testing/fake-socket";

describe("connection", () => {
  let pushes: Body[];
  let states: NetState[];
  let opened: number;
  let connection: Connection;

  beforeEach(() => {
    vi.useFakeTimers();
    vi.stubGlobal("WebSocket", FakeSocket);
    pushes = [];
    states = [];
    opened = 0;
    connection = new Connection("ws://node/ws", {
      push: (body) => pushes.push(body),
      opened: async () => void opened++,
      state: (s) => states.push(s),
    });
    connection.start();
    FakeSocket.last.open();
  });

  afterEach(() => {
    connection.stop();
    vi.useRealTimers();
    vi.unstubAllGlobals();
  });

  it("matches replies to requests by req_id and hands req_id 0 to pushes", async () => {
    const socket = FakeSocket.last;
    const first = connection.request({ case: "heartbeat", value: {} });
    const second = connection.request({ case: "friends", value: {} });
    const [a, b] = socket.sent.map((e) => e.reqId);
    expect(a).not.toBe(b);
    socket.reply(0, { case: "presence", value: { userId: 9n } });
    socket.reply(b, { case: "friendsResp", value: {} });
    socket.reply(a, { case: "heartbeatAck", value: { serverTimeMs: 5n } });
    expect((await second).case).toBe("friendsResp");
    expect((await first).case).toBe("heartbeatAck");
    expect(pushes.map((p) => p.case)).toEqual(["presence"]);
  });

  it("an error reply rejects with its code; a drop rejects what waits and reconnects", async () => {
    const socket = FakeSocket.last;
    const refused = connection.request({ case: "friends", value: {} });
    socket.reply(socket.sent[0].reqId, { case: "error", value: { code: ErrorCode.RATE_LIMITED, message: "slow down", retryable: true } });
    await expect(refused).rejects.toMatchObject({ code: ErrorCode.RATE_LIMITED, retryable: true });
    await expect(refused).rejects.toBeInstanceOf(ServerError);
    const cut = connection.request({ case: "friends", value: {} });
    socket.close();
    await expect(cut).rejects.toBeInstanceOf(NetError);
    expect(states.at(-1)).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(1_000);
    expect(FakeSocket.last).not.toBe(socket);
    FakeSocket.last.open();
    await vi.advanceTimersByTimeAsync(0);
    expect(opened).toBe(2);
    expect(states.at(-1)).toBe("online");
  });

  it("a reply that says success: false is a refusal, not a result", async () => {
    const socket = FakeSocket.last;
    const login = connection.request({ case: "login", value: { username: "a", password: "wrong" } });
    socket.reply(socket.sent[0].reqId, {
      case: "loginResp",
      value: { success: false, error: { code: ErrorCode.UNAUTHENTICATED, message: "wrong username or password" } },
    });
    await expect(login).rejects.toMatchObject({ code: ErrorCode.UNAUTHENTICATED, message: "wrong username or password" });
    const send = connection.request({ case: "send", value: {} });
    socket.reply(socket.sent[1].reqId, { case: "sendResp", value: { success: true, seq: 4n } });
    expect((await send).case).toBe("sendResp");
  });

  it("a request with no reply times out instead of hanging", async () => {
    const lost = connection.request({ case: "friends", value: {} });
    const failed = expect(lost).rejects.toBeInstanceOf(NetError);
    await vi.advanceTimersByTimeAsync(16_000);
    await failed;
  });
});
