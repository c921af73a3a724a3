import "fake-indexeddb/auto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { Envelope } from "../gen/client_pb";
import { MessageType } from "../gen/common_pb";
import { FakeSocket } from "../testing/fake-socket";
import { App } from "./app";

/**
 * A node where user `me` has one conversation, with user 2 (each test its
 * own user: the browser's cache outlives a test).
 */
class Node {
  readonly conversation: string;
  messages: ReturnType<Node["stored"]>[];
  /** Sync requests are left unanswered while set. */
  holdSyncs = false;
  /** The `since` of every sync the page asked for. */
  syncs: { conversationId: string; seq: bigint }[][] = [];
  /** Runs before the conversations list is answered (the race under test). */
  beforeConversations?: (socket: FakeSocket) => void;

  constructor(readonly me: bigint) {
    this.conversation = `si_2_${me}`;
    this.messages = [this.stored(1n), this.stored(2n)];
  }

  /** User 2's messages to `me` as the node stores them. */
  stored(seq: bigint) {
    return {
      conversationId: this.conversation, seq, serverMsgId: 100n + seq, senderId: 2n, receiverId: this.me,
      messageType: MessageType.TEXT, content: `m${seq}`, clientMessageId: seq, sentAtMs: seq,
    };
  }

  serve(socket: FakeSocket, { reqId, body }: Envelope) {
    const reply = (answer: object) => queueMicrotask(() => socket.reply(reqId, answer));
    const lastSeq = this.messages.at(-1)?.seq ?? 0n;
    switch (body.case) {
      case "login":
        return reply({
          case: "loginResp",
          value: { success: true, userId: this.me, token: "t", deviceId: "web-1", heartbeatSecs: 30, expireAt: 4_000_000_000n },
        });
      case "conversations":
        this.beforeConversations?.(socket);
        this.beforeConversations = undefined;
        return reply({
          case: "conversationsResp",
          value: { conversations: [{ conversationId: this.conversation, peerId: 2n, lastSeq, lastAtMs: lastSeq }] },
        });
      case "sync": {
        const since = body.value.since.map(({ conversationId, seq }) => ({ conversationId, seq }));
        this.syncs.push(since);
        if (this.holdSyncs) return;
        const after = since.find((c) => c.conversationId === this.conversation)?.seq ?? 0n;
        return reply({ case: "syncResp", value: { messages: this.messages.filter((m) => m.seq > after) } });
      }
      case "friends":
        return reply({ case: "friendsResp", value: {} });
      case "myGroups":
        return reply({ case: "myGroupsResp", value: {} });
      case "getUser":
        return reply({ case: "userProfile", value: { userId: body.value.userId, username: "bob" } });
    }
  }

  /** A message stored now and pushed to the page on `socket`. */
  push(socket: FakeSocket, seq: bigint) {
    this.messages.push(this.stored(seq));
    socket.reply(0, { case: "pushMessage", value: this.stored(seq) });
  }
}

/** Resolves once the page's state says `net` is `want`. */
function until(app: App, want: string): Promise<void> {
  return new Promise((resolve) => {
    if (app.state.net === want) return resolve();
    const stop = app.subscribe((state) => {
      if (state.net === want) {
        stop();
        resolve();
      }
    });
  });
}

describe("app", () => {
  let node: Node;
  const kept = new Map<string, string>();

  beforeEach(() => {
    node = new Node(1n);
    kept.clear();
    vi.stubGlobal("localStorage", {
      getItem: (key: string) => kept.get(key) ?? null,
      setItem: (key: string, value: string) => void kept.set(key, value),
      removeItem: (key: string) => void kept.delete(key),
    });
    vi.stubGlobal("WebSocket", FakeSocket);
    FakeSocket.serve = (socket, envelope) => node.serve(socket, envelope);
  });

  afterEach(() => {
    FakeSocket.serve = undefined;
    vi.unstubAllGlobals();
  });

  it("after a reconnect, what was stored while away arrives even when a newer push comes first", async () => {
    const app = new App("ws://node/ws");
    const online = app.login("alice", "secret");
    FakeSocket.last.open();
    await online;
    const seqs = () => app.state.timelines[node.conversation]?.items.map((i) => i.seq);
    expect(seqs()).toEqual([1n, 2n]);

    FakeSocket.last.close();
    // Stored while the page was away.
    node.messages.push(node.stored(3n));
    await vi.waitFor(() => expect(FakeSocket.last.readyState).toBe(0), { timeout: 2_000 });
    // Logged in again, the page is pushed a newer message before it asks what it missed.
    node.beforeConversations = (socket) => node.push(socket, 4n);
    const back = until(app, "online");
    FakeSocket.last.open();
    await back;
    expect(node.syncs.at(-1)).toEqual([{ conversationId: node.conversation, seq: 2n }]);
    expect(seqs()).toEqual([1n, 2n, 3n, 4n]);
  });
  it("a reload before that resync is answered still asks from before what it missed", async () => {
    node = new Node(3n);
    const first = new App("ws://node/ws");
    const online = first.login("carol", "secret");
    FakeSocket.last.open();
    await online;
    FakeSocket.last.close();
    node.messages.push(node.stored(3n));
    await vi.waitFor(() => expect(FakeSocket.last.readyState).toBe(0), { timeout: 2_000 });
    node.beforeConversations = (socket) => node.push(socket, 4n);
    node.holdSyncs = true;
    FakeSocket.last.open();
    // The push is in the page and in its cache (saved 300 ms after), the sync not answered.
    await vi.waitFor(() => expect(node.syncs).toHaveLength(2));
    await new Promise((resolve) => setTimeout(resolve, 500));
    node.holdSyncs = false;
    const reloaded = new App("ws://node/ws");
    await reloaded.resume();
    const back = until(reloaded, "online");
    FakeSocket.last.open();
    await back;
    expect(node.syncs.at(-1)).toEqual([{ conversationId: node.conversation, seq: 2n }]);
    expect(reloaded.state.timelines[node.conversation].items.map((i) => i.seq)).toEqual([1n, 2n, 3n, 4n]);
  });
});
