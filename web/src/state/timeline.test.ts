import { describe, expect, it } from "vitest";
import { MessageType } from "../gen/common_pb";
import {
  acked, addPending, advanceCursors, cursorsOf, emptyTimeline, failed, followOn, merge, newestSeq, oldestSeq, recalled,
  recent, retrying, syncCursors, type Item,
} from "./timeline";

const ME = 1n;
const PEER = 2n;

function item(seq: bigint, over: Partial<Item> = {}): Item {
  return {
    conversationId: "si_1_2", seq, clientMessageId: 100n + seq, senderId: PEER, type: MessageType.TEXT,
    content: `m${seq}`, sentAtMs: Number(seq), status: "sent", recalled: false, ...over,
  };
}

const seqs = (items: Item[]) => items.map((i) => i.seq);

describe("timeline", () => {
  it("keeps each seq once, in order, whatever order pages and pushes come in", () => {
    let t = merge(emptyTimeline(), [item(5n), item(3n)], ME);
    t = merge(t, [item(4n), item(5n), item(1n)], ME);
    t = merge(t, [item(3n)], ME);
    expect(seqs(t.items)).toEqual([1n, 3n, 4n, 5n]);
    expect(newestSeq(t)).toBe(5n);
    expect(oldestSeq(t)).toBe(1n);
  });

  it("resyncs from where each timeline stood when the connection opened, not from a later push", () => {
    const timelines = { si_1_2: merge(emptyTimeline(), [item(1n), item(2n)], ME), si_1_3: emptyTimeline() };
    const cursors = syncCursors(timelines);
    expect([...cursors]).toEqual([["si_1_2", 2n]]);
    // Seq 3 was stored while this device was away; 4 is pushed before the sync is answered.
    timelines.si_1_2 = merge(timelines.si_1_2, [item(4n)], ME);
    expect(cursors.get("si_1_2")).toBe(2n);
    advanceCursors(cursors, [item(3n), item(4n), item(7n, { conversationId: "sg_9" })]);
    expect([...cursors]).toEqual([["si_1_2", 4n], ["sg_9", 7n]]);
    advanceCursors(cursors, [item(1n)]);
    expect(cursors.get("si_1_2")).toBe(4n);
  });

  it("a push moves a cursor only when it follows on; a cache without cursors falls back to its timelines", () => {
    const cursors = cursorsOf({ si_1_2: 2n }, {});
    followOn(cursors, "si_1_2", 4n);
    expect(cursors.get("si_1_2")).toBe(2n);
    followOn(cursors, "si_1_2", 3n);
    followOn(cursors, "sg_9", 1n);
    expect([...cursors]).toEqual([["si_1_2", 3n], ["sg_9", 1n]]);
    expect([...cursorsOf(undefined, { si_1_2: merge(emptyTimeline(), [item(5n)], ME) })]).toEqual([["si_1_2", 5n]]);
  });

  it("shows a send pending, then stored at its seq when acked", () => {
    const mine = item(0n, { senderId: ME, clientMessageId: 42n, content: "hi" });
    let t = addPending(merge(emptyTimeline(), [item(1n)], ME), mine);
    expect(t.items.map((i) => i.status)).toEqual(["sent", "pending"]);
    // A push that lands before the ack goes above the pending send.
    t = merge(t, [item(2n)], ME);
    expect(seqs(t.items)).toEqual([1n, 2n, 0n]);
    t = acked(t, 42n, 3n, 1234);
    expect(seqs(t.items)).toEqual([1n, 2n, 3n]);
    expect(t.items[2]).toMatchObject({ status: "sent", content: "hi", sentAtMs: 1234 });
  });

  it("drops the pending copy when the stored one arrived first (sync after a reconnect)", () => {
    const mine = item(0n, { senderId: ME, clientMessageId: 42n });
    let t = addPending(emptyTimeline(), mine);
    t = merge(t, [item(7n, { senderId: ME, clientMessageId: 42n })], ME);
    expect(seqs(t.items)).toEqual([7n]);
    t = acked(t, 42n, 7n, 1);
    expect(seqs(t.items)).toEqual([7n]);
  });

  it("a pending send of someone else's id is not taken for mine", () => {
    let t = addPending(emptyTimeline(), item(0n, { senderId: ME, clientMessageId: 42n }));
    t = merge(t, [item(7n, { senderId: PEER, clientMessageId: 42n })], ME);
    expect(seqs(t.items)).toEqual([7n, 0n]);
  });

  it("a failed send stays, retries as pending with the same id, then succeeds", () => {
    let t = addPending(emptyTimeline(), item(0n, { senderId: ME, clientMessageId: 9n }));
    t = failed(t, 9n, "store unavailable");
    expect(t.items[0]).toMatchObject({ status: "failed", error: "store unavailable", clientMessageId: 9n });
    t = retrying(t, 9n);
    expect(t.items[0]).toMatchObject({ status: "pending", error: undefined });
    t = acked(t, 9n, 1n, 5);
    expect(t.items[0]).toMatchObject({ status: "sent", seq: 1n });
  });

  it("a recall blanks the message but keeps its place", () => {
    const t = recalled(merge(emptyTimeline(), [item(1n), item(2n)], ME), 1n);
    expect(t.items[0]).toMatchObject({ seq: 1n, recalled: true, content: "" });
    expect(t.items[1].recalled).toBe(false);
  });

  it("the cache keeps the newest messages and every pending one", () => {
    let t = merge(emptyTimeline(), [1n, 2n, 3n, 4n].map((s) => item(s)), ME);
    t = addPending({ ...t, hasMore: false }, item(0n, { senderId: ME, clientMessageId: 77n }));
    const kept = recent(t, 2);
    expect(seqs(kept.items)).toEqual([3n, 4n, 0n]);
    expect(kept.hasMore).toBe(true);
  });
});
