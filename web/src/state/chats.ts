// The chat list without I/O: one entry per conversation (1:1 or group) with
// its last message, my read cursor and unread count, ordered by activity.
// Summaries from the node, pushes and my own reads all land here.
import type { ConversationSummary } from "../gen/message_pb";
import { fromChat, type Item } from "./timeline";

export interface Chat {
  id: string;
  /** 1:1: the other user (0n for groups). */
  peerId: bigint;
  /** Groups: the group (0n for 1:1). */
  groupId: bigint;
  last?: Item;
  lastAtMs: number;
  lastSeq: bigint;
  readSeq: bigint;
  unread: number;
  peerReadSeq: bigint;
}

/** The 1:1 conversation id of two users, as the node names it. */
export function directId(a: bigint, b: bigint): string {
  return a < b ? `si_${a}_${b}` : `si_${b}_${a}`;
}

export function groupChatId(groupId: bigint): string {
  return `sg_${groupId}`;
}

/** The other user of a 1:1 conversation id, seen by `me`. */
export function peerOf(conversationId: string, me: bigint): bigint {
  const m = /^si_(\d+)_(\d+)$/.exec(conversationId);
  if (!m) return 0n;
  const [a, b] = [BigInt(m[1]), BigInt(m[2])];
  return a === me ? b : a;
}

export function groupOf(conversationId: string): bigint {
  const m = /^sg_(\d+)$/.exec(conversationId);
  return m ? BigInt(m[1]) : 0n;
}

export function fromSummary(s: ConversationSummary): Chat {
  return {
    id: s.conversationId,
    peerId: s.peerId,
    groupId: s.groupId,
    last: s.lastMessage ? fromChat(s.lastMessage) : undefined,
    lastAtMs: Number(s.lastAtMs),
    lastSeq: s.lastSeq,
    readSeq: s.readSeq,
    unread: Number(s.unread),
    peerReadSeq: s.peerReadSeq,
  };
}

function byActivity(chats: Chat[]): Chat[] {
  return chats.sort((a, b) => b.lastAtMs - a.lastAtMs || (a.id < b.id ? -1 : 1));
}

/** Replaces (or adds) chats by id, newest activity first. */
export function upsert(chats: Chat[], fresh: Chat[]): Chat[] {
  const byId = new Map(chats.map((c) => [c.id, c]));
  for (const chat of fresh) byId.set(chat.id, chat);
  return byActivity([...byId.values()]);
}

/** A stored message arrived (pushed, synced or my own acked send). */
export function onMessage(chats: Chat[], item: Item, me: bigint, viewing?: string): Chat[] {
  const existing = chats.find((c) => c.id === item.conversationId);
  const chat: Chat = existing
    ? { ...existing }
    : {
        id: item.conversationId,
        peerId: peerOf(item.conversationId, me),
        groupId: groupOf(item.conversationId),
        lastAtMs: 0,
        lastSeq: 0n,
        readSeq: 0n,
        unread: 0,
        peerReadSeq: 0n,
      };
  if (item.seq <= chat.lastSeq) return chats;
  chat.lastSeq = item.seq;
  chat.last = item;
  chat.lastAtMs = Math.max(chat.lastAtMs, item.sentAtMs);
  if (item.senderId === me || viewing === chat.id) {
    chat.readSeq = item.seq;
  }
  chat.unread = Math.max(0, Number(chat.lastSeq - chat.readSeq));
  return upsert(chats, [chat]);
}

/** My read cursor moved to `seq` (my mark-read, or my other device's). */
export function onRead(chats: Chat[], conversationId: string, seq: bigint): Chat[] {
  return chats.map((c) =>
    c.id === conversationId && seq > c.readSeq
      ? { ...c, readSeq: seq, unread: Math.max(0, Number(c.lastSeq - seq)) }
      : c,
  );
}

/** The other side read up to `seq`. */
export function onPeerRead(chats: Chat[], conversationId: string, seq: bigint): Chat[] {
  return chats.map((c) => (c.id === conversationId && seq > c.peerReadSeq ? { ...c, peerReadSeq: seq } : c));
}

export function totalUnread(chats: Chat[]): number {
  return chats.reduce((sum, c) => sum + c.unread, 0);
}
