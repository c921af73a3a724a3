// One conversation's messages as the screen shows them, without I/O: stored
// messages ordered by seq, then this device's sends still on their way
// (pending), or refused (failed, to retry with the same client_message_id).
// Pushes, sync pages and history pages can bring a message twice or out of
// order; merging keeps each seq once and turns a pending send into the
// stored message when its ack or its copy arrives.
import { MessageType } from "../gen/common_pb";
import type { ChatMessage } from "../gen/message_pb";
import { GroupEvent_Kind, type GroupEvent } from "../gen/group_pb";

export type Status = "pending" | "sent" | "failed";

export interface Media {
  url: string;
  mime: string;
  fileName: string;
  width?: number;
  height?: number;
}

export interface Place {
  latitude: number;
  longitude: number;
  title: string;
}

export interface Item {
  conversationId: string;
  /** 0n until the node has stored it. */
  seq: bigint;
  clientMessageId: bigint;
  senderId: bigint;
  type: MessageType;
  content: string;
  media?: Media;
  location?: Place;
  sentAtMs: number;
  status: Status;
  recalled: boolean;
  error?: string;
}

export interface Timeline {
  items: Item[];
  /** Older pages remain on the node. */
  hasMore: boolean;
  /** How far the other side has read (1:1). */
  peerReadSeq: bigint;
}

export function emptyTimeline(): Timeline {
  return { items: [], hasMore: true, peerReadSeq: 0n };
}

const EVENT_TEXT: Record<GroupEvent_Kind, string> = {
  [GroupEvent_Kind.CREATED]: "created the group",
  [GroupEvent_Kind.JOINED]: "added members",
  [GroupEvent_Kind.LEFT]: "left the group",
  [GroupEvent_Kind.REMOVED]: "removed members",
  [GroupEvent_Kind.ROLE_CHANGED]: "changed a member's role",
  [GroupEvent_Kind.OWNER_CHANGED]: "handed the group to a new owner",
  [GroupEvent_Kind.UPDATED]: "updated the group",
  [GroupEvent_Kind.DISSOLVED]: "dissolved the group",
};

/** What a group event says, after its actor's name. */
export function eventText(event: GroupEvent | undefined): string {
  return event ? EVENT_TEXT[event.kind] ?? "updated the group" : "updated the group";
}

export function fromChat(m: ChatMessage): Item {
  return {
    conversationId: m.conversationId,
    seq: m.seq,
    clientMessageId: m.clientMessageId,
    senderId: m.senderId,
    type: m.messageType,
    content: m.messageType === MessageType.GROUP_EVENT ? eventText(m.groupEvent) : m.content,
    media: m.media ? { url: m.media.url, mime: m.media.mime, fileName: m.media.fileName } : undefined,
    location: m.location
      ? { latitude: m.location.latitude, longitude: m.location.longitude, title: m.location.title }
      : undefined,
    sentAtMs: Number(m.sentAtMs),
    status: "sent",
    recalled: m.recalled,
  };
}

function ordered(items: Item[]): Item[] {
  const stored = items.filter((i) => i.seq > 0n).sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
  return stored.concat(items.filter((i) => i.seq === 0n));
}

/** Adds stored messages: each seq once, a pending send replaced by its copy. */
export function merge(timeline: Timeline, incoming: Item[], me: bigint): Timeline {
  const items = timeline.items.slice();
  for (const item of incoming) {
    const same = items.findIndex((i) => i.seq === item.seq && i.seq > 0n);
    if (same >= 0) {
      items[same] = item;
      continue;
    }
    const mine = item.senderId === me
      ? items.findIndex((i) => i.seq === 0n && i.clientMessageId === item.clientMessageId)
      : -1;
    if (mine >= 0) items[mine] = item;
    else items.push(item);
  }
  return { ...timeline, items: ordered(items) };
}

/** A send this device just made, shown at once as pending. */
export function addPending(timeline: Timeline, item: Item): Timeline {
  return { ...timeline, items: ordered([...timeline.items, { ...item, seq: 0n, status: "pending" }]) };
}

/** The node acked a send: it is stored at `seq`. */
export function acked(timeline: Timeline, clientMessageId: bigint, seq: bigint, sentAtMs: number): Timeline {
  if (timeline.items.some((i) => i.seq === seq)) {
    // Its copy came first: drop the pending one.
    return {
      ...timeline,
      items: timeline.items.filter((i) => !(i.seq === 0n && i.clientMessageId === clientMessageId)),
    };
  }
  const items = timeline.items.map((i) =>
    i.seq === 0n && i.clientMessageId === clientMessageId
      ? { ...i, seq, sentAtMs, status: "sent" as const, error: undefined }
      : i,
  );
  return { ...timeline, items: ordered(items) };
}

/** A send failed; it stays, marked, to retry with the same client_message_id. */
export function failed(timeline: Timeline, clientMessageId: bigint, error: string): Timeline {
  return {
    ...timeline,
    items: timeline.items.map((i) =>
      i.seq === 0n && i.clientMessageId === clientMessageId ? { ...i, status: "failed" as const, error } : i,
    ),
  };
}

/** A retry: pending again. */
export function retrying(timeline: Timeline, clientMessageId: bigint): Timeline {
  return {
    ...timeline,
    items: timeline.items.map((i) =>
      i.seq === 0n && i.clientMessageId === clientMessageId ? { ...i, status: "pending" as const, error: undefined } : i,
    ),
  };
}

export function recalled(timeline: Timeline, seq: bigint): Timeline {
  return {
    ...timeline,
    items: timeline.items.map((i) =>
      i.seq === seq ? { ...i, recalled: true, content: "", media: undefined, location: undefined } : i,
    ),
  };
}

/** The newest stored seq (the sync cursor). */
export function newestSeq(timeline: Timeline): bigint {
  let newest = 0n;
  for (const i of timeline.items) if (i.seq > newest) newest = i.seq;
  return newest;
}

/**
 * Each timeline's newest seq: where a resync starts for a cache written
 * before cursors were kept with it (`cursorsOf`). Not right once a push
 * has come in past messages stored while this device was away: asking
 * from the newest seq then skips those for good, which is why the app
 * keeps its cursors apart (`followOn`, `advanceCursors`).
 */
export function syncCursors(timelines: Record<string, Timeline>): Map<string, bigint> {
  const cursors = new Map<string, bigint>();
  for (const [id, timeline] of Object.entries(timelines)) {
    const newest = newestSeq(timeline);
    if (newest > 0n) cursors.set(id, newest);
  }
  return cursors;
}

/** A cache's resync cursors; for a cache written before they were kept, its timelines' newest seqs. */
export function cursorsOf(synced: Record<string, bigint> | undefined, timelines: Record<string, Timeline>): Map<string, bigint> {
  return synced ? new Map(Object.entries(synced)) : syncCursors(timelines);
}

/** Moves a cursor on for a message that follows it directly (a push); one past a gap leaves it. */
export function followOn(cursors: Map<string, bigint>, conversationId: string, seq: bigint): void {
  if (seq === (cursors.get(conversationId) ?? 0n) + 1n) cursors.set(conversationId, seq);
}

/** Moves each conversation's resync cursor past the messages a sync page brought. */
export function advanceCursors(cursors: Map<string, bigint>, arrived: { conversationId: string; seq: bigint }[]): void {
  for (const { conversationId, seq } of arrived) {
    if (seq > (cursors.get(conversationId) ?? 0n)) cursors.set(conversationId, seq);
  }
}

/** The oldest stored seq (where the next history page ends). */
export function oldestSeq(timeline: Timeline): bigint {
  const first = timeline.items.find((i) => i.seq > 0n);
  return first ? first.seq : 0n;
}

/** Keeps the newest `keep` stored messages (and every pending one): the cache's share. */
export function recent(timeline: Timeline, keep: number): Timeline {
  const stored = timeline.items.filter((i) => i.seq > 0n);
  if (stored.length <= keep) return timeline;
  const pending = timeline.items.filter((i) => i.seq === 0n);
  return { ...timeline, hasMore: true, items: [...stored.slice(stored.length - keep), ...pending] };
}

/** What a chat list shows for a message. */
export function preview(item: Item): string {
  if (item.recalled) return "Message recalled";
  switch (item.type) {
    case MessageType.TEXT:
      return item.content;
    case MessageType.IMAGE:
      return "Image";
    case MessageType.VOICE:
      return "Voice message";
    case MessageType.VIDEO:
      return "Video";
    case MessageType.FILE:
      return `File: ${item.media?.fileName || "file"}`;
    case MessageType.LOCATION:
      return `Location: ${item.location?.title || "shared"}`;
    default:
      return item.content;
  }
}
