import "fake-indexeddb/auto";
import { describe, expect, it } from "vitest";
import { MessageType } from "../gen/common_pb";
import { CACHED_PER_CHAT, forget, load, save } from "./cache";
import { emptyTimeline, merge, type Item } from "./timeline";

function item(seq: bigint): Item {
  return {
    conversationId: "si_1_2", seq, clientMessageId: seq, senderId: 2n, type: MessageType.TEXT,
    content: `m${seq}`, sentAtMs: 1, status: "sent", recalled: false,
  };
}

describe("cache", () => {
  it("keeps a user's chats and their newest messages, bigints intact, until forgotten", async () => {
    const many = Array.from({ length: CACHED_PER_CHAT + 20 }, (_, i) => item(BigInt(i + 1)));
    const timeline = merge(emptyTimeline(), many, 1n);
    const chat = {
      id: "si_1_2", peerId: 9007199254740993n, groupId: 0n, lastAtMs: 5, lastSeq: 70n, readSeq: 70n,
      unread: 0, peerReadSeq: 0n,
    };
    await save(1n, { chats: [chat], timelines: { si_1_2: timeline }, profiles: {} });
    const back = await load(1n);
    expect(back.chats[0].peerId).toBe(9007199254740993n);
    const items = back.timelines.si_1_2.items;
    expect(items).toHaveLength(CACHED_PER_CHAT);
    expect(items[0].seq).toBe(21n);
    expect(back.timelines.si_1_2.hasMore).toBe(true);
    expect((await load(2n)).chats).toEqual([]);
    await forget(1n);
    expect((await load(1n)).chats).toEqual([]);
  });
});
