import { describe, expect, it } from "vitest";
import { MessageType } from "../gen/common_pb";
import { directId, groupOf, onMessage, onPeerRead, onRead, peerOf, totalUnread, type Chat } from "./chats";
import type { Item } from "./timeline";

const ME = 10n;

function msg(conversationId: string, seq: bigint, senderId: bigint, at: number): Item {
  return {
    conversationId, seq, clientMessageId: seq, senderId, type: MessageType.TEXT, content: `m${seq}`,
    sentAtMs: at, status: "sent", recalled: false,
  };
}

describe("chats", () => {
  it("names conversations as the node does, ids as bigints", () => {
    expect(directId(10n, 3n)).toBe("si_3_10");
    expect(peerOf("si_3_10", ME)).toBe(3n);
    expect(peerOf("si_10_9007199254740993", ME)).toBe(9007199254740993n);
    expect(groupOf("sg_77")).toBe(77n);
    expect(peerOf("sg_77", ME)).toBe(0n);
  });

  it("counts unread from others, orders by activity, and ignores repeats", () => {
    let chats: Chat[] = [];
    chats = onMessage(chats, msg("si_3_10", 1n, 3n, 100), ME);
    chats = onMessage(chats, msg("si_4_10", 1n, 4n, 200), ME);
    chats = onMessage(chats, msg("si_3_10", 2n, 3n, 300), ME);
    chats = onMessage(chats, msg("si_3_10", 2n, 3n, 300), ME);
    expect(chats.map((c) => [c.id, c.unread])).toEqual([["si_3_10", 2], ["si_4_10", 1]]);
    expect(chats[0].peerId).toBe(3n);
    expect(totalUnread(chats)).toBe(3);
    // My own message reads everything before it.
    chats = onMessage(chats, msg("si_4_10", 2n, ME, 400), ME);
    expect(chats.map((c) => [c.id, c.unread])).toEqual([["si_4_10", 0], ["si_3_10", 2]]);
  });

  it("the open conversation stays read; read cursors never go back", () => {
    let chats = onMessage([], msg("sg_5", 1n, 3n, 1), ME, "sg_5");
    expect(chats[0]).toMatchObject({ unread: 0, groupId: 5n });
    chats = onMessage(chats, msg("sg_5", 2n, 3n, 2), ME);
    chats = onMessage(chats, msg("sg_5", 3n, 3n, 3), ME);
    chats = onRead(chats, "sg_5", 2n);
    expect(chats[0].unread).toBe(1);
    chats = onRead(chats, "sg_5", 1n);
    expect(chats[0].unread).toBe(1);
    chats = onPeerRead(onPeerRead(chats, "sg_5", 3n), "sg_5", 2n);
    expect(chats[0].peerReadSeq).toBe(3n);
  });
});
