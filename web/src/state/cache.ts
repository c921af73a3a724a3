// This browser's copy of a user's chat list and recent messages, in
// IndexedDB (the seed's local store): a reload draws the last state at once
// and then syncs from its cursors. Values are stored as structured clones,
// so bigint ids stay bigints. A browser without IndexedDB (or a private
// window that refuses it) simply starts empty.
import type { Chat } from "./chats";
import { recent, type Timeline } from "./timeline";

const DB_NAME = "ourchat";
const STORE = "kv";
/** Stored messages kept per conversation. */
export const CACHED_PER_CHAT = 50;

export interface Profile {
  userId: bigint;
  username: string;
  nickname: string;
  avatarUrl: string;
}

export interface Snapshot {
  chats: Chat[];
  timelines: Record<string, Timeline>;
  profiles: Record<string, Profile>;
  /**
   * Per conversation, the seq through which this browser holds every
   * message: where the next sync starts. A timeline's newest seq is not
   * that when a push came in past messages stored while it was away.
   * (Missing in caches written before it: the timelines' newest seqs.)
   */
  synced?: Record<string, bigint>;
}

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

let db: Promise<IDBDatabase | undefined> | undefined;

function open(): Promise<IDBDatabase | undefined> {
  db ??= new Promise((resolve) => {
    if (typeof indexedDB === "undefined") return resolve(undefined);
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => resolve(undefined);
  });
  return db;
}

/** The cached state of `userId`, or an empty one. */
export async function load(userId: bigint): Promise<Snapshot> {
  const empty: Snapshot = { chats: [], timelines: {}, profiles: {} };
  const database = await open();
  if (!database) return empty;
  try {
    const tx = database.transaction(STORE, "readonly");
    const found = await request(tx.objectStore(STORE).get(`user:${userId}`));
    return (found as Snapshot | undefined) ?? empty;
  } catch {
    return empty;
  }
}

/** Saves the state of `userId` (recent messages only). */
export async function save(userId: bigint, snapshot: Snapshot): Promise<void> {
  const database = await open();
  if (!database) return;
  const timelines: Record<string, Timeline> = {};
  for (const [id, timeline] of Object.entries(snapshot.timelines)) {
    timelines[id] = recent(timeline, CACHED_PER_CHAT);
  }
  try {
    const tx = database.transaction(STORE, "readwrite");
    tx.objectStore(STORE).put({ ...snapshot, timelines }, `user:${userId}`);
    await done(tx);
  } catch {
    // A full or refused store only costs the next reload its head start.
  }
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
}

/** Forgets a user's cache (logout). */
export async function forget(userId: bigint): Promise<void> {
  const database = await open();
  if (!database) return;
  const tx = database.transaction(STORE, "readwrite");
  tx.objectStore(STORE).delete(`user:${userId}`);
  await done(tx).catch(() => {});
}
